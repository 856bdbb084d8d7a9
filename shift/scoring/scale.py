"""Rescaling features to a safe magnitude by an exact power of two, for every proxy that squares
them (estimators, kNN, the linear probe). numpy only, so importing it stays light."""

from __future__ import annotations

import numpy as np

__all__ = ["SAFE_EXP2", "rescaled", "scaled", "unit_scale"]

#: features whose largest |entry| lies in [2^-SAFE_EXP2, 2^SAFE_EXP2] (float32's range) are used
#: as given: their squares, Gram matrices and fourth moments stay far from float64's limits
SAFE_EXP2 = 128


def unit_scale(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """``([a·2^−e for a in arrays], e)``: the arrays unchanged with ``e = 0`` when their largest
    |entry| is 0 or within ``[2^-SAFE_EXP2, 2^SAFE_EXP2]``, else divided by the power of two
    that brings it into [0.5, 1). A power-of-two scaling rounds nothing, so a scale-invariant
    estimator gives the same value, and a scale-dependent one rescales its constants by ``e``
    (e.g. an absolute variance floor v becomes ``v·2^−2e``) to evaluate the same formula."""
    top = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if top == 0.0 or 2.0**-SAFE_EXP2 <= top <= 2.0**SAFE_EXP2:
        return list(arrays), 0
    e = int(np.frexp(top)[1])
    return [np.ldexp(a, -e) for a in arrays], e


def rescaled(X: np.ndarray) -> np.ndarray:
    """``X`` through :func:`unit_scale`, for an estimator whose value does not change under a
    global scale of the features (so a magnitude of 1e200 or 1e-200 neither overflows nor
    underflows)."""
    return unit_scale(X)[0][0]


def scaled(value: float, exp2: int) -> float:
    """``value·2^exp2``, saturating at 0 or ±inf instead of warning (a constant rescaled by
    :func:`unit_scale`'s exponent)."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.ldexp(value, exp2))
