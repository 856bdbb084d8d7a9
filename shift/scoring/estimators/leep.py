"""LEEP (Nguyen et al., ICML 2020) and NCE (Tran et al., ICCV 2019): transferability from the
model's own source-classifier outputs on the target data (no features needed).

LEEP, with θ the source-head probabilities (N × C_s): ``softmax(logits)`` computed stably, or the
rows as given (divided by their sums) when they already are probabilities.
``probabilities=None`` (the default) decides per call: rows that are all non-negative and each
sum to 1 within the tolerance of their dtype, ``max(PROB_ATOL, C_s·eps(dtype))``
(:func:`probability_tolerance`: 1e-4 for float32/float64, about 1e-2 for a float16 softmax over
10 classes), are taken as probabilities, anything else as logits — real logits pass that test
only by accident, while a second softmax of probabilities (the old behaviour) silently flattens
θ towards uniform (LEEP → log(1/C)). ``True`` insists on probabilities and renormalises rows
within that tolerance (``ValueError`` beyond it), ``False`` forces the softmax. Then
``P̂(y, z) = (1/N)·Σ_{i: y_i = y} θ_iz``, ``P̂(y|z) = P̂(y, z)/P̂(z)``,
``LEEP = (1/N)·Σ_i log Σ_z P̂(y_i|z)·θ_iz`` — with the log (SFDA/NCTI/ETran copies drop it).
A source class with ``P̂(z) = 0`` (softmax underflow) contributes nothing. The inner sum is
``≥ Σ_z θ_iz²/N ≥ 1/(N·C_s)`` (sample i's own mass), so the log is always finite.

NCE, with ``z_i = argmax θ_i`` (first index on ties), or ``z`` given directly as 1-d integer
source labels (the usual form: the source model's predicted classes): ``NCE = Σ_{y,z: P̂(y,z)>0}
P̂(y, z)·log P̂(y|z) ≤ 0`` from the count-based joint (no ε smoothing, unlike PARC's copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import as_labels, as_matrix, log_softmax, one_hot
from shift.scoring.plugins import estimator

__all__ = ["leep", "nce"]


#: the least row-sum tolerance: float32 probabilities upcast to float64 keep float32's rounding
PROB_ATOL = 1e-4


def probability_tolerance(dtype: Any, classes: int) -> float:
    """How far from 1 a row of ``classes`` probabilities stored as ``dtype`` may sum:
    ``max(PROB_ATOL, classes·eps(dtype))`` for a float dtype (each rounded entry and a
    normaliser summed at that precision move the sum by at most about that), else PROB_ATOL."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        return PROB_ATOL
    return max(PROB_ATOL, classes * float(np.finfo(dt).eps))


def looks_like_probabilities(X: np.ndarray, tol: float = PROB_ATOL) -> bool:
    """Every row non-negative and summing to 1 within ``tol``."""
    return bool((X >= 0).all() and np.all(np.abs(X.sum(axis=1) - 1.0) <= tol))


def _probabilities(outputs: Any, probabilities: bool | None) -> np.ndarray:
    """θ: the rows divided by their sums if they are (or are declared) probabilities within
    their dtype's :func:`probability_tolerance`, else their softmax."""
    raw = np.asarray(outputs)
    X = as_matrix(raw, "source outputs", min_rows=1)
    tol = probability_tolerance(raw.dtype, X.shape[1])
    if probabilities is None:
        probabilities = looks_like_probabilities(X, tol)
    if not probabilities:
        return np.exp(log_softmax(X, axis=1))
    if not looks_like_probabilities(X, tol):
        raise ValueError(
            f"probabilities must be non-negative rows summing to 1 (within {tol:.2g} for "
            f"{raw.dtype} over {X.shape[1]} classes)"
        )
    return X / X.sum(axis=1, keepdims=True)


@estimator(
    "leep",
    description="LEEP (Nguyen et al. 2020): log expected empirical prediction from the source head",
    cost_per_1k=0.01,
    needs_logits=True,
)
def leep(logits: Any, labels: Any, *, probabilities: bool | None = None) -> float:
    """LEEP score (≤ 0, higher is better) of source-head ``logits`` (N × C_s) for target
    ``labels``. Rows that already are probabilities are detected (``probabilities=None``) and
    not softmaxed again; ``True``/``False`` override the detection (module docstring)."""
    theta = _probabilities(logits, probabilities)
    n = theta.shape[0]
    y, c = as_labels(labels, n, min_classes=1)
    joint = one_hot(y, c).T @ theta / n  # (C, C_s)
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("iz,iz->i", theta, cond[y])
    return float(np.mean(np.log(eep)))


def _source_labels(outputs: Any) -> np.ndarray:
    """Argmax of N × C_s outputs, or 1-d integer source labels as given."""
    arr = np.asarray(outputs)
    if arr.ndim != 1:
        return as_matrix(arr, "source outputs", min_rows=1).argmax(axis=1)
    if len(arr) < 1:
        raise ValueError("source labels need at least one entry")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all()):
            raise ValueError(f"1-d source labels must be integers, got dtype {arr.dtype}")
        if not np.all(arr == np.round(arr)):
            raise ValueError("1-d source labels must be integers (class ids), not scores")
    return arr.astype(np.int64)


@estimator(
    "nce",
    description="NCE (Tran et al. 2019): negative conditional entropy of target given source "
    "argmax",
    cost_per_1k=0.01,
    needs_logits=True,
)
def nce(logits: Any, labels: Any) -> float:
    """NCE (≤ 0, higher is better) of the source-head labels for target ``labels``: ``logits``
    is N × C_s logits or probabilities (only the argmax is used) or the N source labels
    themselves (1-d integers)."""
    z_src = _source_labels(logits)
    n = len(z_src)
    y, c = as_labels(labels, n, min_classes=1)
    _, z = np.unique(z_src, return_inverse=True)
    z = z.reshape(-1)
    joint = np.bincount(y * (z.max() + 1) + z, minlength=c * (z.max() + 1)).reshape(c, -1) / n
    marginal = joint.sum(axis=0)
    nz = joint > 0
    cond = joint[nz] / np.broadcast_to(marginal, joint.shape)[nz]
    return float(np.sum(joint[nz] * np.log(cond)))
