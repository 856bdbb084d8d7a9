"""Read what an ONNX file says about itself: image input, outputs and their sizes, parameters;
and check that it runs.

``describe_onnx`` never runs the model; it validates the graph (``onnx.checker``) and reports a
broken or unsuitable file as a :class:`ModelFileError` naming it: among them a graph with no
outputs, and one that keeps tensors in external data files (only the ``.onnx`` file is copied
into the home and hashed, so such a model could never load there). A valid graph may still not
run (an operator ONNX Runtime does not have, a wrong declared output size, an endless loop):
``check_runs`` runs it once, on one small batch of random inputs, before it is registered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shift.config import seconds_setting
from shift.errors import ModelFileError

if TYPE_CHECKING:
    from shift.records import ModelRecord

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
    #: ``domain:op`` of every operator outside ONNX's own sets and ONNX Runtime's
    #: (``com.microsoft``) that no function of the model defines: custom operators
    custom_ops: tuple[str, ...] = field(default=())


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
        custom_ops=_custom_ops(model),
    )


#: operator domains ONNX Runtime's CPU build implements (ONNX's own and its contrib ops)
_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"}


def _custom_ops(model: Any) -> tuple[str, ...]:
    """``domain:op`` of the nodes (subgraphs and functions included) whose operator is neither
    in a known domain nor a function of the model itself."""
    local = {(f.domain, f.name) for f in model.functions}

    def nodes(g: Any) -> Iterator[Any]:
        for node in g.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from nodes(attr.g)
                for sub in attr.graphs:
                    yield from nodes(sub)

    found = [n for n in nodes(model.graph)] + [n for f in model.functions for n in f.node]
    return tuple(
        sorted(
            {
                f"{n.domain}:{n.op_type}"
                for n in found
                if n.domain not in _KNOWN_DOMAINS and (n.domain, n.op_type) not in local
            }
        )
    )


# ---- one run before a model is registered --------------------------------------------------

#: the inputs of the run ``check_runs`` makes (a graph with a fixed batch size: that many)
CHECK_BATCH = 2
#: ONNX Runtime threads for that run (in process, beside whatever else runs)
CHECK_THREADS = 1
#: the run is bounded by the inference timeout per batch (``shift.inference.jobs``)
BATCH_TIMEOUT_ENV = "SHIFT_BATCH_TIMEOUT_S"
DEFAULT_BATCH_TIMEOUT_S = 600.0
_INPUT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


def check_runs(
    path: str | Path, record: ModelRecord, info: OnnxInfo, timeout_s: float | None = None
) -> None:
    """Run ``path`` once in ONNX Runtime (CPU, :data:`CHECK_THREADS` threads, no memory arena)
    on :data:`CHECK_BATCH` random inputs of ``record``'s input size, fed as indexing feeds
    them, and check each output ``record`` names flattens to (batch, its size). Raises
    :class:`ModelFileError` naming the model and the file when the session does not load
    (e.g. a custom operator), the run fails or does not finish within ``timeout_s`` (default:
    ``$SHIFT_BATCH_TIMEOUT_S``, else 600 s, the timeout of one batch at index time), or an
    output has another size. Values are not judged: NaN is the index's to report."""
    import numpy as np
    import onnxruntime as ort

    p = Path(path)
    where = f"model {record.name!r}: {p.name} cannot run in ONNX Runtime"
    custom = ", ".join(info.custom_ops)
    hint = (
        f"it uses operators ONNX Runtime does not have ({custom}): export the model with "
        "standard ONNX operators"
        if custom
        else "check that onnxruntime.InferenceSession(path).run(...) works on the file"
    )
    timeout = seconds_setting(timeout_s, BATCH_TIMEOUT_ENV, DEFAULT_BATCH_TIMEOUT_S)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only (the error is raised below)
    opts.enable_cpu_mem_arena = False
    opts.intra_op_num_threads = CHECK_THREADS
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelFileError(f"{where}: {_reason(e)}", hint=hint) from None
    feed = next((i for i in session.get_inputs() if i.name == record.input_name), None)
    if feed is None:  # describe_onnx read this input from the graph: not expected
        raise ModelFileError(f"{where}: it has no input {record.input_name!r}", hint=hint)
    fixed = feed.shape[0] if feed.shape else None
    n = fixed if isinstance(fixed, int) and fixed > 0 else CHECK_BATCH
    spec = record.input
    c, h, w = spec.channels, spec.height, spec.width
    shape = (n, c, h, w) if spec.layout == "NCHW" else (n, h, w, c)
    x = (
        np.random.default_rng(0)
        .standard_normal(shape)
        .astype(_INPUT_TYPES.get(feed.type, "float32"))
    )
    wanted = [(record.output, record.dim)]
    if record.head_output is not None:
        wanted.append((record.head_output, record.head_classes))
    run_options = ort.RunOptions()
    run_options.log_severity_level = 4  # a terminated run is reported below
    timer = threading.Timer(timeout, lambda: setattr(run_options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        outs = session.run([o for o, _ in wanted], {feed.name: x}, run_options)
    except Exception as e:
        if run_options.terminate:
            raise ModelFileError(
                f"{where}: it did not finish one batch of {n} within {timeout:g} s",
                hint=f"a model must embed a batch within ${BATCH_TIMEOUT_ENV} seconds",
            ) from None
        raise ModelFileError(f"{where}: {_reason(e)}", hint=hint) from None
    finally:
        timer.cancel()
    for (name, size), out in zip(wanted, outs, strict=True):
        arr = np.asarray(out)
        flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 2 else arr
        if flat.ndim != 2 or flat.shape != (n, size):
            raise ModelFileError(
                f"model {record.name!r}: {p.name}: output {name!r} has shape "
                f"{tuple(arr.shape)} on a batch of {n}, where the graph declares ({n}, {size})",
                hint="export the model with the output sizes it computes",
            )


def _reason(e: BaseException) -> str:
    """ONNX Runtime's message, on one line and cut to 300 characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:299] + "…"


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
