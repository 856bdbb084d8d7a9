"""Scoring a model-search strategy against ground-truth fine-tune accuracies, per target task.

Inputs are plain dicts ``{model: fine-tune accuracy}`` (fractions in [0, 1]), rankings (model
names, best first) and ``{model: proxy score}`` dicts. Definitions (Renggli et al., "Which
model to transfer?", eqs. 1–2; ``/work/shared/reference/estimators.md`` §1):

* ``ORACLE = max_{m ∈ pool} acc(m)``; a strategy with budget B returns the set S of its top-B
  models and ``s = max_{m ∈ S} acc(m)``.
* **regret** (eq. 1, absolute) ``= ORACLE − s ≥ 0``.
* **relative regret** (eq. 2 with s(m₁) = ORACLE) ``r = (ORACLE − s)/(1 − s)``, defined as 0
  when ``ORACLE = s`` (including 1 = 1); in [0, 1].
* ``regret_over_best = (ORACLE − s)/ORACLE``, i.e. ``1 − rel_k`` of the SFDA papers (not
  Renggli's relative regret).
* **random baseline** (B models drawn uniformly without replacement): Renggli's eq. 1 takes the
  expectation *inside*, ``s(random) = E[max_{m ∈ S} acc(m)]``, so its relative regret is
  ``random_relative_regret = Δ(ORACLE, E[max])``. The mean of the draws' relative regrets,
  ``E[Δ(ORACLE, max)]``, is a different number — smaller, by Jensen: ``Δ(ORACLE, s) =
  1 − (1 − ORACLE)/(1 − s)`` is concave in s — kept only as
  ``random_expected_relative_regret``. Absolute regret is linear, so both forms give
  ``ORACLE − E[max]``. ``E[max]`` is exact: with accuracies sorted ascending,
  ``P(max = a_(i)) = C(i−1, B−1)/C(n, B)``.
* **top-k hit**: the top-k contain an ORACLE model (ties in accuracy count as hits).
* **budget to zero regret**: the smallest B whose top-B contain an ORACLE model.
* **weighted Kendall τ**: ``scipy.stats.weightedtau(scores, accuracies)`` with its defaults
  (additive hyperbolic weights, ranks by decreasing value), ``.statistic``.
* **Pearson r** between scores and accuracies (PARC reports it × 100).

Correlations use the models present in both dicts; NaN scores are rejected, since
``weightedtau`` would silently rank them last. scipy is imported on use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "budget_to_zero_regret",
    "kendall_tau",
    "log_odds_delta",
    "oracle",
    "pearson",
    "random_expected_max",
    "random_expected_relative_regret",
    "random_relative_regret",
    "rank_by_scores",
    "regret",
    "regret_at",
    "regret_over_best",
    "relative_delta",
    "relative_regret",
    "relative_regret_at",
    "spearman",
    "top_k",
    "top_k_hit",
    "top_k_relative_accuracy",
    "weighted_tau",
]

Accuracies = Mapping[str, float]


def _accuracies(acc: Accuracies) -> dict[str, float]:
    if not acc:
        raise ValueError("no ground-truth accuracies")
    out = {str(m): float(a) for m, a in acc.items()}
    bad = [m for m, a in out.items() if not (0.0 <= a <= 1.0)]
    if bad:
        raise ValueError(f"accuracies must be fractions in [0, 1]; not: {', '.join(bad[:5])}")
    return out


def _picked(acc: dict[str, float], selected: Iterable[str]) -> list[str]:
    picked = list(dict.fromkeys(str(m) for m in selected))
    if not picked:
        raise ValueError("the strategy returned no models")
    missing = [m for m in picked if m not in acc]
    if missing:
        raise KeyError(f"no ground truth for: {', '.join(missing[:5])}")
    return picked


def oracle(accuracies: Accuracies) -> float:
    """``ORACLE``: the best fine-tune accuracy in the pool."""
    return max(_accuracies(accuracies).values())


def rank_by_scores(scores: Mapping[str, float]) -> list[str]:
    """Model names by decreasing score; ties broken by name (deterministic). NaN is an error."""
    if any(math.isnan(float(v)) for v in scores.values()):
        raise ValueError("NaN scores: reject or drop them before ranking")
    return sorted(scores, key=lambda m: (-float(scores[m]), str(m)))


def top_k(ranking: Sequence[str], k: int) -> list[str]:
    if k < 1:
        raise ValueError("the budget must be >= 1")
    return list(ranking[:k])


def regret(accuracies: Accuracies, selected: Iterable[str]) -> float:
    """Absolute regret ``ORACLE − max_{m ∈ selected} acc(m)`` (eq. 1)."""
    acc = _accuracies(accuracies)
    s = max(acc[m] for m in _picked(acc, selected))
    return max(acc.values()) - s


def relative_delta(s1: float, s2: float) -> float:
    """Renggli's ``Δ(m₁, m₂) = (s₁ − s₂)/(1 − min(s₁, s₂))`` in [−1, 1]; 0 when ``s₁ = s₂``."""
    if s1 == s2:
        return 0.0
    return (s1 - s2) / (1.0 - min(s1, s2))


def relative_regret(accuracies: Accuracies, selected: Iterable[str]) -> float:
    """Relative regret ``r = Δ(ORACLE, s) = (ORACLE − s)/(1 − s)`` (eq. 2); 0 if ``s = ORACLE``."""
    acc = _accuracies(accuracies)
    s = max(acc[m] for m in _picked(acc, selected))
    return relative_delta(max(acc.values()), s)


