"""Integrity under concurrency (issue #12): ``--workers`` processes (default 6) hammer one scratch
home for ``--seconds`` (default 60), then the home is checked and the cached scores recomputed.

Each worker is its own Python process (``python -m benchmarks.bench_concurrency --worker``) that
opens a fresh :class:`shift.Client` (``executor="inprocess"``) per operation and draws, with its
own seed, from:

* ``models add``  — one of 6 tiny real ONNX models under a shared name (racing: one wins), or a
  ``--replace`` of a shared name with other weights;
* ``tasks add``   — an ``.npz`` under a shared name (racing) or under a name of its own;
* ``append``      — one of 4 ``.npz`` files to a shared task (re-runs are skipped as present);
* ``relabel``     — new labels for every sample of a shared task (its count read just before:
  an append in between makes this a named ``TaskDataError``);
* ``index``       — a shared task over pool ``all``;
* ``query``       — ``SELECT top 3 FROM pool all WHERE task=<shared>``, with the default ranker
  (the linear probe) or ``RANK BY knn`` (embeds what is missing, caches the scores);
* ``pools add``   — a shared pool name (racing).

A failure that is a ``ShiftError`` is counted by class (named); anything else is a raw traceback
(counted apart, the first few kept). Afterwards, in this process:

* **rows**: per task, the record's count and hashes equal its sample rows', ``seq`` is unique,
  every chunk a row names exists and holds its offset; the count equals the rows the successful
  ``tasks add`` and ``append`` calls reported (lost rows = expected − found, negative: extra);
* ``shift doctor`` finds nothing ``corrupt``;
* **scores**: a fresh process runs both queries on every task on the home as left (reusing the
  indexes and scores the workers made), then the home is copied without its indexes and cached
  scores and a fresh process runs them again there (a sequential rerun); each cached score of
  the final state (same task hash, model key, proxy and parameters) must equal the recomputed
  one (|Δ| ≤ 1e-6).

Targets: 0 lost or corrupted rows, 0 wrong cached scores, 0 raw tracebacks.

    nice -n 10 python -m benchmarks.bench_concurrency [--workers 6] [--seconds 60] [--seed 0]

Writes ``benchmarks/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result

SHARED_TASKS = ["alpha", "beta", "gamma"]
SHARED_MODELS = [f"m{i}" for i in range(6)]
SHARED_POOLS = ["small", "wide", "headless"]
POOL_CONDITIONS = ["WHERE dim <= 16", "WHERE dim > 8", "WHERE has_head = false"]
SIZE = 16  # input pixels of the tiny models and side of the task images
#: the default ranker (the linear probe, which loads torch) and the lighter kNN, twice as often
QUERY_RANKS = ["", " RANK BY knn", " RANK BY knn"]


# ---- the prepared inputs -------------------------------------------------------------------------


def prepare(root: Path, seed: int) -> dict[str, Any]:
    """ONNX files, task and append ``.npz`` files under ``root/inputs``."""
    from benchmarks.workloads import blob_task, tiny_cnn

    src = root / "inputs"
    src.mkdir(parents=True, exist_ok=True)
    models = [
        str(tiny_cnn(src / f"m{i}.onnx", size=SIZE, dim=8 + 4 * (i % 3), seed=i, classes=None))
        for i in range(len(SHARED_MODELS) + 2)
    ]
    tasks, appends = [], []
    for i in range(4):
        x, y = blob_task(120, classes=3, size=SIZE, seed=seed * 100 + i)
        np.savez(src / f"task{i}.npz", x=x, y=y)
        tasks.append(str(src / f"task{i}.npz"))
    for i in range(4):
        x, y = blob_task(30, classes=3, size=SIZE, seed=seed * 100 + 50 + i)
        np.savez(src / f"append{i}.npz", x=x, y=y)
        appends.append(str(src / f"append{i}.npz"))
    return {"models": models, "tasks": tasks, "appends": appends}


# ---- one worker ----------------------------------------------------------------------------------


def _op(c: Any, kind: str, rng: np.random.Generator, inputs: dict[str, Any], me: int) -> Any:
    """Run one operation of ``kind``; returns what the parent needs to check rows."""
    from shift.catalog.onnx_import import register_onnx

    if kind == "models_add":
        i = int(rng.integers(len(SHARED_MODELS)))
        if rng.random() < 0.2:  # re-register a shared name with other weights
            f = inputs["models"][len(SHARED_MODELS) + int(rng.integers(2))]
            register_onnx(c.registry, f, SHARED_MODELS[i], replace=True)
            return None
        register_onnx(c.registry, inputs["models"][i], SHARED_MODELS[i])
        return None
    if kind == "tasks_add":
        shared = rng.random() < 0.6
        name = SHARED_TASKS[int(rng.integers(3))] if shared else f"own{me}x{rng.integers(1e9)}"
        f = inputs["tasks"][int(rng.integers(len(inputs["tasks"])))]
        rec = c.add_task(name, f, kind="npz")
        return {"task": name, "added": rec.num_samples}
    if kind == "append":
        name = SHARED_TASKS[int(rng.integers(3))]
        f = inputs["appends"][int(rng.integers(len(inputs["appends"])))]
        rec, added = c.append(name, f, kind="npz")
        return {"task": name, "added": int(added)}
    if kind == "relabel":
        name = SHARED_TASKS[int(rng.integers(3))]
        n = c.task(name).num_samples
        labels = np.arange(n) % 3
        rng.shuffle(labels)
        c.relabel(name, labels)
        return None
    if kind == "index":
        c.index(SHARED_TASKS[int(rng.integers(3))])
        return None
    if kind == "query":
        rank = QUERY_RANKS[int(rng.integers(len(QUERY_RANKS)))]
        c.query(f"SELECT top 3 FROM pool all WHERE task={SHARED_TASKS[int(rng.integers(3))]}{rank}")
        return None
    if kind == "pools_add":
        i = int(rng.integers(len(SHARED_POOLS)))
        c.add_pool(SHARED_POOLS[i], POOL_CONDITIONS[i])
        return None
    raise ValueError(kind)


KINDS = ["models_add", "tasks_add", "append", "relabel", "index", "query", "pools_add"]
WEIGHTS = [0.14, 0.14, 0.18, 0.12, 0.12, 0.2, 0.1]


def worker(home: Path, inputs: dict[str, Any], until: float, seed: int, me: int) -> dict:
    """Operations until ``until`` (``time.time()``); a log of each."""
    import shift
    from shift.errors import ShiftError

    rng = np.random.default_rng([seed, me])
    log: list[dict[str, Any]] = []
    while time.time() < until:
        kind = str(rng.choice(KINDS, p=WEIGHTS))
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"kind": kind}
        try:
            with shift.connect(home, executor="inprocess") as c:
                entry["result"] = _op(c, kind, rng, inputs, me)
            entry["ok"] = True
        except ShiftError as e:
            entry.update(ok=False, error=type(e).__name__, message=str(e)[:300])
        except Exception as e:  # noqa: BLE001 - the benchmark counts what would be a traceback
            entry.update(ok=False, error=f"raw {type(e).__name__}", trace=traceback.format_exc())
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        log.append(entry)
    return {"worker": me, "ops": log}


# ---- checks --------------------------------------------------------------------------------------


def check_rows(home: Path, expected: dict[str, int]) -> dict[str, Any]:
    """Rows against records, seq uniqueness, chunk files, and counts against the log."""
    from shift.store.registry import Registry
    from shift.store.tasks import TaskStore

    out: dict[str, Any] = {"tasks": {}, "lost_rows": 0, "extra_rows": 0, "corrupt": []}
    with Registry.open(home) as reg:
        store = TaskStore(reg)
        for rec in reg.tasks():
            rows = reg.samples(rec.name)
            problems = []
            if len(rows) != rec.num_samples or TaskStore.hashes(rows) != (
                rec.content_hash,
                rec.data_hash,
            ):
                problems.append("record does not match its rows")
            seqs = [r["seq"] for r in rows]
            if len(set(seqs)) != len(seqs):
                problems.append(f"{len(seqs) - len(set(seqs))} duplicate seq")
            sizes: dict[str, int] = {}
            for r in rows:
                if r["chunk"] not in sizes:
                    p = store.task_dir(rec.name) / r["chunk"]
                    sizes[r["chunk"]] = (
                        len(np.load(p, mmap_mode="r", allow_pickle=False)) if p.is_file() else -1
                    )
                if sizes[r["chunk"]] <= r["offset"]:
                    problems.append(f"sample {r['sample_id']} points past or at a missing chunk")
                    break
            want = expected.get(rec.name)
            delta = 0 if want is None else want - len(rows)
            out["lost_rows"] += max(0, delta)
            out["extra_rows"] += max(0, -delta)
            out["tasks"][rec.name] = {"rows": len(rows), "expected": want, "problems": problems}
            out["corrupt"] += [f"{rec.name}: {p}" for p in problems]
        missing = sorted(set(expected) - set(reg.task_names()))
    out["tasks_lost"] = missing
    return out


RECOMPUTE = r"""
import json, sys
import shift
home, tasks = sys.argv[1], json.loads(sys.argv[2])
with shift.connect(home, executor="inprocess") as c:
    for t in tasks:
        for rank in ("", " RANK BY knn"):
            c.query(f"SELECT top 3 FROM pool all WHERE task={t}{rank}")
