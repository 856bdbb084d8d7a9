"""The "torch" inference backend (ONNX -> torch through onnx2torch) against ONNX Runtime, on CPU:
outputs, preprocessing, the opset routes, the refusal of a conversion that disagrees, and the
engine end to end. Skipped where onnx2torch is not installed."""

from __future__ import annotations

import hashlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx2torch")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_factory import build_tiny_cnn, tiny_torch_model
from torch import nn  # noqa: E402

from shift.catalog.onnx_import import register_onnx  # noqa: E402
from shift.engine.engine import Engine  # noqa: E402
from shift.errors import BackendError, ShiftError  # noqa: E402
from shift.inference.backends import known_backends, make_embedder  # noqa: E402
from shift.inference.embedder import Embedder  # noqa: E402
from shift.inference.jobs import EmbedJob  # noqa: E402
from shift.inference.local import InProcessExecutor  # noqa: E402
from shift.inference.onnx_backend import OnnxEmbedder  # noqa: E402
from shift.inference.preprocess import preprocess  # noqa: E402
from shift.inference.torch import backend as torch_backend  # noqa: E402
from shift.inference.torch import check as torch_check  # noqa: E402
from shift.inference.torch.backend import PRECISION_ENV, TorchEmbedder  # noqa: E402
from shift.inference.torch.check import row_cosines  # noqa: E402
from shift.inference.torch.convert import convert_onnx, model_opset  # noqa: E402
from shift.records import InputSpec, ModelRecord, Samples  # noqa: E402
from shift.store.registry import Registry  # noqa: E402
from shift.store.tasks import TaskStore  # noqa: E402


def images(n: int, seed: int, size: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size), dtype=np.uint8)


def torch_cpu(rec: ModelRecord, **kw: Any) -> TorchEmbedder:
    return TorchEmbedder(rec.path, rec, device="cpu", **kw)


def assert_agrees(got: np.ndarray, want: np.ndarray, min_cos: float = 0.999) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    assert row_cosines(got, want).min() >= min_cos


def record_of(path: Path, name: str, dim: int, head: int | None, size: int = 32) -> ModelRecord:
    return ModelRecord(
        name=name,
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        params=0,
        dim=dim,
        output="embedding",
        head_output="logits" if head else None,
        head_classes=head,
        input_name="input",
        input=InputSpec(height=size, width=size),
        source="test",
    )


