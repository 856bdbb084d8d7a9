"""Register a source's models as metadata rows (``models import SOURCE``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shift.catalog.sources.lookup import get_source
from shift.errors import ShiftError

if TYPE_CHECKING:
    from shift.store.registry import Registry


@dataclass
class SourceImport:
    """What importing one model did: ``registered`` (new row), ``updated`` (metadata rewritten),
    ``kept`` (a row with weights is not overwritten without ``replace``), ``weights`` (a local
    folder's weights were attached too) or ``failed``."""

    name: str
    status: str
    source_id: str | None = None
    weights: str = "missing"
    detail: str = ""


def import_models(
    registry: Registry,
    source: str,
    ids: list[str] | None = None,
    *,
    all: bool = False,
    replace: bool = False,
) -> tuple[list[SourceImport], float]:
    """Register ``ids`` of ``source`` (or every model it knows, ``all``) as metadata rows, in
    one write transaction; return what happened to each and the seconds it took. Unknown ids
    fail before anything is registered. A row that already has weights keeps them unless
    ``replace``. Hugging Face ids that are local folders also get their weights at once."""
    t0 = time.perf_counter()
    if ids and not all:  # a typo is answered from the remembered ids, before torch is imported
        from shift.catalog.sources.names import check_ids

        check_ids(source, ids)
    src = get_source(source)
    if not ids and not all and source != "vtab1k":
        raise ShiftError(
            f"name the {source} models to import, or pass --all",
            hint={"torchvision": "e.g. resnet50.IMAGENET1K_V2 or resnet50 (its default)"}.get(
                source, "e.g. resnet50.a1_in1k"
            ),
        )
    wanted = src.available() if all or not ids else ids
    records = src.describe(wanted)
    results: list[SourceImport] = []
    with registry.transaction():
        for rec in records:
            old = registry.get_model(rec.name) if registry.has_model(rec.name) else None
            if old is not None and old.has_weights and not replace:
                results.append(SourceImport(rec.name, "kept", rec.source_id, "present"))
                continue
            registry.add_model(rec, replace=True)
            status = "registered" if old is None else "updated"
            results.append(SourceImport(rec.name, status, rec.source_id))
    if source == "hf":  # local folders: their weights are right there
        from shift.catalog.sources.weights import attach_weights

        for given, res in zip(dict.fromkeys(wanted), results, strict=True):
            if Path(given).is_dir() and res.status != "kept":
                try:
                    attach_weights(registry, res.name, Path(given))
                    res.status, res.weights = "weights", "present"
                except (ShiftError, OSError, RuntimeError) as e:
                    res.status, res.detail = "failed", str(e).splitlines()[0]
    return results, time.perf_counter() - t0
