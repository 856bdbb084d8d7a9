"""Search strategies: the paper's task-agnostic order, task-aware ranking and hybrid picks."""

from __future__ import annotations

import math
import random

import pytest

from shift.records import InputSpec, ModelRecord
from shift.scoring.strategies import agnostic_key, agnostic_reason, rank, rank_agnostic


def m(
    name: str,
    top1: float | None = None,
    upstream: int | None = None,
    params: int = 1_000_000,
    dataset: str | None = None,
) -> ModelRecord:
    return ModelRecord(
        name=name,
        path=f"/x/{name}.onnx",
        sha256="0" * 64,
        params=params,
        dim=8,
        output="embedding",
        input_name="input",
        input=InputSpec(height=8, width=8),
        imagenet_top1=top1,
        imagenet_source="paper" if top1 is not None else None,
        upstream_size=upstream,
        upstream_dataset=dataset,
    )


def names(models: list[ModelRecord]) -> list[str]:
    return [x.name for x in models]


def shuffled(models: list[ModelRecord], seed: int) -> list[ModelRecord]:
    out = list(models)
    random.Random(seed).shuffle(out)
    return out


# ---- task-agnostic ---------------------------------------------------------------------------


def test_highest_imagenet_top1_first() -> None:
    pool = [
        m("small-but-best", top1=85.0, params=5_000_000, upstream=1_000),
        m("huge", top1=80.0, params=900_000_000, upstream=3_000_000_000),
        m("mid", top1=82.5),
    ]
    for seed in range(5):
        assert names(rank_agnostic(shuffled(pool, seed))) == ["small-but-best", "mid", "huge"]


def test_without_imagenet_largest_upstream_dataset_first() -> None:
    pool = [
        m("in1k", upstream=1_281_167, params=500_000_000),
        m("jft", upstream=300_000_000, params=10_000_000),
        m("in21k", upstream=14_000_000),
    ]
    for seed in range(5):
        assert names(rank_agnostic(shuffled(pool, seed))) == ["jft", "in21k", "in1k"]


def test_imagenet_figure_beats_no_figure() -> None:
    pool = [
        m("no-figure-huge-data", upstream=10**10, params=10**9),
        m("weak-but-measured", top1=10.0, params=1),
    ]
    assert names(rank_agnostic(pool)) == ["weak-but-measured", "no-figure-huge-data"]


def test_top1_tie_goes_to_most_parameters() -> None:
    pool = [
        m("a-small", top1=80.0, params=10),
        m("b-big", top1=80.0, params=1_000),
        m("c-mid", top1=80.0, params=100),
        m("better", top1=80.1, params=1),
    ]
    for seed in range(5):
        assert names(rank_agnostic(shuffled(pool, seed))) == ["better", "b-big", "c-mid", "a-small"]


def test_upstream_tie_goes_to_most_parameters() -> None:
    pool = [
        m("a", upstream=1_000, params=5),
        m("b", upstream=1_000, params=50),
        m("c", upstream=999, params=10**9),
    ]
    for seed in range(5):
        assert names(rank_agnostic(shuffled(pool, seed))) == ["b", "a", "c"]


def test_unknown_upstream_sorts_last_then_by_parameters() -> None:
    pool = [m("none-big", params=100), m("none-small", params=1), m("tiny-data", upstream=1)]
    assert names(rank_agnostic(pool)) == ["tiny-data", "none-big", "none-small"]


def test_full_tie_goes_to_name() -> None:
    pool = [m(n, top1=70.0, params=7) for n in ("zeta", "alpha", "Beta", "mu")]
    pool += [m(n, upstream=5, params=7) for n in ("yy", "bb")]
    for seed in range(5):
        assert names(rank_agnostic(shuffled(pool, seed))) == [
            "Beta",
            "alpha",
            "mu",
            "zeta",
            "bb",
            "yy",
        ]


def test_agnostic_key_and_reason() -> None:
    assert agnostic_key(m("x", top1=80.0, params=3)) < agnostic_key(m("y", top1=79.0, params=9))
    assert agnostic_reason(m("x", top1=76.13)) == "ImageNet top-1 76.1%"
    assert (
        agnostic_reason(m("x", upstream=14_000_000, dataset="in21k"))
        == "largest upstream dataset (in21k, 14,000,000)"
    )
    assert agnostic_reason(m("x")) == "no upstream figures: most parameters"


def test_rank_agnostic_budget_and_fields() -> None:
    pool = [m("a", top1=70.0), m("b", top1=90.0), m("c", top1=80.0)]
    picks = rank(pool, 2, "agnostic")
    assert names([p.model for p in picks]) == ["b", "c"]
    assert [p.agnostic_rank for p in picks] == [1, 2]
    assert [p.score for p in picks] == [None, None]
    assert picks[0].reason == "task-agnostic: ImageNet top-1 90.0%"
    assert len(rank(pool, None, "agnostic")) == 3
    assert len(rank(pool, 10, "agnostic")) == 3
    assert rank(pool, 0, "agnostic") == []
    assert rank([], 3, "agnostic") == []


# ---- task-aware ------------------------------------------------------------------------------


