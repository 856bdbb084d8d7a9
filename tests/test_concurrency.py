"""Writers racing on one home, in real processes released together by a barrier round after
round: registering one name (tasks, models, pools), appends against relabels, and queries while
the task changes. Real SQLite, real chunk files, real ONNX models and indexes."""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shift.errors import AlreadyExistsError, ShiftError
from shift.fsutil import sha256_file
from shift.records import ModelRecord, Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore, sample_hash

CTX = mp.get_context(
    "fork"
)  # children start at once; the parent holds no connection while they run
ROUNDS = 12


def toy(seed: int, n: int = 40, size: int = 8) -> Samples:
    """``n`` random images (two alternating classes), distinct for distinct seeds."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return Samples(x, np.arange(n) % 2, None, ["a", "b"], [])


def race(tmp_path: Path, target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*a, barrier, out)`` for each ``a`` in its own process; their JSON outputs."""
    barrier = CTX.Barrier(len(args))
    outs = [tmp_path / f"out-{i}.json" for i in range(len(args))]
    procs = [
        CTX.Process(target=target, args=(*a, barrier, str(o)))
        for a, o in zip(args, outs, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():  # hung: ours to stop
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs), "a worker crashed or hung"
    return [json.loads(o.read_text()) for o in outs]


def outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except AlreadyExistsError:
        return "exists"
    except Exception as e:  # recorded: the test names it
        return f"error {type(e).__name__}: {e}"
    return "ok"


# ---- one name, several writers ---------------------------------------------------------------


def _add_tasks(home: str, me: int, barrier: Any, out: str) -> None:
    got = []
    with Registry.open(home) as reg:
        ts = TaskStore(reg)
        for r in range(ROUNDS):
            s = toy(seed=100 * r + me)
            barrier.wait(60)
            got.append(outcome(lambda: ts.add(f"t{r}", s, kind="npz", source=f"w{me}")))  # noqa: B023
    Path(out).write_text(json.dumps(got))


def test_concurrent_tasks_add_one_wins_nothing_lost(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry.open(home).close()
    got = race(tmp_path, _add_tasks, [(str(home), i) for i in range(4)])
    with Registry.open(home) as reg:
        ts = TaskStore(reg)
        for r in range(ROUNDS):
            outcomes = sorted(g[r] for g in got)
            assert outcomes == ["exists", "exists", "exists", "ok"], (r, outcomes)
            winner = [g[r] for g in got].index("ok")
            rec = reg.get_task(f"t{r}")
            assert rec.source == f"w{winner}"
            want = toy(seed=100 * r + winner)
            rows = reg.samples(f"t{r}")
            assert ts.load(f"t{r}", rows).tolist() == want.images.tolist()  # every chunk there
            assert TaskStore.hashes(rows) == (rec.content_hash, rec.data_hash)


def _add_models_and_pools(home: str, onnx: str, me: int, barrier: Any, out: str) -> None:
    from shift.catalog.onnx_import import register_onnx

    got = []
    with Registry.open(home) as reg:
        for r in range(ROUNDS):
            barrier.wait(60)
            m = outcome(lambda: register_onnx(reg, onnx, f"m{r}", source=f"w{me}"))  # noqa: B023
            p = outcome(lambda: reg.add_pool(f"p{r}", f"dim > {me}"))  # noqa: B023
            got.append([m, p])
    Path(out).write_text(json.dumps(got))


def test_concurrent_models_and_pools_add_one_wins(
    tmp_path: Path, tiny_models: dict[str, ModelRecord]
) -> None:
    import onnx

    files = []
    for i in range(3):  # the same graph, three files (three sha256s)
        proto = onnx.load(tiny_models["tiny-a"].path)
        proto.doc_string = f"variant {i}"
        files.append(tmp_path / f"v{i}.onnx")
        onnx.save(proto, str(files[-1]))
    home = tmp_path / "home"
    Registry.open(home).close()
    got = race(
        tmp_path, _add_models_and_pools, [(str(home), str(f), i) for i, f in enumerate(files)]
    )
    with Registry.open(home) as reg:
        for r in range(ROUNDS):
            for kind in (0, 1):
                outcomes = sorted(g[r][kind] for g in got)
                assert outcomes == ["exists", "exists", "ok"], (r, kind, outcomes)
            m_winner = [g[r][0] for g in got].index("ok")
            rec = reg.get_model(f"m{r}")
            assert rec.source == f"w{m_winner}"
            assert sha256_file(reg.model_file(rec)) == rec.sha256 == sha256_file(files[m_winner])
            p_winner = [g[r][1] for g in got].index("ok")
            assert reg.get_pool(f"p{r}").filter == f"dim > {p_winner}"
        used = {reg.model_file(m).name for m in reg.models()}
        assert {f.name for f in reg.home.models_dir.iterdir()} == used  # losers left no file


# ---- appends against relabels ----------------------------------------------------------------


def _append_or_relabel(home: str, me: int, barrier: Any, out: str) -> None:
    got = []
    with Registry.open(home) as reg:
        ts = TaskStore(reg)
        for r in range(ROUNDS):
            more = toy(seed=1000 + 100 * r + me, n=8)
            barrier.wait(60)
            if me < 2:
                got.append(outcome(lambda: ts.append("t", more)))  # noqa: B023
            else:  # relabel with as many labels as it sees: an append may beat it (named error)
                n = len(reg.samples("t"))
                got.append(outcome(lambda: ts.relabel("t", (np.arange(n) + r) % 2)))  # noqa: B023
    Path(out).write_text(json.dumps(got))


def test_appends_and_relabels_are_serialised(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        TaskStore(reg).add("t", toy(seed=7), kind="npz", source="gen")
    got = race(tmp_path, _append_or_relabel, [(str(home), i) for i in range(3)])
    for g in got:
        for o in g:  # a relabel that lost its race to an append says so by name
            assert o == "ok" or ("TaskDataError" in o and "labels were given" in o), o
    appended = sum(o == "ok" for g in got[:2] for o in g)
    with Registry.open(home) as reg:
        rec, rows = reg.get_task("t"), reg.samples("t")
        assert len(rows) == rec.num_samples == 40 + 8 * appended  # no append lost
        assert [r["seq"] for r in rows] == list(range(len(rows)))  # no duplicate seq
        assert TaskStore.hashes(rows) == (rec.content_hash, rec.data_hash)
        images = TaskStore(reg).load("t", rows)
        assert [sample_hash(x) for x in images] == [r["content_hash"] for r in rows]
        expected = {sample_hash(x) for x in toy(seed=7).images}
        for me in range(2):
            for r in range(ROUNDS):
                if got[me][r] == "ok":
                    expected |= {sample_hash(x) for x in toy(1000 + 100 * r + me, 8).images}
        assert {r["content_hash"] for r in rows} == expected


# ---- queries while the task changes ----------------------------------------------------------


def _mutate_or_query(home: str, role: str, barrier: Any, out: str) -> None:
    from shift.engine.engine import Engine

    errors, states = [], {}
    with Registry.open(home) as reg:
        ts, eng = TaskStore(reg), Engine(reg, executor="inprocess", batch_size=8)
        models = reg.models()
        for r in range(ROUNDS):
            more = toy(seed=5000 + r, n=6, size=32)
            barrier.wait(60)
            try:
                if role == "query":
                    eng.scores("t", models, "knn")
                    continue
                with reg.transaction():  # the state this write made, read before anyone else's
                    if role == "append":
                        ts.append("t", more)
                    else:
                        n = len(reg.samples("t"))
                        ts.relabel("t", (np.arange(n) // (1 + r % 3)) % 2)
                    rec, rows = reg.get_task("t"), reg.samples("t")
                states[rec.content_hash] = [[s["sample_id"], s["label"], s["split"]] for s in rows]
            except ShiftError as e:
                errors.append(f"{type(e).__name__}: {e}")
            except Exception as e:
                errors.append(f"raw {type(e).__name__}: {e}")
    Path(out).write_text(json.dumps({"errors": errors, "states": states}))


def test_queries_during_appends_and_relabels_score_one_state(
    tmp_path: Path, tiny_models: dict[str, ModelRecord]
) -> None:
    from shift.engine.engine import Engine
    from shift.scoring.proxies import get_proxy

    home = tmp_path / "home"
    with Registry.open(home) as reg:
        for name in ("tiny-a", "tiny-b"):
            reg.add_model(tiny_models[name])
        rec = TaskStore(reg).add("t", toy(seed=3, n=40, size=32), kind="npz", source="gen")
        first = [[s["sample_id"], s["label"], s["split"]] for s in reg.samples("t")]
    got = race(tmp_path, _mutate_or_query, [(str(home), r) for r in ("query", "append", "relabel")])
    query, append, relabel = got
    assert query["errors"] == []  # never "sample ... is not in the index"
    assert append["errors"] == []
    for e in relabel["errors"]:  # only the named error of a relabel that an append beat
        assert e.startswith("TaskDataError") and "labels were given" in e, e
    states = {rec.content_hash: first, **append["states"], **relabel["states"]}
    spec = get_proxy("knn")
    with Registry.open(home) as reg:
        models = {m.sha256: m for m in reg.models()}
        indexes = Engine(reg, executor="inprocess").index("t", list(models.values()))
        cached = list(reg.db.query("SELECT * FROM scores WHERE proxy = 'knn'"))
    assert len(cached) >= 4
    for row in cached:  # every cached score is the score of the state its hash names
        state = states[row["task_hash"]]
        idx = indexes[models[row["model_sha"][:64]].name]  # the weights' sha256 first
        tr = [(s, y) for s, y, split in state if split == "train"]
        va = [(s, y) for s, y, split in state if split == "val"]
        xtr, xva = idx.select([s for s, _ in tr])[0], idx.select([s for s, _ in va])[0]
        problem = (xtr, np.array([y for _, y in tr]), xva, np.array([y for _, y in va]))
        assert row["score"] == pytest.approx(spec.score_many([problem])[0]), row
        assert (row["n_train"], row["n_val"]) == (len(tr), len(va))
