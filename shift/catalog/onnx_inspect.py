"""Read what an ONNX file says about itself: image input, outputs and their sizes, parameters.

``describe_onnx`` never runs the model; it validates the graph (``onnx.checker``) and reports a
broken or unsuitable file as a :class:`ModelFileError` naming it: among them a graph with no
outputs, and one that keeps tensors in external data files (only the ``.onnx`` file is copied
into the home and hashed, so such a model could never load there)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shift.errors import ModelFileError

_EMBEDDING_NAMES = ("embedding", "embeddings", "features", "feature", "pooled", "pre_logits")
_HEAD_NAMES = ("logits", "classifier", "head", "output_logits")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]

    @property
    def feature_size(self) -> int | None:
        """Product of the non-batch dims if all are static, else None."""
        size = 1
        for d in self.shape[1:]:
            if not isinstance(d, int) or d <= 0:
                return None
            size *= d
        return size


@dataclass(frozen=True)
class OnnxInfo:
    path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    params: int
    opset: int


def describe_onnx(path: str | Path) -> OnnxInfo:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a dependency
        raise ModelFileError("the onnx package is needed to read models") from e
    try:
        model = onnx.load(str(p), load_external_data=False)
        external = _external_data(model.graph)
        if not external:
            onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{p.name}: not a valid ONNX model ({first[:200]})",
            hint="check the file is complete and was exported with onnx",
        ) from None
    if external:
        raise ModelFileError(
            f"{p.name}: {len(external)} tensors are stored in external data files "
            f"({', '.join(sorted(set(external))[:3])}); shift copies and hashes only the "
            ".onnx file, so this model could not load from the home",
            hint="save it as one file: onnx.save(onnx.load(path), out_path) (models < 2 GB)",
        )
    graph = model.graph
    if not graph.output:
        raise ModelFileError(
            f"{p.name}: the graph has no outputs, so there is no embedding to read",
            hint="export the model with its embedding (and logits) as graph outputs",
        )
    init_names = {i.name for i in graph.initializer}

    def info(v: object) -> TensorInfo:
        dims: list[int | str | None] = []
        for d in v.type.tensor_type.shape.dim:  # type: ignore[attr-defined]
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return TensorInfo(v.name, tuple(dims))  # type: ignore[attr-defined]

    params = 0
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        params += n
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        path=p,
        inputs=[info(v) for v in graph.input if v.name not in init_names],
        outputs=[info(v) for v in graph.output],
        params=params,
        opset=opset,
    )


def _external_data(graph: Any) -> list[str]:
    """The external data file of every tensor of ``graph`` (subgraphs included) stored outside
    the model file."""
    import onnx

    def tensors(g: Any) -> Iterator[Any]:
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    return [
        next((e.value for e in t.external_data if e.key == "location"), "?")
        for t in tensors(graph)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]


def pick_outputs(
    info: OnnxInfo, output: str | None, head_output: str | None
) -> tuple[TensorInfo, TensorInfo | None]:
    """Choose the embedding output (and the classifier-head output, if any)."""
    by_name = {o.name: o for o in info.outputs}
    names = ", ".join(by_name)
    for wanted in (output, head_output):
        if wanted is not None and wanted not in by_name:
            raise ModelFileError(
                f"{info.path.name}: no output named {wanted!r}", hint=f"outputs: {names}"
            )
    if output is None:
        candidates = [o for o in info.outputs if o.name != head_output]
        named = [o for o in candidates if o.name.lower() in _EMBEDDING_NAMES]
        if len(candidates) == 1:
            output = candidates[0].name
        elif len(named) == 1:
            output = named[0].name
        else:
            raise ModelFileError(
                f"{info.path.name}: several outputs, which one is the embedding?",
                hint=f"pass --output (outputs: {names})",
            )
    if head_output is None:
        heads = [o for o in info.outputs if o.name != output and o.name.lower() in _HEAD_NAMES]
        head_output = heads[0].name if len(heads) == 1 else None
    return by_name[output], (by_name[head_output] if head_output else None)


def image_input(info: OnnxInfo, size: int | None = None) -> tuple[TensorInfo, str, int, int, int]:
    """The single image input → (tensor, layout NCHW|NHWC, channels, height, width)."""
    if len(info.inputs) != 1:
        raise ModelFileError(
            f"{info.path.name}: expected one image input, found "
            f"{len(info.inputs)} ({', '.join(i.name for i in info.inputs)})"
        )
    t = info.inputs[0]
    if len(t.shape) != 4:
        raise ModelFileError(
            f"{info.path.name}: input {t.name!r} has shape {list(t.shape)}; "
            "an image model takes a 4-d batch (N, C, H, W) or (N, H, W, C)"
        )
    _, a, b, c = t.shape
    if a in (1, 3):
        layout, ch, h, w = "NCHW", a, b, c
    elif c in (1, 3):
        layout, ch, h, w = "NHWC", c, a, b
    else:
        raise ModelFileError(
            f"{info.path.name}: cannot tell the channel axis of input shape {list(t.shape)}",
            hint="1 or 3 channels expected in axis 1 or 3",
        )
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        if size is None:
            raise ModelFileError(
                f"{info.path.name}: the input size is dynamic ({list(t.shape)})",
                hint="pass --input-size PIXELS",
            )
        h = w = size
    elif size is not None and (h, w) != (size, size):
        raise ModelFileError(
            f"{info.path.name}: --input-size {size} contradicts the graph's fixed input {h}x{w}"
        )
    return t, layout, int(ch), int(h), int(w)