def test_proxy_ranking_by_score_with_missing_last() -> None:
    pool = [
        m("best-agnostic", top1=90.0),
        m("second-agnostic", top1=80.0),
        m("third", top1=70.0),
        m("fourth", top1=60.0),
        m("nan", top1=95.0),
        m("unscored", top1=99.0),
    ]
    scores = {
        "best-agnostic": 0.2,
        "second-agnostic": 0.9,
        "third": 0.5,
        "fourth": None,
        "nan": math.nan,
    }
    picks = rank(pool, None, "proxy", "knn", scores)
    # by score; no score (None, NaN or missing) last, among them by the agnostic order
    assert names([p.model for p in picks]) == [
        "second-agnostic",
        "third",
        "best-agnostic",
        "unscored",
        "nan",
        "fourth",
    ]
    assert [p.score for p in picks[:3]] == [0.9, 0.5, 0.2]
    assert picks[3].score is None and picks[5].score is None
    assert picks[0].agnostic_rank == 4  # unscored 99, nan 95, best 90, second 80
    assert picks[0].reason == "task-aware: #1 by knn"
    assert names([p.model for p in rank(pool, 2, "proxy", "knn", scores)]) == [
        "second-agnostic",
        "third",
    ]


def test_proxy_score_ties_follow_agnostic_order() -> None:
    pool = [m("low", top1=10.0), m("high", top1=90.0), m("mid", top1=50.0)]
    picks = rank(pool, None, "proxy", "linear", {"low": 0.5, "high": 0.5, "mid": 0.5})
    assert names([p.model for p in picks]) == ["high", "mid", "low"]


def test_proxy_negative_scores_rank_above_missing() -> None:
    pool = [m("neg", top1=1.0), m("none", top1=99.0)]
    picks = rank(pool, None, "proxy", "x", {"neg": -3.0, "none": None})
    assert names([p.model for p in picks]) == ["neg", "none"]


# ---- hybrid ----------------------------------------------------------------------------------

POOL = [
    m("agn-top", top1=90.0),
    m("agn-2", top1=85.0),
    m("agn-3", top1=80.0),
    m("agn-4", top1=75.0),
    m("agn-5", upstream=10**9),
]


def test_hybrid_top1_agnostic_plus_best_scores() -> None:
    scores = {"agn-top": 0.1, "agn-2": 0.3, "agn-3": 0.9, "agn-4": 0.7, "agn-5": 0.8}
    picks = rank(POOL, 3, "hybrid", "linear", scores)
    assert names([p.model for p in picks]) == ["agn-top", "agn-3", "agn-5"]
    assert [p.agnostic_rank for p in picks] == [1, 3, 5]
    assert [p.score for p in picks] == [0.1, 0.9, 0.8]
    assert picks[0].reason.startswith("task-agnostic")
    assert picks[1].reason == "task-aware: #1 by linear among the rest"
    assert picks[2].reason == "task-aware: #2 by linear among the rest"


def test_hybrid_when_agnostic_top_is_also_best_scoring() -> None:
    scores = {"agn-top": 0.99, "agn-2": 0.3, "agn-3": 0.9, "agn-4": 0.7, "agn-5": 0.8}
    picks = rank(POOL, 3, "hybrid", "linear", scores)
    assert names([p.model for p in picks]) == ["agn-top", "agn-3", "agn-5"]
    assert len({p.model.name for p in picks}) == 3


def test_hybrid_budget_larger_than_pool() -> None:
    scores = {"agn-top": 0.5, "agn-2": 0.3, "agn-3": 0.9, "agn-4": None, "agn-5": 0.8}
    for budget in (5, 6, 100, None):
        picks = rank(POOL, budget, "hybrid", "knn", scores)
        assert names([p.model for p in picks]) == ["agn-top", "agn-3", "agn-5", "agn-2", "agn-4"]


def test_hybrid_budget_one_is_agnostic_top() -> None:
    scores = {"agn-top": 0.0, "agn-3": 1.0}
    picks = rank(POOL, 1, "hybrid", "knn", scores)
    assert names([p.model for p in picks]) == ["agn-top"]
    assert picks[0].agnostic_rank == 1
    assert rank(POOL, 0, "hybrid", "knn", scores) == []
    assert rank([], 3, "hybrid", "knn", scores) == []


def test_hybrid_with_no_scores_is_agnostic() -> None:
    picks = rank(shuffled(POOL, 3), 4, "hybrid", "knn", {})
    assert names([p.model for p in picks]) == ["agn-top", "agn-2", "agn-3", "agn-4"]


@pytest.mark.parametrize("seed", range(20))
def test_hybrid_always_budget_distinct_models(seed: int) -> None:
    rnd = random.Random(seed)
    pool = [
        m(f"m{i}", top1=rnd.choice([None, 70.0, 80.0]), upstream=rnd.randint(0, 9), params=i)
        for i in range(rnd.randint(1, 12))
    ]
    scores = {x.name: rnd.choice([None, math.nan, rnd.random()]) for x in pool}
    budget = rnd.randint(1, 15)
    picks = rank(pool, budget, "hybrid", "knn", scores)
    chosen = [p.model.name for p in picks]
    assert len(chosen) == len(set(chosen)) == min(budget, len(pool))
    assert chosen[0] == rank_agnostic(pool)[0].name
    proxy_rest = [
        p.model.name for p in rank(pool, None, "proxy", "knn", scores) if p.model.name != chosen[0]
    ]
    assert chosen[1:] == proxy_rest[: budget - 1]


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        rank(POOL, 2, "random")
