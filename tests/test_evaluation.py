"""Evaluation protocols: regret, relative regret, top-k, budget to zero regret, correlations."""

from __future__ import annotations

import csv
import itertools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from shift.tools import evaluation as ev

ACC = {"a": 0.90, "b": 0.80, "c": 0.95, "d": 0.60, "e": 0.95}
SCORES = {"a": 3.0, "b": 5.0, "c": 1.0, "d": 4.0, "e": 0.0}
RANKING = ["b", "d", "a", "c", "e"]
VTAB = Path("/work/shared/data/vtab1k_finetune.csv")


def test_rank_by_scores_is_deterministic() -> None:
    assert ev.rank_by_scores(SCORES) == RANKING
    assert ev.rank_by_scores({"y": 1.0, "x": 1.0, "z": 2.0}) == ["z", "x", "y"]  # ties by name
    with pytest.raises(ValueError, match="NaN"):
        ev.rank_by_scores({"a": float("nan"), "b": 1.0})


def test_regret_table_by_hand() -> None:
    assert ev.oracle(ACC) == 0.95
    # B = 1 and 2: best picked is b (0.80); B = 3 adds a (0.90); B = 4 reaches c (0.95)
    for b, s in [(1, 0.80), (2, 0.80), (3, 0.90), (4, 0.95), (5, 0.95)]:
        assert ev.regret_at(ACC, RANKING, b) == pytest.approx(0.95 - s)
        rel = 0.0 if s == 0.95 else (0.95 - s) / (1 - s)
        assert ev.relative_regret_at(ACC, RANKING, b) == pytest.approx(rel)
    assert ev.relative_regret_at(ACC, RANKING, 1) == pytest.approx(0.75)
    assert ev.relative_regret_at(ACC, RANKING, 3) == pytest.approx(0.5)
    assert ev.regret_over_best(ACC, ["b"]) == pytest.approx(0.15 / 0.95)
    assert ev.regret(ACC, ["d", "e"]) == 0.0  # e ties with the oracle
    assert ev.regret(ACC, ["b", "b"]) == pytest.approx(0.15)  # duplicates collapse


def test_relative_regret_edge_cases() -> None:
    assert ev.relative_regret({"x": 1.0, "y": 0.5}, ["x"]) == 0.0  # 1 = 1 -> 0, not 0/0
    assert ev.relative_regret({"x": 1.0, "y": 0.5}, ["y"]) == 1.0
    assert ev.relative_delta(0.9, 0.8) == pytest.approx(0.5)
    assert ev.relative_delta(0.8, 0.9) == pytest.approx(-0.5)
    assert ev.relative_delta(0.7, 0.7) == 0.0
    assert ev.log_odds_delta(0.9, 0.5) == pytest.approx(math.log(9))
    with pytest.raises(ValueError, match="fractions"):
        ev.regret({"x": 95.0, "y": 80.0}, ["x"])  # percent, not fractions
    with pytest.raises(KeyError, match="no ground truth"):
        ev.regret(ACC, ["zzz"])
    with pytest.raises(ValueError, match="no models"):
        ev.regret(ACC, [])
    with pytest.raises(ValueError, match="budget"):
        ev.regret_at(ACC, RANKING, 0)


