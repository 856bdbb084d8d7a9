"""TransRate (Huang et al., ICML 2022): coding-rate difference between all features and the
per-class features.

``Z = F − mean(F)`` (centred once, globally), ``R(Z, ε) = ½·log det(I + ZᵀZ/(n·ε))`` with
``n = rows(Z)`` and ``ε = 1e-4``; ``TrR = R(Z, ε) − (1/C)·Σ_c R(Z_c, ε)``, ``Z_c`` the rows of
class c, *not* re-centred, with ``n = N_c`` (the paper's listing and tllib). The log-determinant
is taken on the smaller Gram form (Sylvester: ``det(I_D + ZᵀZ/a) = det(I_n + ZZᵀ/a)``) by a
Cholesky factorisation of the positive-definite ``I + G/(nε)``. ε is absolute, so the score
depends on the feature scale (keep preprocessing fixed across models).

Features beyond float32's range are divided by a power of two ``2^e`` first
(:func:`~shift.scoring.scale.unit_scale`; the Gram would overflow) and ``R`` is
taken from the eigenvalues w of the rescaled Gram in the log domain,
``½·Σ log(1 + w·2^2e/(nε))``, with eigenvalues at its rounding-noise floor counted as 0: the
formula's value at the original scale. With N > D the rank terms then cancel, so the score
levels off for large features; with N ≤ D it grows by ``(N − 1 − mean N_c)·log s``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import EPS, check_xy
from shift.scoring.plugins import estimator
from shift.scoring.scale import unit_scale

__all__ = ["coding_rate", "transrate"]

DEFAULT_EPS = 1e-4


def coding_rate(Z: np.ndarray, eps: float = DEFAULT_EPS, exp2: int = 0) -> float:
    """``½·log det(I + ZᵀZ/(n·ε))`` for the rows of ``Z·2^exp2`` (``Z``: n × D), via the
    smaller Gram: Cholesky when ``exp2 == 0``, else :func:`_log_domain_rate`."""
    Z = np.asarray(Z, dtype=np.float64)
    n, d = Z.shape
    if n == 0:
        return 0.0
    gram = Z @ Z.T if n <= d else Z.T @ Z
    if exp2 != 0:
        return _log_domain_rate(gram, n * eps, exp2)
    m = gram / (n * eps)
    m.flat[:: m.shape[0] + 1] += 1.0
    try:
        L = np.linalg.cholesky(m)
        return float(np.sum(np.log(np.diagonal(L))))
    except np.linalg.LinAlgError:  # only from rounding on a numerically singular Gram
        w = np.linalg.eigvalsh(gram)
        return float(0.5 * np.sum(np.log1p(np.maximum(w, 0.0) / (n * eps))))


def _log_domain_rate(gram: np.ndarray, a: float, exp2: int) -> float:
    """``½·Σ log(1 + w·2^(2·exp2)/a)`` over the eigenvalues w of ``gram`` above its rounding-noise
    floor (``w_max·dim·eps``), as ``softplus(log(w/a) + 2·exp2·log 2)``: no overflow for any
    ``exp2``, and no cancellation for negative ones."""
    w = np.linalg.eigvalsh(gram)
    w = w[w > max(float(w[-1]), 0.0) * len(w) * EPS]
    return float(0.5 * np.sum(np.logaddexp(0.0, np.log(w / a) + 2 * exp2 * np.log(2.0))))


@estimator(
    "transrate",
    description="TransRate (Huang et al. 2022): coding rate of all minus mean per-class "
    "coding rate",
    cost_per_1k=0.05,
    eps=1e-4,
)
def transrate(features: Any, labels: Any, *, eps: float = DEFAULT_EPS) -> float:
    """TransRate ``R(Z) − mean_c R(Z_c)`` of centred features (higher is better)."""
    if not eps > 0:
        raise ValueError("eps must be positive")
    F, y, c = check_xy(features, labels)
    [F], e = unit_scale(F)
    Z = F - F.mean(axis=0)
    per_class = [coding_rate(Z[y == k], eps, e) for k in range(c)]
    return coding_rate(Z, eps, e) - float(np.mean(per_class))
