"""Preprocessing, the ONNX Runtime embedder, and the in-process / Ray executors."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_factory import build_tiny_cnn, tiny_torch_model

from shift.errors import ModelFileError, ShiftError
from shift.inference.executors import AutoExecutor, make_executor
from shift.inference.jobs import BatchResult, EmbedJob, JobFailure
from shift.inference.local import InProcessExecutor
from shift.inference.onnx_backend import OnnxEmbedder
from shift.inference.preprocess import preprocess
from shift.inference.ray.executor import RayExecutor
from shift.inference.ray.pool import plan_pool
from shift.records import InputSpec, ModelRecord

ROOT = Path(__file__).resolve().parent.parent
CPU = ["CPUExecutionProvider"]


def spec(**kw: object) -> InputSpec:
    base: dict[str, object] = {"height": 2, "width": 2, "mean": (0.0,), "std": (1.0,)}
    base.update(kw)
    return InputSpec(**base)  # type: ignore[arg-type]


def images(n: int, seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


# --------------------------------------------------------------------------- preprocess


def test_preprocess_mean_std_per_channel() -> None:
    img = np.tile(np.array([255, 0, 51], np.uint8), (1, 2, 2, 1))
    s = spec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.2), layout="NHWC")
    x = preprocess(img, s)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert x.shape == (1, 2, 2, 3)
    # (1 - .5)/.5 = 1, (0 - .5)/.25 = -2, (.2 - .5)/.2 = -1.5
    np.testing.assert_allclose(x[0, 0, 0], [1.0, -2.0, -1.5], atol=1e-6)
    np.testing.assert_allclose(x[0, 1, 1], [1.0, -2.0, -1.5], atol=1e-6)


def test_preprocess_scalar_mean_std_broadcast() -> None:
    img = np.full((1, 2, 2, 3), 102, np.uint8)  # 0.4
    x = preprocess(img, spec(mean=(0.2,), std=(0.1,), layout="NHWC"))
    np.testing.assert_allclose(x, np.full((1, 2, 2, 3), 2.0), atol=1e-5)


def test_preprocess_layout_and_bgr() -> None:
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0], img[..., 2] = 255, 51  # R = 1.0, G = 0, B = 0.2
    img[0, 0, 1] = (0, 255, 0)  # one green pixel at (row 0, col 1)
    nhwc = preprocess(img, spec(layout="NHWC"))
    nchw = preprocess(img, spec(layout="NCHW"))
    assert nhwc.shape == (1, 2, 2, 3) and nchw.shape == (1, 3, 2, 2)
    assert nchw.flags.c_contiguous
    np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(nchw[0, :, 1, 0], [1.0, 0.0, 0.2], atol=1e-6)
    assert nchw[0, 1, 0, 1] == pytest.approx(1.0)  # green plane, row 0, col 1

    bgr = preprocess(img, spec(layout="NCHW", color="BGR"))
    np.testing.assert_allclose(bgr[0, :, 1, 0], [0.2, 0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(bgr, nchw[:, ::-1])

    # per-channel mean/std is applied in RGB order before the swap
    s = spec(layout="NHWC", color="BGR", mean=(0.0, 0.0, 0.2), std=(1.0, 1.0, 0.5))
    np.testing.assert_allclose(preprocess(img, s)[0, 1, 0], [0.0, 0.0, 1.0], atol=1e-6)


def test_preprocess_channel_conversion() -> None:
    gray = np.full((2, 2, 2, 1), 102, np.uint8)
    x = preprocess(gray, spec(layout="NHWC"))
    assert x.shape == (2, 2, 2, 3)
    np.testing.assert_allclose(x, 0.4, atol=1e-6)
    # (N, H, W) is grayscale too
    np.testing.assert_array_equal(preprocess(gray[..., 0], spec(layout="NHWC")), x)

    rgb = np.tile(np.array([255, 0, 51], np.uint8), (1, 2, 2, 1))
    y = preprocess(rgb, spec(channels=1, layout="NCHW"))
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(y, (1.0 + 0.0 + 0.2) / 3, atol=1e-6)


def test_preprocess_center_crop_vs_squash() -> None:
    img = np.zeros((1, 4, 8, 3), np.uint8)
    img[:, :, 2:6] = 200  # the central 4x4 square is 200, the sides are 0
    crop = preprocess(img, spec(height=4, width=4, layout="NHWC", resize="center_crop"))
    np.testing.assert_allclose(crop, 200 / 255, atol=1e-6)
    squash = preprocess(img, spec(height=4, width=4, layout="NHWC", resize="squash"))
    assert squash.shape == (1, 4, 4, 3)
    assert squash[0, :, 0].max() < 0.5 and squash[0, :, 1:3].min() > 0.5  # sides survive
    # a tall image is cropped vertically: rows 2..5 of 8
    tall = np.zeros((1, 8, 4, 1), np.uint8)
    tall[:, 2:6] = 255
    np.testing.assert_allclose(preprocess(tall, spec(height=4, width=4, layout="NHWC")), 1.0)


def test_preprocess_resize_bilinear() -> None:
    flat = np.full((3, 5, 7, 3), 77, np.uint8)
    x = preprocess(flat, spec(height=16, width=12, resize="squash"))
    assert x.shape == (3, 3, 16, 12)
    np.testing.assert_allclose(x, 77 / 255, atol=1e-6)
    ramp = np.repeat(np.linspace(0, 255, 8).astype(np.uint8)[None, None, :, None], 8, 1)
    up = preprocess(ramp, spec(height=16, width=16, layout="NHWC"))[0, 0, :, 0]
    assert np.all(np.diff(up) >= -1e-6) and up[0] < 0.05 and up[-1] > 0.95  # smooth ramp


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 2, 2, 3), np.float32), spec())
    with pytest.raises(ValueError, match="shape"):
        preprocess(np.zeros((1, 2, 2, 4), np.uint8), spec())
    assert preprocess(np.zeros((0, 9, 9, 3), np.uint8), spec()).shape == (0, 3, 2, 2)


# --------------------------------------------------------------------------- OnnxEmbedder


def torch_outputs(rec: ModelRecord, seed: int, imgs: np.ndarray, **kw: object) -> tuple:
    model = tiny_torch_model(seed=seed, dim=rec.dim, classes=rec.head_classes, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        out = model(torch.from_numpy(preprocess(imgs, rec.input)))
    return out if isinstance(out, tuple) else (out, None)


def test_embedder_matches_torch(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = OnnxEmbedder(rec.path, rec, device="cpu")
    assert emb.providers == CPU and emb.on_gpu is False
    imgs = images(5, seed=1)
    e, logits = emb.embed(imgs)
    te, tl = torch_outputs(rec, 0, imgs)
    assert e.dtype == np.float32 and e.shape == (5, 16)
    assert logits is not None and logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(e, te.numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, tl.numpy(), atol=1e-4)
    assert np.abs(e).max() > 1e-3  # not trivially zero


def test_embedder_without_head_and_other_sizes(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-b"]
    emb = OnnxEmbedder(rec.path, rec, intra_op_threads=1)
    assert emb.providers == CPU
    gray = images(3, seed=2, size=45, channels=1)  # 45 px grayscale -> 32 px RGB
    e, logits = emb.embed(gray)
    assert e.shape == (3, 8) and logits is None
    np.testing.assert_allclose(e, torch_outputs(rec, 1, gray)[0].numpy(), atol=1e-4)
    e0, l0 = emb.embed(np.zeros((0, 32, 32, 3), np.uint8))
    assert e0.shape == (0, 8) and l0 is None


def test_embedder_flattens_spatial_output(tmp_path: Path) -> None:
    rec = build_tiny_cnn(tmp_path / "spatial.onnx", seed=3, dim=12, spatial_output=True)
    imgs = images(4, seed=3)
    e, logits = OnnxEmbedder(rec.path, rec).embed(imgs)
    te, tl = torch_outputs(rec, 3, imgs, spatial_output=True)
    assert tuple(te.shape) == (4, 12, 1, 1) and e.shape == (4, 12)
    np.testing.assert_allclose(e, te.numpy().reshape(4, 12), atol=1e-4)
    assert logits is not None and logits.shape == (4, 10)


def test_embedder_corrupt_and_missing_files(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-corrupt"]
    with pytest.raises(ModelFileError, match="model 'tiny-corrupt': cannot load"):
        OnnxEmbedder(rec.path, rec)
    with pytest.raises(ModelFileError, match="'tiny-corrupt'.*no such file"):
        OnnxEmbedder(rec.path + ".missing", rec)


def test_embedder_nan_output(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-nan"]
    emb = OnnxEmbedder(rec.path, rec)  # loads fine; fails on output
    with pytest.raises(ModelFileError, match="model 'tiny-nan'.*NaN"):
        emb.embed(images(2, seed=0))


def test_embedder_record_mismatches(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    wrong_dim = rec.model_copy(update={"dim": 99})
    with pytest.raises(ModelFileError, match=r"'tiny-a'.*shape \(2, 16\), expected \(2, 99\)"):
        OnnxEmbedder(rec.path, wrong_dim).embed(images(2, seed=0))
    wrong_out = rec.model_copy(update={"output": "features"})
    with pytest.raises(ModelFileError, match="no output 'features'"):
        OnnxEmbedder(rec.path, wrong_out)
    wrong_in = rec.model_copy(update={"input_name": "pixels"})
    with pytest.raises(ModelFileError, match="no input 'pixels'"):
        OnnxEmbedder(rec.path, wrong_in)
    gray_spec = InputSpec(height=32, width=32, channels=1, mean=(0.5,), std=(0.5,))
    wrong_size = rec.model_copy(update={"input": gray_spec})
    with pytest.raises(ModelFileError, match="'tiny-a': inference failed"):
        OnnxEmbedder(rec.path, wrong_size).embed(images(2, seed=0))


def test_embedder_gpu_fallback_is_logged(
    tiny_models: dict[str, ModelRecord],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime as ort

    rec = tiny_models["tiny-a"]
    with caplog.at_level(logging.WARNING, logger="shift.inference.onnx_backend"):
        OnnxEmbedder(rec.path, rec, device="cpu")
    assert not caplog.records

    # "auto" asks for CUDA when the runtime claims it (as onnxruntime-gpu does without a GPU);
    # the session's providers tell the truth
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = OnnxEmbedder(rec.path, rec)
    assert emb.providers == CPU and not emb.on_gpu
    assert any("fell back to CPU" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="device"):
        OnnxEmbedder(rec.path, rec, device="tpu")


def test_modules_do_not_import_onnxruntime_or_ray() -> None:
    code = (
        "import sys, shift.inference.executors, shift.inference.onnx_backend, "
        "shift.inference.ray.runtime, shift.inference.ray.pool, shift.inference.preprocess\n"
        "from shift.inference.backends import known_backends\n"
        "assert 'onnxruntime' in known_backends()\n"
        "bad = [m for m in ('onnxruntime', 'ray', 'torch') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --------------------------------------------------------------------------- executors


class Collector:
    def __init__(self) -> None:
        self.results: dict[tuple[str, str], BatchResult] = {}
        self.failures: list[JobFailure] = []

    def on_result(self, r: BatchResult) -> None:
        key = (r.model_name, r.batch_id)
        assert key not in self.results, f"{key} delivered twice"
        self.results[key] = r

    def on_failure(self, f: JobFailure) -> None:
        self.failures.append(f)


BATCHES = [(f"b{i}", images(n, seed=10 + i)) for i, n in enumerate([4, 3, 5])]


def job(rec: ModelRecord, batches: object = None) -> EmbedJob:
    return EmbedJob(rec.name, rec.path, rec, BATCHES if batches is None else batches)  # type: ignore[arg-type]


def counting(batches: list, pulled: list[int]) -> Iterator:
    """A lazy batch source that counts how many batches were pulled from it."""
    for b in batches:
        pulled[0] += 1
        yield b


def make(kind: str) -> InProcessExecutor | RayExecutor:
    return make_executor(kind)


EXECUTORS = ["inprocess", pytest.param("ray", marks=pytest.mark.ray)]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> InProcessExecutor | RayExecutor:
    if request.param == "ray":
        request.getfixturevalue("ray_runtime")
    return make(request.param)


def test_executor_embeds_all_batches(
    executor: InProcessExecutor | RayExecutor, tiny_models: dict[str, ModelRecord]
) -> None:
    a, b = tiny_models["tiny-a"], tiny_models["tiny-b"]
    pulled = [0]
    jobs = [job(a), EmbedJob(b.name, b.path, b, counting(BATCHES, pulled))]
    c = Collector()
    executor.run(jobs, c.on_result, c.on_failure, progress=False)
    assert c.failures == []
    assert sorted(c.results) == sorted((m, bid) for m in ("tiny-a", "tiny-b") for bid, _ in BATCHES)
    assert executor.inference_calls == 6 and pulled == [3]
    for rec in (a, b):
        ref = OnnxEmbedder(rec.path, rec, device="cpu")
        for bid, imgs in BATCHES:
            r = c.results[(rec.name, bid)]
            e, logits = ref.embed(imgs)
            assert r.providers == CPU
            assert r.embeddings.shape == (len(imgs), rec.dim) and r.embeddings.dtype == np.float32
            np.testing.assert_allclose(r.embeddings, e, atol=1e-5)
            if rec.head_output:
                assert r.logits is not None
                np.testing.assert_allclose(r.logits, logits, atol=1e-5)
            else:
                assert r.logits is None


def test_executor_reports_broken_models_and_goes_on(
    executor: InProcessExecutor | RayExecutor, tiny_models: dict[str, ModelRecord]
) -> None:
    pulled = [0]
    nan = tiny_models["tiny-nan"]
    many = BATCHES * 4  # 12 batches; ids repeat, but none of them may be delivered
    jobs = [
        job(tiny_models["tiny-a"]),
        job(tiny_models["tiny-corrupt"]),
        EmbedJob(nan.name, nan.path, nan, counting(many, pulled)),
        job(tiny_models["tiny-b"]),
    ]
    c = Collector()
    executor.run(jobs, c.on_result, c.on_failure, progress=False)
    assert sorted(f.model_name for f in c.failures) == ["tiny-corrupt", "tiny-nan"]
    errors = {f.model_name: f.error for f in c.failures}
    assert "cannot load" in errors["tiny-corrupt"] and "'tiny-corrupt'" in errors["tiny-corrupt"]
    assert "NaN" in errors["tiny-nan"]
    assert {m for m, _ in c.results} == {"tiny-a", "tiny-b"}
    assert len(c.results) == 6
    if isinstance(executor, InProcessExecutor):
        assert executor.inference_calls == 3 + 0 + 1 + 3  # corrupt: fails to load; nan: 1
        assert pulled == [1]  # the rest of a failed model's batches is never produced
    else:
        assert 6 < executor.inference_calls < 6 + 2 + len(many)
        assert pulled[0] < len(many)


def test_executor_callback_errors_propagate(
    executor: InProcessExecutor | RayExecutor, tiny_models: dict[str, ModelRecord]
) -> None:
    def boom(r: BatchResult) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        executor.run([job(tiny_models["tiny-a"])], boom, lambda f: None, progress=False)
    if isinstance(executor, RayExecutor):  # the pool was torn down and its CPUs given back
        from shift.inference.ray.pool import ACTOR_POOL
        from shift.inference.ray.runtime import ray_resources

        assert ACTOR_POOL.actors == []
        assert ray_resources()["CPU"] == pytest.approx(2.0)


def test_inprocess_progress_bars_run(
    tiny_models: dict[str, ModelRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    a = tiny_models["tiny-a"]
    jobs = [job(a), EmbedJob(a.name, a.path, a, iter(BATCHES)), job(tiny_models["tiny-corrupt"])]
    seen: list[str] = []
    failures: list[JobFailure] = []
    InProcessExecutor().run(jobs, lambda r: seen.append(r.batch_id), failures.append, True)
    assert len(seen) == 6 and len(failures) == 1
    assert "tiny-a" in capsys.readouterr().err


@pytest.mark.ray
def test_ray_backpressure_and_pool(ray_runtime: None, tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-b"]
    pulled, delivered, gap = [0], [0], []
    many = [(f"b{i}", images(2, seed=i)) for i in range(30)]

    def on_result(r: BatchResult) -> None:
        delivered[0] += 1
        gap.append(pulled[0] - delivered[0])

    ex = RayExecutor(num_actors=2)
    ex.run([EmbedJob(rec.name, rec.path, rec, counting(many, pulled))], on_result, print, False)
    assert delivered == [30] and ex.inference_calls == 30
    assert ex.last_plan is not None and ex.last_plan.num_actors == 2
    # never more than 2 batches per actor in flight (+1 pulled and waiting for a slot)
    assert max(gap) <= 2 * 2 + 1


def test_plan_pool_sizes() -> None:
    p = plan_pool({"CPU": 2.0})
    assert (p.num_actors, p.options, p.device, p.intra_op_threads) == (
        2,
        {"num_cpus": 1.0},
        "cpu",
        1,
    )
    assert plan_pool({"CPU": 2.0}, num_actors=4).options == {"num_cpus": 0.5}
    assert plan_pool({"CPU": 2.0}, max_useful=1).num_actors == 1
    assert plan_pool({"CPU": 0.0}).options == {"num_cpus": 0.0}
    assert plan_pool({"CPU": 1.5}).num_actors == 1
    g = plan_pool({"CPU": 16.0, "GPU": 2.0})
    assert g.num_actors == 2 and g.options == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert g.device == "auto" and g.intra_op_threads == 8


def test_make_executor_kinds() -> None:
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    assert isinstance(make_executor("ray", address="127.0.0.1:6379"), RayExecutor)
    assert isinstance(make_executor(), AutoExecutor)  # ray or in process per run
    with pytest.raises(ShiftError, match="unknown executor"):
        make_executor("dask")


@pytest.mark.ray
def test_ray_runtime_is_local_and_loopback_only(ray_runtime: None) -> None:
    import ray

    from shift.inference.ray.runtime import ensure_ray, ray_resources

    ensure_ray()  # idempotent
    assert "node:127.0.0.1" in ray.cluster_resources()
    assert ray.cluster_resources()["CPU"] == 2.0 and "GPU" not in ray.cluster_resources()
    # what is free depends on whether the shared actor pool is up
    assert set(ray_resources()) == {"CPU", "GPU"} and ray_resources()["GPU"] == 0.0


def test_executor_data_errors_propagate(
    executor: InProcessExecutor | RayExecutor, tiny_models: dict[str, ModelRecord]
) -> None:
    bad = [("b0", np.zeros((2, 32, 32, 3), np.float32))]  # not uint8: a data bug, not a model's
    failures: list[JobFailure] = []
    with pytest.raises(ValueError, match="uint8"):
        executor.run([job(tiny_models["tiny-a"], bad)], print, failures.append, progress=False)
    assert failures == []


@pytest.mark.ray
def test_ray_pool_is_shared_and_reused(
    ray_runtime: None, tiny_models: dict[str, ModelRecord]
) -> None:
    """Actors start once per process: a second run (any executor) reuses them and their loaded
    models; another plan replaces them; closing gives the CPUs back."""
    from shift.inference.ray.pool import ACTOR_POOL, close_actor_pool

    rec = tiny_models["tiny-a"]
    RayExecutor(num_actors=2).run([job(rec)], lambda r: None, print, False)
    first = list(ACTOR_POOL.actors)
    assert len(first) == 2
    RayExecutor(num_actors=2).run([job(rec)], lambda r: None, print, False)
    assert ACTOR_POOL.actors == first
    RayExecutor(num_actors=1).run([job(rec)], lambda r: None, print, False)
    assert len(ACTOR_POOL.actors) == 1 and ACTOR_POOL.actors[0] not in first
    close_actor_pool()
    from shift.inference.ray.runtime import ray_resources

    assert ACTOR_POOL.actors == [] and ray_resources()["CPU"] == pytest.approx(2.0)
