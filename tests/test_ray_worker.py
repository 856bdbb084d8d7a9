"""The Ray worker's parts, run in this process: model bytes through the object store (checked by
sha256, cached on the node), the session cache bounded by bytes, and batches grouped into one
call or sliced into runs with the same embeddings as one plain run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from shift.errors import ModelFileError
from shift.fsutil import sha256_file
from shift.inference.jobs import BatchResult
from shift.inference.onnx_backend import OnnxEmbedder
from shift.inference.ray.models import CACHE_ENV, ModelBlob, materialize, publish
from shift.inference.ray.plan import CPU_ACTIVATION_ENV
from shift.inference.ray.pool import SESSION_FACTOR, EmbedWorker, ModelSpec
from shift.records import ModelRecord

pytestmark = pytest.mark.ray


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))
    return tmp_path / "node-cache"


def spec_of(ray: object, rec: ModelRecord) -> ModelSpec:
    return ModelSpec(
        "onnxruntime", "shift.inference.onnx_backend", publish(ray, rec.path), rec.model_dump_json()
    )


def test_model_bytes_are_checked_and_cached_per_node(
    ray_runtime: None, cache: Path, tmp_path: Path
) -> None:
    import ray

    src = tmp_path / "m.onnx"
    src.write_bytes(bytes(range(256)) * 40)
    blob = publish(ray, src)
    assert (blob.sha256, blob.size) == (sha256_file(src), src.stat().st_size)
    path = materialize(blob, "m")
    assert path == cache / f"{blob.sha256}.onnx" and path.read_bytes() == src.read_bytes()
    path.write_bytes(b"\0" * blob.size)  # a damaged copy of the right size is fetched again
    assert materialize(blob, "m").read_bytes() == src.read_bytes()
    with pytest.raises(ModelFileError, match="sha256"):
        materialize(ModelBlob("0" * 64, blob.size, blob.ref), "m")  # bytes that do not match
    with pytest.raises(ModelFileError, match="cannot read"):
        publish(ray, tmp_path / "missing.onnx")
    assert "path" not in {f.name for f in fields(ModelSpec)}  # workers never get a home path


def test_session_cache_is_bounded_by_bytes(
    ray_runtime: None, cache: Path, tiny_models: dict[str, ModelRecord]
) -> None:
    import ray

    a, b = tiny_models["tiny-a"], tiny_models["tiny-b"]
    sa, sb = spec_of(ray, a), spec_of(ray, b)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    both = SESSION_FACTOR * (sa.blob.size + sb.blob.size)
    small = EmbedWorker("cpu", 1, cache_bytes=both - 1)
    for s, name in ((sa, "tiny-a"), (sb, "tiny-b")):
        out = small.embed(s, name, [("b0", x)])
        assert isinstance(out, list) and out[0].node  # the node that ran it is recorded
    assert small.cached() == [sb.blob.sha256]  # a was dropped to make room for b
    assert small.cached_bytes() <= both - 1
    roomy = EmbedWorker("cpu", 1, cache_bytes=both)
    for s, name in ((sa, "tiny-a"), (sb, "tiny-b"), (sa, "tiny-a")):
        roomy.embed(s, name, [("b0", x)])
    assert roomy.cached() == [sb.blob.sha256, sa.blob.sha256]  # both kept, a used last


def test_grouped_and_sliced_runs_equal_plain_runs(
    ray_runtime: None,
    cache: Path,
    tiny_models: dict[str, ModelRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    rec = tiny_models["tiny-a"]
    rng = np.random.default_rng(1)
    batches = [
        (f"b{i}", rng.integers(0, 256, (n, 32, 32, 3), np.uint8)) for i, n in enumerate([5, 3, 7])
    ]
    ref = OnnxEmbedder(rec.path, rec, device="cpu")
    monkeypatch.setenv(CPU_ACTIVATION_ENV, "1.5")  # 32 px: runs of 2 images
    worker = EmbedWorker("cpu", 1)
    out = worker.embed(spec_of(ray, rec), rec.name, batches)  # one call, three batches
    assert isinstance(out, list) and [r.batch_id for r in out] == ["b0", "b1", "b2"]
    for r, (_, images) in zip(out, batches, strict=True):
        assert isinstance(r, BatchResult) and r.embeddings.shape == (len(images), rec.dim)
        emb, logits = ref.embed(images)
        np.testing.assert_allclose(r.embeddings, emb, atol=1e-5)
        np.testing.assert_allclose(r.logits, logits, atol=1e-5)
