"""Runner of ``WHERE task IN (a, b) RANK BY avg|min|max|avg_rank(PROXY)``: every task scored as a
one-task query would be, then ranked by the aggregate (:mod:`shift.engine.multitask`)."""

from __future__ import annotations

from typing import Any

from shift.engine.multitask import aggregate
from shift.engine.steps.base import (
    Context,
    Runner,
    check_heads,
    check_weights,
    engine_failures,
    engine_scores,
    engine_status,
    explain_weights,
    model_row,
)
from shift.query.steps import MultiTask
from shift.records import Result
from shift.scoring.strategies import rank


class MultiTaskRunner(Runner[MultiTask]):
    """Rows show each task's score (``score:<task>``) beside the aggregate (``score``, or
    ``mean_rank`` for ``avg_rank``); ties go to the task-agnostic order. A model that failed on
    any task is not ranked (``Result.failed``); models without weights are left out
    (``Result.skipped``)."""

    def run(self, step: MultiTask, cx: Context) -> Result:
        models, skipped = check_weights(cx.plan, step, cx.models())
        check_heads(cx.plan, step, models)  # before any work
        eng = cx.engine_factory()
        per_task: dict[str, dict[str, float | None]] = {}
        failed: dict[str, str] = {}
        for task in step.tasks:
            with cx.scoring():
                per_task[task] = engine_scores(eng, task, models, step.proxy)
            for name, why in engine_failures(eng, models, per_task[task]).items():
                failed.setdefault(name, why)
        models = [m for m in models if m.name not in failed]
        agg = aggregate(models, per_task, step.aggregate)
        by_rank = step.aggregate == "avg_rank"
        key = {n: (None if v is None else (-v if by_rank else v)) for n, v in agg.items()}
        picks = rank(models, cx.plan.budget, "proxy", step.label, key)
        agg_col = step.aggregate_column
        rows = []
        for i, p in enumerate(picks):
            row: dict[str, Any] = {
                "rank": i + 1,
                **model_row(p.model),
                "agnostic_rank": p.agnostic_rank,
            }
            row.update(
                {
                    c: per_task[t].get(p.model.name)
                    for c, t in zip(step.task_columns, step.tasks, strict=True)
                }
            )
            row[agg_col] = agg[p.model.name]
            row["why"] = f"#{i + 1} by {step.label} over {len(step.tasks)} tasks" + (
                " (no score on some task)" if agg[p.model.name] is None else ""
            )
            rows.append(row)
        cx.info["tasks"] = list(step.tasks)
        cx.info["aggregate"] = step.aggregate
        return Result(
            query=cx.plan.text,
            columns=step.columns(),
            rows=rows,
            scores={r["name"]: r[agg_col] for r in rows},
            failed=failed,
            skipped=skipped,
            plan=cx.info,
            timings=cx.timings,
        )

    def explain_work(
        self, step: MultiTask, cx: Context, rows: list[dict[str, Any]], info: dict[str, Any]
    ) -> None:
        """Models without weights (left out), then per task: embed, score (cached vs to
        compute); ``info["work"]`` is
        ``{"tasks": {task: status}, "estimate": ..., "to_score": ...}``."""
        info["tasks"] = list(step.tasks)
        models = explain_weights(cx.models(), rows, info)
        eng = cx.engine_factory()
        work: dict[str, Any] = {"tasks": {}}
        for task in step.tasks:
            st = engine_status(eng, task, models, step.proxy)
            work["tasks"][task] = st
            rows.append(
                {"step": f"embed {task}", "detail": st["embed_summary"], "models": st["to_embed"]}
            )
            rows.append(
                {
                    "step": f"score {step.proxy.label} on {task}",
                    "detail": st["score_summary"],
                    "models": st["to_score"],
                }
            )
        work["estimate"] = "; ".join(f"{t}: {st['estimate']}" for t, st in work["tasks"].items())
        work["to_score"] = sum(st["to_score"] for st in work["tasks"].values())
        info["work"] = work
