"""Model sources: the zoo users actually have (torchvision, timm, Hugging Face, the VTAB-1k
table's models), registered from their libraries' metadata, offline, without weights.

``import_models(registry, "torchvision", all=True)`` registers every classification weight of
the installed torchvision as a ``weights='missing'`` row (architecture, upstream data, ImageNet
figures, parameters, input size and normalisation, provenance). Task-agnostic and ``meta(...)``
rankings use such rows as they are; :func:`shift.catalog.sources.weights.attach_weights` gives a
row its weights later (a local file or folder, or the library's own download when online) and
exports it to ONNX like a catalog model. Importing this package loads no torch: each source's
module is imported when used.
"""

from __future__ import annotations

from shift.catalog.sources.importing import SourceImport, import_models
from shift.catalog.sources.lookup import SOURCES, get_source, source_of

__all__ = ["SOURCES", "SourceImport", "get_source", "import_models", "source_of"]
