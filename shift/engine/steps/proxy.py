"""Runners of the one-task steps that embed the task with every model and score a proxy: rank by
the proxy, hybrid (the top task-agnostic model, then by the proxy) and successive halving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shift.engine.steps.base import (
    Context,
    RankedRunner,
    Scored,
    engine_failures,
    engine_scores,
    engine_status,
    explain_weights,
)
from shift.query.steps import Halving, Hybrid, RankByProxy, TaskProxyStep
from shift.records import ModelRecord
from shift.scoring.strategies import Pick

if TYPE_CHECKING:
    from shift.engine.halving import HalvingResult

T = TypeVar("T", bound=TaskProxyStep)


class EmbeddingRunner(RankedRunner[T]):
    """A step that embeds its task with every model: scores from the engine (computed and
    cached where missing; models the engine reports failed are not ranked). EXPLAIN says which
    models lack weights, then what the engine has cached and must compute (embed, score)."""

    def score(self, step: T, cx: Context, models: list[ModelRecord]) -> Scored:
        eng = cx.engine_factory()
        with cx.scoring():
            scores = engine_scores(eng, step.task, models, step.proxy)
        return Scored(scores, engine_failures(eng, models, scores))

    def explain_work(
        self, step: T, cx: Context, rows: list[dict[str, Any]], info: dict[str, Any]
    ) -> None:
        task, proxy = step.task, step.proxy
        models = explain_weights(cx.models(), rows, info)
        status = engine_status(cx.engine_factory(), task, models, proxy)
        info["work"] = status
        rows.append(
            {"step": "embed", "detail": status["embed_summary"], "models": status["to_embed"]}
        )
        rows.append(
            {
                "step": f"score {proxy.label}",
                "detail": status["score_summary"],
                "models": status["to_score"],
            }
        )


class ProxyRunner(EmbeddingRunner[RankByProxy]):
    """``RANK BY PROXY``: by the proxy's score, ties in the task-agnostic order."""


class HybridRunner(EmbeddingRunner[Hybrid]):
    """``hybrid(PROXY)``: the proxy's scores, ranked by :func:`~shift.scoring.strategies.rank`'s
    hybrid rule; a failed model is not ranked, not even as the task-agnostic pick."""

    rule = "hybrid"

    def reason(self, step: Hybrid) -> str | None:
        return step.proxy.label


@dataclass
class Race(Scored):
    """Halving's scores (the order, by position) and the race itself."""

    race: HalvingResult | None = None


class HalvingRunner(EmbeddingRunner[Halving]):
    """``sh(PROXY, budget, chunk)``: the race's outcome is the order (scores of different rounds,
    on different amounts of data, are never compared); rows show each model's last score, the
    training samples behind it and the round it was dropped in; ``plan["halving"]`` the
    schedule. Models that failed while embedding are not ranked."""

    def score(self, step: Halving, cx: Context, models: list[ModelRecord]) -> Race:
        from shift.engine.halving import successive_halving  # numpy: only for a race

        eng = cx.engine_factory()
        with cx.scoring():
            res = successive_halving(
                eng, step.task, models, step.proxy.name, step.budget, step.chunk
            )
        cx.info["halving"] = {
            "rounds": res.rounds,
            "budget": res.budget,
            "chunk": res.chunk,
            "new_chunks_per_round": res.per_round,
            "embedded": res.embedded,
        }
        failed = {
            n: a.error or f"model {n!r} failed while embedding"
            for n, a in res.arms.items()
            if a.eliminated_in == -1
        }
        ranked = [a for a in res.ranking() if a.model.name not in failed]
        scores: dict[str, float | None] = {
            a.model.name: float(len(ranked) - i) for i, a in enumerate(ranked)
        }
        return Race(scores, failed, res)

    def row(self, step: Halving, i: int, p: Pick, scored: Scored) -> dict[str, Any]:
        row = super().row(step, i, p, scored)
        assert isinstance(scored, Race) and scored.race is not None
        arm = scored.race.arms[p.model.name]
        row["score"] = arm.scores[-1] if arm.scores else None
        row["samples"] = arm.train_seen
        row["why"] = (  # failed arms (eliminated_in -1) are not ranked
            "sh: survived every round"
            if arm.eliminated_in is None
            else f"sh: dropped after round {arm.eliminated_in + 1}"
        )
        return row
