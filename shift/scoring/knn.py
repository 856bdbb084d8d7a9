"""1-nearest-neighbour proxy: validation accuracy of the 1-NN classifier on frozen features.

``acc = mean_i [ y_train[nn(x_i)] == y_i ]`` with ``nn(x) = argmin_j ||x - t_j||²`` (euclidean)
or, for cosine, the same on L2-normalised rows (same ranking as cosine similarity).

The brute-force path is exact and reproducible: distances are computed in float64 blocks
(``|q|² - 2 q·t + |t|²``), so memory stays bounded by ``block_bytes``. **Ties** go to the
smallest train index; distances equal up to float64 rounding (relative ``1e-9`` of
``|q|² + max|t|²``) count as ties. The hnswlib path is approximate and only for large or
interactive use. No hnswlib import at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib

__all__ = [
    "knn_accuracy",
    "knn_accuracy_hnsw",
    "merge_nearest",
    "nearest_neighbors",
]

Metric = Literal["euclidean", "cosine"]
_TIE_RTOL = 1e-9
_DEFAULT_BLOCK_BYTES = 32 << 20


def _matrix(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite numbers")
    return arr


def _normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float64); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_neighbors(
    train_x: Any,
    query_x: Any,
    metric: Metric = "euclidean",
    *,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN of every query row among the train rows.

    Returns ``(idx int64 (m,), dist² float64 (m,))``; ties → smallest train index. Work is
    split into (query block × train block) tiles of at most ``block_bytes`` float64 distances.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r} (use 'euclidean' or 'cosine')")
    tx, qx = _matrix("train_x", train_x), _matrix("query_x", query_x)
    if tx.shape[0] == 0:
        raise ValueError("train_x has no rows")
    if tx.shape[1] != qx.shape[1]:
        raise ValueError(f"dimension mismatch: train {tx.shape[1]} vs query {qx.shape[1]}")
    if metric == "cosine":
        tx, qx = _normalize(tx), _normalize(qx)
    n, m = tx.shape[0], qx.shape[0]
    cells = max(1, block_bytes // 8)
    bq = max(1, min(m, 1024, cells))
    bt = max(1, min(n, cells // bq))

    t_norms = np.einsum("ij,ij->i", tx, tx, dtype=np.float64)
    t_max = float(t_norms.max())
    best_idx = np.zeros(m, np.int64)
    best_d = np.full(m, np.inf)
    for q0 in range(0, m, bq):
        q = np.asarray(qx[q0 : q0 + bq], dtype=np.float64)
        qn = np.einsum("ij,ij->i", q, q)
        tol = _TIE_RTOL * (qn + t_max)
        bi = np.zeros(len(q), np.int64)
        bd = np.full(len(q), np.inf)
        for t0 in range(0, n, bt):
            t = np.asarray(tx[t0 : t0 + bt], dtype=np.float64)
            d = qn[:, None] - 2.0 * (q @ t.T) + t_norms[None, t0 : t0 + bt]
            np.maximum(d, 0.0, out=d)
            dmin = d.min(axis=1)
            first = (d <= (dmin + tol)[:, None]).argmax(axis=1)  # smallest index among ties
            better = dmin < bd - tol  # a later block wins only if clearly closer
            bi = np.where(better, first + t0, bi)
            bd = np.where(better, d[np.arange(len(q)), first], bd)
        best_idx[q0 : q0 + bq] = bi
        best_d[q0 : q0 + bq] = bd
    return best_idx, best_d


def merge_nearest(
    idx_a: np.ndarray, dist_a: np.ndarray, idx_b: np.ndarray, dist_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two 1-NN results over disjoint train chunks (indices already global) by minimum
    distance; on equal distance ``a`` wins. Lets appended train data reuse old neighbours."""
    take_b = np.asarray(dist_b) < np.asarray(dist_a)
    return np.where(take_b, idx_b, idx_a), np.where(take_b, dist_b, dist_a)


def _accuracy(pred: np.ndarray, val_y: np.ndarray) -> float:
    return float(np.mean(pred == val_y))


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    metric: Metric = "euclidean",
    *,
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
) -> float:
    """Exact 1-NN validation accuracy ``mean(train_y[nn(val_x)] == val_y)`` (see module doc)."""
    ty, vy = np.asarray(train_y), np.asarray(val_y)
    if ty.shape != (np.shape(train_x)[0],) or vy.shape != (np.shape(val_x)[0],):
        raise ValueError("labels must be 1-d and match the number of feature rows")
    if vy.size == 0:
        raise ValueError("val_x has no rows")
    idx, _ = nearest_neighbors(train_x, val_x, metric, block_bytes=block_bytes)
    return _accuracy(ty[idx], vy)


def knn_accuracy_hnsw(
    index: hnswlib.Index,
    train_labels: Any,
    val_x: Any,
    val_y: Any,
    space: str = "l2",
    *,
    ef: int | None = None,
) -> float:
    """1-NN validation accuracy through an hnswlib graph whose item labels are train row
    numbers. Approximate (ties and misses depend on the graph); ``ef`` is set for the query
    and restored afterwards. ``space`` must be the graph's space (``l2`` or ``cosine``)."""
    if getattr(index, "space", space) != space:
        raise ValueError(f"index space is {index.space!r}, not {space!r}")
    ty, vy = np.asarray(train_labels), np.asarray(val_y)
    vx = np.ascontiguousarray(_matrix("val_x", val_x), dtype=np.float32)
    if vy.shape != (vx.shape[0],):
        raise ValueError("val_y must be 1-d and match the number of val rows")
    if vy.size == 0:
        raise ValueError("val_x has no rows")
    old_ef = index.ef
    if ef is not None:
        index.set_ef(max(1, int(ef)))
    try:
        rows, _ = index.knn_query(vx, k=1)
    finally:
        index.set_ef(old_ef)
    return _accuracy(ty[rows[:, 0].astype(np.int64)], vy)
