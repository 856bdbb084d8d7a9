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

**Scale.** Without the two 1e-5 terms the maximum evidence would not change under a global
scale s of the features (α absorbs it); with them it does: for large s the 1e-5 dominates
``M2 = ‖m‖² ∝ 1/s²``, α → γ·1e5/s², and LogME falls by about ``(k/N)·log s`` (k: rank, N > D) or
``log s`` (N ≤ D). That is the formula's value, and it is what is computed at every magnitude:
features beyond float32's range are divided by a power of two ``2^e``
(:func:`~shift.scoring.scale.unit_scale`), the α regulariser becomes ``1e-5·2^2e`` and the
``s ≤ 1e-10`` cut ``1e-10·2^−e``. The iteration runs in the log domain (α and β are carried as
logs, ``N − γ = (N − k) + Σ λ/(σ + λ)``, ``log(1 + βσ/α)`` as a softplus): the same values at
normal magnitudes (to ~1e-15), and no under/overflow elsewhere (N ≤ D with features from about
1e9 gave ``N − γ = 0``, β = 0 and NaN; from about 1e154, α underflowed). For N ≤ D and large
features the MacKay steps 2-cycle in β (the evidence barely depends on it) and stop at
``max_iter``, within about 1e-3 of the maximum, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import as_matrix, check_xy, one_hot, spectrum
from shift.scoring.plugins import estimator
from shift.scoring.scale import scaled, unit_scale

__all__ = ["log_evidence", "logme"]

_LOG_2PI = float(np.log(2 * np.pi))
_LOG_2 = float(np.log(2.0))
_REG = 1e-5  # the reference's regulariser of both updates (M2 + 1e-5, R2 + 1e-5)
_S_MIN = 1e-10  # singular values at or below this are zero (reference: s > 1e-10)
MAX_ITER = 100  # fixed-point steps at most
TOL = 1e-6  # relative change of α and β that counts as converged


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """``log Σ exp(a)`` over axis 0 (−inf for an empty or all −inf column)."""
    if a.shape[0] == 0:
        return np.full(a.shape[1:], -np.inf)
    top = a.max(axis=0)
    shift = np.where(np.isfinite(top), top, 0.0)
    return shift + np.log(np.exp(a - shift).sum(axis=0))


def _update(
    log_s: np.ndarray,
    log_z2: np.ndarray,
    r0: np.ndarray,
    log_free: float,
    log_alpha: np.ndarray,
    log_beta: np.ndarray,
    log_reg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One MacKay step in the log domain: with ``λ = α/β``, ``p = σ/(σ+λ)``, ``q = λ/(σ+λ)``:
    ``γ = Σp``, ``N − γ = (N − k) + Σq``, ``M2 = Σ z²p²/σ``, ``R2 = Σ z²q² + r0``,
    ``α ← γ/(M2 + reg)``, ``β ← (N − γ)/(R2 + 1e-5)``. Returns ``(log α, log β, M2, R2)``."""
    log_lam = (log_alpha - log_beta)[None, :]
    log_p = -np.logaddexp(0.0, log_lam - log_s)
    log_q = -np.logaddexp(0.0, log_s - log_lam)
    log_m2 = _logsumexp(log_z2 + 2 * log_p - log_s)
    r2 = np.exp(log_z2 + 2 * log_q).sum(axis=0) + r0
    log_rest = np.logaddexp(log_free, _logsumexp(log_q))
    log_a = _logsumexp(log_p) - np.logaddexp(log_m2, log_reg)
    return log_a, log_rest - np.log(r2 + _REG), np.exp(log_m2), r2


def _fixed_point(
    sigma: np.ndarray,
    z2: np.ndarray,
    r0: np.ndarray,
    n: int,
    max_iter: int,
    tol: float,
    exp2: int = 0,
) -> np.ndarray:
    """Evidence/N for every target column at once (each column stops on its own), for
    features divided by ``2^exp2`` (``sigma``: their squared singular values): α's regulariser
    is ``1e-5·2^(2·exp2)``, and α, β are carried as logs (module docstring, "Scale")."""
    k_targets = z2.shape[1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        log_s, log_z2 = np.log(sigma)[:, None], np.log(z2)
        log_free = float(np.log(n - len(sigma)))
        log_reg = float(np.log(_REG)) + 2 * exp2 * _LOG_2
        log_alpha, log_beta = np.zeros(k_targets), np.zeros(k_targets)
        m2, r2 = np.zeros(k_targets), r0.copy()
        active = np.ones(k_targets, bool)
        for _ in range(max_iter):
            if not active.any():
                break
            la, lb, m2_new, r2_new = _update(
                log_s, log_z2, r0, log_free, log_alpha, log_beta, log_reg
            )
            # relative change of α and β; NaN (α = 0: no signal) compares False, i.e. converged
            moved = (np.abs(np.expm1(la - log_alpha)) > tol) | (
                np.abs(np.expm1(lb - log_beta)) > tol
            )
            log_alpha = np.where(active, la, log_alpha)
            log_beta = np.where(active, lb, log_beta)
            m2 = np.where(active, m2_new, m2)
            r2 = np.where(active, r2_new, r2)
            active &= moved
        return _evidence(log_s, log_alpha, log_beta, m2, r2, n)


def _evidence(
    log_s: np.ndarray,
    log_alpha: np.ndarray,
    log_beta: np.ndarray,
    m2: np.ndarray,
    r2: np.ndarray,
    n: int,
) -> np.ndarray:
    """``L/N`` at (α, β), with ``log(1 + βσ/α) = softplus(log β + log σ − log α)``."""
    logdet = np.logaddexp(0.0, log_s + (log_beta - log_alpha)[None, :]).sum(axis=0)
    evidence = (
        0.5 * n * log_beta
        - 0.5 * logdet
        - 0.5 * np.exp(log_beta) * r2
        - 0.5 * np.exp(log_alpha) * m2
    )
    return (evidence - 0.5 * n * _LOG_2PI) / n


def log_evidence(
    features: Any, targets: Any, *, max_iter: int = MAX_ITER, tol: float = TOL
) -> np.ndarray:
    """Maximum log evidence / N of every column of ``targets`` (N × K, real-valued) given
    ``features`` (N × D), by the fixed point of the module docstring; float64 array (K,)."""
    [F], e = unit_scale(as_matrix(features))
    T = np.asarray(targets, dtype=np.float64)
    if T.ndim == 1:
        T = T[:, None]
    if T.ndim != 2 or T.shape[0] != F.shape[0] or not np.isfinite(T).all():
        raise ValueError("targets must be finite, (N,) or (N, K) with N = rows of features")
    n = F.shape[0]
    sp = spectrum(F)
    k = sp.rank(abs_floor=scaled(_S_MIN**2, -2 * e))
    sigma = sp.sigma[:k]
    z = sp.left_vectors(F, k).T @ T  # (k, K)
    z2 = z**2
    r0 = np.maximum((T**2).sum(axis=0) - z2.sum(axis=0), 0.0)
    return _fixed_point(sigma, z2, r0, n, max_iter, tol, e)


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
