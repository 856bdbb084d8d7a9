"""LogME: log maximum evidence of a Bayesian linear model on the features (You et al., ICML 2021;
JMLR 2022 fixed-point solver).

Per target ``t`` (one-vs-rest ``t_c = 1[y = c]`` for classification): ``t = F w + noise``,
``w ~ N(0, α⁻¹I)``, noise ``~ N(0, β⁻¹)``; the evidence

    L(α, β) = D/2·log α + N/2·log β − ½·log|αI + βFᵀF| − β/2·‖t − Fm‖² − α/2·‖m‖² − N/2·log 2π

is maximised by MacKay's fixed point on the SVD ``F = U S Vᵀ`` (σ_i = s_i², rank k, z = Uᵀt):
``λ = α/β, γ = Σ σ/(σ+λ), M2 = Σ σz²/(σ+λ)², R2 = Σ z²λ²/(σ+λ)² + (‖t‖² − ‖z‖²)``,
``α ← γ/(M2 + 1e-5), β ← (N − γ)/(R2 + 1e-5)``, iterated to convergence: stop when both
``|α_new − α| ≤ tol·α`` and ``|β_new − β| ≤ tol·β`` (``tol = 1e-6``), at most ``max_iter = 100``
steps; the evidence uses the updated α, β with the last M2, R2 (as the reference). The score is
the mean over classes of ``L/N``. The reference stops after at most 11 steps, on
``|α/β − λ| ≤ 10⁻³·λ``: enough when N > D (the scores move by < 1e-6), but with D > N the fixed
point is still far off then (0.07, 30 % relative, on 2,048-d features of a few hundred samples),
so that stopping rule is not kept (``max_iter=11, tol=1e-3`` is no longer the reference's rule).

**N < D**: ``log|A|`` includes the ``(D − k)·log α`` of the zero singular values, so the
D-dependence cancels: ``D/2 log α − ½ log|A| = −½ Σ_{i≤k} log(1 + βσ_i/α)``, which is what is
evaluated (stable, no ``log α`` at all). ``thuml/LogME``'s fixed-point code omits this term
(issue #23) and inflates scores when N < D; that bug is not reproduced here.

The spectrum comes from the smaller Gram matrix (``FFᵀ`` if N ≤ D else ``FᵀF``, as the
reference does for N > D). Singular values ``s ≤ 1e-10`` (the reference's cut) or at the Gram
rounding-noise floor (``σ ≤ σ_max·max(N, D)·eps``) are treated as zero; their part of ``t``
enters through ``‖t‖² − ‖z‖²``. Features are not centred (as the reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import as_matrix, check_xy, one_hot, spectrum
from shift.scoring.registry import estimator

__all__ = ["log_evidence", "logme"]

_LOG_2PI = float(np.log(2 * np.pi))
_S_MIN = 1e-10  # singular values at or below this are zero (reference: s > 1e-10)
MAX_ITER = 100  # fixed-point steps at most
TOL = 1e-6  # relative change of α and β that counts as converged


def _fixed_point(
    sigma: np.ndarray, z2: np.ndarray, r0: np.ndarray, n: int, max_iter: int, tol: float
) -> np.ndarray:
    """Evidence/N for every target column at once (each column stops on its own)."""
    k_targets = z2.shape[1]
    s = sigma[:, None]
    alpha = np.ones(k_targets)
    beta = np.ones(k_targets)
    m2 = np.zeros(k_targets)
    r2 = r0.copy()
    active = np.ones(k_targets, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            if not active.any():
                break
            lam = alpha / beta
            den = s + lam
            gamma = (s / den).sum(axis=0)
            m2_new = (s * z2 / den**2).sum(axis=0)
            r2_new = (z2 * (lam / den) ** 2).sum(axis=0) + r0
            a_new = gamma / (m2_new + 1e-5)
            b_new = (n - gamma) / (r2_new + 1e-5)
            # relative change of α and β; NaN (λ = 0: no signal) compares False, i.e. converged
            moved = (np.abs(a_new - alpha) > tol * np.abs(alpha)) | (
                np.abs(b_new - beta) > tol * np.abs(beta)
            )
            alpha = np.where(active, a_new, alpha)
            beta = np.where(active, b_new, beta)
            m2 = np.where(active, m2_new, m2)
            r2 = np.where(active, r2_new, r2)
            active &= moved
        ratio = np.where(alpha > 0, beta / alpha, 0.0)
        logdet = np.log1p(ratio[None, :] * s).sum(axis=0) if len(sigma) else 0.0
    evidence = 0.5 * n * np.log(beta) - 0.5 * logdet - 0.5 * beta * r2 - 0.5 * alpha * m2
    return (evidence - 0.5 * n * _LOG_2PI) / n


def log_evidence(
    features: Any, targets: Any, *, max_iter: int = MAX_ITER, tol: float = TOL
) -> np.ndarray:
    """Maximum log evidence / N of every column of ``targets`` (N × K, real-valued) given
    ``features`` (N × D), by the fixed point of the module docstring; float64 array (K,)."""
    F = as_matrix(features)
    T = np.asarray(targets, dtype=np.float64)
    if T.ndim == 1:
        T = T[:, None]
    if T.ndim != 2 or T.shape[0] != F.shape[0] or not np.isfinite(T).all():
        raise ValueError("targets must be finite, (N,) or (N, K) with N = rows of features")
    n = F.shape[0]
    sp = spectrum(F)
    k = sp.rank(abs_floor=_S_MIN**2)
    sigma = sp.sigma[:k]
    z = sp.left_vectors(F, k).T @ T  # (k, K)
    z2 = z**2
    r0 = np.maximum((T**2).sum(axis=0) - z2.sum(axis=0), 0.0)
    return _fixed_point(sigma, z2, r0, n, max_iter, tol)


@estimator(
    "logme",
    description="LogME (You et al. 2021): mean per-class log maximum evidence / N of a Bayesian "
    "linear model on the features (fixed-point solver, N < D corrected)",
    cost_per_1k=0.12,
    max_iter=MAX_ITER,
    tol=TOL,
)
def logme(features: Any, labels: Any, *, max_iter: int = MAX_ITER, tol: float = TOL) -> float:
    """LogME of a classification task: mean over classes of the one-vs-rest log evidence / N
    (higher is better; typically in about [-2, 2])."""
    F, y, c = check_xy(features, labels)
    return float(np.mean(log_evidence(F, one_hot(y, c), max_iter=max_iter, tol=tol)))
