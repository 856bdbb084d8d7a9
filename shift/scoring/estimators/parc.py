"""PARC: pairwise annotation representation comparison (Bolya, Mittapalli & Hoffman, NeurIPS 2021).

1. Probe set: all samples if ``N ≤ max_samples`` (default 1,000, which covers a VTAB-1k train
   split), else a class-balanced subsample of ``max_samples`` (seeded, deterministic). The paper
   averages 5 random probe sets of 500; a single larger deterministic probe is used here.
2. PCA the features to ``f = 32`` dimensions (as published; ``min(32, n, rank)``), then z-score
   each dimension over the probe samples (population std, scikit-learn's StandardScaler).
3. ``D_θ = 1 − corr(rows)``: Pearson correlation between the reduced feature vectors of pairs.
4. ``D_y = 1 − corr(one-hot rows)``: 0 within a class, ``1 + 1/(C−1)`` across classes.
5. ``PARC = 100·Spearman({D_θ[i,j]}_{i<j}, {D_y[i,j]}_{i<j})`` with average ranks for ties.
   ``D_y`` takes two values, so its ranks are an affine function of the different-class
   indicator and the Spearman ρ is the Pearson correlation of ``rank(D_θ)`` with that indicator.

A row whose reduced vector is constant (possible only with f = 1) has no defined correlation;
it gets correlation 0 (distance 1) with every other row. Cost O(n²·f) time, O(n²) memory.
PARC does not change under a global scale of the features; features beyond float32's range are
divided by a power of two first (:func:`~shift.scoring.scale.unit_scale`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import (
    average_ranks,
    balanced_subsample,
    check_xy,
    pca,
    pearson,
)
from shift.scoring.plugins import estimator
from shift.scoring.scale import rescaled

__all__ = ["DEFAULT_MAX_SAMPLES", "DEFAULT_PCA_DIM", "parc"]

DEFAULT_PCA_DIM = 32
DEFAULT_MAX_SAMPLES = 1000


@estimator(
    "parc",
    description="PARC (Bolya et al. 2021): 100 x Spearman between feature and label "
    "dissimilarities on 32 PCA components (class-balanced probe of at most 1000 samples)",
    cost_per_1k=0.23,
    pca_dim=32,
    max_samples=1000,
    seed=0,
)
def parc(
    features: Any,
    labels: Any,
    *,
    pca_dim: int | None = DEFAULT_PCA_DIM,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """PARC × 100 (in [−100, 100], higher is better). ``pca_dim=None`` skips the PCA."""
    F, y, _ = check_xy(features, labels)
    F = rescaled(F)
    if max_samples < 2:
        raise ValueError("max_samples must be >= 2")
    idx = balanced_subsample(y, max_samples, seed)
    F, y = F[idx], y[idx]
    if pca_dim is not None:
        F, _ = pca(F, pca_dim)
        if F.shape[1] == 0:
            return 0.0
    mean, std = F.mean(axis=0), F.std(axis=0)
    F = (F - mean) / np.where(std > 0, std, 1.0)
    R = F - F.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(R, axis=1)
    R = R / np.where(norms > 0, norms, 1.0)[:, None]
    iu, ju = np.triu_indices(len(y), 1)
    d_theta = 1.0 - (R @ R.T)[iu, ju]
    different = (y[iu] != y[ju]).astype(np.float64)
    return 100.0 * pearson(average_ranks(d_theta), different)