def test_random_baseline_by_hand() -> None:
    """Accuracies 0.5, 0.7, 0.9. B = 1: E[max] = 0.7, Δ(0.9, 0.7) = 2/3; the mean of the draws'
    Δ is (0.8 + 2/3 + 0)/3. B = 2: subsets {.5,.7} {.5,.9} {.7,.9} -> E[max] = 2.5/3,
    Δ(0.9, 2.5/3) = 0.4; mean of Δ = (2/3)/3. B = 3: no regret."""
    acc = {"a": 0.5, "b": 0.7, "c": 0.9}
    assert ev.random_expected_max(acc, 1) == pytest.approx(0.7)
    assert ev.random_relative_regret(acc, 1) == pytest.approx(2 / 3)
    assert ev.random_expected_relative_regret(acc, 1) == pytest.approx((0.8 + 2 / 3) / 3)
    assert ev.random_expected_max(acc, 2) == pytest.approx(2.5 / 3)
    assert ev.random_relative_regret(acc, 2) == pytest.approx(0.4)
    assert ev.random_expected_relative_regret(acc, 2) == pytest.approx(2 / 9)
    assert ev.random_relative_regret(acc, 3) == 0.0
    assert ev.random_relative_regret(acc, 10) == 0.0  # B > n: the whole pool
    # against brute force over every subset, with a tie at the top
    acc2 = {"p": 0.2, "q": 0.6, "r": 0.6, "s": 0.3, "t": 0.55}
    for b in (1, 2, 3):
        subsets = list(itertools.combinations(acc2, b))
        e_max = np.mean([max(acc2[m] for m in sub) for sub in subsets])
        e_rel = np.mean([ev.relative_regret(acc2, sub) for sub in subsets])
        assert ev.random_expected_max(acc2, b) == pytest.approx(e_max)
        assert ev.random_relative_regret(acc2, b) == pytest.approx(ev.relative_delta(0.6, e_max))
        assert ev.random_expected_relative_regret(acc2, b) == pytest.approx(e_rel)
    with pytest.raises(ValueError, match="budget"):
        ev.random_relative_regret(acc, 0)


def test_top_k_and_budget() -> None:
    assert not ev.top_k_hit(ACC, RANKING, 3)
    assert ev.top_k_hit(ACC, RANKING, 4)
    assert ev.budget_to_zero_regret(ACC, RANKING) == 4
    assert ev.budget_to_zero_regret(ACC, ["e", "c"]) == 1  # ties count as hits
    assert ev.budget_to_zero_regret(ACC, ["a", "b"]) is None
    assert ev.top_k_relative_accuracy(ACC, RANKING, 2) == pytest.approx(0.80 / 0.95)
    assert ev.top_k_relative_accuracy(ACC, RANKING, 2, "mean") == pytest.approx(0.70 / 0.95)
    assert ev.top_k_relative_accuracy(ACC, RANKING, 4) == 1.0
    # SFDA's rel_k = 1 - regret / best
    assert ev.top_k_relative_accuracy(ACC, RANKING, 1) == pytest.approx(
        1 - ev.regret_over_best(ACC, ["b"])
    )


def test_weighted_tau_by_hand() -> None:
    # x order 0,1,2: weights 1.5, 4/3, 5/6; signs +, +, - -> 2 / (11/3) = 6/11; same by y
    scores = {"p": 3.0, "q": 2.0, "r": 1.0}
    acc = {"p": 0.3, "q": 0.1, "r": 0.2}
    assert ev.weighted_tau(scores, acc) == pytest.approx(6 / 11, rel=1e-12)
    assert ev.weighted_tau(scores, {"p": 0.3, "q": 0.2, "r": 0.1}) == pytest.approx(1.0)
    assert ev.weighted_tau(scores, {"p": 0.1, "q": 0.2, "r": 0.3}) == pytest.approx(-1.0)


def naive_weighted_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Vigna's additive hyperbolic tau, O(n^2), as described in estimators.md section 1.1."""
    n = len(x)

    def one(a: np.ndarray, b: np.ndarray) -> float:
        order = sorted(range(n), key=lambda i: (-a[i], -b[i]))
        rho = {i: r for r, i in enumerate(order)}
        num = da = db = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                w = 1 / (rho[i] + 1) + 1 / (rho[j] + 1)
                sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
                num += w * sa * sb
                da += w * sa * sa
                db += w * sb * sb
        return num / math.sqrt(da * db)

    return (one(x, y) + one(y, x)) / 2


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_tau_matches_naive_definition(ties: bool) -> None:
    rng = np.random.default_rng(0 + ties)
    x = rng.normal(size=15)
    if ties:
        x = np.round(x)  # ties in the scores only
    y = rng.uniform(0.3, 0.9, size=15)
    names = [f"m{i}" for i in range(15)]
    got = ev.weighted_tau(dict(zip(names, x, strict=True)), dict(zip(names, y, strict=True)))
    assert got == pytest.approx(naive_weighted_tau(x, y), abs=1e-12)


