"""Ranking for several tasks at once: ``WHERE task IN (a, b, c) RANK BY avg(linear)``.

Each task is scored as a one-task query would be (cached scores reused, missing ones computed
and cached); the models are then ranked by an aggregate over the tasks (SHiFT's benchmark
aggregation, for choosing one backbone for a suite of tasks):

* ``avg(P)`` / ``min(P)`` / ``max(P)``: mean / lowest / highest score of proxy ``P``; a model
  without a score on some task gets none and ranks last;
* ``avg_rank(P)`` (the default): the mean of the model's per-task ranks, rank 1 best; per task
  the models are ranked by score (ties → the task-agnostic order) and a model without a score
  ranks after every scored one. Ranks need no common scale across tasks, scores do.

Ties of the aggregate go to the task-agnostic order. The rows show each task's score
(``score:<task>``) beside the aggregate (``score``, or ``mean_rank`` for ``avg_rank``).
A model that failed on some task (the engine reports it, e.g. its file does not load) is not
ranked at all: the result names it under ``failed``, with the reason. The step runs in
:class:`shift.engine.steps.multitask.MultiTaskRunner`; this module holds the aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from shift.records import ModelRecord
from shift.scoring.strategies import rank_agnostic


def _bad(s: float | None) -> bool:
    return s is None or (isinstance(s, float) and math.isnan(s))


def task_ranks(models: list[ModelRecord], scores: dict[str, float | None]) -> dict[str, int]:
    """Rank of each model on one task (1 best): by score, ties → task-agnostic order; models
    without a score after the scored ones (in that order too)."""
    order = {m.name: i for i, m in enumerate(rank_agnostic(models))}
    ranked = sorted(
        models,
        key=lambda m: (
            _bad(scores.get(m.name)),
            -(scores.get(m.name) or 0.0) if not _bad(scores.get(m.name)) else 0.0,
            order[m.name],
        ),
    )
    return {m.name: i + 1 for i, m in enumerate(ranked)}


def aggregate(
    models: list[ModelRecord], per_task: dict[str, dict[str, float | None]], how: str
) -> dict[str, float | None]:
    """Each model's aggregate over the tasks (see the module doc); ``avg_rank`` gives the mean
    rank (lower is better), the others a score (higher is better)."""
    if how == "avg_rank":
        ranks = [task_ranks(models, s) for s in per_task.values()]
        return {m.name: sum(r[m.name] for r in ranks) / len(ranks) for m in models}
    aggregates: dict[str, Callable[[list[float]], float]] = {
        "avg": lambda v: sum(v) / len(v),
        "min": min,
        "max": max,
    }
    fn = aggregates[how]
    out: dict[str, float | None] = {}
    for m in models:
        vals = [s.get(m.name) for s in per_task.values()]
        good = [v for v in vals if v is not None]
        out[m.name] = None if any(_bad(v) for v in vals) else float(fn(good))
    return out
