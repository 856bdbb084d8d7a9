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
ranked at all: the result names it under ``failed``, with the reason.
"""

from __future__ import annotations

import math
import time
from typing import Any

from shift.query.planner import Plan
from shift.records import ModelRecord, Result, Timings
from shift.scoring.strategies import rank, rank_agnostic


def engine_scores(eng: Any, task: str, models: list[ModelRecord], plan: Plan) -> dict:
    """``eng.scores`` with the plan's proxy settings (passed only when there are any)."""
    extra = {"args": plan.settings} if plan.settings else {}
    return eng.scores(task, models, plan.proxy, **extra)


def engine_failures(
    eng: Any, models: list[ModelRecord], scores: dict[str, float | None]
) -> dict[str, str]:
    """The models of ``models`` that failed in the engine's last call (its
    ``last_report.failed``, e.g. a file that does not load) and got no score, with the reason."""
    failed = getattr(getattr(eng, "last_report", None), "failed", None) or {}
    return {
        m.name: str(failed[m.name])
        for m in models
        if m.name in failed and scores.get(m.name) is None
    }


def engine_status(eng: Any, task: str, models: list[ModelRecord], plan: Plan) -> dict:
    """``eng.status`` with the plan's proxy settings (passed only when there are any)."""
    extra = {"args": plan.settings} if plan.settings else {}
    return eng.status(task, models, plan.proxy, **extra)


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
    fn = {"avg": lambda v: sum(v) / len(v), "min": min, "max": max}[how]
    out: dict[str, float | None] = {}
    for m in models:
        vals = [s.get(m.name) for s in per_task.values()]
        out[m.name] = None if any(_bad(v) for v in vals) else float(fn(vals))  # type: ignore[arg-type]
    return out


def run_multi(
    plan: Plan, models: list[ModelRecord], engine: Any, timings: Timings, info: dict[str, Any]
) -> Result:
    """Score every task, aggregate, rank; rows as described in the module doc."""
    eng = engine()
    per_task: dict[str, dict[str, float | None]] = {}
    failed: dict[str, str] = {}
    for task in plan.tasks:
        ts = time.perf_counter()
        per_task[task] = engine_scores(eng, task, models, plan)
        timings.score_ms += (time.perf_counter() - ts) * 1000
        for name, why in engine_failures(eng, models, per_task[task]).items():
            failed.setdefault(name, why)
    # a model that failed on any task is not ranked: it is named in the result's ``failed``
    models = [m for m in models if m.name not in failed]
    agg = aggregate(models, per_task, plan.aggregate or "avg_rank")
    by_rank = plan.aggregate == "avg_rank"
    key = {n: (None if v is None else (-v if by_rank else v)) for n, v in agg.items()}
    picks = rank(models, plan.budget, "proxy", plan.ranker, key)
    agg_col = "mean_rank" if by_rank else "score"
    task_cols = [f"score:{t}" for t in plan.tasks]
    rows = []
    for i, p in enumerate(picks):
        row: dict[str, Any] = {
            "rank": i + 1,
            "name": p.model.name,
            "family": p.model.family,
            "params": p.model.params,
            "dim": p.model.dim,
            "imagenet_top1": p.model.imagenet_top1,
            "upstream_dataset": p.model.upstream_dataset,
            "source": p.model.source,
            "agnostic_rank": p.agnostic_rank,
        }
        row.update(
            {c: per_task[t].get(p.model.name) for c, t in zip(task_cols, plan.tasks, strict=True)}
        )
        row[agg_col] = agg[p.model.name]
        row["why"] = f"#{i + 1} by {plan.ranker} over {len(plan.tasks)} tasks" + (
            " (no score on some task)" if agg[p.model.name] is None else ""
        )
        rows.append(row)
    info["tasks"] = list(plan.tasks)
    info["aggregate"] = plan.aggregate
    return Result(
        query=plan.text,
        columns=["rank", "name", "imagenet_top1", "agnostic_rank", *task_cols, agg_col, "why"],
        rows=rows,
        scores={r["name"]: r[agg_col] for r in rows},
        failed=failed,
        plan=info,
        timings=timings,
    )


def explain_multi(
    plan: Plan, models: list[ModelRecord], engine: Any, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """EXPLAIN's per-task steps (embed, score: cached vs to compute); returns the ``work``
    entry of the plan: ``{"estimate": ..., "tasks": {task: status}}``."""
    eng = engine()
    work: dict[str, Any] = {"tasks": {}}
    for task in plan.tasks:
        st = engine_status(eng, task, models, plan)
        work["tasks"][task] = st
        steps.append(
            {"step": f"embed {task}", "detail": st["embed_summary"], "models": st["to_embed"]}
        )
        steps.append(
            {
                "step": f"score {plan.proxy_label} on {task}",
                "detail": st["score_summary"],
                "models": st["to_score"],
            }
        )
    work["estimate"] = "; ".join(f"{t}: {st['estimate']}" for t, st in work["tasks"].items())
    work["to_score"] = sum(st["to_score"] for st in work["tasks"].values())
    return work
