"""The inference seam: the backend registry, the ONNX Runtime backend behind it, and a second
backend (tests/numpy_backend.py, one module + one registration) used end to end through the
engine, in process and on Ray actors."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

from shift.catalog.onnx_import import register_onnx
from shift.engine.engine import Engine
from shift.errors import ShiftError
from shift.inference import embedder as registry_module
from shift.inference.backends import backend_factory, known_backends, make_embedder
from shift.inference.embedder import Embedder, register_backend
from shift.inference.jobs import BatchResult, EmbedJob, JobFailure
from shift.inference.local import InProcessExecutor
from shift.inference.onnx_backend import OnnxEmbedder
from shift.records import ModelRecord, Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

# by this dotted name (the checkout is on pytest's path): Ray workers, which have the checkout
# on PYTHONPATH, import the backend by the same name
numpy_backend = importlib.import_module("tests.numpy_backend")
NumpyEmbedder = numpy_backend.NumpyEmbedder
NUMPY = "numpy-test"


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ---- the registry ----------------------------------------------------------------------------


def test_known_backends_include_the_builtin_and_the_test_backend() -> None:
    assert {"onnxruntime", NUMPY} <= set(known_backends())
    assert backend_factory("onnxruntime") is OnnxEmbedder
    assert backend_factory(NUMPY) is NumpyEmbedder


def test_unknown_backend_names_the_known_ones(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    with pytest.raises(ShiftError, match="unknown inference backend 'tensorrt'") as err:
        make_embedder("tensorrt", rec.path, rec)
    assert "onnxruntime" in str(err.value) and NUMPY in str(err.value)


def test_a_taken_name_cannot_be_registered_by_another_factory() -> None:
    with pytest.raises(ShiftError, match="already registered"):
        register_backend("onnxruntime")(NumpyEmbedder)
    assert register_backend(NUMPY)(NumpyEmbedder) is NumpyEmbedder  # same factory: a no-op
    assert backend_factory("onnxruntime") is OnnxEmbedder


def test_a_backend_module_is_imported_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Ray worker does: the name is unknown until the registering module is imported."""
    monkeypatch.delitem(registry_module.BACKENDS, NUMPY)
    monkeypatch.delitem(sys.modules, "tests.numpy_backend")
    with pytest.raises(ShiftError, match="unknown inference backend"):
        backend_factory(NUMPY)
    factory = backend_factory(NUMPY, module="tests.numpy_backend")
    assert factory.__module__ == "tests.numpy_backend" and NUMPY in known_backends()
    with pytest.raises(ShiftError, match="cannot import its module 'no_such_module'"):
        backend_factory("elsewhere", module="no_such_module")


