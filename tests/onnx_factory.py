"""Tiny real ONNX models for tests, built from seeded torch modules with the legacy exporter
(0.1 s per export, no onnxscript needed)."""

from __future__ import annotations

import hashlib
import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from shift.records import InputSpec, ModelRecord


class TinyCNN(nn.Module):
    """conv(3->8, s2) -> relu -> conv(8->16, s2) -> relu -> global avg pool -> linear(16->dim)
    = embedding; optional linear(dim->classes) head = logits."""

    def __init__(self, dim: int = 16, classes: int | None = 10, spatial_output: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.embed = nn.Linear(16, dim)
        self.head = nn.Linear(dim, classes) if classes else None
        self.spatial_output = spatial_output

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(self.features(x).mean(dim=(2, 3)))
        emb = z[:, :, None, None] if self.spatial_output else z
        if self.head is None:
            return emb
        return emb, self.head(z)


def tiny_torch_model(
    *,
    seed: int,
    dim: int = 16,
    classes: int | None = 10,
    nan: bool = False,
    spatial_output: bool = False,
) -> TinyCNN:
    """The seeded torch module ``build_tiny_cnn`` exports (same seed -> same weights)."""
    torch.manual_seed(seed)
    model = TinyCNN(dim, classes, spatial_output).eval()
    if nan:
        with torch.no_grad():
            model.embed.weight.fill_(float("nan"))
    return model


def build_tiny_cnn(
    path: str | Path,
    *,
    seed: int,
    size: int = 32,
    dim: int = 16,
    classes: int | None = 10,
    nan: bool = False,
    name: str | None = None,
    spatial_output: bool = False,
    opset: int | None = None,
) -> ModelRecord:
    """Export a seeded ``TinyCNN`` to ``path`` (input "input" NCHW float32 (B, 3, size, size),
    dynamic batch; outputs "embedding" and, with ``classes``, "logits") and return its record.

    ``nan=True``: every output is NaN. ``spatial_output=True``: the embedding is (B, dim, 1, 1).
    ``name`` defaults to the file stem; ``opset``, to the exporter's default.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = tiny_torch_model(
        seed=seed, dim=dim, classes=classes, nan=nan, spatial_output=spatial_output
    )
    outputs = ["embedding"] + (["logits"] if classes else [])
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in ["input", *outputs]},
            dynamo=False,
            opset_version=opset,
        )
    return ModelRecord(
        name=name or path.stem,
        path=str(path.resolve()),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        family="tiny-cnn",
        params=sum(p.numel() for p in model.parameters()),
        dim=dim,
        output="embedding",
        head_output="logits" if classes else None,
        head_classes=classes or None,
        input_name="input",
        input=InputSpec(height=size, width=size),
        source="test",
    )


def write_corrupt_model(path: str | Path, *, name: str | None = None, seed: int = 0) -> ModelRecord:
    """Random bytes in ``path`` with a plausible record (for load-failure tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed))
    path.write_bytes(bytes(data.to(torch.uint8).tolist()))
    return ModelRecord(
        name=name or path.stem,
        path=str(path.resolve()),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        params=0,
        dim=16,
        output="embedding",
        input_name="input",
        input=InputSpec(height=32, width=32),
        source="test",
    )


def with_custom_op(src: str | Path, out: str | Path, *, domain: str = "com.example") -> Path:
    """``src`` (a ``build_tiny_cnn`` file) with its embedding passed through a node of a custom
    operator (``domain``:Foo) that ONNX Runtime does not have: the graph is valid ONNX
    (``onnx.checker`` accepts it) but no session can load it."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    for node in model.graph.node:
        for names in (node.input, node.output):
            for i, n in enumerate(names):
                if n == "embedding":
                    names[i] = "before_foo"
    model.graph.node.append(helper.make_node("Foo", ["before_foo"], ["embedding"], domain=domain))
    model.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


def build_endless_loop(path: Path, trips: int = 10**15, size: int = 8) -> ModelRecord:
    """A real ONNX graph that runs ``trips`` iterations of a Loop before it outputs the
    global-average-pooled input (N, 3): with the default it never finishes."""
    from onnx import TensorProto, checker, helper, save

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "go", "input"], ["looped"], body=body),
            helper.make_node("GlobalAveragePool", ["looped"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
        ],
        "endless",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
            helper.make_tensor("go", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    save(model, str(path))
    return ModelRecord(
        name=path.stem,
        path=str(path.resolve()),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        params=0,
        dim=3,
        output="embedding",
        input_name="input",
        input=InputSpec(height=size, width=size),
        source="test",
    )
