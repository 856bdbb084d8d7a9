"""Reliability: kill -9 during indexing, ``shift doctor`` and its repairs, model file integrity,
and several processes querying and indexing one home at once."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn
from rich.console import Console
from typer.testing import CliRunner

import shift
import shift.cli
from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.index.lock import build_lock
from shift.store.index.meta import IndexKey
from shift.store.index.store import IndexStore
from shift.store.registry import Registry
from shift.store.tasks import TaskStore
from shift.tools.doctor import doctor, print_report

ROOT = Path(__file__).resolve().parent.parent
N = 200  # 4 batches of 64
BATCHES = 4
KNN = "SELECT top 2 FROM pool all WHERE task=toy RANK BY knn"


def toy_samples(n: int = N, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("rel_models")
    paths = [d / f"m{i}.onnx" for i in range(5)]
    for i, p in enumerate(paths):
        build_tiny_cnn(p, seed=i, classes=10 if i % 2 == 0 else None)
    return paths


def make_home(home: Path, files: list[Path], n_models: int = 3) -> Path:
    with Registry.open(home) as reg:
        for i in range(n_models):
            register_onnx(reg, files[i], f"tiny{i}", imagenet_top1=50 + i, imagenet_source="t")
        TaskStore(reg).add("toy", toy_samples(), kind="npz", source="gen")
    return home


def indexed_home(home: Path, files: list[Path], n_models: int = 3) -> Path:
    make_home(home, files, n_models)
    with shift.connect(home, executor="inprocess") as c:
        c.query(KNN)
    return home


def index_store(home: Path, task: str, model: str) -> tuple[IndexStore, IndexKey]:
    with Registry.open(home) as reg:
        rec, m = reg.get_task(task), reg.get_model(model)
        key = IndexKey(task_hash=rec.data_hash, model_sha=m.sha256, preprocess=m.input.key())
        return IndexStore(reg.home.index_path(task, model)), key


def severities(rep: Any) -> list[tuple[str, str]]:
    return sorted((f.severity, f.check) for f in rep.findings)


# ---- kill -9 (a small variant of benchmarks/bench_crash.py) -------------------------------


def test_kill_9_during_indexing_three_points(tmp_path: Path) -> None:
    """The crash benchmark's own harness (benchmarks/bench_crash.py: a child process killed at a
    random point and at two exact fault points, then reopened, checked and re-run), at a small
    scale: this test is about that study, so it imports it rather than a copy."""
    from benchmarks.bench_crash import run_crash

    res = run_crash(
        tmp_path,
        images=320,
        size=32,
        models=2,
        batch=64,
        kills=1,  # one random point (while embedding), plus two exact fault points
        seed=0,
        span=(0.1, 0.4),
        references=1,
        faults=["replace:3", "entry:1"],
        log=lambda *_: None,
    )
    s = res["summary"]
    assert s["kill_points"] == s["survived"] == s["killed"] == 3
    assert s["corrupt_findings"] == 0
    assert {"index writing", "registry update"} <= set(s["phases"])
    by_fault = {t["fault"]: t for t in res["trials"]}
    # killed mid-commit: every batch was stored, nothing is embedded again
    assert by_fault["replace:3"]["stored_batches_at_kill"] == 2 * 5
    assert by_fault["replace:3"]["rerun_batches"] == 0
    # killed inside the registry transaction: both indexes complete, the entry is rewritten
    assert by_fault["entry:1"]["complete_indexes_at_kill"] == 2
    assert by_fault["entry:1"]["rerun_batches"] == 0


# ---- doctor -------------------------------------------------------------------------------


def test_doctor_clean_home(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = indexed_home(tmp_path / "home", onnx_files)
    rep = doctor(home)
    assert rep.ok and rep.findings == []
    assert rep.checked["models"] == 3 and rep.checked["indexes"] == 3
    assert rep.checked["tasks"] == 1 and rep.checked["chunks"] == 1


def test_doctor_finds_and_repairs_leftovers(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = indexed_home(tmp_path / "home", onnx_files, n_models=3)
    with Registry.open(home) as reg:
        reg.remove_model("tiny2")  # its index directory stays behind
        rows_before = (reg.model_names(), reg.task_names(), len(reg.samples("toy")))
        models_dir, idx_dir = reg.home.models_dir, reg.home.index_dir
    store, key = index_store(home, "toy", "tiny0")
    (store.root / ".vectors.npy.tmp-0123456789ab").write_bytes(b"half")
    finished = store.root / f"parts-{key.digest()}"  # parts of a build that was finished
    finished.mkdir()
    (finished / "b-0.json").write_text("{}")
    (store.root / "parts-0000000000000000").mkdir()  # an abandoned build
    (idx_dir / "gone" / "tiny0").mkdir(parents=True)  # index of a removed task
    (models_dir / ".x.onnx.abc.tmp").write_bytes(b"partial copy")
    unused = models_dir / f"{'ab' * 32}.onnx"  # a model file by name that no model uses
    shutil.copy(onnx_files[4], unused)

    rep = doctor(home)
    assert not rep.ok and not rep.corrupt
    kinds = severities(rep)
    assert kinds.count(("leftover", "index")) == 3  # temp file + 2 parts dirs
    assert ("orphan", "index") in kinds  # tiny2's index dir and the 'gone' task: 2
    assert kinds.count(("orphan", "index")) == 2
    assert ("leftover", "model_file") in kinds and ("orphan", "model_file") in kinds

    # young files outside index dirs are left alone by default (may be an add in progress)
    rep = doctor(home, repair=True)
    assert unused.exists()
    assert not rep.ok and all(f.check == "model_file" for f in rep.problems)
    rep = doctor(home, repair=True, grace_s=0)
    assert rep.ok, rep.problems
    assert not unused.exists()
    assert not (idx_dir / "toy" / "tiny2").exists() and not (idx_dir / "gone").exists()
    after = doctor(home)
    assert after.ok and after.findings == []
    # nothing registered was touched, every index still loads
    with Registry.open(home) as reg:
        assert (reg.model_names(), reg.task_names(), len(reg.samples("toy"))) == rows_before
        for m in reg.models():
            assert reg.model_file(m).is_file()
    assert store.open(key) is not None


def test_doctor_corrupt_index_is_rebuilt(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = indexed_home(tmp_path / "home", onnx_files, n_models=2)
    store, key = index_store(home, "toy", "tiny1")
    vec = store.root / "vectors.npy"
    data = bytearray(vec.read_bytes())
    data[-5] ^= 0xFF
    vec.write_bytes(bytes(data))
    rep = doctor(home)
    assert [(f.severity, Path(f.path or "").name) for f in rep.findings] == [
        ("corrupt", "vectors.npy")
    ]
    assert "tiny1" in rep.findings[0].message and "sha256" in rep.findings[0].message
    rep = doctor(home, repair=True)
    assert rep.ok and rep.findings[0].repaired
    assert not vec.exists() and (store.root / ".build.lock").exists()
    # the next query rebuilds exactly that index
    with shift.connect(home, executor="inprocess") as c:
        c.query(KNN)
        assert c.engine.executor.inference_calls == 0  # the scores are cached
        c.engine.index("toy", c.registry.models())
        assert c.engine.executor.inference_calls == BATCHES
        assert c.engine.last_report.embedded == {"tiny1": N}
    assert doctor(home).findings == []


def test_doctor_registry_entries_and_task_data(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = indexed_home(tmp_path / "home", onnx_files, n_models=2)
    with Registry.open(home) as reg:
        with reg.transaction():
            reg.db.execute("DELETE FROM index_entries WHERE model = 'tiny0'")
            reg.db.execute("UPDATE index_entries SET count = 3 WHERE model = 'tiny1'")
        chunk = reg.home.tasks_dir / "toy" / reg.samples("toy")[0]["chunk"]
    rep = doctor(home)
    assert severities(rep) == [("resumable", "index_entry")] * 2
    assert rep.ok  # resumable: not a problem
    # the engine rewrites them on its next index run ...
    with shift.connect(home, executor="inprocess") as c:
        c.engine.index("toy", c.registry.models())
        assert c.engine.executor.inference_calls == 0
        assert {m: e["count"] for m, e in c.registry.index_entries("toy").items()} == {
            "tiny0": N,
            "tiny1": N,
        }
    assert doctor(home).findings == []
    # ... and --repair does too
    with Registry.open(home) as reg, reg.transaction():
        reg.db.execute("DELETE FROM index_entries")
    rep = doctor(home, repair=True)
    assert all(f.repaired for f in rep.findings) and len(rep.findings) == 2
    assert doctor(home).findings == []
    # task data: a modified chunk and a missing one are corruption, never repaired away
    arr = np.load(chunk)
    arr[0, 0, 0, 0] ^= 1
    np.save(chunk, arr)
    rep = doctor(home, repair=True, grace_s=0)
    assert [(f.severity, f.check) for f in rep.problems] == [("corrupt", "task_data")]
    assert "modified" in rep.problems[0].message and chunk.exists()
    chunk.unlink()
    rep = doctor(home)
    assert "missing" in rep.problems[0].message


def test_doctor_unreadable_registry(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = make_home(tmp_path / "home", onnx_files, n_models=1)
    db = home / "registry.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    rep = doctor(home)
    assert [(f.severity, f.check) for f in rep.findings] == [("corrupt", "registry")]
    with pytest.raises(shift.errors.NotAHomeError, match="no shift home"):
        doctor(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_doctor_cli(
    tmp_path: Path, onnx_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shift.cli.base, "out", Console(width=250))
    home = indexed_home(tmp_path / "home", onnx_files, n_models=1)
    runner = CliRunner()
    r = runner.invoke(shift.cli.app, ["doctor", "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "0 corrupt" in r.output and "ok" in r.output
    store, _ = index_store(home, "toy", "tiny0")
    (store.root / ".labels.npy.tmp-aaaaaaaaaaaa").write_bytes(b"")
    r = runner.invoke(shift.cli.app, ["doctor", "--home", str(home), "--json"])
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert [f["severity"] for f in data["findings"]] == ["leftover"]
    r = runner.invoke(shift.cli.app, ["doctor", "--home", str(home), "--repair"])
    assert r.exit_code == 0 and "1 repaired" in r.output, r.output
    # a tampered model file: exit 1 naming the model, and --repair leaves the file alone
    with Registry.open(home) as reg:
        mfile = reg.model_file(reg.get_model("tiny0"))
    mfile.write_bytes(mfile.read_bytes() + b"\0")
    r = runner.invoke(shift.cli.app, ["doctor", "--home", str(home), "--repair"])
    assert r.exit_code == 1 and "tiny0" in r.output and "sha256" in r.output
    assert mfile.exists()
    rep = doctor(home)
    console = Console(width=250, record=True)
    print_report(rep, console)
    assert "corrupt" in console.export_text()


# ---- model file integrity -----------------------------------------------------------------


def test_tampered_model_file_is_refused_by_name(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = make_home(tmp_path / "home", onnx_files, n_models=3)
    with Registry.open(home) as reg:
        path = reg.model_file(reg.get_model("tiny1"))
    # same size, other weights: a model that still loads and runs, but is not the one registered
    other = onnx_files[3].read_bytes()
    assert len(other) == path.stat().st_size
    path.chmod(0o644)
    path.write_bytes(other)
    with shift.connect(home, executor="inprocess") as c:
        res = c.query("SELECT top 3 FROM pool all WHERE task=toy RANK BY knn")
        rep = c.engine.last_report
        assert set(rep.failed) == {"tiny1"}
        assert "'tiny1'" in rep.failed["tiny1"] and "sha256" in rep.failed["tiny1"]
        assert set(rep.embedded) == {"tiny0", "tiny2"}
        assert c.engine.executor.inference_calls == 2 * BATCHES  # tiny1 never ran
        assert "tiny1" not in res.scores and res.failed == {"tiny1": rep.failed["tiny1"]}
        assert isinstance(res.scores["tiny0"], float) and isinstance(res.scores["tiny2"], float)
        assert "tiny1" not in c.registry.index_entries("toy")
        store, _ = index_store(home, "toy", "tiny1")
        assert not (store.root / "meta.json").exists()
        assert not list(store.root.glob("parts-*"))
    # a missing file is refused the same way
    path.unlink()
    with shift.connect(home, executor="inprocess") as c:
        c.engine.index("toy", [c.registry.get_model("tiny1")])
        assert "tiny1" in c.engine.last_report.failed["tiny1"]
        assert c.engine.executor.inference_calls == 0


# ---- concurrency --------------------------------------------------------------------------

WORKER = r"""
import json, sys, time, traceback
from pathlib import Path
home, role, barrier, out, extra = sys.argv[1:6]
import shift
from shift.engine.engine import Engine
from shift.catalog.onnx_import import register_onnx
import onnxruntime, hnswlib, torch  # imports done before the barrier
Path(barrier, "ready-" + role).touch()
while not Path(barrier, "go").exists():
    time.sleep(0.002)