def test_correlations_pair_by_name_and_reject_nan() -> None:
    scores = {"u": 1.0, "v": 2.0, "w": 3.0, "extra": 9.0}
    acc = {"w": 0.2, "v": 0.3, "u": 0.1, "other": 0.5}
    assert ev.pearson(scores, acc) == pytest.approx(0.5)
    assert ev.spearman(scores, acc) == pytest.approx(0.5)
    assert ev.kendall_tau(scores, acc) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="finite"):
        ev.weighted_tau({"u": float("nan"), "v": 1.0}, acc)
    with pytest.raises(ValueError, match="two models"):
        ev.pearson({"u": 1.0}, acc)
    assert math.isnan(ev.pearson({"u": 1.0, "v": 1.0}, acc))


@pytest.mark.skipif(not VTAB.exists(), reason="shared VTAB-1k ground truth not available")
def test_reproduces_reference_regret_numbers() -> None:
    """data/README.md §2.5: leave-one-task-out 'meta-learned' ranking on the 94-model
    full-coverage pool, and a uniformly random pick in expectation."""
    acc: dict[str, dict[str, float]] = defaultdict(dict)
    with VTAB.open() as f:
        for row in csv.DictReader(f):
            acc[row["task"]][row["model"]] = float(row["test_accuracy"])
    tasks = sorted(acc)
    models = set.intersection(*(set(acc[t]) for t in tasks))
    assert len(tasks) == 19 and len(models) == 94
    expected = {1: (0.1458, 0.0620, 0.9126, 0.2791), 2: (0.1032, 0.0395, 0.7532, 0.2526)}
    expected[3] = (0.0489, 0.0291, 0.2333, 0.1871)
    budgets = []
    for b, (mean, median, worst, rel) in expected.items():
        regrets, rels = [], []
        for t in tasks:
            meta = {m: float(np.mean([acc[u][m] for u in tasks if u != t])) for m in models}
            ranking = ev.rank_by_scores(meta)
            truth = {m: acc[t][m] for m in models}
            regrets.append(ev.regret_at(truth, ranking, b))
            rels.append(ev.relative_regret_at(truth, ranking, b))
            if b == 1:
                budgets.append(ev.budget_to_zero_regret(truth, ranking))
        assert np.mean(regrets) == pytest.approx(mean, abs=5e-5)
        assert np.median(regrets) == pytest.approx(median, abs=5e-5)
        assert max(regrets) == pytest.approx(worst, abs=5e-5)
        assert np.mean(rels) == pytest.approx(rel, abs=5e-5)
    assert np.mean(budgets) == pytest.approx(24.7, abs=0.05)
    assert np.median(budgets) == 24 and max(budgets) == 72
    rand = [np.mean([max(acc[t][m] for m in models) - acc[t][m] for m in models]) for t in tasks]
    rand_rel = [
        np.mean([ev.relative_regret({m: acc[t][m] for m in models}, [m]) for m in models])
        for t in tasks
    ]
    assert np.mean(rand) == pytest.approx(0.2697, abs=5e-5)
    assert np.mean(rand_rel) == pytest.approx(0.4603, abs=5e-5)  # the data README's E[Δ]
    pools = [{m: acc[t][m] for m in models} for t in tasks]
    e_delta = [ev.random_expected_relative_regret(p, 1) for p in pools]
    assert np.mean(e_delta) == pytest.approx(0.4603, abs=5e-5)
    # Renggli's eq. 1, Δ(ORACLE, E[max]), is larger (Δ is concave in s): 0.5382 here
    eq1 = [ev.random_relative_regret(p, 1) for p in pools]
    assert np.mean(eq1) == pytest.approx(0.5382, abs=5e-5)
