"""NCTI: neural-collapse transferability index (Wang et al., ICCV 2023), as in ``BUserName/NCTI``.

Per model (``ncti_components``):
1. PCA the features to 64 components (centred, exact).
2. ``s = max(exp(−Σ of the top-32 explained variances), 1e-10)``; if ``s == 1e-10`` (typical for
   unnormalised features) the LDA is scikit-learn's ``svd`` solver, else its ``eigen`` solver
   with shrinkage s. Both are re-implemented here in numpy with scikit-learn's semantics
   (``svd``: within-class standardisation, ``tol = 1e-4``; ``eigen``: per-class biased
   covariances shrunk towards ``(tr/D)·I``, generalised eigenproblem ``S_b v = w S_w v``).
3. ``Z`` = LDA transform (≤ C−1 dims), centred: **S_seli = ‖Z‖_*** (nuclear norm; the simplex
   ETF / "simplex encoded label interpolation" term).
4. ``P`` = LDA posteriors: **S_ncc = (1/N)·Σ_i P(y_i|x_i)** (nearest-centre classifier term).
5. **S_vc = log Σ_c ‖P_c‖_*** with ``P_c`` the N_c × C block of class c (within-class
   variability term).

Across the candidate pool (``ncti_scores``): min–max normalise each component over the models
being ranked, then ``NCTI = S̃_ncc + S̃_seli − S̃_vc``. The score is **pool-relative**: adding or
removing a model changes every score. A component that is constant over the pool (including a
pool of one model) normalises to 0 instead of dividing by zero.

Given s, the components do not change under a global scale of the features; s itself does.
Features beyond float32's range are divided by a power of two ``2^e`` first
(:func:`~shift.scoring.scale.unit_scale`) and s is taken from the explained
variance times ``2^2e``: the formula's value at the original scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shift.scoring.estimators._common import EPS, check_xy, class_means, pca, softmax
from shift.scoring.plugins import estimator
from shift.scoring.scale import scaled, unit_scale

__all__ = ["NCTIComponents", "lda_fit", "ncti", "ncti_components", "ncti_scores"]

PCA_DIM = 64
VAR_COMPONENTS = 32
_S_MIN = 1e-10


@dataclass(frozen=True)
class NCTIComponents:
    seli: float  # ‖Z‖_*, larger is better
    ncc: float  # mean true-class posterior, larger is better
    vc: float  # log Σ_c ‖P_c‖_*, smaller is better
    shrinkage: float
    solver: str  # "svd" or "eigen"


@dataclass(frozen=True)
class _LDA:
    transform: np.ndarray  # (N, ≤ C−1) transformed training rows
    proba: np.ndarray  # (N, C) posteriors of the training rows


def _shrunk_cov(X: np.ndarray, s: float) -> np.ndarray:
    """scikit-learn's ``_cov(X, shrinkage=s)`` for a float s: the biased covariance shrunk
    towards ``(tr/D)·I``."""
    Xc = X - X.mean(axis=0)
    emp = Xc.T @ Xc / X.shape[0]
    mu = np.trace(emp) / emp.shape[0]
    shrunk = (1.0 - s) * emp
    shrunk.flat[:: emp.shape[0] + 1] += s * mu
    return shrunk


def _lda_svd(X: np.ndarray, y: np.ndarray, c: int, tol: float = 1e-4) -> _LDA:
    n = X.shape[0]
    means, counts = class_means(X, y, c)
    priors = counts / n
    Xc = X - means[y]
    xbar = priors @ means
    std = Xc.std(axis=0)
    std[std == 0] = 1.0
    _, S, Vt = np.linalg.svd(np.sqrt(1.0 / n) * (Xc / std), full_matrices=False)
    rank = int(np.sum(tol < S))
    scalings = (Vt[:rank] / std).T / S[:rank]
    fac = 1.0 / (c - 1)
    Xb = (np.sqrt(n * priors * fac) * (means - xbar).T).T @ scalings
    _, S2, Vt2 = np.linalg.svd(Xb, full_matrices=False)
    rank2 = int(np.sum(tol * S2[0] < S2)) if len(S2) and S2[0] > 0 else 0
    scalings = scalings @ Vt2.T[:, :rank2]
    coef = (means - xbar) @ scalings
    intercept = -0.5 * np.sum(coef**2, axis=1) + np.log(priors)
    coef_full = coef @ scalings.T
    intercept = intercept - xbar @ coef_full.T
    max_components = min(c - 1, X.shape[1])
    transform = ((X - xbar) @ scalings)[:, :max_components]
    return _LDA(transform, softmax(X @ coef_full.T + intercept, axis=1))


def _lda_eigen(X: np.ndarray, y: np.ndarray, c: int, shrinkage: float) -> _LDA:
    n, d = X.shape
    means, counts = class_means(X, y, c)
    priors = counts / n
    Sw = sum(priors[k] * _shrunk_cov(X[y == k], shrinkage) for k in range(c))
    Sb = _shrunk_cov(X, shrinkage) - Sw
    # generalised symmetric eigenproblem Sb v = w Sw v through Sw = L Lᵀ (evecsᵀ Sw evecs = I)
    try:
        L = np.linalg.cholesky(Sw)
    except np.linalg.LinAlgError:
        scale = float(np.trace(Sw)) / d
        jitter = (scale if scale > 0 else 1.0) * d * EPS
        L = np.linalg.cholesky(Sw + jitter * np.eye(d))
    Linv = np.linalg.inv(L)
    w, Q = np.linalg.eigh(Linv @ Sb @ Linv.T)
    evecs = (Linv.T @ Q)[:, np.argsort(w)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    max_components = min(c - 1, d)
    return _LDA((X @ evecs)[:, :max_components], softmax(X @ coef.T + intercept, axis=1))


def lda_fit(X: Any, y: Any, shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn-equivalent ``LinearDiscriminantAnalysis`` on the training rows:
    ``(transform(X), predict_proba(X))``; ``svd`` solver if ``shrinkage`` is None, else ``eigen``
    with that shrinkage."""
    F, labels, c = check_xy(X, y)
    fit = _lda_svd(F, labels, c) if shrinkage is None else _lda_eigen(F, labels, c, shrinkage)
    return fit.transform, fit.proba


