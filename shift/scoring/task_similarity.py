"""The maths of ``RANK BY similar(k)`` (pure numpy; the step is :mod:`shift.engine.similarity`).

**Task vector.** From a probe model's features of a task's samples, L2-normalised, the vector is

    v(task) = [ q / ‖q‖ ,  μ / ‖μ‖ ] / √2

where ``q`` holds the 16 quantiles (0, 1/15, ..., 1) of the pairwise euclidean distances between
the class means (how far apart the classes lie, in the probe's view: the sorted spectrum, so the
same for any numbering of the labels and of fixed length for any number of classes) and ``μ``
is the mean feature (what the images look like: the domain). The distance of two tasks is the
cosine distance ``1 − v_a · v_b`` ∈ [0, 2]: half class structure, half domain.

Why not Task2Vec (SHiFT's choice): it needs the probe's Fisher information, i.e. gradients
through the network, and shift runs ONNX forward passes only; class-mean statistics need one
forward pass per sample, which the probe's index already stores, so a task costs one index
read and an O(C²·D) computation.

**Weights.** A neighbour task at distance ``d`` weighs ``w = max(1 − d, 10⁻⁶)``; a model's score
is ``Σ w_t acc(m, t) / Σ w_t`` over the neighbours where it has a result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy loads when a task vector is computed, not with every query
    import numpy as np

__all__ = ["MIN_WEIGHT", "QUANTILES", "task_distance", "task_vector", "weight", "weighted_mean"]

QUANTILES = 16
MIN_WEIGHT = 1e-6


def task_vector(features: Any, labels: Any) -> np.ndarray:
    """``v(task)`` of the module doc from a probe's features (N × D) and the labels (N,)."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) == 0 or y.shape != (len(x),):
        raise ValueError("features must be N x D with one label per row")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    classes, inv = np.unique(y, return_inverse=True)
    means = np.zeros((len(classes), x.shape[1]))
    np.add.at(means, inv, x)
    means /= np.bincount(inv)[:, None]
    if len(classes) > 1:
        diff = means[:, None, :] - means[None, :, :]
        dist = np.sqrt((diff**2).sum(-1))[np.triu_indices(len(classes), 1)]
        q = np.quantile(dist, np.linspace(0.0, 1.0, QUANTILES))
    else:
        q = np.zeros(QUANTILES)
    mu = x.mean(axis=0)
    parts = [p / n if (n := np.linalg.norm(p)) > 0 else p for p in (q, mu)]
    return np.concatenate(parts) / math.sqrt(2.0)


def task_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine distance ``1 − a·b / (‖a‖‖b‖)`` (1 when either vector is zero)."""
    import numpy as np

    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def weight(distance: float) -> float:
    """A neighbour task's weight ``max(1 − d, 10⁻⁶)``."""
    return max(1.0 - distance, MIN_WEIGHT)


def weighted_mean(pairs: list[tuple[float, float]]) -> float | None:
    """``Σ w·a / Σ w`` of ``(w, a)`` pairs; ``None`` for none."""
    if not pairs:
        return None
    w = sum(p[0] for p in pairs)
    return sum(p[0] * p[1] for p in pairs) / w
