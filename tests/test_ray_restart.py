"""A Ray worker killed mid-run (SIGKILL, as the OOM killer does) is restarted and its batches are
retried: the index equals an uninterrupted run's. Also: the worker's session cache is bounded by
bytes, and models reach workers as bytes through the object store (no path in the home)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.prepared import PreparedInputs
from shift.records import Samples
from shift.store.tasks import TaskStore

N = 640  # 10 batches of 64 per model


def toy(n: int = N) -> Samples:
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("restart_models")
    paths = [d / f"r{i}.onnx" for i in range(2)]
    for i, p in enumerate(paths):
        build_tiny_cnn(p, seed=10 + i)
    return paths


def home(path: Path, files: list[Path], executor: str) -> Any:
    c = shift.connect(path, executor=executor)
    for i, f in enumerate(files):
        register_onnx(c.registry, f, f"r{i}", imagenet_top1=50, imagenet_source="test")
    TaskStore(c.registry).add("toy", toy(), kind="npz", source="gen")
    return c


def build(c: Any) -> dict[str, Any]:
    out = c.engine.index("toy", c.models("all"))
    assert c.engine.last_report.failed == {}
    return out


@pytest.mark.ray
def test_killed_worker_is_restarted_and_index_equals_uninterrupted(
    ray_runtime: None, tmp_path: Path, files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from shift.inference.ray.pool import ACTOR_POOL, close_actor_pool

    close_actor_pool()  # a fresh pool: its actors' first pids are the ones we kill
    with home(tmp_path / "plain", files, "inprocess") as c:
        want = build(c)

    killed: list[int] = []
    loads = [0]
    real_load = PreparedInputs.load

    def load_and_kill(self: PreparedInputs, rows: list[Any], geom: Any) -> Any:
        loads[0] += 1  # batches are read ahead (2) of the ones the actors were handed
        if loads[0] == 6 and not killed:  # 3 batches are queued on the actors by now
            pid = ray.get(ACTOR_POOL.actors[0].info.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return real_load(self, rows, geom)

    monkeypatch.setattr(PreparedInputs, "load", load_and_kill)
    with home(tmp_path / "killed", files, "ray") as c:
        got = build(c)
        executor = c.engine.executor
        assert killed, "the worker was never killed"
        after = ray.get(ACTOR_POOL.actors[0].info.remote(), timeout=60)
    assert after["pid"] != killed[0]  # the same actor handle, a new process
    assert sum(executor.batches_by_node.values()) == 20  # every batch of both models, once
    assert set(got) == set(want) == {"r0", "r1"}
    for name in want:
        assert got[name].sample_ids == want[name].sample_ids
        np.testing.assert_array_equal(np.asarray(got[name].labels), np.asarray(want[name].labels))
        np.testing.assert_allclose(
            np.asarray(got[name].vectors), np.asarray(want[name].vectors), atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(got[name].logits), np.asarray(want[name].logits), atol=1e-5
        )
    close_actor_pool()
