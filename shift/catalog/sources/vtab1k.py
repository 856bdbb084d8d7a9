"""The VTAB-1k fine-tuning table's 291 Hugging Face models as metadata rows.

``shift/data/benchmarks/vtab1k_finetune.csv`` names each model by its Hugging Face id; importing
them registers one ``weights='missing'`` row per id (through :class:`~.hf_models.HFSource`, named
``owner__name`` as ``meta(vtab1k)`` maps them), tagged ``vtab1k``, so ``RANK BY meta(vtab1k)``
and the task-agnostic ranking run over the real pool with names users recognise.
"""

from __future__ import annotations

from typing import Any

from shift.catalog.sources.base import unknown_ids
from shift.catalog.sources.hf_models import HFSource
from shift.records import ModelRecord


def table_ids(table: str = "vtab1k") -> list[str]:
    from shift.scoring.meta import load_table

    return list(load_table(table).models)


class VTAB1kSource:
    name = "vtab1k"

    def __init__(self) -> None:
        self.hf = HFSource()

    def available(self) -> list[str]:
        return table_ids()

    def describe(self, ids: list[str]) -> list[ModelRecord]:
        known = table_ids()
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise unknown_ids(self.name, unknown, known)
        return [
            r.model_copy(update={"tags": sorted({*r.tags, "vtab1k"})})
            for r in self.hf.describe(ids)
        ]

    def load(self, rec: ModelRecord, weights: Any, download: bool) -> Any:
        return self.hf.load(rec, weights, download)
