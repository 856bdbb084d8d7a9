"""SFDA: self-challenging Fisher discriminant analysis (Shao et al., ECCV 2022).

Regularised LDA posterior ``lda(X, s)``: priors π_c, class means μ_c, within-class scatter
``S_w = Σ_c π_c·Cov_c`` (biased); if s is not given, ``λ_max(S_w)`` from the reference's 3 power
iterations started at the row sums and ``s = max(exp(−5·λ_max), 1e-10)`` (the paper's adaptive
λ); ``S̃_w = (1−s)·S_w + s·(tr S_w/D)·I``; ``p(c|x) = softmax_c(μ_cᵀS̃_w⁻¹x − ½μ_cᵀS̃_w⁻¹μ_c
+ log π_c)``. The reference reaches the same posterior through a generalised eigenproblem keeping
all D eigenvectors (``V Vᵀ = S̃_w⁻¹``); a linear solve is used here.

Score: ``P = lda(X)``; ``Q = softmax(P)`` (softmax of the probabilities); ConfMix
``x_i ← q_{i,y_i}·x_i + (1 − q_{i,y_i})·μ̄_{−y_i}`` with ``μ̄_{−c}`` the unweighted mean of the
other classes' means (computed before mixing); ``P′ = lda(X_mixed, same s)``;
``SFDA = (1/N)·Σ_i P′(y_i|x_i)`` (no log, as the paper). The caller's array is never modified
(the reference overwrites it).

**Dimension reduction first (``pca_dim``, default 64).** With raw CNN features s is usually
1e-10 and the LDA is effectively unregularised, so once the feature rank exceeds N − C the LDA
separates the training set perfectly and the score saturates at 1.0 for every model
(TencentARC/SFDA issue #5; reducing to 32 dimensions first avoids it). ``sfda`` therefore first
reduces features with more than ``k = min(pca_dim, N − C − 1)`` columns to their top k principal
components (:func:`~shift.scoring.estimators._common.discriminant_dim`; the same k for every
model on a task); ``pca_dim=None`` runs on the raw features, as the reference.

Given s, the posteriors do not change under a global scale of the features; s itself does
(through ``λ_max``). Features beyond float32's range are divided by a power of two ``2^e``
first (:func:`~shift.scoring.scale.unit_scale`) and ``λ_max·2^2e`` gives s, so the
score is the formula's at the original scale (s = 1e-10 for huge features, 1 for tiny ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import (
    check_xy,
    class_means,
    reduce_features,
    softmax,
    spd_solve,
)
from shift.scoring.plugins import estimator
from shift.scoring.scale import scaled, unit_scale

__all__ = ["lda_posterior", "power_lambda_max", "sfda"]

_S_MIN = 1e-10
DEFAULT_PCA_DIM = 64


def power_lambda_max(A: np.ndarray, iterations: int = 3) -> float:
    """The reference's λ_max estimate: ``x = A·1``; repeat ``y = Ax/‖Ax‖, x = Ay/‖Ay‖``;
    return ``xᵀAy``. Zero vectors fall back to the all-ones start (and 0 for A = 0)."""
    x = A.sum(axis=1)
    if not np.any(x):
        x = np.ones(A.shape[0])
    y = x
    for _ in range(iterations):
        t = A @ x
        nt = np.linalg.norm(t)
        if nt == 0:
            return 0.0
        y = t / nt
        t = A @ y
        x = t / np.linalg.norm(t)
    return float(x @ A @ y)


def lda_posterior(
    X: np.ndarray, y: np.ndarray, c: int, shrinkage: float | None = None, exp2: int = 0
) -> tuple[np.ndarray, float]:
    """``(p(c|x) for every row (N × C), s)`` of the regularised LDA of the module docstring;
    ``X`` is features divided by ``2^exp2`` (the adaptive s uses the original ``λ_max``)."""
    n, d = X.shape
    means, counts = class_means(X, y, c)
    priors = counts / n
    Xw = X - means[y]
    Sw = Xw.T @ Xw / n
    if shrinkage is None:
        lam = scaled(power_lambda_max(Sw), 2 * exp2)  # at the original scale; may be inf
        shrinkage = max(float(np.exp(-5.0 * lam)), _S_MIN)
    s = float(shrinkage)
    mu = float(np.trace(Sw)) / d
    St = (1.0 - s) * Sw
    St.flat[:: d + 1] += s * mu
    if mu <= 0:  # every sample on its class mean: the s → 0 limit is the nearest class mean
        logits = X @ means.T - 0.5 * np.sum(means**2, axis=1)
        best = logits >= logits.max(axis=1, keepdims=True) - 1e-12 * (1 + np.abs(logits))
        return best / best.sum(axis=1, keepdims=True), s
    W = spd_solve(St, means.T)  # S̃_w⁻¹ μᵀ (D × C)
    logits = X @ W - 0.5 * np.einsum("cd,dc->c", means, W) + np.log(priors)
    return softmax(logits, axis=1), s


@estimator(
    "sfda",
    description="SFDA (Shao et al. 2022): self-challenging Fisher discriminant analysis, mean "
    "true-class posterior after ConfMix, on at most min(64, N-C-1) principal components",
    cost_per_1k=0.81,
    pca_dim=DEFAULT_PCA_DIM,
)
def sfda(features: Any, labels: Any, *, pca_dim: int | None = DEFAULT_PCA_DIM) -> float:
    """SFDA score ``mean_i P′(y_i | x_i)`` in (0, 1] (higher is better) on features reduced to
    ``min(pca_dim, N − C − 1)`` principal components (``pca_dim=None``: raw features)."""
    X, y, c = check_xy(features, labels)
    [X], e = unit_scale(X)
    X = reduce_features(X, c, pca_dim)
    n = X.shape[0]
    P, s = lda_posterior(X, y, c, exp2=e)
    q = softmax(P, axis=1)[np.arange(n), y]
    means, _ = class_means(X, y, c)
    others = (means.sum(axis=0) - means) / (c - 1)
    X_mixed = q[:, None] * X + (1.0 - q)[:, None] * others[y]
    P2, _ = lda_posterior(X_mixed, y, c, shrinkage=s)
    return float(np.mean(P2[np.arange(n), y]))
