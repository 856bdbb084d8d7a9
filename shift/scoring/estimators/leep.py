"""LEEP (Nguyen et al., ICML 2020) and NCE (Tran et al., ICCV 2019): transferability from the
model's own source-classifier outputs on the target data (no features needed).

LEEP, with θ = softmax(source logits) (N × C_s, computed stably):
``P̂(y, z) = (1/N)·Σ_{i: y_i = y} θ_iz``, ``P̂(y|z) = P̂(y, z)/P̂(z)``,
``LEEP = (1/N)·Σ_i log Σ_z P̂(y_i|z)·θ_iz`` — with the log (SFDA/NCTI/ETran copies drop it).
A source class with ``P̂(z) = 0`` (softmax underflow) contributes nothing. The inner sum is
``≥ Σ_z θ_iz²/N ≥ 1/(N·C_s)`` (sample i's own mass), so the log is always finite.

NCE, with ``z_i = argmax θ_i`` (first index on ties): ``NCE = Σ_{y,z: P̂(y,z)>0}
P̂(y, z)·log P̂(y|z) ≤ 0`` from the count-based joint (no ε smoothing, unlike PARC's copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import as_labels, as_matrix, log_softmax, one_hot
from shift.scoring.registry import estimator

__all__ = ["leep", "nce"]


def _probabilities(outputs: Any, probabilities: bool) -> np.ndarray:
    X = as_matrix(outputs, "source outputs", min_rows=1)
    if not probabilities:
        return np.exp(log_softmax(X, axis=1))
    if (X < 0).any() or not np.allclose(X.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probabilities must be non-negative rows summing to 1")
    return X / X.sum(axis=1, keepdims=True)


@estimator(
    "leep",
    description="LEEP (Nguyen et al. 2020): log expected empirical prediction from the source head",
    cost_per_1k=0.01,
    needs_logits=True,
)
def leep(logits: Any, labels: Any, *, probabilities: bool = False) -> float:
    """LEEP score (≤ 0, higher is better) of source-head ``logits`` (N × C_s) for target
    ``labels``; pass ``probabilities=True`` if the rows already are softmax outputs."""
    theta = _probabilities(logits, probabilities)
    n = theta.shape[0]
    y, c = as_labels(labels, n, min_classes=1)
    joint = one_hot(y, c).T @ theta / n  # (C, C_s)
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("iz,iz->i", theta, cond[y])
    return float(np.mean(np.log(eep)))


@estimator(
    "nce",
    description="NCE (Tran et al. 2019): negative conditional entropy of target given source "
    "argmax",
    cost_per_1k=0.01,
    needs_logits=True,
)
def nce(logits: Any, labels: Any) -> float:
    """NCE (≤ 0, higher is better) of the source-head argmax labels for target ``labels``
    (``logits`` or probabilities: only the argmax is used)."""
    X = as_matrix(logits, "source outputs", min_rows=1)
    n = X.shape[0]
    y, c = as_labels(labels, n, min_classes=1)
    _, z = np.unique(X.argmax(axis=1), return_inverse=True)
    z = z.reshape(-1)
    joint = np.bincount(y * (z.max() + 1) + z, minlength=c * (z.max() + 1)).reshape(c, -1) / n
    marginal = joint.sum(axis=0)
    nz = joint > 0
    cond = joint[nz] / np.broadcast_to(marginal, joint.shape)[nz]
    return float(np.sum(joint[nz] * np.log(cond)))