"""


def _query_all(home: Path, tasks: list[str]) -> str | None:
    """Both queries on every task in a fresh process; the error output if it failed."""
    r = subprocess.run(
        [sys.executable, "-c", RECOMPUTE, str(home), json.dumps(tasks)],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else r.stderr[-2000:]


def check_scores(home: Path, work: Path) -> dict[str, Any]:
    """The final scores: both queries on every task, on the home as the workers left it (its
    indexes and cached scores reused), and in a fresh process on a copy without indexes or
    cached scores (a sequential rerun from the stored images); every score of the final state
    must be equal."""
    with sqlite3.connect(f"file:{home / 'registry.db'}?mode=ro", uri=True) as db:
        names = [r[0] for r in db.execute("SELECT name FROM tasks")]
    err = _query_all(home, names)
    if err is not None:
        return {"error": f"final queries on the home failed: {err}"}
    copy = work / "recompute"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("indexes"))
    with sqlite3.connect(copy / "registry.db") as db:
        db.execute("DELETE FROM scores")
        db.execute("DELETE FROM index_entries")
        tasks = [r[0] for r in db.execute("SELECT name FROM tasks")]
    err = _query_all(copy, tasks)
    if err is not None:
        return {"error": f"the sequential rerun failed: {err}"}
    key = "SELECT task_hash, model_sha, proxy, params, score FROM scores"
    with sqlite3.connect(copy / "registry.db") as db:
        fresh = {tuple(row[:4]): row[4] for row in db.execute(key)}
    with sqlite3.connect(f"file:{home / 'registry.db'}?mode=ro", uri=True) as db:
        cached = {tuple(row[:4]): row[4] for row in db.execute(key)}
    both = set(fresh) & set(cached)
    wrong = [k for k in both if abs(fresh[k] - cached[k]) > 1e-6]
    return {
        "cached_rows": len(cached),
        "compared": len(both),
        "older_states_not_comparable": len(set(cached) - set(fresh)),
        "wrong": len(wrong),
        "wrong_examples": [[*k, cached[k], fresh[k]] for k in wrong[:5]],
    }


# ---- the run -------------------------------------------------------------------------------------


def seed_home(home: Path, inputs: dict[str, Any]) -> dict[str, int]:
    """Two models and the first shared task, so queries have work from the start (the other
    shared names are raced for by the workers). Returns the rows added per task."""
    import shift
    from shift.catalog.onnx_import import register_onnx

    with shift.connect(home, executor="inprocess") as c:
        for i in range(2):
            register_onnx(c.registry, inputs["models"][i], SHARED_MODELS[i])
        rec = c.add_task(SHARED_TASKS[0], inputs["tasks"][0], kind="npz")
    return {rec.name: rec.num_samples}


def run(workers: int, seconds: float, seed: int, work: Path) -> dict[str, Any]:
    from shift.tools.doctor import doctor

    inputs = prepare(work, seed)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    seeded = seed_home(home, inputs)
    until = time.time() + seconds + 10  # + start-up of the workers
    procs = []
    for k in range(workers):
        out = work / f"worker{k}.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_concurrency", "--worker", str(k)]
        cmd += ["--home", str(home), "--until", str(until), "--seed", str(seed)]
        cmd += ["--inputs", json.dumps(inputs), "--out", str(out)]
        procs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), out))
    logs, crashed = [], []
    for p, out in procs:
        _, err = p.communicate()
        if p.returncode != 0 or not out.is_file():
            crashed.append(err[-2000:])
        else:
            logs.append(json.loads(out.read_text()))
    ops = [e for lg in logs for e in lg["ops"]]
    expected: dict[str, int] = dict(seeded)
    for e in sorted(ops, key=lambda e: e["kind"] != "tasks_add"):  # adds first, then appends
        if e["ok"] and e.get("result"):
            expected[e["result"]["task"]] = expected.get(e["result"]["task"], 0) + int(
                e["result"]["added"]
            )
    failures = Counter(f"{e['kind']}: {e['error']}" for e in ops if not e["ok"])
    raw = [e for e in ops if not e["ok"] and e["error"].startswith("raw ")]
    rows = check_rows(home, expected)
    rep = doctor(home)
    corrupt = [f.message for f in rep.findings if f.severity == "corrupt"]
    scores = check_scores(home, work)
    return {
        "workers": workers,
        "seconds": seconds,
        "seed": seed,
        "operations": len(ops),
        "by_kind": {
            k: {
                "ok": sum(e["ok"] for e in ops if e["kind"] == k),
                "failed": sum(not e["ok"] for e in ops if e["kind"] == k),
                "median_s": float(np.median([e["seconds"] for e in ops if e["kind"] == k] or [0])),
            }
            for k in KINDS
        },
        "failures_by_kind": dict(sorted(failures.items())),
        "raw_tracebacks": len(raw),
        "raw_examples": [e["trace"][-1500:] for e in raw[:3]],
        "workers_crashed": crashed,
        "rows": rows,
        "doctor_corrupt": corrupt,
        "scores": scores,
        "targets_met": not raw
        and not crashed
        and rows["lost_rows"] == 0
        and rows["extra_rows"] == 0
        and not rows["corrupt"]
        and not rows["tasks_lost"]
        and not corrupt
        and scores.get("wrong", 1) == 0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        res = worker(args.home, json.loads(args.inputs), args.until, args.seed, args.worker)
        args.out.write_text(json.dumps(res))
        return res
    work = args.work or Path(tempfile.mkdtemp(prefix="shift-concurrency-"))
    data = run(args.workers, args.seconds, args.seed, work)
    path = write_result("concurrency", data)
    print(
        f"{data['operations']} operations by {args.workers} processes in {args.seconds:.0f} s: "
        f"{sum(data['failures_by_kind'].values())} named failures, {data['raw_tracebacks']} raw "
        f"tracebacks, {data['rows']['lost_rows']} lost / {data['rows']['extra_rows']} extra rows, "
        f"{len(data['rows']['corrupt'])} corrupt, scores {data['scores'].get('compared')} "
        f"compared / {data['scores'].get('wrong')} wrong -> {path}"
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return data


if __name__ == "__main__":
    main()
