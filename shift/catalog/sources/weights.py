"""Weights as a state: give a model registered without weights (``weights='missing'``) its
weights, then export and register it exactly as the catalog does.

The source builds the eval-mode torch module from a local file or folder (or, with
``download``, through its library's own loader when online); the export is the catalog's
(:func:`shift.catalog.importer.export`: outputs ``embedding`` and ``logits``, ONNX Runtime checked
against torch on a fixed input) at opset :data:`OPSET`; the ONNX file is registered by
:func:`shift.catalog.onnx_import.register_onnx` (sha256-recorded, copied into the home) under the
same name, keeping every metadata field the source gave. The ``provenance`` gains the weight
file's name and sha256.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from shift.catalog.importer import export
from shift.catalog.onnx_import import register_onnx
from shift.catalog.sources.lookup import source_of
from shift.errors import ShiftError
from shift.fsutil import sha256_file
from shift.records import InputSpec, ModelRecord
from shift.store.registry import Registry

#: the ONNX opset of exported source models (every backend shift has reads it)
OPSET = 17

#: ModelRecord fields the graph decides; everything else is kept from the metadata row
_FROM_GRAPH = {"path", "sha256", "params", "dim", "output", "head_output", "head_classes"}
_FROM_GRAPH |= {"input_name", "input", "weights", "date_added", "name"}


@dataclass
class _Target:
    name: str
    input: InputSpec


def attach_weights(
    registry: Registry, name: str, weights: str | Path | None = None, *, download: bool = False
) -> ModelRecord:
    """Give ``name`` its weights (``weights``: a file, or a folder in the source's cache
    layout; else ``download``), export it to ONNX and register it; return the new record. A
    model that already has weights is re-exported from the new ones."""
    rec = registry.get_model(name)
    if weights is None and not download:
        raise ShiftError(
            f"model {name!r}: give its weights with --weights FILE|DIR, or --download",
            hint=f"the source's file: {rec.weights_url}" if rec.weights_url else None,
        )
    src = source_of(rec)
    path = Path(weights) if weights is not None else None
    if path is not None and not path.exists():
        raise ShiftError(f"{path}: no such file or folder")
    refine = getattr(src, "refine", None)  # a weights folder may state more (hf: transformers)
    if refine is not None and path is not None:
        rec = refine(rec, path)
    module = src.load(rec, path, download)
    note = ""
    if path is not None and path.is_file():
        note = f"; weights {path.name} sha256 {sha256_file(path)}"
    elif path is not None:
        note = f"; weights from folder {path.resolve()}"
    else:
        note = "; weights downloaded by the source's loader"
    meta = rec.model_dump(exclude=_FROM_GRAPH)
    meta["provenance"] = ((rec.provenance or "").split("; weights ")[0] + note).lstrip("; ")
    with tempfile.TemporaryDirectory(prefix="shift-export-") as d:
        onnx_path = Path(d) / f"{name}.onnx"
        export(module, _Target(name, rec.input), onnx_path, opset=OPSET)
        infer_output_shapes(onnx_path)
        new = register_onnx(
            registry,
            onnx_path,
            name,
            replace=True,
            input_overrides=rec.input.model_dump(),
            **meta,
        )
    if rec.params is not None and new.params != rec.params:
        # the source states the parameter count exactly; the graph's initialisers differ
        # (batch norm folded into convolutions by the export)
        new = registry.add_model(new.model_copy(update={"params": rec.params}), replace=True)
    return new


def infer_output_shapes(path: Path) -> None:
    """Give the graph's outputs the static sizes ONNX's shape inference finds where torch's
    exporter left them symbolic (transformers' attention reshapes with sizes read at run time, so
    the embedding's width came out as ``Reshapeembedding_dim_1``); the file is rewritten only
    when an output changed."""
    import onnx

    model = onnx.load(str(path))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):  # e.g. a graph over 2 GB
        return
    changed = False
    for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
        for d, n in zip(
            out.type.tensor_type.shape.dim, new.type.tensor_type.shape.dim, strict=False
        ):
            if d.HasField("dim_param") and n.HasField("dim_value"):
                d.dim_value = n.dim_value  # replaces the symbolic name (a oneof)
                changed = True
    if changed:
        onnx.save(model, str(path))