def regret_over_best(accuracies: Accuracies, selected: Iterable[str]) -> float:
    """``(ORACLE − s)/ORACLE`` = 1 − SFDA's ``rel_k`` (0 when ORACLE = 0)."""
    acc = _accuracies(accuracies)
    best = max(acc.values())
    return regret(acc, selected) / best if best > 0 else 0.0


def _max_weights(n: int, budget: int) -> list[float]:
    """``P(max of a uniform B-subset = the i-th smallest of n)``, i = 1..n."""
    if budget < 1:
        raise ValueError("the budget must be >= 1")
    b = min(budget, n)
    total = math.comb(n, b)
    return [math.comb(i - 1, b - 1) / total for i in range(1, n + 1)]


def random_expected_max(accuracies: Accuracies, budget: int) -> float:
    """``E[max_{m ∈ S} acc(m)]`` for S a uniformly random ``budget``-subset (exact)."""
    a = sorted(_accuracies(accuracies).values())
    return float(sum(w * x for w, x in zip(_max_weights(len(a), budget), a, strict=True)))


def random_relative_regret(accuracies: Accuracies, budget: int) -> float:
    """Renggli's relative regret of random selection, ``Δ(ORACLE, E[max])`` (eq. 1: the
    expectation inside)."""
    return relative_delta(oracle(accuracies), random_expected_max(accuracies, budget))


def random_expected_relative_regret(accuracies: Accuracies, budget: int) -> float:
    """``E[Δ(ORACLE, max)]``: the mean relative regret of random ``budget``-subsets (not
    Renggli's form; ≤ :func:`random_relative_regret`)."""
    a = sorted(_accuracies(accuracies).values())
    best = a[-1]
    weights = _max_weights(len(a), budget)
    return float(sum(w * relative_delta(best, x) for w, x in zip(weights, a, strict=True)))


def regret_at(accuracies: Accuracies, ranking: Sequence[str], budget: int) -> float:
    """Absolute regret of the top-``budget`` models of ``ranking``."""
    return regret(accuracies, top_k(ranking, budget))


def relative_regret_at(accuracies: Accuracies, ranking: Sequence[str], budget: int) -> float:
    """Relative regret of the top-``budget`` models of ``ranking``."""
    return relative_regret(accuracies, top_k(ranking, budget))


def log_odds_delta(s1: float, s2: float) -> float:
    """``logit(s₁) − logit(s₂)`` (Renggli appendix C); ±inf at 0 or 1."""
    with np.errstate(divide="ignore"):
        return float(np.log(s1 / (1 - s1)) - np.log(s2 / (1 - s2)))


def top_k_hit(accuracies: Accuracies, ranking: Sequence[str], k: int) -> bool:
    """Whether the top-k of ``ranking`` contain a best model (zero regret at budget k)."""
    return regret_at(accuracies, ranking, k) == 0.0


def top_k_relative_accuracy(
    accuracies: Accuracies,
    ranking: Sequence[str],
    k: int,
    variant: Literal["max", "mean"] = "max",
) -> float:
    """``max`` (SFDA ``rel_k``) or ``mean`` (PARC) accuracy of the top-k, over ``ORACLE``."""
    acc = _accuracies(accuracies)
    picked = _picked(acc, top_k(ranking, k))
    vals = [acc[m] for m in picked]
    if variant not in ("max", "mean"):
        raise ValueError("variant must be 'max' or 'mean'")
    got = max(vals) if variant == "max" else float(np.mean(vals))
    best = max(acc.values())
    return got / best if best > 0 else 1.0


def budget_to_zero_regret(accuracies: Accuracies, ranking: Sequence[str]) -> int | None:
    """Smallest B whose top-B contain a best model (ties count); None if ``ranking`` has none.
    Models of ``ranking`` without ground truth are an error."""
    acc = _accuracies(accuracies)
    best = max(acc.values())
    for b, m in enumerate(_picked(acc, ranking), start=1):
        if acc[m] == best:
            return b
    return None


def _paired(scores: Mapping[str, float], accuracies: Accuracies) -> tuple[np.ndarray, np.ndarray]:
    common = [m for m in scores if m in accuracies]
    if len(common) < 2:
        raise ValueError("need at least two models with both a score and a ground truth")
    x = np.array([float(scores[m]) for m in common])
    y = np.array([float(accuracies[m]) for m in common])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores and accuracies must be finite (NaN would rank last silently)")
    return x, y


def weighted_tau(scores: Mapping[str, float], accuracies: Accuracies) -> float:
    """Weighted Kendall τ_w: ``scipy.stats.weightedtau(scores, accuracies)`` with defaults."""
    from scipy.stats import weightedtau

    x, y = _paired(scores, accuracies)
    return float(weightedtau(x, y).statistic)


def kendall_tau(scores: Mapping[str, float], accuracies: Accuracies) -> float:
    """Plain Kendall τ-b (``scipy.stats.kendalltau``)."""
    from scipy.stats import kendalltau

    x, y = _paired(scores, accuracies)
    return float(kendalltau(x, y).statistic)


def spearman(scores: Mapping[str, float], accuracies: Accuracies) -> float:
    """Spearman ρ (``scipy.stats.spearmanr``)."""
    from scipy.stats import spearmanr

    x, y = _paired(scores, accuracies)
    return float(spearmanr(x, y).statistic)


def pearson(scores: Mapping[str, float], accuracies: Accuracies) -> float:
    """Pearson r between scores and accuracies (NaN if either is constant)."""
    x, y = _paired(scores, accuracies)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else float("nan")
