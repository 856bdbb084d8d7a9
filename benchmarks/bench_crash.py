"""Crash safety: ``kill -9`` an indexing run at many points, then check the home and resume.

Each trial copies a prepared home (tiny real ONNX models, one generated task), starts a child
process that opens it and runs ``Engine(executor="inprocess").index(...)``, and kills it with
SIGKILL: either after a random delay (drawn with a fixed seed, stratified over the duration of an
uninterrupted run, so the kills spread over embedding, index writing and registry updates), or at
an exact fault point (after a batch file is written but before its marker, between the renames
of an index commit, inside the registry transaction that records an index). After each kill:

* the registry opens and has lost no row (models, tasks, samples);
* ``shift doctor`` finds no corruption, only resumable leftovers;
* every complete index loads (sha256-verified), matches its metadata and holds exactly the
  vectors of an uninterrupted run;
* a rerun completes and embeds exactly the batches that were not stored yet
  (``executor.inference_calls`` = full − stored batches − batches of finished indexes);
* after the rerun, every index is current and ``shift doctor --repair`` leaves a clean home.

    python -m benchmarks.bench_crash [--kills 24] [--images 2500] [--models 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

TASK = "blobs"

# The indexing run, in a child process. Phase markers go to stdout (flushed) so the parent knows
# where the kill landed; FAULT=<point>:<n> makes the child SIGKILL itself at an exact point.
CHILD = r"""
import os, signal, sys, time
home, batch, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import hnswlib, onnxruntime  # imported before "start": the timed run is the indexing itself
import shift.store.index.writer as ist
from shift.engine.engine import Engine
from shift.store.registry import Registry

def mark(phase):
    sys.stdout.write(f"{phase} {time.monotonic():.6f}\n")
    sys.stdout.flush()

point, _, nth = fault.partition(":")
nth = int(nth or 0)
calls = {"npy": 0, "replace": 0, "entry": 0}
phase = ["start"]

def die(at):
    if point == at:
        calls[at] += 1
        if calls[at] == nth:
            mark("fault-" + at)
            os.kill(os.getpid(), signal.SIGKILL)

real_part = ist.write_part
def write_part(path, data):  # a batch's data file: the kill leaves it without its marker
    real_part(path, data)
    die("npy")
ist.write_part = write_part

real_add = ist.IndexWriter.add_batch
def add_batch(self, *a, **k):
    real_add(self, *a, **k)
    mark("batch")
ist.IndexWriter.add_batch = add_batch

real_finalize = ist.IndexWriter.finalize
def finalize(self, *a, **k):
    mark("finalize")
    phase[0] = "finalize"
    return real_finalize(self, *a, **k)
ist.IndexWriter.finalize = finalize

real_replace = os.replace
def replace(src, dst, *a, **k):  # renames of an index commit (temp -> final name)
    if phase[0] == "finalize":
        die("replace")
    return real_replace(src, dst, *a, **k)
os.replace = replace

real_entry = Registry.put_index_entry
def put_index_entry(self, row):
    mark("entry")
    phase[0] = "entry"
    if point == "entry" and calls["entry"] + 1 == nth:  # die mid-transaction, before COMMIT
        self.db.conn.execute("BEGIN IMMEDIATE")
        self.db.conn.execute(
            "INSERT OR REPLACE INTO index_entries (task, model, key_digest, count) "
            "VALUES (?, ?, 'torn', -1)", [row["task"], row["model"]]
        )
    die("entry")
    return real_entry(self, row)
Registry.put_index_entry = put_index_entry