def image_graph(
    nodes: list[Any], dim: int, inits: list[Any] | None = None, extra_inputs: tuple[str, ...] = ()
) -> Any:
    """An opset-17 model: "input" (batch, 3, 32, 32) (+ ``extra_inputs``) -> ``nodes`` ->
    "embedding" (batch, dim)."""
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])]
    inputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", dim]) for n in extra_inputs
    ]
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph(nodes, "g", inputs, [out], inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ---- outputs against ONNX Runtime ------------------------------------------------------------


def test_embeddings_and_logits_match_onnxruntime(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = make_embedder("torch", rec.path, rec, device="cpu")
    assert isinstance(emb, TorchEmbedder) and isinstance(emb, Embedder)
    assert "torch" in known_backends()
    assert emb.device == "cpu" and emb.providers == ["torch-cpu-fp32"]
    imgs = images(7, seed=0)
    e, lg = emb.embed(imgs)
    ref_e, ref_lg = OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)
    assert_agrees(e, ref_e)
    np.testing.assert_allclose(e, ref_e, rtol=1e-4, atol=1e-5)
    assert lg is not None and ref_lg is not None
    assert_agrees(lg, ref_lg)
    np.testing.assert_allclose(lg, ref_lg, rtol=1e-4, atol=1e-5)


def test_a_model_without_a_head_gives_no_logits(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-b"]
    e, lg = torch_cpu(rec).embed(images(5, seed=1))
    assert e.shape == (5, rec.dim) and lg is None
    assert_agrees(e, OnnxEmbedder(rec.path, rec, device="cpu").embed(images(5, seed=1))[0])


def test_a_batch_of_one_and_an_empty_batch(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = torch_cpu(rec)
    e, lg = emb.embed(images(1, seed=2))
    assert e.shape == (1, rec.dim) and lg is not None and lg.shape == (1, rec.head_classes)
    assert_agrees(e, OnnxEmbedder(rec.path, rec, device="cpu").embed(images(1, seed=2))[0])
    e0, lg0 = emb.embed(np.zeros((0, 32, 32, 3), np.uint8))
    assert e0.shape == (0, rec.dim) and lg0 is not None and lg0.shape == (0, rec.head_classes)


def test_a_spatial_embedding_is_flattened(tmp_path: Path) -> None:
    rec = build_tiny_cnn(tmp_path / "spatial.onnx", seed=4, spatial_output=True)
    e, _ = torch_cpu(rec).embed(images(3, seed=3))
    assert e.shape == (3, rec.dim)


def test_nan_outputs_are_refused_by_name(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-nan"]  # ORT gives NaN too: the check has nothing to compare
    with pytest.raises(ShiftError, match="tiny-nan"):
        torch_cpu(rec).embed(images(2, seed=4))


def test_bad_input_and_options_are_named_errors(tiny_models: dict[str, ModelRecord]) -> None:
    rec = tiny_models["tiny-a"]
    emb = torch_cpu(rec)
    with pytest.raises(ShiftError, match="uint8"):
        emb.embed(images(2, seed=5).astype(np.float32))
    with pytest.raises(ShiftError, match="unknown precision 'fp16'"):
        torch_cpu(rec, precision="fp16")
    with pytest.raises(ShiftError, match="device must be"):
        TorchEmbedder(rec.path, rec, device="tpu")
    with pytest.raises(ShiftError, match="no such file"):
        TorchEmbedder("/nonexistent.onnx", rec)


# ---- precision and device --------------------------------------------------------------------


def test_bf16_is_a_precision_choice_recorded_in_providers(
    tiny_models: dict[str, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = tiny_models["tiny-a"]
    imgs = images(6, seed=6)
    fp32, _ = torch_cpu(rec).embed(imgs)
    bf16 = torch_cpu(rec, precision="bf16")
    assert bf16.providers == ["torch-cpu-bf16"]
    e, _ = bf16.embed(imgs)
    assert e.dtype == np.float32 and row_cosines(e, fp32).min() >= 0.99
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert torch_cpu(rec).providers == ["torch-cpu-bf16"]
    assert torch_cpu(rec, precision="fp32").providers == ["torch-cpu-fp32"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a CPU-only machine")
def test_cuda_requested_without_a_gpu_falls_back_to_cpu(
    tiny_models: dict[str, ModelRecord], caplog: pytest.LogCaptureFixture
) -> None:
    rec = tiny_models["tiny-a"]
    with caplog.at_level(logging.WARNING):
        emb = TorchEmbedder(rec.path, rec, device="cuda")
    assert emb.device == "cpu" and emb.providers == ["torch-cpu-fp32"]
    assert "CUDA requested" in caplog.text


# ---- preprocessing: preprocess.py's definition, computed by torch ----------------------------

SPECS = [
    InputSpec(height=32, width=32),
    InputSpec(height=32, width=32, color="BGR", mean=(0.5,), std=(0.25,)),
    InputSpec(height=32, width=32, layout="NHWC", resize="squash"),
    InputSpec(height=32, width=24, channels=1, mean=(0.5,), std=(0.5,)),
]


@pytest.mark.parametrize("spec", SPECS, ids=["default", "bgr", "nhwc-squash", "gray"])
@pytest.mark.parametrize("shape", [(32, 32, 3), (32, 24, 1), (40, 48, 3), (45, 30)])
def test_model_input_is_preprocess_computed_by_torch(
    tiny_models: dict[str, ModelRecord], spec: InputSpec, shape: tuple[int, ...]
) -> None:
    rec = tiny_models["tiny-a"].model_copy(update={"input": spec})
    emb = torch_cpu(rec, verify=False)  # the graph does not take every spec: inputs only
    imgs = images(3, seed=7, size=shape)
    got = emb.model_input(imgs).numpy()
    want = preprocess(imgs, spec)
    assert got.shape == want.shape
    # resized images too: both resize through preprocess.resize_images (PIL), so the same pixels
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resized_grayscale_images_embed_like_onnxruntime(
    tiny_models: dict[str, ModelRecord],
) -> None:
    rec = tiny_models["tiny-a"]
    imgs = images(4, seed=8, size=(45, 30))
    e, lg = torch_cpu(rec).embed(imgs)
    ref_e, ref_lg = OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)
    assert_agrees(e, ref_e)
    assert lg is not None and ref_lg is not None
    assert_agrees(lg, ref_lg)


# ---- opsets: the conversion routes ----------------------------------------------------------


def test_opset_17_converts_as_it_is_and_opset_20_through_the_version_converter(
    tmp_path: Path,
) -> None:
    for opset, route in [(17, "opset 17"), (20, "opset 20 -> 17")]:
        rec = build_tiny_cnn(tmp_path / f"o{opset}.onnx", seed=5, opset=opset)
        assert model_opset(onnx.load(rec.path)) == opset
        emb = torch_cpu(rec)
        assert emb.route == route
        imgs = images(4, seed=9)
        assert_agrees(emb.embed(imgs)[0], OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)[0])


def test_opset_20_cannot_be_converted_as_it_is() -> None:
    """Why the routes exist: onnx2torch 1.5.15 has no converter for Constant at opset >= 19.
    (When a release adds one, the first route simply succeeds.)"""
    import onnx2torch

    node = helper.make_node("Constant", [], ["embedding"], value_floats=[1.0, 2.0])
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(NotImplementedError, match="Constant"):
        onnx2torch.convert(model)


class FillCNN(nn.Module):
    """TinyCNN's embedding plus ``torch.full`` of the dynamic batch size: exported as
    ``ConstantOfShape``, which onnx's version converter cannot take from opset 20 to 19."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_torch_model(seed=6, classes=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.full((x.shape[0], 16), 0.5)


def export(module: nn.Module, path: Path, opset: int, outputs: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (torch.zeros(2, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in ["input", *outputs]},
            dynamo=False,
            opset_version=opset,
        )


def test_constant_of_shape_at_opset_20_is_rewritten_as_expand(tmp_path: Path) -> None:
    from onnx import version_converter

    path = tmp_path / "fill.onnx"
    export(FillCNN(), path, 20, ["embedding"])
    model = onnx.load(str(path))
    assert "ConstantOfShape" in {n.op_type for n in model.graph.node}
    with pytest.raises(Exception, match="ConstantOfShape"):
        version_converter.convert_version(model, 17)
    rec = record_of(path, "fill", 16, None)
    emb = torch_cpu(rec)
    assert emb.route == "opset 20 -> 17 (ConstantOfShape as Expand)"
    imgs = images(3, seed=10)
    e, _ = emb.embed(imgs)
    assert_agrees(e, OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)[0])
    e1, _ = emb.embed(imgs[:1])  # the fill follows the batch size
    np.testing.assert_allclose(e1, e[:1], rtol=1e-5, atol=1e-6)


class PadCNN(nn.Module):
    """TinyCNN behind an explicit zero padding (as EfficientNet-Lite's "same" padding): exported
    at opset 20 as ``Pad`` 19, which onnx's version converter cannot take to 18."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_torch_model(seed=8, classes=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(nn.functional.pad(x, (1, 2, 0, 1))[:, :, :32, :32])


def test_pad_at_opset_20_is_kept_aside_while_the_rest_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "pad.onnx"
    export(PadCNN(), path, 20, ["embedding"])
    assert "Pad" in {n.op_type for n in onnx.load(str(path)).graph.node}
    rec = record_of(path, "pad", 16, None)
    emb = torch_cpu(rec)
    assert emb.route.startswith("opset 20 -> 17 (") and "Pad kept" in emb.route
    imgs = images(3, seed=16)
    assert_agrees(emb.embed(imgs)[0], OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)[0])


def test_a_pad_in_wrap_mode_is_refused(tmp_path: Path) -> None:
    """``wrap`` (opset 19) has no opset-13 meaning: that Pad cannot be set aside."""
    from onnx import numpy_helper

    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["padded"], mode="wrap"),
        helper.make_node("GlobalAveragePool", ["padded"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
    ]
    model = image_graph(nodes, 3, [pads])
    model.opset_import[0].version = 19
    path = tmp_path / "wrap.onnx"
    onnx.save(model, str(path))
    rec = record_of(path, "wrap", 3, None)
    OnnxEmbedder(rec.path, rec, device="cpu").embed(images(2, seed=17))  # ORT runs it
    with pytest.raises(BackendError, match="'wrap'.*Pad"):
        torch_cpu(rec)


def test_weights_shared_through_identity_and_constant_nodes_convert(tmp_path: Path) -> None:
    """The legacy exporter shares equal initializers (the zero biases of random BatchNorms)
    through ``Identity`` nodes, and emits ``Constant`` nodes; onnx2torch reads weights only
    from initializers, so both are folded into initializers first."""
    import onnx2torch
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)), ("b", (4,))]
    ]
    nodes = [
        helper.make_node("Identity", ["b"], ["b_shared"]),
        helper.make_node("Constant", [], ["scale"], value_float=0.5),
        helper.make_node("Conv", ["input", "w1", "b"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b_shared"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("GlobalAveragePool", ["m"], ["p"]),
        helper.make_node("Flatten", ["p"], ["embedding"]),
    ]
    model = image_graph(nodes, 4, inits)
    with pytest.raises(KeyError, match="b_shared"):  # what onnx2torch does with it as it is
        onnx2torch.convert(model)
    path = tmp_path / "shared.onnx"
    onnx.save(model, str(path))
    rec = record_of(path, "shared", 4, None)
    emb = torch_cpu(rec)
    assert emb.route == "opset 17"
    imgs = images(3, seed=13)
    assert_agrees(emb.embed(imgs)[0], OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)[0])


def test_an_operator_onnx2torch_lacks_is_refused_by_name(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Hardmax", ["flat"], ["embedding"]),
    ]
    path = tmp_path / "hardmax.onnx"
    onnx.save(image_graph(nodes, 3), str(path))
    rec = record_of(path, "hardmax", 3, None)
    OnnxEmbedder(rec.path, rec, device="cpu").embed(images(2, seed=11))  # ORT runs it
    with pytest.raises(BackendError, match="'hardmax'.*Hardmax") as err:
        torch_cpu(rec)
    assert "--backend onnxruntime" in str(err.value) and "opset" in str(err.value)


def test_a_graph_with_two_inputs_is_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Add", ["flat", "other"], ["embedding"]),
    ]
    path = tmp_path / "two.onnx"
    onnx.save(image_graph(nodes, 3, extra_inputs=("other",)), str(path))
    with pytest.raises(BackendError, match="one input, 'input'.*'other'"):
        convert_onnx(str(path), record_of(path, "two", 3, None))


# ---- the check against ONNX Runtime ----------------------------------------------------------


def test_a_conversion_that_disagrees_with_onnxruntime_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converted module's embedding is broken on purpose (columns reversed); the check
    itself (ONNX Runtime on the fixed batch, per-row cosine) is the real one."""
    rec = build_tiny_cnn(tmp_path / "broken.onnx", seed=7)
    real_convert = torch_backend.convert_onnx

    class Reversed(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            emb, logits = self.inner(x)
            return emb.flip(1), logits

    def broken(path: str, record: ModelRecord) -> Any:
        converted = real_convert(path, record)
        converted.module = Reversed(converted.module)
        return converted

    torch_check.forget_verdicts()
    try:
        monkeypatch.setattr(torch_backend, "convert_onnx", broken)
        with pytest.raises(BackendError, match="disagrees with ONNX Runtime") as err:
            torch_cpu(rec)
        assert "'embedding'" in str(err.value) and "cosine" in str(err.value)
        assert "--backend onnxruntime" in str(err.value)
        monkeypatch.setattr(torch_backend, "convert_onnx", real_convert)
        with pytest.raises(BackendError, match="disagrees"):  # the verdict is kept
            torch_cpu(rec)
        # the same weights read through other outputs: a verdict of its own (checked, agrees)
        no_head = rec.model_copy(update={"head_output": None, "head_classes": None})
        assert torch_check.verdict_key(no_head, "torch") != torch_check.verdict_key(rec, "torch")
        torch_cpu(no_head)
        torch_cpu(rec, verify=False)  # unchecked, it loads
        torch_check.forget_verdicts()
        torch_cpu(rec)  # checked again: the real conversion agrees
    finally:
        torch_check.forget_verdicts()


def test_missing_onnx2torch_is_a_named_error_with_the_install_command(
    tiny_models: dict[str, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = tiny_models["tiny-a"]
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # `import onnx2torch` fails
    with pytest.raises(BackendError, match="needs onnx2torch and torchvision") as err:
        make_embedder("torch", rec.path, rec)
    assert "pip install" in str(err.value) and "onnx2torch" in str(err.value)
    failures: list[Any] = []
    InProcessExecutor().run(
        [EmbedJob(rec.name, rec.path, rec, [("b0", images(2, seed=12))], backend="torch")],
        lambda r: pytest.fail("no batch should run"),
        failures.append,
        False,
    )
    assert [f.model_name for f in failures] == [rec.name]
    assert "needs onnx2torch" in failures[0].error


# ---- end to end ------------------------------------------------------------------------------


def toy_samples(n: int = 80, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


def home(path: Path, n_models: int) -> tuple[Registry, list[ModelRecord]]:
    reg = Registry.open(path)
    recs = [
        register_onnx(reg, build_tiny_cnn(path.parent / f"m{i}.onnx", seed=i).path, f"m{i}")
        for i in range(n_models)
    ]
    TaskStore(reg).add("toy", toy_samples(), kind="npz", source="gen")
    return reg, recs


def test_engine_indexes_and_scores_with_the_torch_backend(tmp_path: Path) -> None:
    reg, recs = home(tmp_path / "torch" / "home", 2)
    engine = Engine(reg, executor="inprocess", backend="torch", batch_size=32)
    scores = engine.scores("toy", recs, "knn")
    assert engine.last_report is not None and engine.last_report.failed == {}
    assert engine.last_report.providers == {"m0": ["torch-cpu-fp32"], "m1": ["torch-cpu-fp32"]}
    indexes = engine.index("toy", recs)
    entries = reg.index_entries("toy")
    rows = {r["sample_id"]: r for r in reg.samples("toy")}
    for rec in recs:
        idx = indexes[rec.name]
        assert idx.meta.backend == "torch" and idx.meta.providers == ["torch-cpu-fp32"]
        assert entries[rec.name]["backend"] == "torch"
        imgs = TaskStore(reg).load("toy", [rows[s] for s in idx.sample_ids])
        want, want_lg = OnnxEmbedder(str(reg.model_file(rec)), rec, device="cpu").embed(imgs)
        np.testing.assert_allclose(np.asarray(idx.vectors), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(idx.logits), want_lg, rtol=1e-4, atol=1e-5)
    reg.close()

    ort_reg, ort_recs = home(tmp_path / "ort" / "home", 2)
    ort_scores = Engine(ort_reg, executor="inprocess", batch_size=32).scores("toy", ort_recs, "knn")
    assert scores == pytest.approx(ort_scores, abs=1e-9)  # same neighbours, same accuracy
    ort_reg.close()


# ---- one thread per embedder -----------------------------------------------------------------


def test_every_batch_runs_on_the_embedders_own_thread(
    tiny_models: dict[str, ModelRecord],
) -> None:
    """cuDNN's autotuning cache is per thread, and the executors call ``embed`` from a fresh
    thread per batch (to time it out): the module must still always run on one thread."""
    import threading

    rec = tiny_models["tiny-a"]
    held = [torch_cpu(rec)]
    ran_on: list[int] = []
    hook = held[0].module.register_forward_pre_hook(lambda *_: ran_on.append(threading.get_ident()))
    callers: list[int] = []

    def call() -> None:
        callers.append(threading.get_ident())
        held[0].embed(images(2, seed=14))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    call()  # and from the test's thread
    hook.remove()
    assert len(ran_on) == 4 and len(set(ran_on)) == 1
    assert ran_on[0] not in callers
    with pytest.raises(ShiftError, match="uint8"):  # errors cross back to the caller
        held[0].embed(images(2, seed=15).astype(np.float32))

    def worker_alive() -> bool:
        return any(t.ident == ran_on[0] and t.is_alive() for t in threading.enumerate())

    assert worker_alive()
    held.clear()  # the thread ends with its embedder (a daemon: it never holds the process)
    import gc
    import time

    gc.collect()
    deadline = time.monotonic() + 10
    while worker_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not worker_alive()


# ---- search results unchanged by the backend ------------------------------------------------

AGREEMENT_STRATEGIES = ("knn", "knn_cosine", "linear", "logme", "leep", "hybrid(linear)")


def test_search_results_are_unchanged_by_the_backend(tmp_path: Path) -> None:
    """Two tasks x four tiny models, ranked with ONNX Runtime and with the torch backend: the
    1-NN and linear scores within 0.5 points, every strategy's top 2 the same (the demo-home
    figures: benchmarks/bench_backend_agreement.py)."""
    from shift.client import Client

    ranks: dict[str, dict[tuple[str, str], Any]] = {}
    for backend in ("onnxruntime", "torch"):
        reg = Registry.open(tmp_path / backend / "home")
        for i in range(4):
            m = build_tiny_cnn(tmp_path / backend / f"m{i}.onnx", seed=10 + i, dim=8 + 4 * i)
            register_onnx(reg, m.path, f"m{i}", imagenet_top1=60.0 + i, imagenet_source="test")
        for t, seed in (("alpha", 1), ("beta", 2)):
            TaskStore(reg).add(t, toy_samples(seed=seed), kind="npz", source="gen")
        reg.close()
        with Client(tmp_path / backend / "home", executor="inprocess", backend=backend) as c:
            ranks[backend] = {
                (t, s): c.query(f"SELECT * FROM pool all WHERE task={t} RANK BY {s}")
                for t in ("alpha", "beta")
                for s in AGREEMENT_STRATEGIES
            }
            entries = c.registry.index_entries("alpha")
            assert {e["backend"] for e in entries.values()} == {backend} and len(entries) == 4
    for (task, strategy), ort in ranks["onnxruntime"].items():
        torch_res = ranks["torch"][(task, strategy)]
        assert torch_res.names[:2] == ort.names[:2], (task, strategy)
        if strategy in ("knn", "linear"):
            for m, score in ort.scores.items():
                assert torch_res.scores[m] == pytest.approx(score, abs=0.005), (task, m)
