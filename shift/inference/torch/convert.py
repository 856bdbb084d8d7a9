"""ONNX -> torch for the "torch" backend, through onnx2torch (imported here, lazily).

onnx2torch 1.5.15 converts each node by its (type, version) and has no converter for several
versions newer than opset 17 (``Constant`` 19+, ``ConstantOfShape`` 20+, ``ReduceMean`` 18+...),
while shift's catalog is exported at opset 20; and it reads weights only from initializers. So
``Constant`` nodes, and ``Identity`` nodes of an initializer, become initializers first (the
same tensors), and ``convert_onnx`` then tries, in order:

1. the graph as it is;
2. the graph taken down to opset 17 by ``onnx.version_converter``;
3. when (2) has no adapter for an operator, that operator is dealt with and (2) tried again
   (EfficientNet-Lite needs both):

   * ``ConstantOfShape``: every ``ConstantOfShape(shape; value=v)`` rewritten to the equivalent
     ``Expand(v as a 0-d tensor, shape)``;
   * ``Pad``: the version converter has no 19 -> 18 adapter, but a ``Pad`` without the ``axes``
     input (18) and not in ``wrap`` mode (19) means the same at opset 13 and at 21; such nodes
     are set aside in a private domain while the rest is converted, then put back unchanged
     (onnx2torch converts ``Pad`` 13). A ``Pad`` that uses either is refused.

Whatever still fails is refused with a ``BackendError`` that names the operator.

A graph that took route 2 or 3 is kept, lowered, in the home's torch cache (``cache``,
keyed by the file's sha256, the outputs and the target opset), so the next process converts it
straight away: no failed first attempt, no version converter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from shift.errors import BackendError
from shift.records import ModelRecord

log = logging.getLogger(__name__)

#: the newest opset onnx2torch 1.5.15 converts throughout
TORCH_OPSET = 17
INSTALL_HINT = (
    "install onnx2torch and a torchvision that matches your torch "
    "(on these machines: pip install torch==2.14.1 torchvision==0.29.1 onnx2torch), "
    "or use --backend onnxruntime"
)


@dataclass
class Converted:
    """A converted graph: ``module`` maps the model input to ``(embedding, logits?)`` in that
    order; ``route`` says how it was obtained (e.g. "opset 17", "opset 20 -> 17"). ``sha256``:
    the model file's, when a disk cache is in use ("" otherwise); ``cached``: the lowered graph
    came from that cache."""

    module: Any
    route: str
    opset: int
    sha256: str = ""
    cached: bool = False


def import_onnx2torch() -> Any:
    """The ``onnx2torch`` module; ``BackendError`` naming the missing package and the install
    command when it (or torchvision, which it imports) is absent or broken."""
    try:
        import onnx2torch
    except Exception as e:  # ImportError, or torchvision's "operator ... does not exist"
        raise BackendError(
            f"inference backend 'torch' needs onnx2torch and torchvision: {first_line(e)}",
            hint=INSTALL_HINT,
        ) from e
    return onnx2torch


def model_opset(model: Any) -> int:
    """The default-domain opset a ModelProto imports (0 when none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _select_outputs(model: Any, record: ModelRecord) -> None:
    """Keep only the record's outputs, embedding first, logits second (in place)."""
    wanted = [record.output] + ([record.head_output] if record.head_output else [])
    by_name = {o.name: o for o in model.graph.output}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise BackendError(
            f"model {record.name!r}: the graph has no output {missing[0]!r} "
            f"(outputs: {sorted(by_name)})"
        )
    keep = [by_name[w] for w in wanted]
    del model.graph.output[:]
    model.graph.output.extend(keep)


def _fold_constants(model: Any) -> None:
    """Make ``Constant`` nodes, and ``Identity`` nodes of an initializer, initializers (in
    place; the same tensors). onnx2torch reads weights only from initializers, and the legacy
    exporter shares equal ones (e.g. the zero biases of random BatchNorms) through ``Identity``."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        tensor = None
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                value = helper.get_attribute_value(attr)
                tensor = np.asarray(value, np.float32 if "float" in attr.name else np.int64)
        elif node.op_type == "Identity" and node.input[0] in inits:
            tensor = numpy_helper.to_array(inits[node.input[0]])
        if tensor is not None:
            inits[node.output[0]] = numpy_helper.from_array(np.asarray(tensor), node.output[0])
            graph.initializer.append(inits[node.output[0]])
            graph.node.remove(node)


def _constant_of_shape_as_expand(model: Any) -> int:
    """Rewrite every ``ConstantOfShape(shape; value=v)`` as ``Expand(v_0d, shape)`` (the same
    tensor: a 0-d ``v`` broadcast to ``shape``); returns how many nodes were rewritten."""
    from onnx import helper, numpy_helper

    graph, count = model.graph, 0
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        value = np.zeros((), np.float32)
        for attr in node.attribute:
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t).reshape(())
        name = f"{node.output[0]}__shift_fill"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        expand = helper.make_node("Expand", [name, node.input[0]], list(node.output), node.name)
        graph.node.remove(node)
        graph.node.insert(i, expand)
        count += 1
    return count


_HIDDEN = "shift.unchanged"  # the private domain of nodes kept out of the version converter


def _set_aside_pads(model: Any) -> int:
    """Move every ``Pad`` that means the same at opset 13 (no ``axes`` input, not ``wrap``
    mode) into the private domain; returns how many, 0 when any ``Pad`` cannot be moved."""
    from onnx import helper

    pads = [n for n in model.graph.node if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]
    for n in pads:
        mode = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "mode"), b"")
        if (len(n.input) > 3 and n.input[3]) or mode == b"wrap":
            return 0
    for n in pads:
        n.domain = _HIDDEN
    if pads and not any(o.domain == _HIDDEN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_HIDDEN, 1))
    return len(pads)


def _put_back(model: Any) -> None:
    """Return the nodes set aside to the default domain (in place)."""
    for n in model.graph.node:
        if n.domain == _HIDDEN:
            n.domain = ""
    keep = [o for o in model.opset_import if o.domain != _HIDDEN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


#: what route (3) does for an operator the version converter has no adapter for
_WORKAROUNDS = {
    "ConstantOfShape": ("ConstantOfShape as Expand", _constant_of_shape_as_expand),
    "Pad": ("Pad kept", _set_aside_pads),
}


def _lower(model: Any, route: str) -> tuple[Any, str]:
    """``model`` taken to ``TORCH_OPSET`` (routes 2 and 3); raises the converter's error
    when an operator has no adapter and no workaround applies."""
    from onnx import version_converter

    done: list[str] = []
    while True:
        try:
            lowered = version_converter.convert_version(model, TORCH_OPSET)
        except Exception as e:  # onnx raises RuntimeError/ConvertError for a missing adapter
            op = next((k for k in _WORKAROUNDS if f"for {k}" in str(e)), None)
            if op is None or _WORKAROUNDS[op][0] in done or not _WORKAROUNDS[op][1](model):
                raise
            done.append(_WORKAROUNDS[op][0])
            continue
        _put_back(lowered)
        return lowered, route + (f" ({', '.join(done)})" if done else "")


def _convert(onnx2torch: Any, model: Any) -> Any:
    _fold_constants(model)
    module = onnx2torch.convert(model)
    module.graph.eliminate_dead_code()  # outputs dropped by _select_outputs
    module.recompile()
    return module.eval()


def graph_key(sha256: str, record: ModelRecord) -> str:
    """The torch cache's key for ``record``'s graph lowered to ``TORCH_OPSET``: the file's
    content, the outputs kept, the input fed, the target opset and the converters' versions."""
    from shift.inference.torch.cache import digest, runtime_versions

    versions = runtime_versions()
    return digest(
        "graph",
        {
            "sha256": sha256,
            "backend": "torch",
            "opset": TORCH_OPSET,
            "outputs": [record.output, record.head_output],
            "input": record.input_name,
            "onnx": versions["onnx"],
            "onnx2torch": versions["onnx2torch"],
        },
    )


def convert_onnx(model_path: str, record: ModelRecord) -> Converted:
    """``record``'s ONNX file as an eval-mode torch module (see the module doc for the route).
    Raises ``BackendError`` naming the model and the operator that cannot be converted."""
    import onnx

    from shift.fsutil import sha256_file
    from shift.inference.torch.cache import TorchCache

    onnx2torch = import_onnx2torch()
    cache, sha, key = TorchCache.for_model(model_path), "", ""
    if cache is not None:
        try:
            sha = sha256_file(model_path)
            key = graph_key(sha, record)
        except OSError:  # onnx.load below names the problem
            cache = None
    if cache is not None and (hit := cache.get_graph(key)) is not None:
        lowered, meta = hit
        try:
            module = _convert(onnx2torch, lowered)
            return Converted(module, meta["route"], int(meta.get("opset", 0)), sha, cached=True)
        except Exception as e:  # an entry that no longer converts: converted afresh below
            log.info("model %r: cached lowered graph did not convert: %s", record.name, e)
    try:
        model = onnx.load(model_path)
    except Exception as e:
        raise BackendError(
            f"model {record.name!r}: cannot read {model_path}: {first_line(e)}"
        ) from e
    _select_outputs(model, record)
    opset = model_opset(model)
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    if inputs != {record.input_name}:
        raise BackendError(
            f"model {record.name!r}: the torch backend feeds one input, {record.input_name!r}; "
            f"the graph has {sorted(inputs)}",
            hint="use --backend onnxruntime for this model",
        )
    try:
        return Converted(_convert(onnx2torch, model), f"opset {opset}", opset, sha)
    except Exception as e:  # NotImplementedError: no converter for an (op, version)
        direct = first_line(e)
        if opset <= TORCH_OPSET:
            raise _refuse(record, opset, direct) from e
    try:
        lowered, route = _lower(model, f"opset {opset} -> {TORCH_OPSET}")
    except Exception as e:
        why = f"{direct}; to opset {TORCH_OPSET}: {first_line(e)}"
        raise _refuse(record, opset, why) from e
    try:
        module = _convert(onnx2torch, lowered)
    except Exception as e:
        raise _refuse(record, opset, f"{route}: {first_line(e)}") from e
    if cache is not None:
        cache.put_graph(key, lowered, route, opset=opset, model=record.name)
    return Converted(module, route, opset, sha)


def _refuse(record: ModelRecord, opset: int, why: str) -> BackendError:
    return BackendError(
        f"model {record.name!r}: onnx2torch cannot convert this opset-{opset} graph ({why})",
        hint=f"export the model at opset <= {TORCH_OPSET} "
        f"(torch.onnx.export(..., opset_version={TORCH_OPSET})), or use --backend onnxruntime",
    )


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type when empty), at most 300 characters."""
    text = (str(e).strip() or type(e).__name__).splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."
