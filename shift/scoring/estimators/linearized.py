"""Label-Feature Correlation (LFC) and Label-Gradient Correlation (LGC) from the linearised
(NTK) view of fine-tuning (Deshpande et al., 2021, "A linearized framework and a new benchmark
for model selection for fine-tuning").

With a kernel Θ over the target samples and ``K_Y[i,j] = +1`` if ``y_i = y_j`` else ``−1``:

    score = ⟨Θ − μ_Θ, K_Y − μ_K⟩ / (‖Θ − μ_Θ‖_F · ‖K_Y − μ_K‖_F)

μ the mean over all N² entries (diagonal included), i.e. the Pearson correlation between the
entries of Θ and K_Y (Frobenius norms; the paper's ‖·‖₂ read as spectral would not be a
correlation). LFC: ``Θ = F Fᵀ`` on the penultimate features. LGC: ``Θ = G Gᵀ`` with the rows of
G per-sample gradients of the network output w.r.t. the last convolutional layer's weights,
randomly projected to 10,000 dimensions in the paper. The target is first subsampled to at most
25 samples per class (seeded). Θ is formed block by block (O(N·block) memory). A constant Θ
(e.g. all rows identical) carries no information and scores 0. A correlation does not change
under a global scale of the rows: rows beyond float32's range are divided by a power of two
first (:func:`~shift.scoring.scale.unit_scale`), so ``Θ``'s squares never overflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.scoring.estimators._common import as_matrix, check_xy, per_class_cap, softmax
from shift.scoring.plugins import estimator
from shift.scoring.scale import rescaled

__all__ = [
    "MAX_PER_CLASS",
    "kernel_label_correlation",
    "lfc",
    "lgc",
    "logit_gradients",
    "project",
]

MAX_PER_CLASS = 25
LGC_PROJECTION_DIM = 10_000
_BLOCK_ROWS = 1024


def kernel_label_correlation(X: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation between the N² entries of ``X Xᵀ`` and of ``K_Y``."""
    n = X.shape[0]
    counts = np.bincount(y).astype(np.float64)
    total = X.sum(axis=0)
    mu_theta = float(total @ total) / n**2
    mu_k = (2.0 * float(counts @ counts) - n**2) / n**2
    sab = saa = sbb = 0.0
    for r0 in range(0, n, _BLOCK_ROWS):
        a = X[r0 : r0 + _BLOCK_ROWS] @ X.T - mu_theta
        b = np.where(y[r0 : r0 + _BLOCK_ROWS, None] == y[None, :], 1.0, -1.0) - mu_k
        sab += float(np.einsum("ij,ij->", a, b))
        saa += float(np.einsum("ij,ij->", a, a))
        sbb += float(np.einsum("ij,ij->", b, b))
    den = np.sqrt(saa * sbb)
    return float(sab / den) if den > 0 else 0.0


@estimator(
    "lfc",
    description="LFC (Deshpande et al. 2021): correlation of the feature Gram matrix with the "
    "label agreement matrix (at most 25 samples per class)",
    cost_per_1k=0.04,
    max_per_class=25,
    seed=0,
)
def lfc(
    features: Any, labels: Any, *, max_per_class: int | None = MAX_PER_CLASS, seed: int = 0
) -> float:
    """Label-Feature Correlation in [−1, 1] (higher is better)."""
    F, y, _ = check_xy(features, labels)
    keep = per_class_cap(y, max_per_class, seed)
    return kernel_label_correlation(rescaled(F[keep]), y[keep])


def project(gradients: Any, dim: int = LGC_PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian random projection ``G R / √dim`` (R: P × dim, N(0, 1)), generated in
    column blocks so that R is never held whole; ``E[(GR)(GR)ᵀ]/dim = G Gᵀ``. Returns G as is
    when it already has at most ``dim`` columns."""
    G = as_matrix(gradients, "gradients")
    n, p = G.shape
    if p <= dim:
        return G
    rng = np.random.default_rng(seed)
    out = np.zeros((n, dim))
    step = max(1, (8 << 20) // (8 * dim))
    for c0 in range(0, p, step):
        block = G[:, c0 : c0 + step]
        out += block @ rng.standard_normal((block.shape[1], dim))
    return out / np.sqrt(dim)


def logit_gradients(logits: Any) -> np.ndarray:
    """Per-sample gradients of the source head's pseudo-label log-likelihood
    ``log softmax(o)_ẑ`` (ẑ = argmax) w.r.t. the logits o: ``e_ẑ − softmax(o)`` (N × C_s).
    The only gradient computable from stored logits alone; the engine's ``lgc`` proxy uses it
    in place of the paper's last-conv-layer gradients."""
    z = as_matrix(logits, "logits", min_rows=1)
    g = -softmax(z, axis=1)
    g[np.arange(z.shape[0]), z.argmax(axis=1)] += 1.0
    return g


@estimator(
    "lgc",
    description="LGC (Deshpande et al. 2021) on source-head logit gradients e_argmax - softmax "
    "(stand-in for the paper's last-conv-layer gradients, which stored logits cannot give)",
    cost_per_1k=0.02,
    needs_logits=True,
    transform=logit_gradients,
    max_per_class=25,
    seed=0,
)
def lgc(
    gradients: Any,
    labels: Any,
    *,
    max_per_class: int | None = MAX_PER_CLASS,
    projection_dim: int | None = None,
    seed: int = 0,
) -> float:
    """Label-Gradient Correlation in [−1, 1] of per-sample gradient rows (N × P).

    ``projection_dim=None`` uses the exact kernel ``G Gᵀ`` (what the projection estimates);
    ``projection_dim=10_000`` reproduces the paper's random projection."""
    G, y, _ = check_xy(gradients, labels, "gradients")
    keep = per_class_cap(y, max_per_class, seed)
    G, y = rescaled(G[keep]), y[keep]
    if projection_dim is not None:
        G = project(G, projection_dim, seed)
    return kernel_label_correlation(G, y)