reg = Registry.open(home)
eng = Engine(reg, executor="inprocess", batch_size=batch)
models = reg.models()
mark("start")
eng.index(sys.argv[4], models)
mark("done")
"""

PHASES = {
    "start": "embedding",
    "batch": "embedding",
    "fault-npy": "embedding",
    "finalize": "index writing",
    "fault-replace": "index writing",
    "entry": "registry update",
    "fault-entry": "registry update",
    "done": "finished",
}


# ---- the prepared home -------------------------------------------------------------------------


def make_template(root: Path, *, images: int, size: int, models: int) -> Path:
    """A home with ``models`` tiny models and the task ``blobs`` of ``images`` images."""
    from benchmarks.workloads import blob_task, tiny_cnn
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.registry import Registry
    from shift.store.tasks import TaskStore

    home = root / "template"
    src = root / "onnx"
    src.mkdir(parents=True, exist_ok=True)
    with Registry.open(home) as reg:
        for i in range(models):
            f = tiny_cnn(src / f"m{i}.onnx", size=size, seed=i, classes=10)
            register_onnx(reg, f, f"m{i}")
        x, y = blob_task(images, size=size)
        TaskStore(reg).add(TASK, Samples(x, y, None, [], []), kind="generated", source="blob_task")
    return home


def _snapshot(home: Path) -> dict[str, Any]:
    from shift.store.registry import Registry

    with Registry.open(home) as reg:
        return {
            "models": reg.model_names(),
            "tasks": reg.task_names(),
            "samples": len(reg.samples(TASK)),
            "model_shas": sorted(m.sha256 for m in reg.models()),
        }


# ---- one run -----------------------------------------------------------------------------------


def _run_child(
    home: Path, batch: int, *, fault: str = "none", kill_after: float | None = None
) -> dict[str, Any]:
    """Run the child; kill it ``kill_after`` s after it starts indexing (or let it run / let it
    hit its fault point). Returns markers, the phase it died in, and timings."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(batch), fault, TASK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    first = proc.stdout.readline()  # "start <t>" once the child is ready to index
    lines.append(first)
    t_start = time.monotonic()
    killed_at = None
    if kill_after is not None and first.startswith("start"):
        time.sleep(max(0.0, kill_after - (time.monotonic() - t_start)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic() - t_start
    rest, err = proc.communicate(timeout=120)
    lines += rest.splitlines()
    marks = [ln.split()[0] for ln in lines if ln.strip()]
    times = [float(ln.split()[1]) for ln in lines if ln.strip()]
    if not marks or marks[0] != "start":
        raise RuntimeError(f"the indexing child failed to start: {err[-2000:]}")
    died = proc.returncode == -signal.SIGKILL
    if not died and proc.returncode != 0:
        raise RuntimeError(f"the indexing child failed (rc {proc.returncode}): {err[-2000:]}")
    return {
        "marks": marks,
        "died": died,
        "phase": PHASES[marks[-1]] if died else "finished",
        "last_mark": marks[-1],
        "killed_at_s": killed_at,
        "batches_before_kill": marks.count("batch"),
        "duration_s": times[-1] - times[0] if marks[-1] == "done" else None,
        "timeline": {m: t - times[0] for m, t in reversed(list(zip(marks, times, strict=True)))},
    }


# ---- checks ------------------------------------------------------------------------------------


def _stored_batches(parts: Path) -> int:
    """Batches of an unfinished build that a rerun can reuse (marker + data file with its
    sha256)."""
    n = 0
    for marker in parts.glob("b-*.json"):
        try:
            rec = json.loads(marker.read_text())
            data = (parts / f"{marker.stem}.npy").read_bytes()
            ok = hashlib.sha256(data).hexdigest() == rec["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        n += ok
    return n


def _state(home: Path, reference: dict[str, tuple[list[str], np.ndarray]] | None) -> dict[str, Any]:
    """Per model: is a complete current index there (verified; vectors as in the reference
    run), and how many batches of an unfinished build are stored."""
    from shift.store.index.meta import IndexKey
    from shift.store.index.store import IndexStore
    from shift.store.registry import Registry

    out: dict[str, Any] = {}
    with Registry.open(home) as reg:
        rec = reg.get_task(TASK)
        ids = [r["sample_id"] for r in reg.samples(TASK)]
        for m in reg.models():
            key = IndexKey(task_hash=rec.data_hash, model_sha=m.sha256, preprocess=m.input.key())
            store = IndexStore(reg.home.index_path(TASK, m.name))
            meta = store.read_meta()
            complete = bool(meta and meta.complete)
            if complete:
                assert meta is not None
                idx = store.open(meta.key)  # its own key; raises IndexCorruptError if damaged
                assert idx is not None, f"{m.name}: complete index does not open"
                assert meta.key == key, f"{m.name}: complete index for another key"
                assert len(idx) == meta.count == len(ids) and set(idx.sample_ids) == set(ids)
                assert idx.dim == meta.dim == m.dim
                if reference is not None:
                    ref_ids, ref_vecs = reference[m.name]
                    got = np.asarray(idx.vectors)[idx.rows(ref_ids)]
                    assert np.allclose(got, ref_vecs, atol=1e-5), (
                        f"{m.name}: vectors differ from an uninterrupted run"
                    )
            parts = store.root / f"parts-{key.digest()}"
            out[m.name] = {
                "complete": complete,
                "stored": 0 if complete or not parts.is_dir() else _stored_batches(parts),
            }
    return out


def _vectors(home: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    from shift.store.index.store import IndexStore
    from shift.store.registry import Registry

    with Registry.open(home) as reg:
        out = {}
        for m in reg.model_names():
            store = IndexStore(reg.home.index_path(TASK, m))
            meta = store.read_meta()
            assert meta is not None and meta.complete
            idx = store.open(meta.key)
            assert idx is not None
            out[m] = (list(idx.sample_ids), np.array(idx.vectors))
        return out


def _rerun(home: Path, batch: int) -> tuple[int, float]:
    from shift.engine.engine import Engine
    from shift.store.registry import Registry

    with Registry.open(home) as reg:
        eng = Engine(reg, executor="inprocess", batch_size=batch)
        t = time.perf_counter()
        eng.index(TASK, reg.models())
        secs = time.perf_counter() - t
        assert eng.last_report is not None and not eng.last_report.failed, eng.last_report
        return eng.executor.inference_calls, secs


def trial(
    template: Path,
    home: Path,
    *,
    batch: int,
    n_batches: int,
    snapshot: dict[str, Any],
    reference: dict[str, tuple[list[str], np.ndarray]],
    kill_after: float | None = None,
    fault: str = "none",
) -> dict[str, Any]:
    """One kill and everything checked after it; raises AssertionError on a failed check."""
    from shift.tools.doctor import doctor

    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(template, home)
    run = _run_child(home, batch, fault=fault, kill_after=kill_after)
    # 1. the registry opens and lost nothing
    assert _snapshot(home) == snapshot, "registry rows changed"
    # 2. doctor: no corruption, only resumable leftovers
    rep = doctor(home)
    bad = [f for f in rep.findings if f.severity not in ("leftover", "resumable")]
    assert not bad, f"doctor after the kill: {bad}"
    # 3. every complete index loads, matches its metadata and the reference vectors
    state = _state(home, reference)
    complete = [m for m, s in state.items() if s["complete"]]
    stored = sum(s["stored"] for s in state.values())
    # 4. the rerun embeds exactly what is missing
    expected = sum(0 if s["complete"] else n_batches - s["stored"] for s in state.values())
    calls, rerun_s = _rerun(home, batch)
    assert calls == expected, f"rerun embedded {calls} batches, expected {expected}"
    after = _state(home, reference)
    assert all(s["complete"] for s in after.values()), "rerun left an index incomplete"
    post = doctor(home)
    assert not post.corrupt and all(f.severity == "leftover" for f in post.findings), post.findings
    repaired = doctor(home, repair=True, grace_s=0)
    assert repaired.ok, repaired.problems
    clean = doctor(home)
    assert clean.ok and not clean.findings, clean.findings
    shutil.rmtree(home, ignore_errors=True)
    return {
        "fault": fault,
        "kill_after_s": None if kill_after is None else round(kill_after, 4),
        "phase": run["phase"],
        "last_mark": run["last_mark"],
        "died": run["died"],
        "complete_indexes_at_kill": len(complete),
        "stored_batches_at_kill": stored,
        "doctor_after_kill": rep.counts(),
        "rerun_batches": calls,
        "full_batches": n_batches * len(state),
        "rerun_s": round(rerun_s, 3),
        "leftovers_repaired_after_rerun": repaired.counts()["repaired"],
    }


# ---- the benchmark -----------------------------------------------------------------------------


def run_crash(
    root: Path,
    *,
    images: int,
    size: int,
    models: int,
    batch: int,
    kills: int,
    seed: int,
    faults: list[str],
    span: tuple[float, float] = (0.0, 1.0),
    references: int = 3,
    log: Any = print,
) -> dict[str, Any]:
    """Prepare a home under ``root``, time an uninterrupted run, then kill ``kills`` runs at
    random points within ``span`` (fractions of that run) and one at each fault point."""
    template = make_template(root, images=images, size=size, models=models)
    snapshot = _snapshot(template)
    n_batches = -(-images // batch)
    # reference: uninterrupted runs (the fastest one's duration spreads the kills: on a busy
    # machine a slow reference would put the last kills after the end of a faster run; the
    # vectors are the truth the killed runs are compared with)
    runs = []
    for i in range(references):
        ref_home = root / f"reference{i}"
        shutil.copytree(template, ref_home)
        runs.append(_run_child(ref_home, batch))
        assert not runs[-1]["died"] and runs[-1]["duration_s"]
    ref = min(runs, key=lambda r: r["duration_s"])
    durations = ", ".join(f"{r['duration_s']:.2f}" for r in runs)
    duration = float(ref["duration_s"])
    reference = _vectors(ref_home)
    tl = ref["timeline"]
    log(
        f"uninterrupted run: {duration:.2f} s (fastest of {len(runs)}: {durations}; "
        f"{models} models x {n_batches} "
        f"batches of {batch}, "
        f"{images} images at {size} px); index writing from {tl.get('finalize', 0):.2f} s, "
        f"last registry update at {tl.get('entry', 0):.2f} s"
    )
    rng = np.random.default_rng(seed)
    # stratified: one kill in each of `kills` equal slices of the run, at a random offset
    lo, hi = span
    delays = [(lo + (k + rng.random()) / kills * (hi - lo)) * duration for k in range(kills)]
    plan = [("none", d) for d in delays] + [(f, None) for f in faults]
    results = []
    t0 = time.perf_counter()
    for i, (fault, delay) in enumerate(plan):
        r = trial(
            template,
            root / "trial",
            batch=batch,
            n_batches=n_batches,
            snapshot=snapshot,
            reference=reference,
            kill_after=delay,
            fault=fault,
        )
        results.append(r)
        what = f"kill at {delay:.3f} s" if delay is not None else f"fault {fault}"
        log(
            f"  {i + 1:2d}. {what:<22} {r['phase']:<16} stored {r['stored_batches_at_kill']:3d} "
            f"batches, {r['complete_indexes_at_kill']} complete; rerun embedded "
            f"{r['rerun_batches']:3d}/{r['full_batches']}; doctor: "
            + ", ".join(f"{v} {k}" for k, v in r["doctor_after_kill"].items() if v)
        )
    killed = [r for r in results if r["died"]]
    saved = [1 - r["rerun_batches"] / r["full_batches"] for r in killed if r["full_batches"] > 0]
    summary = {
        "kill_points": len(results),
        "random_kills": len(delays),
        "fault_points": faults,
        "killed": len(killed),
        "survived": len(results),  # a trial that fails a check raises
        "phases": dict(Counter(r["phase"] for r in results)),
        "phases_random": dict(Counter(r["phase"] for r in results if r["fault"] == "none")),
        "phases_fault": dict(Counter(r["phase"] for r in results if r["fault"] != "none")),
        "corrupt_findings": sum(r["doctor_after_kill"]["corrupt"] for r in results),
        "leftover_findings": sum(r["doctor_after_kill"]["leftover"] for r in results),
        "resumable_findings": sum(r["doctor_after_kill"]["resumable"] for r in results),
        "batches_recomputed": sum(r["rerun_batches"] for r in killed),
        "batches_reused": sum(r["full_batches"] - r["rerun_batches"] for r in killed),
        "mean_work_saved_by_resume": float(np.mean(saved)) if saved else 0.0,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return {
        "workload": {
            "images": images,
            "size_px": size,
            "models": models,
            "batch": batch,
            "batches_per_model": n_batches,
            "seed": seed,
            "uninterrupted_s": round(duration, 3),
            "uninterrupted_runs_s": [round(r["duration_s"], 3) for r in runs],
            "timeline_s": {k: round(v, 3) for k, v in tl.items()},
        },
        "summary": summary,
        "trials": results,
    }


DEFAULT_FAULTS = ["npy:5", "npy:90", "replace:3", "replace:9", "replace:14", "entry:1", "entry:3"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.common import write_result

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=24, help="random kill points")
    ap.add_argument("--images", type=int, default=2500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-faults", action="store_true", help="random kills only")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="shift-crash-"))
    try:
        res = run_crash(
            root,
            images=args.images,
            size=args.size,
            models=args.models,
            batch=args.batch,
            kills=args.kills,
            seed=args.seed,
            faults=[] if args.no_faults else DEFAULT_FAULTS,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    s = res["summary"]
    print(
        f"{s['survived']}/{s['kill_points']} kill points survived ({s['random_kills']} random, "
        f"{len(s['fault_points'])} exact fault points): random kills landed in "
        f"{s['phases_random']}, fault points in {s['phases_fault']}; doctor found "
        f"{s['corrupt_findings']} corrupt, {s['leftover_findings']} leftover and "
        f"{s['resumable_findings']} resumable findings; reruns reused {s['batches_reused']} "
        f"stored batches and embedded {s['batches_recomputed']} "
        f"(mean work saved {s['mean_work_saved_by_resume']:.0%}), {s['seconds']} s in all"
    )
    path = write_result("crash", res)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
