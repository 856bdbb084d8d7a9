"""Which module implements each model source, and which source a registered model came from."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shift.errors import NotFoundError, ShiftError

if TYPE_CHECKING:
    from shift.catalog.sources.base import Source
    from shift.records import ModelRecord

#: source name -> (module, class); the prefix of a record's ``source_id`` names its source
SOURCES: dict[str, tuple[str, str]] = {
    "torchvision": ("shift.catalog.sources.torchvision_models", "TorchvisionSource"),
    "timm": ("shift.catalog.sources.timm_models", "TimmSource"),
    "hf": ("shift.catalog.sources.hf_models", "HFSource"),
    "vtab1k": ("shift.catalog.sources.vtab1k", "VTAB1kSource"),
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise NotFoundError(f"no model source {name!r}", hint="sources: " + ", ".join(SOURCES))
    module, cls = SOURCES[name]
    return getattr(importlib.import_module(module), cls)()


def source_of(rec: ModelRecord) -> Source:
    """The source a registered model came from (by its ``source_id`` prefix)."""
    prefix = (rec.source_id or "").partition(":")[0]
    if prefix not in SOURCES:
        raise ShiftError(
            f"model {rec.name!r} does not come from a model source (source {rec.source!r})",
            hint="register an ONNX file with `shift-cli models add FILE --name NAME --replace`",
        )
    return get_source(prefix)