ops, scores, errors = 0, {}, []
def op(fn):
    global ops
    try:
        r = fn()
        ops += 1
        return r
    except Exception as e:  # recorded, the parent fails the test
        errors.append(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
KNN = "SELECT top 2 FROM pool all WHERE task=toy RANK BY knn"
with shift.connect(home, executor="inprocess") as c:
    reg = c.registry
    if role == "indexer":
        op(lambda: c.engine.index("toy", reg.models()))
        op(lambda: register_onnx(reg, extra, "extra-" + role))
        op(lambda: c.add_pool("pool-" + role, "WHERE dim >= 8"))
        res = op(lambda: c.query("SELECT top 4 FROM pool all WHERE task=toy RANK BY knn"))
    elif role == "knn":
        res = op(lambda: c.query(KNN))
        op(lambda: c.add_pool("pool-" + role, "WHERE dim >= 8"))
        op(lambda: c.query("SELECT * FROM models ORDER BY name"))
        op(lambda: c.explain(KNN))
        res = op(lambda: c.query(KNN)) or res
    else:
        res = op(lambda: c.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY linear"))
        op(lambda: register_onnx(reg, extra, "extra-" + role))
        op(lambda: c.add_pool("pool-" + role, "WHERE dim >= 8"))
        res = op(lambda: c.query(KNN.replace("toy", "toy AND name LIKE 'tiny%'"))) or res
        res = op(lambda: c.query(KNN)) or res
    knn = op(lambda: c.engine.scores("toy", reg.models(), "knn"))
    calls = c.engine.executor.inference_calls if c._engine is not None else 0
Path(out).write_text(json.dumps({"ops": ops, "errors": errors, "knn": knn, "calls": calls}))
"""


def _spawn(script: str, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _release(barrier: Path, procs: list[subprocess.Popen[str]], n: int) -> None:
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < n:
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (barrier / "go").touch()


@pytest.mark.slow  # ~13 s: several processes query and index one home
def test_processes_query_and_index_one_home_at_once(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = make_home(tmp_path / "home", onnx_files, n_models=3)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    roles = {"indexer": onnx_files[3], "knn": None, "linear": onnx_files[4]}
    procs = {
        role: _spawn(
            WORKER, [str(home), role, str(barrier), str(tmp_path / f"{role}.json"), str(extra)]
        )
        for role, extra in roles.items()
    }
    _release(barrier, list(procs.values()), len(procs))
    results = {}
    for role, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database is locked" not in err
        results[role] = json.loads((tmp_path / f"{role}.json").read_text())
        assert results[role]["errors"] == [], results[role]["errors"]
    ops = sum(r["ops"] for r in results.values())
    assert ops == 5 + 6 + 6

    with Registry.open(home) as reg:
        # no lost rows: every model and pool any process added is there
        names = reg.model_names()
        assert names == ["extra-indexer", "extra-linear", "tiny0", "tiny1", "tiny2"]
        assert {"pool-indexer", "pool-knn", "pool-linear"} <= {p.name for p in reg.pools()}
        assert len(reg.samples("toy")) == N
        entries = reg.index_entries("toy")
        models = reg.models()
    # each index was built exactly once across the processes (the build lock)
    built = set(entries)
    assert sum(r["calls"] for r in results.values()) == len(built) * BATCHES
    assert built >= {"tiny0", "tiny1", "tiny2"}
    # the same scores everywhere, equal to a sequential computation from scratch
    with shift.connect(home, executor="inprocess") as c:
        with c.registry.transaction():
            c.registry.db.execute("DELETE FROM scores")
        want = c.engine.scores("toy", models, "knn")
        assert c.engine.executor.inference_calls == 0
    for r in results.values():
        for name, s in r["knn"].items():
            assert s == pytest.approx(want[name]), (name, r["knn"], want)
    rep = doctor(home)
    assert rep.ok and rep.findings == [], rep.findings


FRESH = r"""
import sys, time
from pathlib import Path
home, role, barrier = sys.argv[1:4]
from shift.store.registry import Registry
Path(barrier, "ready-" + role).touch()
while not Path(barrier, "go").exists():
    time.sleep(0.002)
with Registry.open(home) as reg:
    reg.add_pool("p" + role, "dim > 1")
"""


def test_processes_open_a_fresh_home_at_once(tmp_path: Path) -> None:
    home, barrier = tmp_path / "fresh", tmp_path / "barrier"
    barrier.mkdir()
    procs = [_spawn(FRESH, [str(home), str(i), str(barrier)]) for i in range(3)]
    _release(barrier, procs, 3)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    with Registry.open(home) as reg:
        assert {"p0", "p1", "p2"} <= {p.name for p in reg.pools()}
        assert len(reg.schema_version()) >= 1


def test_build_lock_excludes_other_processes(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = make_home(tmp_path / "home", onnx_files, n_models=1)
    store, key = index_store(home, "toy", "tiny0")
    script = (
        "import sys, shift\n"
        "with shift.connect(sys.argv[1], executor='inprocess') as c:\n"
        "    c.engine.index('toy', c.registry.models())\n"
        "    print(c.engine.executor.inference_calls)\n"
    )
    with build_lock(store.root) as held:
        assert held
        p = _spawn(script, [str(home)])
        time.sleep(2.0)
        assert p.poll() is None  # waiting for the lock
        assert not (store.root / "meta.json").exists()
        with build_lock(store.root, blocking=False) as again:
            assert not again  # flock is per open file: even this process is kept out
        rep = doctor(home, repair=True)  # leaves an index being built alone
        assert [(f.severity, f.repaired) for f in rep.findings] == [("resumable", False)]
        assert "being built" in rep.findings[0].message
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert int(out.split()[-1]) == BATCHES
    assert store.open(key) is not None
    with sqlite3.connect(home / "registry.db") as conn:
        assert conn.execute("SELECT count(*) FROM index_entries").fetchone()[0] == 1
