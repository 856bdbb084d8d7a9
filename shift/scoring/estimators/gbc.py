"""GBC: Gaussian Bhattacharyya coefficient (Pándy et al., CVPR 2022) — class separability of
per-class Gaussians on PCA-reduced features.

1. PCA the centred features to ``d = 64`` components (google-research ``pca_reduction = 64``;
   fewer if the numerical rank is lower), exact and deterministic.
2. Per class c: mean μ_c and per-dimension population variance v_c, floored at 1e-4.
3. For each ordered pair i ≠ j, with ``Σ̄ = (v_i + v_j)/2``:
   ``D_B(i, j) = ⅛·Σ_k (μ_ik − μ_jk)²/Σ̄_k + ½·[Σ log Σ̄ − ½·Σ log v_i − ½·Σ log v_j]``.
4. ``GBC = −Σ_i Σ_{j≠i} exp(−D_B(i, j))`` (≤ 0, each pair counted twice; higher is better).

``covariance="spherical"`` (the default, as google-research's ``gbc.py``, so values compare
with published GBC numbers) replaces v_c by its mean over dimensions σ_c and, as that reference
code does, evaluates the log-determinant term on the scalar variances, **not multiplied by d**:
``D_B = ⅛·Σ_k (μ_ik − μ_jk)²/σ̄ + ½·[log σ̄ − ½·log σ_i − ½·log σ_j]``, ``σ̄ = (σ_i + σ_j)/2``
(the exact spherical distance would have d times that bracket). ``covariance="diagonal"``
keeps v_c per dimension: the exact Bhattacharyya distance of diagonal Gaussians (the paper's
other variant). The registered proxy ``gbc`` is the spherical one; ``gbc(covariance=diagonal)``
selects the other.

GBC does not change under a global scale of the features except through the absolute 1e-4
floor. Features beyond float32's range are divided by a power of two ``2^e`` first
(:func:`~shift.scoring.scale.unit_scale`) and the floor with them (``1e-4·2^−2e``),
so the value is the formula's at the original scale (clamped to float64's normal range, where a
floored class's coefficients are 0 either way).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from shift.scoring.args import Arg
from shift.scoring.estimators._common import check_xy, class_means, one_hot, pca
from shift.scoring.plugins import estimator
from shift.scoring.scale import SAFE_EXP2, scaled, unit_scale

__all__ = ["DEFAULT_COVARIANCE", "DEFAULT_PCA_DIM", "bhattacharyya_distances", "gbc"]

DEFAULT_PCA_DIM = 64
DEFAULT_COVARIANCE: Literal["spherical"] = "spherical"  # google-research's default
_VAR_FLOOR = 1e-4
_TINY = float(np.finfo(np.float64).tiny)


def variance_floor(exp2: int) -> float:
    """``1e-4`` in units of features divided by ``2^exp2``: ``1e-4·2^(−2·exp2)``, clamped to
    ``[tiny, 2^SAFE_EXP2]`` (at either end the coefficients are the same to float64 precision:
    a class floored at ``tiny`` has coefficient 0, and with a floor of ``2^SAFE_EXP2`` every
    variance of the unit-scale features is floored, as at the original scale)."""
    return min(max(scaled(_VAR_FLOOR, -2 * exp2), _TINY), 2.0**SAFE_EXP2)


def bhattacharyya_distances(means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """C × C Bhattacharyya distances between diagonal Gaussians (``variances`` C × d, or C × 1
    for the reference's spherical form); the diagonal is 0."""
    c = means.shape[0]
    logv = np.log(variances).sum(axis=1)
    out = np.zeros((c, c))
    for i in range(c):  # one row at a time: O(C·d) memory
        avg = 0.5 * (variances[i] + variances)
        maha = np.sum((means[i] - means) ** 2 / avg, axis=1) / 8.0
        logdet = np.log(avg).sum(axis=1) - 0.5 * logv[i] - 0.5 * logv
        out[i] = maha + 0.5 * logdet
    np.fill_diagonal(out, 0.0)
    return out


@estimator(
    "gbc",
    description="GBC (Pandy et al. 2022): minus the summed Bhattacharyya coefficients of "
    "per-class spherical (reference default) or diagonal Gaussians on 64 PCA components",
    cost_per_1k=0.16,
    args=[
        Arg(
            "covariance",
            str,
            help="per-class Gaussians: spherical (the reference's) or diagonal",
            choices=("spherical", "diagonal"),
        )
    ],
    pca_dim=DEFAULT_PCA_DIM,
    covariance=DEFAULT_COVARIANCE,
)
def gbc(
    features: Any,
    labels: Any,
    *,
    pca_dim: int = DEFAULT_PCA_DIM,
    covariance: Literal["diagonal", "spherical"] = DEFAULT_COVARIANCE,
) -> float:
    """GBC on ``pca_dim`` principal components (≤ 0, higher is better) with per-class
    ``covariance`` "spherical" (default, the reference's) or "diagonal"."""
    if covariance not in ("diagonal", "spherical"):
        raise ValueError("covariance must be 'diagonal' or 'spherical'")
    F, y, c = check_xy(features, labels)
    [F], e = unit_scale(F)
    P, _ = pca(F, pca_dim)
    if P.shape[1] == 0:
        P = np.zeros((F.shape[0], 1))
    means, counts = class_means(P, y, c)
    resid = P - means[y]  # two-pass population variance, floored
    var = np.maximum((one_hot(y, c).T @ resid**2) / counts[:, None], variance_floor(e))
    if covariance == "spherical":
        var = var.mean(axis=1, keepdims=True)
    dist = bhattacharyya_distances(means, var)
    coef = np.exp(-dist)
    np.fill_diagonal(coef, 0.0)
    return float(-coef.sum())
