"""Cached scores and indexes are keyed by everything that changes an embedding: the model's
weights (sha256), its preprocessing and the inference backend (issue 12, item 3)."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

from shift.catalog.onnx_import import register_onnx
from shift.engine.engine import Engine, model_cache_key
from shift.records import Samples
from shift.store.index.meta import IndexKey, IndexMeta
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

importlib.import_module("tests.numpy_backend")  # registers the "numpy-test" backend
NUMPY = "numpy-test"
N = 80
PROXY = "logme"  # a continuous score: two embeddings practically never tie
OTHER_PREP = {"color": "BGR", "mean": (0.9, 0.1, 0.5), "std": (0.1, 0.4, 0.2)}


def toy_samples(n: int = N, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    x[..., 0] = rng.integers(0, 256, (n, 32, 32))  # red: noise, blue: signal (BGR matters)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry.open(tmp_path / "home")
    TaskStore(r).add("toy", toy_samples(), kind="npz", source="gen")
    yield r
    r.close()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(build_tiny_cnn(tmp_path_factory.mktemp("keys") / "m.onnx", seed=3).path)


def fresh_score(home: Path, model: str, backend: str = "onnxruntime") -> float:
    """The score of ``model`` computed with an empty score cache."""
    with Registry.open(home) as r:
        with r.transaction():
            r.db.execute("DELETE FROM scores")
        e = Engine(r, executor="inprocess", backend=backend)
        score = e.scores("toy", [r.get_model(model)], PROXY)[model]
    assert score is not None
    return score


def test_one_file_two_preprocessings_two_scores(reg: Registry, onnx_file: Path) -> None:
    a = register_onnx(reg, onnx_file, "plain")
    b = register_onnx(reg, onnx_file, "bgr", input_overrides=OTHER_PREP)
    assert a.sha256 == b.sha256 and a.input.key() != b.input.key()
    engine = Engine(reg, executor="inprocess")
    first = engine.scores("toy", [a], PROXY)["plain"]
    got = engine.scores("toy", [b], PROXY)["bgr"]  # must not be plain's cached score
    assert engine.last_report is not None and engine.last_report.embedded == {"bgr": N}
    assert got != first
    # both are cached now, each under its own key
    again = Engine(reg, executor="inprocess")
    assert again.scores("toy", [a, b], PROXY) == {"plain": first, "bgr": got}
    assert again.last_report is not None and again.last_report.embedded == {}
    assert reg.db.execute("SELECT count(*) FROM scores").fetchone()[0] == 2
    assert got == pytest.approx(fresh_score(reg.home.registry_dir, "bgr"))


def test_replace_with_other_preprocessing_recomputes(reg: Registry, onnx_file: Path) -> None:
    a = register_onnx(reg, onnx_file, "m")
    old = Engine(reg, executor="inprocess").scores("toy", [a], PROXY)["m"]
    b = register_onnx(reg, onnx_file, "m", input_overrides=OTHER_PREP, replace=True)
    engine = Engine(reg, executor="inprocess")
    new = engine.scores("toy", [b], PROXY)["m"]
    assert engine.last_report is not None and engine.last_report.embedded == {"m": N}
    assert new != old and new == pytest.approx(fresh_score(reg.home.registry_dir, "m"))


def test_backend_is_part_of_the_index_and_score_keys(reg: Registry, onnx_file: Path) -> None:
    rec = register_onnx(reg, onnx_file, "m")
    numpy_engine = Engine(reg, executor="inprocess", backend=NUMPY)
    by_numpy = numpy_engine.scores("toy", [rec], PROXY)["m"]
    assert numpy_engine.last_report is not None and numpy_engine.last_report.embedded == {"m": N}
    ort = Engine(reg, executor="inprocess")
    by_ort = ort.scores("toy", [rec], PROXY)["m"]  # neither numpy's score nor its index
    assert ort.last_report is not None and ort.last_report.embedded == {"m": N}
    assert by_ort != by_numpy
    idx = ort.index("toy", [rec])["m"]
    assert idx.meta.backend == "onnxruntime" and idx.key.backend == "onnxruntime"
    keys = {r[0] for r in reg.db.execute("SELECT model_sha FROM scores")}
    assert keys == {model_cache_key(rec, NUMPY), model_cache_key(rec, "onnxruntime")}
    # an index built by one backend is never "ready" for another, even with unchanged data
    numpy_engine.index("toy", [rec])
    assert numpy_engine.last_report is not None and numpy_engine.last_report.embedded == {"m": N}
    assert by_ort == pytest.approx(fresh_score(reg.home.registry_dir, "m"))
    assert by_numpy == pytest.approx(fresh_score(reg.home.registry_dir, "m", backend=NUMPY))


def test_model_cache_key_names_the_weights_and_digests_the_rest(onnx_file: Path) -> None:
    with Registry.open(onnx_file.parent / "h") as r:
        rec = register_onnx(r, onnx_file, "m")
    key = model_cache_key(rec, "onnxruntime")
    sha, extra = key.split("+")
    assert sha == rec.sha256 and len(extra) == 16
    assert model_cache_key(rec, "other") != key
    other = rec.model_copy(update={"input": rec.input.model_copy(update={"color": "BGR"})})
    assert model_cache_key(other, "onnxruntime") != key


def test_index_key_digest_unchanged_for_the_default_backend() -> None:
    key = IndexKey(task_hash="t", model_sha="m", preprocess="p")
    old = json.dumps({"model_sha": "m", "preprocess": "p", "task_hash": "t"}, separators=(",", ":"))
    assert key.backend == "onnxruntime"
    assert key.digest() == hashlib.sha256(old.encode()).hexdigest()[:16]  # parts still resume
    assert IndexKey(task_hash="t", model_sha="m", preprocess="p", backend="x").digest() != (
        key.digest()
    )


def test_a_meta_from_before_the_key_held_the_backend_takes_the_meta_backend() -> None:
    old_key = {"task_hash": "t", "model_sha": "m", "preprocess": "p"}
    base = {"key": old_key, "dim": 4, "count": 2, "created": "x", "updated": "x"}
    assert IndexMeta.model_validate(base).key.backend == "onnxruntime"
    meta = IndexMeta.model_validate({**base, "backend": "numpy-test"})
    assert meta.key.backend == "numpy-test"
    assert IndexMeta.model_validate_json(meta.model_dump_json()) == meta
