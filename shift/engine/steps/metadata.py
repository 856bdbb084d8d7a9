"""Runners of the steps that read what the registry knows, without embedding: ORDER BY, the
task-agnostic order, a seeded random draw and a fine-tuning table (``meta``)."""

from __future__ import annotations

from typing import Any

from shift.engine.steps.base import Context, RankedRunner, Runner, S, Scored, model_row
from shift.query.columns import COLUMNS
from shift.query.steps import Agnostic, Meta, Order, Random
from shift.records import ModelRecord, Result
from shift.scoring.strategies import Pick


class OrderRunner(Runner[Order]):
    """``ORDER BY``: the pool sorted by a column in SQL (NULLs last, then by name), at most the
    budget; no weights needed."""

    def run(self, step: Order, cx: Context) -> Result:
        col = COLUMNS[step.order.column]
        direction = "DESC" if step.order.descending else "ASC"
        models = cx.models(order=f"({col.sql} IS NULL), {col.sql} {direction}, m.name")
        if cx.plan.budget is not None:
            models = models[: cx.plan.budget]
        return Result(
            query=cx.plan.text,
            columns=step.columns(),
            rows=[{"rank": i + 1, **model_row(m)} for i, m in enumerate(models)],
            plan=cx.info,
            timings=cx.timings,
        )


class AgnosticRunner(RankedRunner[Agnostic]):
    """The task-agnostic order (``scoring.strategies.agnostic_key``); no scores."""

    rule = "agnostic"

    def reason(self, step: Agnostic) -> str | None:
        return None


class LookupRunner(RankedRunner[S]):
    """A ranking by a score looked up, not measured: each row says ``#i by <ranker>``, and
    ``(no results)`` where the model has no score."""

    def row(self, step: S, i: int, p: Pick, scored: Scored) -> dict[str, Any]:
        row = super().row(step, i, p, scored)
        row["why"] = f"#{i + 1} by {step.label}" + (" (no results)" if p.score is None else "")
        return row


class RandomRunner(LookupRunner[Random]):
    """``random(seed)``: :func:`random_scores`."""

    def score(self, step: Random, cx: Context, models: list[ModelRecord]) -> Scored:
        return Scored(random_scores(models, step.seed))


class MetaRunner(LookupRunner[Meta]):
    """``meta(table)``: :func:`meta_model_scores`."""

    def score(self, step: Meta, cx: Context, models: list[ModelRecord]) -> Scored:
        return Scored(meta_model_scores(models, step.table, step.task))


def random_scores(models: list[ModelRecord], seed: int) -> dict[str, float | None]:
    """A seeded, reproducible uniform draw in [0, 1) per model (by name)."""
    import hashlib

    return {
        m.name: int(hashlib.sha256(f"{seed}:{m.name}".encode()).hexdigest()[:13], 16) / 16**13
        for m in models
    }


def meta_model_scores(
    models: list[ModelRecord], table: str, task: str | None
) -> dict[str, float | None]:
    """Mean fine-tuning accuracy on the table's other tasks (leave the query's task out when the
    table has it). A model imported from Hugging Face is its ``source_id`` (``hf:ID``); other
    registry names map to table ids with ``__`` for ``/``
    (``google__vit-base-patch16-224`` ↔ ``google/vit-base-patch16-224``)."""
    from shift.scoring.meta import cached_meta_scores, cached_table

    gt = cached_table(table)
    ids = {
        m.name: m.source_id[3:]
        if m.source_id and m.source_id.startswith("hf:")
        else m.name.replace("__", "/")
        for m in models
    }
    found = cached_meta_scores(table, task if task in gt.tasks else None)  # read-only
    return {name: found.get(tid) for name, tid in ids.items()}
