"""Runner of ``RANK BY similar(k, probe)``: fine-tuning results on the registered tasks nearest
to the query's task (:mod:`shift.engine.similarity`)."""

from __future__ import annotations

from typing import Any

from shift.engine.similarity import (
    candidates,
    neighbours,
    no_history,
    probe_model,
    probe_ready,
    similar_scores,
)
from shift.engine.steps.base import Context, RankedRunner, Scored
from shift.query.steps import Similar
from shift.records import ModelRecord


class SimilarRunner(RankedRunner[Similar]):
    """Scores: the similarity-weighted mean accuracy on the ``k`` nearest tasks;
    ``plan["probe"]`` and ``plan["neighbours"]`` say which. No history: an error before any
    work."""

    def score(self, step: Similar, cx: Context, models: list[ModelRecord]) -> Scored:
        with cx.scoring():
            acc, tasks = candidates(cx.plan, cx.registry, models)
            if not tasks:
                raise no_history(cx.plan)
            probe = probe_model(cx.plan, cx.registry)
            near = neighbours(cx.plan, cx.engine_factory(), probe, tasks, acc)
            cx.info["probe"] = probe.name
            cx.info["neighbours"] = [
                {"task": n.task, "distance": round(n.distance, 6), "results": n.results}
                for n in near
            ]
            return Scored(similar_scores(near, acc, models))

    def explain_work(
        self, step: Similar, cx: Context, rows: list[dict[str, Any]], info: dict[str, Any]
    ) -> None:
        """The probe, the candidate tasks, and the neighbours with their distances when the
        probe has indexed every task (else what it must embed first)."""
        models = cx.models()
        acc, tasks = candidates(cx.plan, cx.registry, models)
        if not tasks:
            raise no_history(cx.plan)
        probe = probe_model(cx.plan, cx.registry)
        eng = cx.engine_factory()
        todo = probe_ready(eng, [step.task, *tasks], probe)
        info["probe"] = probe.name
        rows.append(
            {
                "step": "probe",
                "detail": f"{probe.name} embeds every task"
                + (f"; to embed: {', '.join(todo)}" if todo else " (all indexed)"),
                "models": 1,
            }
        )
        rows.append(
            {
                "step": "candidate tasks",
                "detail": ", ".join(f"{t} ({len(acc[t])} results)" for t in tasks),
                "models": len(tasks),
            }
        )
        if todo:
            info["neighbours"] = None
            rows.append(
                {
                    "step": "neighbours",
                    "detail": f"known once the probe has embedded {', '.join(todo)} "
                    "(the query does)",
                    "models": None,
                }
            )
            return
        near = neighbours(cx.plan, eng, probe, tasks, acc)
        info["neighbours"] = [
            {"task": n.task, "distance": round(n.distance, 6), "results": n.results} for n in near
        ]
        rows.append(
            {
                "step": f"neighbours (k={step.k})",
                "detail": ", ".join(f"{n.task} d={n.distance:.4f}" for n in near),
                "models": sum(1 for m in models if any(m.sha256 in acc[n.task] for n in near)),
            }
        )
