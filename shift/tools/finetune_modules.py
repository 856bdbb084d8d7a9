"""Where the torch module that :mod:`shift.tools.finetune` trains comes from, for any registered
model with weights:

* a **catalog** model (its entry in the home's ``catalog.yaml``): the catalog's own torch
  definition (:func:`shift.catalog.importer.build_module`; experts are retrained
  deterministically, once per process), checked against the registered ONNX file on the
  export-check input (max abs difference <= ``EXPORT_TOLERANCE``);
* **any other** registered ONNX model: its graph converted to torch by the torch inference
  backend (onnx2torch, :mod:`shift.inference.torch.convert`), which checks the conversion against
  ONNX Runtime in fp32 on a fixed batch first (per-row cosine >= 0.999,
  :mod:`shift.inference.torch.check`); the converted graph's every parameter is trained, and the
  embedding output (flattened) feeds the new head, the source head (if any) is not used.

Either way the module maps the model input (the registered ``InputSpec``'s preprocessing) to
``(embedding (N, dim), ignored)``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import ShiftError
from shift.records import ModelRecord
from shift.store.registry import Registry

#: experts rebuilt in this process: name + entry JSON -> (module, info, seconds to build)
_BUILT: dict[str, tuple[Any, dict[str, Any], float]] = {}


def catalog_entries(registry: Registry, catalog: str | Path | None = None) -> dict[str, Any]:
    """The home's catalog entries by name (none when it has no catalog file)."""
    from shift.catalog.entries import catalog_path, load_catalog

    path = catalog_path(registry.home.catalog_path, catalog)
    return {e.name: e for e in load_catalog(path)} if path.is_file() else {}


def catalog_entry(registry: Registry, model: str, catalog: str | Path | None = None) -> Any:
    """The catalog entry named ``model``; ``ShiftError`` when the catalog has none."""
    entries = catalog_entries(registry, catalog)
    if model not in entries:
        raise ShiftError(
            f"model {model!r} is not in the catalog",
            hint="registered ONNX models outside the catalog are fine-tuned through onnx2torch "
            "(shift.tools.finetune)",
        )
    return entries[model]


def _module(entry: Any) -> tuple[Any, float]:
    """A fresh copy of ``entry``'s pre-trained torch module and the seconds building it took
    (0 when an expert was already retrained in this process)."""
    from shift.catalog.importer import build_module

    key = entry.name + ":" + entry.model_dump_json()
    if entry.builder == "expert":
        if key not in _BUILT:
            t0 = time.perf_counter()
            module, info = build_module(entry)
            _BUILT[key] = (module, info, time.perf_counter() - t0)
            return copy.deepcopy(module), _BUILT[key][2]
        return copy.deepcopy(_BUILT[key][0]), 0.0
    t0 = time.perf_counter()
    module, _ = build_module(entry)
    return module, time.perf_counter() - t0


def _check_against_onnx(module: Any, entry: Any, onnx_path: Path) -> float:
    """Max |torch - registered ONNX| embedding difference on the export check input."""
    import onnxruntime as ort
    import torch

    from shift.catalog.importer import EXPORT_TOLERANCE, check_input

    x = check_input(entry)
    with torch.inference_mode():
        ref = module.eval()(torch.from_numpy(x))[0].numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: x})
    diffs = [float(np.abs(ref - g).max()) for g in got if np.shape(g) == ref.shape]
    diff = min(diffs) if diffs else float("inf")
    if diff > EXPORT_TOLERANCE:
        raise ShiftError(
            f"{entry.name}: the registered ONNX file does not match the catalog's torch "
            f"definition (max difference {diff:.2e})",
            hint="re-import it: shift models import-catalog --force",
        )
    return diff


def _embedding_module(inner: Any) -> Any:
    """``inner`` (a converted graph: embedding, then logits if any) as a module returning
    ``(embedding flattened to (N, dim), None)``, the shape the training loop reads."""
    from torch import nn

    class EmbeddingOf(nn.Module):
        def __init__(self, graph: nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, x: Any) -> tuple[Any, None]:
            out = self.graph(x)
            emb = out[0] if isinstance(out, (tuple, list)) else out
            return emb.flatten(1), None

    return EmbeddingOf(inner)


def converted_module(registry: Registry, rec: ModelRecord) -> tuple[Any, dict[str, Any]]:
    """``rec``'s registered ONNX graph as a trainable torch module on the CPU (see the module
    doc) and what to record about it. ``BackendError`` when onnx2torch is missing, cannot
    convert the graph, or the conversion disagrees with ONNX Runtime."""
    from shift.inference.torch.backend import TorchEmbedder

    t0 = time.perf_counter()
    embedder = TorchEmbedder(str(registry.model_file(rec)), rec, device="cpu", precision="fp32")
    try:
        module = _embedding_module(embedder.module).eval()
    finally:
        embedder.close()
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if not trainable:
        raise ShiftError(
            f"model {rec.name!r}: its converted graph has no trainable parameters "
            "(its weights became constants), so it cannot be fine-tuned"
        )
    info = {
        "source": "onnx2torch",
        "route": embedder.route,
        "trainable_params": int(trainable),
        "build_seconds": time.perf_counter() - t0,
    }
    return module, info


def training_module(
    registry: Registry, rec: ModelRecord, catalog: str | Path | None = None
) -> tuple[Any, dict[str, Any]]:
    """The module to fine-tune for ``rec`` (catalog definition, else the converted ONNX graph)
    on the CPU, and what to record about where it came from."""
    if getattr(rec, "weights", "present") != "present":
        raise ShiftError(
            f"model {rec.name!r} has no weights here (a metadata-only row)",
            hint="fetch its weights first, or fine-tune another model",
        )
    entry = catalog_entries(registry, catalog).get(rec.name)
    if entry is None:
        return converted_module(registry, rec)
    module, build_s = _module(entry)
    diff = _check_against_onnx(module, entry, registry.model_file(rec))
    return module, {"source": "catalog", "build_seconds": build_s, "onnx_max_abs_diff": diff}