def test_onnx_backend_through_the_factory(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = make_embedder("onnxruntime", rec.path, rec, device="cpu", intra_op_threads=1)
    assert isinstance(emb, OnnxEmbedder) and isinstance(emb, Embedder)
    assert emb.providers == ["CPUExecutionProvider"] and emb.device == "cpu"
    e, lg = emb.embed(images(3, seed=0))
    ref_e, ref_lg = OnnxEmbedder(rec.path, rec, device="cpu").embed(images(3, seed=0))
    np.testing.assert_array_equal(e, ref_e)
    assert lg is not None and ref_lg is not None
    np.testing.assert_array_equal(lg, ref_lg)


def test_numpy_backend_is_an_embedder(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = make_embedder(NUMPY, rec.path, rec)
    assert isinstance(emb, Embedder) and emb.providers == ["numpy"] and emb.device == "cpu"
    imgs = images(5, seed=1)
    e, lg = emb.embed(imgs)
    assert e.shape == (5, rec.dim) and e.dtype == np.float32
    assert lg is not None and lg.shape == (5, rec.head_classes)
    want = (imgs.astype(np.float32).mean(axis=(1, 2)) / 255.0) @ emb._w[:3]
    np.testing.assert_allclose(e, want, rtol=1e-6)
    with pytest.raises(ShiftError, match="no such file"):
        make_embedder(NUMPY, "/nonexistent.onnx", rec)


# ---- through the executors -------------------------------------------------------------------


def _jobs(recs: list[ModelRecord], backend: str, imgs: np.ndarray) -> list[EmbedJob]:
    batches = [("b0", imgs[:4]), ("b1", imgs[4:])]
    return [EmbedJob(r.name, r.path, r, batches, backend=backend) for r in recs]


def _run(executor: Any, jobs: list[EmbedJob]) -> tuple[dict[Any, BatchResult], list[JobFailure]]:
    results: dict[Any, BatchResult] = {}
    failures: list[JobFailure] = []
    executor.run(
        jobs, lambda r: results.__setitem__((r.model_name, r.batch_id), r), failures.append, False
    )
    return results, failures


def _check_numpy_results(
    results: dict[Any, BatchResult], recs: list[ModelRecord], imgs: np.ndarray
) -> None:
    for rec in recs:
        want_e, want_lg = NumpyEmbedder(rec.path, rec).embed(imgs)
        got = [results[(rec.name, b)] for b in ("b0", "b1")]
        assert all(r.providers == ["numpy"] for r in got)
        np.testing.assert_array_equal(np.concatenate([r.embeddings for r in got]), want_e)
        if want_lg is None:
            assert all(r.logits is None for r in got)
        else:
            np.testing.assert_array_equal(np.concatenate([r.logits for r in got]), want_lg)


def test_inprocess_executor_runs_each_job_on_its_backend(
    tiny_models: dict[str, ModelRecord],
) -> None:
    recs = [tiny_models["tiny-a"], tiny_models["tiny-b"]]
    imgs = images(6, seed=2)
    jobs = _jobs(recs, NUMPY, imgs) + [
        EmbedJob("bogus", recs[0].path, recs[0], [("b0", imgs)], backend="bogus")
    ]
    results, failures = _run(InProcessExecutor(), jobs)
    _check_numpy_results(results, recs, imgs)
    assert [f.model_name for f in failures] == ["bogus"]
    assert "unknown inference backend 'bogus'" in failures[0].error


@pytest.mark.ray
def test_ray_workers_import_and_run_a_registered_backend(
    ray_runtime: None, tiny_models: dict[str, ModelRecord]
) -> None:
    from shift.inference.ray.executor import RayExecutor

    recs = [tiny_models["tiny-a"], tiny_models["tiny-b"]]
    imgs = images(6, seed=3)
    jobs = _jobs(recs, NUMPY, imgs) + [
        EmbedJob("bogus", recs[0].path, recs[0], [("b0", imgs)], backend="bogus")
    ]
    results, failures = _run(RayExecutor(num_actors=2), jobs)
    _check_numpy_results(results, recs, imgs)
    assert [f.model_name for f in failures] == ["bogus"]
    assert "unknown inference backend 'bogus'" in failures[0].error


# ---- end to end through the engine ------------------------------------------------------------


def toy_samples(n: int = 80, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


def test_engine_indexes_and_scores_with_the_numpy_backend(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "home")
    recs = [
        register_onnx(reg, build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i).path, f"m{i}")
        for i in range(2)
    ]
    TaskStore(reg).add("toy", toy_samples(), kind="npz", source="gen")
    with pytest.raises(ShiftError, match="unknown inference backend"):
        Engine(reg, executor="inprocess", backend="bogus")
    engine = Engine(reg, executor="inprocess", backend=NUMPY, batch_size=32)
    scores = engine.scores("toy", recs, "knn")
    assert set(scores) == {"m0", "m1"} and all(isinstance(s, float) for s in scores.values())
    assert engine.last_report is not None and engine.last_report.failed == {}
    assert engine.last_report.providers == {"m0": ["numpy"], "m1": ["numpy"]}

    rows = {r["sample_id"]: r for r in reg.samples("toy")}
    indexes = engine.index("toy", recs)
    assert sorted(engine.last_report.reused) == ["m0", "m1"]  # nothing embedded twice
    entries = reg.index_entries("toy")
    for rec in recs:
        idx = indexes[rec.name]
        imgs = TaskStore(reg).load("toy", [rows[s] for s in idx.sample_ids])
        want, want_lg = NumpyEmbedder(str(reg.model_file(rec)), rec).embed(imgs)
        np.testing.assert_allclose(np.asarray(idx.vectors), want, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(idx.logits), want_lg, rtol=1e-6)
        assert idx.meta.backend == NUMPY and idx.meta.providers == ["numpy"]
        assert entries[rec.name]["backend"] == NUMPY
    reg.close()


def test_index_entries_from_before_the_backend_column_read_as_onnxruntime(
    tmp_path: Path,
) -> None:
    from sqlite_utils import Database

    from shift.store.migrations import migrations

    db = Database(tmp_path / "old.db")
    migrations.apply(db, stop_before="m003_index_backend")
    assert "backend" not in db["index_entries"].columns_dict
    db["index_entries"].insert({"task": "t", "model": "m", "count": 3})
    migrations.apply(db)
    assert [r["backend"] for r in db["index_entries"].rows] == ["onnxruntime"]


def test_append_never_mixes_two_backends(tmp_path: Path) -> None:
    """An index embedded by one backend is extended by the same backend only; another backend
    rebuilds it whole (and records itself)."""
    reg = Registry.open(tmp_path / "home")
    rec = register_onnx(reg, build_tiny_cnn(tmp_path / "m.onnx", seed=0).path, "m")
    TaskStore(reg).add("toy", toy_samples(40), kind="npz", source="gen")
    Engine(reg, executor="inprocess", backend=NUMPY).index("toy", [rec])
    TaskStore(reg).append("toy", toy_samples(8, seed=5))
    same = Engine(reg, executor="inprocess", backend=NUMPY)
    assert same.index("toy", [rec])["m"].meta.backend == NUMPY
    assert same.last_report is not None and same.last_report.embedded == {"m": 8}  # appended
    TaskStore(reg).append("toy", toy_samples(8, seed=6))
    other = Engine(reg, executor="inprocess")
    idx = other.index("toy", [rec])["m"]
    assert other.last_report is not None and other.last_report.embedded == {"m": 56}  # rebuilt
    assert idx.meta.backend == "onnxruntime"
    assert reg.index_entries("toy")["m"]["backend"] == "onnxruntime"
    reg.close()


def test_an_index_meta_from_before_the_backend_field_reads_as_onnxruntime() -> None:
    from shift.store.index.meta import IndexKey, IndexMeta

    key = IndexKey(task_hash="t", model_sha="m", preprocess="p")
    old = {"key": key.model_dump(), "dim": 4, "count": 2, "created": "x", "updated": "x"}
    assert IndexMeta.model_validate(old).backend == "onnxruntime"
    assert "backend" in IndexMeta.model_validate(old).model_dump()
