"""executor="auto" chooses for each run: in this process for a single small model (or without
ray), on Ray for anything more, and always on Ray when joining a cluster. "ray" and "inprocess"
are what they say, and the CLI accepts all three."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from shift.cli.base import EXECUTORS as CLI_EXECUTORS
from shift.errors import ShiftError
from shift.inference import executors
from shift.inference.executors import (
    AUTO_INPROCESS_MAX_BATCHES,
    EXECUTORS,
    AutoExecutor,
    make_executor,
)
from shift.inference.jobs import BatchResult, EmbedJob
from shift.inference.local import InProcessExecutor
from shift.inference.ray.executor import RayExecutor
from shift.inference.ray.runtime import ADDRESS_ENV
from shift.records import ModelRecord

importlib.import_module("tests.numpy_backend")  # registers "numpy-test"


def job(rec: ModelRecord, n_batches: int | None, name: str | None = None) -> EmbedJob:
    imgs = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    if n_batches is None:  # a generator: its count is not known up front
        return EmbedJob(name or rec.name, rec.path, rec, iter([("b0", imgs)]), backend="numpy-test")
    batches = [(f"b{i}", imgs) for i in range(n_batches)]
    return EmbedJob(name or rec.name, rec.path, rec, batches, backend="numpy-test")


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)


def test_each_name_makes_its_executor_and_the_cli_accepts_them_all() -> None:
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    assert isinstance(make_executor("ray"), RayExecutor)  # Ray starts on the first run only
    assert isinstance(make_executor("auto"), AutoExecutor)
    assert set(CLI_EXECUTORS) == set(EXECUTORS)
    with pytest.raises(ShiftError, match="unknown executor 'threads'"):
        make_executor("threads")


def test_auto_runs_one_small_model_in_process_and_more_on_ray(
    tiny_models: dict[str, ModelRecord],
) -> None:
    rec = tiny_models["tiny-a"]
    auto = AutoExecutor()
    assert auto.choose([job(rec, 1)]) == "inprocess"
    assert auto.choose([job(rec, AUTO_INPROCESS_MAX_BATCHES)]) == "inprocess"
    assert auto.choose([job(rec, AUTO_INPROCESS_MAX_BATCHES + 1)]) == "ray"
    assert auto.choose([job(rec, 1), job(rec, 1, "other")]) == "ray"
    assert auto.choose([job(rec, None)]) == "ray"  # unknown size: the safe side


def test_auto_joins_a_cluster_whatever_the_size(
    tiny_models: dict[str, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    small = [job(tiny_models["tiny-a"], 1)]
    assert AutoExecutor(address="127.0.0.1:6379").choose(small) == "ray"
    monkeypatch.setenv(ADDRESS_ENV, "127.0.0.1:6379")
    assert AutoExecutor().choose(small) == "ray"


def test_auto_without_ray_runs_everything_in_process(
    tiny_models: dict[str, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executors, "ray_installed", lambda: False)
    rec = tiny_models["tiny-a"]
    assert AutoExecutor().choose([job(rec, 50), job(rec, 50, "other")]) == "inprocess"


def test_auto_hands_the_run_to_the_chosen_executor(tiny_models: dict[str, ModelRecord]) -> None:
    """The small run really runs in process (same results as InProcessExecutor); the big one is
    handed to the Ray executor (a stand-in here, so no Ray starts)."""
    rec = tiny_models["tiny-a"]
    auto = AutoExecutor()
    got: list[BatchResult] = []
    auto.run([job(rec, 2)], got.append, pytest.fail, progress=False)
    want: list[BatchResult] = []
    InProcessExecutor().run([job(rec, 2)], want.append, pytest.fail, progress=False)
    assert auto.last == "inprocess" and auto.inference_calls == 2
    assert [r.batch_id for r in got] == ["b0", "b1"]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert auto.load_seconds  # the in-process executor's own report reads through

    class FakeRay:
        inference_calls = 0
        batches_by_node = {"node": 3}

        def run(self, jobs: list[EmbedJob], *args: Any, **kw: Any) -> None:
            self.jobs = jobs
            self.inference_calls += 3

    fake = FakeRay()
    auto._ray = fake  # type: ignore[assignment]
    auto.run([job(rec, 3), job(rec, 3, "other")], got.append, pytest.fail, progress=False)
    assert auto.last == "ray" and len(fake.jobs) == 2
    assert auto.inference_calls == 5 and auto.batches_by_node == {"node": 3}
