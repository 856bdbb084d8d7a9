"""Search strategies that turn per-model information into a ranked pick of B models.

* task-agnostic (paper §3.1): highest ImageNet top-1; if a model has none, the largest upstream
  dataset; ties → most parameters; then name.
* task-aware: highest proxy score; ties → the task-agnostic order.
* hybrid(proxy) (paper §3.3): the top-1 task-agnostic model plus the top B−1 task-aware models
  among the rest — always B distinct models.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from shift.records import ModelRecord


def agnostic_key(m: ModelRecord) -> tuple:
    """Sort key: models with an ImageNet figure first (highest first, ties → most params),
    then those without by upstream dataset size (largest first, ties → most params); then name."""
    params = m.params or 0  # unknown (a metadata-only row) sorts as the smallest
    if m.imagenet_top1 is not None:
        return (0, -m.imagenet_top1, 0, -params, m.name)
    return (1, 0.0, -(m.upstream_size or 0), -params, m.name)


def rank_agnostic(models: list[ModelRecord]) -> list[ModelRecord]:
    return sorted(models, key=agnostic_key)


def agnostic_reason(m: ModelRecord) -> str:
    if m.imagenet_top1 is not None:
        return f"ImageNet top-1 {m.imagenet_top1:.1f}%"
    if m.upstream_size:
        return f"largest upstream dataset ({m.upstream_dataset or '?'}, {m.upstream_size:,})"
    return "no upstream figures: most parameters"


@dataclass(frozen=True)
class Pick:
    model: ModelRecord
    agnostic_rank: int
    score: float | None
    reason: str


def _score_key(scores: dict[str, float | None], order: dict[str, int]):
    def key(m: ModelRecord) -> tuple:
        s = scores.get(m.name)
        if s is None or (isinstance(s, float) and math.isnan(s)):
            return (True, -0.0, order[m.name])
        return (False, -s, order[m.name])

    return key


def rank(
    models: list[ModelRecord],
    budget: int | None,
    kind: str,
    proxy: str | None = None,
    scores: dict[str, float | None] | None = None,
) -> list[Pick]:
    """Rank ``models`` with strategy ``kind`` ∈ {agnostic, proxy, hybrid}; keep ``budget`` picks."""
    scores = scores or {}
    n = len(models) if budget is None else min(budget, len(models))
    if kind == "agnostic":  # the first n of the agnostic order: no full sort for a small budget
        top = heapq.nsmallest(n, models, key=agnostic_key)
        return [
            Pick(m, i + 1, scores.get(m.name), f"task-agnostic: {agnostic_reason(m)}")
            for i, m in enumerate(top)
        ]
    agn = rank_agnostic(models)
    order = {m.name: i + 1 for i, m in enumerate(agn)}
    by_score = sorted(models, key=_score_key(scores, order))
    if kind == "proxy":
        return [
            Pick(m, order[m.name], scores.get(m.name), f"task-aware: #{i + 1} by {proxy}")
            for i, m in enumerate(by_score[:n])
        ]
    if kind == "hybrid":
        if n == 0:
            return []
        first = agn[0]
        picks = [Pick(first, 1, scores.get(first.name), f"task-agnostic: {agnostic_reason(first)}")]
        rest = [m for m in by_score if m.name != first.name]
        picks += [
            Pick(
                m,
                order[m.name],
                scores.get(m.name),
                f"task-aware: #{i + 1} by {proxy} among the rest",
            )
            for i, m in enumerate(rest[: n - 1])
        ]
        return picks
    raise ValueError(f"unknown strategy {kind!r}")
