"""Hangs and foreign runtimes (issue #12, items 8 and 9): a model whose graph never finishes fails
its job after the per-batch timeout while the other models go on; a wait for an index's build
lock gives up naming the holder; a local Ray never joins another Ray on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from onnx_factory import build_endless_loop, build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.errors import InferenceTimeoutError, LockTimeoutError, ShiftError
from shift.inference.executors import make_executor
from shift.inference.jobs import BatchResult, EmbedJob, JobFailure, batch_timeout, embed_batch
from shift.inference.onnx_backend import OnnxEmbedder
from shift.records import Samples
from shift.store.index.lock import build_lock
from shift.store.tasks import TaskStore

ROOT = Path(__file__).resolve().parent.parent
SIZE = 8


def imgs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


# ---- the per-batch inference timeout (item 8) ----------------------------------------------


def test_a_short_loop_runs_and_the_endless_one_is_stopped(tmp_path: Path) -> None:
    short = build_endless_loop(tmp_path / "short.onnx", trips=3)
    emb, _ = OnnxEmbedder(short.path, short).embed(imgs(2))
    assert emb.shape == (2, 3)
    rec = build_endless_loop(tmp_path / "endless.onnx")
    endless = OnnxEmbedder(rec.path, rec)
    t0 = time.monotonic()
    with pytest.raises(InferenceTimeoutError) as err:
        embed_batch(endless, "endless", "b0", imgs(2), timeout_s=0.5)
    took = time.monotonic() - t0
    assert "model 'endless'" in str(err.value) and "0.5 s" in str(err.value)
    assert "could not be stopped" not in str(err.value)  # ONNX Runtime's terminate stopped it
    assert took < 4, took
    emb, _ = endless.embed(imgs(0))  # the embedder is still usable
    assert emb.shape == (0, 3)


@pytest.mark.parametrize("kind", ["inprocess", pytest.param("ray", marks=pytest.mark.ray)])
def test_an_endless_model_fails_alone_and_the_run_goes_on(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    if kind == "ray":
        request.getfixturevalue("ray_runtime")
    endless = build_endless_loop(tmp_path / "endless.onnx")
    good = build_tiny_cnn(tmp_path / "good.onnx", seed=0, size=SIZE, classes=None)
    batches = [(f"b{i}", imgs(3, seed=i)) for i in range(3)]
    jobs = [EmbedJob(r.name, r.path, r, list(batches)) for r in (endless, good)]
    results: list[BatchResult] = []
    failures: list[JobFailure] = []
    executor = make_executor(kind, batch_timeout_s=1.0)
    t0 = time.monotonic()
    executor.run(jobs, results.append, failures.append, progress=False)
    assert time.monotonic() - t0 < 30
    assert [f.model_name for f in failures] == ["endless"]
    assert "did not finish within 1 s" in failures[0].error
    assert sorted(r.batch_id for r in results if r.model_name == "good") == ["b0", "b1", "b2"]
    assert not [r for r in results if r.model_name == "endless"]


def test_the_timeout_comes_from_the_option_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHIFT_BATCH_TIMEOUT_S", raising=False)
    assert batch_timeout() == 600
    monkeypatch.setenv("SHIFT_BATCH_TIMEOUT_S", "2.5")
    assert batch_timeout() == 2.5 and batch_timeout(7) == 7
    assert make_executor("inprocess").batch_timeout_s == 2.5
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("SHIFT_BATCH_TIMEOUT_S", bad)
        with pytest.raises(ShiftError, match="SHIFT_BATCH_TIMEOUT_S"):
            batch_timeout()


def test_a_query_over_an_endless_model_reports_it_and_scores_the_others(tmp_path: Path) -> None:
    d = tmp_path / "onnx"
    d.mkdir()
    with shift.connect(tmp_path / "home", executor="inprocess", batch_timeout_s=0.5) as c:
        endless = build_endless_loop(d / "endless.onnx")  # `models add` would refuse it
        c.registry.add_model(endless, src_file=endless.path)  # (issue 20, item 6): in directly
        register_onnx(c.registry, build_tiny_cnn(d / "ok.onnx", seed=0, size=SIZE).path, "ok")
        y = np.arange(40) % 2
        x = (imgs(40) // 2 + y[:, None, None, None] * 100).astype(np.uint8)
        TaskStore(c.registry).add("toy", Samples(x, y, None, [], []), kind="npz", source="gen")
        res = c.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY knn")
        failed = c.engine.last_report.failed
        assert set(failed) == {"endless"} and "did not finish within 0.5 s" in failed["endless"]
        assert res.names == ["ok"] and isinstance(res.scores["ok"], float)
        assert res.failed == {"endless": failed["endless"]}  # named, not ranked


# ---- the build lock's wait (item 8) ---------------------------------------------------------


def test_a_build_lock_wait_gives_up_naming_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "indexes" / "t" / "m"
    with build_lock(root) as got:
        assert got
        t0 = time.monotonic()
        with pytest.raises(LockTimeoutError) as err, build_lock(root, timeout_s=0.3):
            pass
        assert 0.3 <= time.monotonic() - t0 < 3
        msg = str(err.value)
        assert f"process {os.getpid()}" in msg and "gave up waiting after 0.3 s" in msg
        assert os.uname().nodename in msg and "SHIFT_LOCK_TIMEOUT_S" in msg
    with build_lock(root, timeout_s=0.3) as got:  # released: taken at once
        assert got
        (root / "meta.json").write_text("{}")  # a build was stored: the folder stays
    assert (root / ".build.lock").read_bytes() == b""  # no stale holder left behind


def test_a_query_waiting_on_another_build_gives_up(tmp_path: Path) -> None:
    """A second process's query waits on the build lock of the first and gives up by name."""
    home = tmp_path / "home"
    with shift.connect(home, executor="inprocess", lock_timeout_s=0.5) as c:
        rec = build_tiny_cnn(tmp_path / "ok.onnx", seed=0, size=SIZE, classes=None)
        register_onnx(c.registry, rec.path, "ok")
        y = np.arange(20) % 2
        TaskStore(c.registry).add("toy", Samples(imgs(20), y, None, [], []), kind="npz", source="g")
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from pathlib import Path;"
                "from shift.store.index.lock import build_lock\n"
                "with build_lock(Path(sys.argv[1])):\n"
                "    print('held', flush=True); time.sleep(60)",
                str(c.registry.home.index_path("toy", "ok")),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            with pytest.raises(LockTimeoutError, match=f"process {holder.pid} on host"):
                c.index("toy")
        finally:
            holder.kill()
            holder.wait()
        assert c.index("toy").embedded == {"ok": 20}  # free again: builds


# ---- another Ray on the machine (item 9) ----------------------------------------------------

_RAY_CHECK = """
import ray
from shift.inference.ray.runtime import ensure_ray, shutdown_ray
ensure_ray(num_cpus=1)
print("ok", ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
shutdown_ray()
"""


@pytest.mark.ray
@pytest.mark.slow  # ~7 s each: a foreign Ray started with `ray start`
@pytest.mark.parametrize("how", ["RAY_ADDRESS", "ray_current_cluster"])
def test_local_ray_never_joins_a_foreign_one(how: str) -> None:
    """$RAY_ADDRESS, or a stale ``ray_current_cluster`` file, pointing at a dead cluster: shift
    starts a Ray of its own (in a subprocess: the test session shares one Ray)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SHIFT_RAY_ADDRESS")}
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="rt") as tmp:  # short: socket paths
        if how == "RAY_ADDRESS":
            env["RAY_ADDRESS"] = "127.0.0.1:9"
        else:
            env["RAY_TMPDIR"] = tmp
            (Path(tmp) / "ray").mkdir()
            (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        out = subprocess.run(
            [sys.executable, "-c", _RAY_CHECK],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok 42" in out.stdout