def ncti_components(features: Any, labels: Any) -> NCTIComponents:
    """The three per-model NCTI components (steps 1–5 of the module docstring)."""
    F, y, c = check_xy(features, labels)
    [F], e = unit_scale(F)
    n = F.shape[0]
    X, explained = pca(F, PCA_DIM)
    if X.shape[1] == 0:
        X = np.zeros((n, 1))
    variance = scaled(float(explained[:VAR_COMPONENTS].sum()), 2 * e)  # at the original scale
    s = max(float(np.exp(-variance)), _S_MIN)
    if s == _S_MIN:
        fit, solver = _lda_svd(X, y, c), "svd"
    else:
        fit, solver = _lda_eigen(X, y, c, s), "eigen"
    Z = fit.transform - fit.transform.mean(axis=0)
    seli = float(np.linalg.svd(Z, compute_uv=False).sum()) if Z.size else 0.0
    ncc = float(np.mean(fit.proba[np.arange(n), y]))
    nuc = sum(float(np.linalg.svd(fit.proba[y == k], compute_uv=False).sum()) for k in range(c))
    return NCTIComponents(seli=seli, ncc=ncc, vc=float(np.log(nuc)), shrinkage=s, solver=solver)


def _minmax(v: np.ndarray) -> np.ndarray:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def ncti_scores(components: Sequence[NCTIComponents]) -> list[float]:
    """Pool-relative NCTI ``minmax(ncc) + minmax(seli) − minmax(vc)`` for every model."""
    if not components:
        return []
    seli = _minmax(np.array([m.seli for m in components]))
    ncc = _minmax(np.array([m.ncc for m in components]))
    vc = _minmax(np.array([m.vc for m in components]))
    return [float(v) for v in ncc + seli - vc]


@estimator(
    "ncti",
    description="NCTI (Wang et al. 2023): neural-collapse index on 64 PCA components; min-max "
    "normalised over the models scored together (pool-relative; one model scores 0)",
    cost_per_1k=0.17,
    pool_relative=True,
    record={"pca_dim": 64},
)
def ncti(problems: Sequence[tuple[Any, Any]]) -> list[float]:
    """NCTI of a pool: one ``(features, labels)`` per candidate model, same target task."""
    return ncti_scores([ncti_components(x, y) for x, y in problems])
