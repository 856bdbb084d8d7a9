"""Nearest-neighbour proxy: validation accuracy of the k-NN classifier on frozen features
(k = 1 by default; a query sets ``knn(k=5, metric=cosine)``).

``acc = mean_i [ y_train[nn(x_i)] == y_i ]`` with ``nn(x) = argmin_j ||x - t_j||²`` (euclidean)
or, for cosine, the same on L2-normalised rows (same ranking as cosine similarity). For k > 1
the prediction is the most frequent label among the k nearest training rows (:func:`k_nearest`,
exact), a tie going to the tied label with the nearest member.

The brute-force path is exact and reproducible: distances are computed in float64 blocks
(``|q|² - 2 q·t + |t|²``), so memory stays bounded by ``block_bytes``. **Ties** go to the
smallest train index; distances equal up to float64 rounding (relative ``1e-9`` of
``|q|² + max|t|²``) count as ties, for k > 1 too (:func:`k_nearest`). It runs in numpy on the
CPU, or in torch on a GPU (``$SHIFT_SCORE_DEVICE``, :mod:`shift.scoring.device`): the same
float64 distances and tie rule, so the same neighbours although the two round their sums
differently; the proxies' batched ``many`` (:func:`knn_accuracy_many`) keeps every model's
accuracy on the device and reads them back once. The hnswlib path is approximate and only for
large or interactive use. No hnswlib import at module level.

**Registered proxies** ``knn`` and ``knn_cosine`` score arrays exactly; from an embedding index
(the engine's ``from_index`` hook, :class:`GraphKnn`) they query the index's stored hnsw graph
instead once the training split has ``HNSW_MIN_TRAIN`` samples. The graph holds every sample of
the index (train and validation), so each validation vector takes its nearest graph hit that is
a training sample, asking for ``GRAPH_K`` hits and widening for the rare rows whose hits are all
non-training samples (:func:`graph_nearest`): exact 1-NN semantics up to hnsw's approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from shift.scoring.device import knn_device, to_device, torch_threads, unit_scale_torch
from shift.scoring.plugins import Arg, proxy
from shift.scoring.scale import unit_scale

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib
    import torch

__all__ = [
    "GRAPH_EF",
    "GRAPH_K",
    "HNSW_MIN_TRAIN",
    "GraphKnn",
    "graph_nearest",
    "k_nearest",
    "knn_accuracy",
    "knn_accuracy_hnsw",
    "knn_accuracy_many",
    "merge_nearest",
    "nearest_neighbors",
]

Metric = Literal["euclidean", "cosine"]
_TIE_RTOL = 1e-9
_DEFAULT_BLOCK_BYTES = 32 << 20
#: the torch path's tiles: ``_DEVICE_BLOCK_BYTES`` of float64 distances and up to ``_DEVICE_BQ``
#: query rows on a GPU (8k × 2k distances in one tile); the numpy tiling on the CPU
_DEVICE_BLOCK_BYTES = 512 << 20
_DEVICE_BQ = 16384
_CPU_BQ = 1024
_TINY = float(np.finfo(np.float64).tiny)

#: training-split size from which the kNN proxies query the index's hnsw graph instead of exact
#: numpy 1-NN. From benchmarks/results/knn_hnsw.json (D = 1,280, 1,000 queries, 2 busy cores):
#: the graph path is slower than exact up to 10k rows and only 8× (ef 64) / 4.4× (ef 128) faster
#: at 100k, where it reads 2.4 / 1.2 points above exact; so only from 100k rows, at ef 128.
HNSW_MIN_TRAIN = 100_000
#: hnsw search breadth for the graph path (``ef``), and the first number of hits asked for
GRAPH_EF = 128
GRAPH_K = 8
#: the largest k a query may ask of the kNN proxies
MAX_K = 1000


def _matrix(name: str, x: Any, *, finite: bool = True) -> np.ndarray:
    """``x`` as a 2-d numeric array; ``finite``: also checked for NaN/inf here (the torch path
    checks that on the device instead)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or (finite and not np.isfinite(arr).all()):
        raise ValueError(f"{name} must be finite numbers")
    return arr


def _shapes(train_x: Any, query_x: Any, metric: str, *, finite: bool = True) -> tuple[Any, Any]:
    """The (train, query) matrices, checked: ValueError for an unknown metric, no train rows or
    mismatched dimensions (and non-finite entries when ``finite``)."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r} (use 'euclidean' or 'cosine')")
    tx = _matrix("train_x", train_x, finite=finite)
    qx = _matrix("query_x", query_x, finite=finite)
    if tx.shape[0] == 0:
        raise ValueError("train_x has no rows")
    if tx.shape[1] != qx.shape[1]:
        raise ValueError(f"dimension mismatch: train {tx.shape[1]} vs query {qx.shape[1]}")
    return tx, qx


def _inputs(train_x: Any, query_x: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked (train, query) matrices, both divided by one power of two when beyond
    float32's range (:func:`~shift.scoring.scale.unit_scale`: the nearest rows do
    not change, and distances no longer overflow); for ``cosine`` their rows L2-normalised
    (float64). Raises ValueError for an unknown metric, no train rows or mismatched dimensions."""
    tx, qx = _shapes(train_x, query_x, metric)
    [tx, qx], _ = unit_scale(tx, qx)
    if metric == "cosine":
        return _normalize(tx), _normalize(qx)
    return tx, qx


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
    block_bytes: int | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN of every query row among the train rows.

    Returns ``(idx int64 (m,), dist² float64 (m,))``; ties → smallest train index. Work is
    split into (query block × train block) tiles of at most ``block_bytes`` float64 distances.
    ``device``: ``"numpy"``, a torch device (``"cpu"``, ``"cuda"``), or None for
    :func:`~shift.scoring.device.knn_device` (``$SHIFT_SCORE_DEVICE``).
    """
    dev = knn_device() if device is None else device
    if dev != "numpy":
        import torch

        t_dev = torch.device(dev)
        with torch_threads(t_dev):
            tx_t, qx_t, finite = _torch_inputs(train_x, query_x, metric, t_dev)
            idx_t, d_t = _nearest_torch(tx_t, qx_t, block_bytes)
            _raise_unless_finite(finite.cpu().numpy())
            return idx_t.cpu().numpy(), d_t.cpu().numpy()
    block_bytes = _DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes
    tx, qx = _inputs(train_x, query_x, metric)
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


def _torch_inputs(
    train_x: Any, query_x: Any, metric: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_inputs` on ``device``: the float64 (train, query) tensors, unit-scaled and (for
    cosine) row-normalised there, and a bool tensor (2,) saying whether each was finite (checked
    on the device, so the caller reads it back once, with the scores)."""

    tx, qx = _shapes(train_x, query_x, metric, finite=False)
    [t, q], finite = unit_scale_torch(to_device(tx, device), to_device(qx, device))
    if metric == "cosine":
        t, q = _normalize_torch(t), _normalize_torch(q)
    return t, q, finite


def _raise_unless_finite(finite: np.ndarray) -> None:
    """The numpy path's ValueError for the first non-finite matrix of ``finite`` (2,)."""
    for name, ok in zip(("train_x", "query_x"), finite, strict=True):
        if not ok:
            raise ValueError(f"{name} must be finite numbers")


def _normalize_torch(x: torch.Tensor) -> torch.Tensor:
    import torch

    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def _tiles(block_bytes: int | None, cuda: bool) -> tuple[int, int]:
    """(cells, query-row cap) of the torch path's tiles."""
    default = _DEVICE_BLOCK_BYTES if cuda else _DEFAULT_BLOCK_BYTES
    cells = max(1, (default if block_bytes is None else block_bytes) // 8)
    return cells, _DEVICE_BQ if cuda else _CPU_BQ


def _sq_dist(q: torch.Tensor, qn: torch.Tensor, t: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    """``max(0, |q|² - 2 q·t + |t|²)`` for a tile, rounded as the numpy path rounds it
    (``-2·(q·t)`` is exact, so adding ``|q|²`` to it is numpy's ``|q|² - 2 q·t``)."""
    d = q @ t.T
    d.mul_(-2.0).add_(qn[:, None]).add_(tn[None, :])
    return d.clamp_(min=0.0)


def _nearest_torch(
    tx: torch.Tensor, qx: torch.Tensor, block_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest_neighbors`' tiles and tie rule in torch, on the tensors' device: the
    nearest train row (int64 (m,)) and its distance² (float64 (m,)), never leaving the device."""
    import torch

    n, m = tx.shape[0], qx.shape[0]
    cells, cap = _tiles(block_bytes, tx.device.type == "cuda")
    bq = max(1, min(m, cap, cells))
    bt = max(1, min(n, cells // bq))
    t_norms = (tx * tx).sum(dim=1)
    t_max = t_norms.amax()
    best_idx = torch.zeros(m, dtype=torch.int64, device=tx.device)
    best_d = torch.full((m,), float("inf"), dtype=torch.float64, device=tx.device)
    for q0 in range(0, m, bq):
        q = qx[q0 : q0 + bq]
        qn = (q * q).sum(dim=1)
        tol = _TIE_RTOL * (qn + t_max)
        bi = torch.zeros(len(q), dtype=torch.int64, device=tx.device)
        bd = torch.full((len(q),), float("inf"), dtype=torch.float64, device=tx.device)
        for t0 in range(0, n, bt):
            d = _sq_dist(q, qn, tx[t0 : t0 + bt], t_norms[t0 : t0 + bt])
            dmin = d.amin(dim=1)
            # argmax gives the first maximum: the smallest index among ties
            first = (d <= (dmin + tol)[:, None]).to(torch.uint8).argmax(dim=1)
            better = dmin < bd - tol  # a later block wins only if clearly closer
            bi = torch.where(better, first + t0, bi)
            bd = torch.where(better, d.gather(1, first[:, None])[:, 0], bd)
        best_idx[q0 : q0 + bq] = bi
        best_d[q0 : q0 + bq] = bd
    return best_idx, best_d


def _k_nearest_torch(
    tx: torch.Tensor, qx: torch.Tensor, k: int, block_bytes: int | None = None
) -> torch.Tensor:
    """:func:`k_nearest` in torch: the ``min(k, n)`` nearest train rows, nearest first, by the
    same tie-tolerance units, equal ones → smaller train index first (a stable sort of each
    row)."""
    import torch

    n, m = tx.shape[0], qx.shape[0]
    k = min(k, n)
    cells, cap = _tiles(block_bytes, tx.device.type == "cuda")
    bq = max(1, min(m, cap, cells // n))
    t_norms = (tx * tx).sum(dim=1)
    t_max = t_norms.amax()
    out = torch.zeros((m, k), dtype=torch.int64, device=tx.device)
    for q0 in range(0, m, bq):
        q = qx[q0 : q0 + bq]
        qn = (q * q).sum(dim=1)
        d = _sq_dist(q, qn, tx, t_norms)
        d.div_(torch.clamp(_TIE_RTOL * (qn + t_max), min=_TINY)[:, None]).floor_()
        out[q0 : q0 + bq] = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return out


def _vote_torch(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """:func:`_vote` on label codes (int64 (m, k), nearest first, in ``0..classes-1``)."""
    import torch

    counts = torch.zeros((len(labels), classes), dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    top = counts.gather(1, labels) == counts.amax(dim=1, keepdim=True)
    first = top.to(torch.uint8).argmax(dim=1)
    return labels.gather(1, first[:, None])[:, 0]


def merge_nearest(
    idx_a: np.ndarray, dist_a: np.ndarray, idx_b: np.ndarray, dist_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two 1-NN results over disjoint train chunks (indices already global) by minimum
    distance; on equal distance ``a`` wins. Lets appended train data reuse old neighbours."""
    take_b = np.asarray(dist_b) < np.asarray(dist_a)
    return np.where(take_b, idx_b, idx_a), np.where(take_b, dist_b, dist_a)


class VectorIndex(Protocol):
    """What the graph path needs of an embedding index (``shift.store``'s ``EmbeddingIndex``)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def rows(self, sample_ids: Sequence[str]) -> np.ndarray: ...

    def select(self, sample_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def knn_query(
        self, queries: Any, k: int = 1, space: str = "l2", ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def graph_nearest(
    index: VectorIndex,
    queries: np.ndarray,
    allowed: np.ndarray,
    space: str,
    *,
    k: int | None = None,
    ef: int | None = None,
) -> np.ndarray:
    """Row of the nearest ``allowed`` graph item per query (int64 (m,)): the first allowed row
    among ``k`` graph hits (nearest first), asking again with 4× ``k`` for the queries whose hits
    are all disallowed, up to the whole graph. ``allowed``: bool (len(index),), not all False;
    ``k``/``ef`` default to ``GRAPH_K``/``GRAPH_EF`` (read at call time)."""
    if not allowed.any():
        raise ValueError("no allowed rows in the graph")
    out = np.full(len(queries), -1, np.int64)
    todo = np.arange(len(queries))
    k = max(1, int(GRAPH_K if k is None else k))
    ef = GRAPH_EF if ef is None else int(ef)
    while todo.size:
        kk = min(k, len(allowed))
        rows, _ = index.knn_query(queries[todo], kk, space, max(ef, kk))
        ok = allowed[rows]
        hit = ok.any(axis=1)
        out[todo[hit]] = rows[hit, ok[hit].argmax(axis=1)]
        todo = todo[~hit]
        if kk == len(allowed) and todo.size:  # hnsw missed every allowed row: should not happen
            raise RuntimeError(f"hnsw graph search found no allowed row for {todo.size} queries")
        k *= 4
    return out


@dataclass(frozen=True)
class GraphKnn:
    """``from_index`` hook of the kNN proxies: 1-NN validation accuracy through the index's
    stored hnsw graph (``l2`` for euclidean, ``cosine`` for cosine), for training splits of at
    least ``HNSW_MIN_TRAIN`` samples (read at call time); ``ef`` None: ``GRAPH_EF``. Picklable,
    no closures."""

    metric: Metric
    ef: int | None = None
    path: str = "hnsw"

    def applies(self, n_train: int) -> bool:
        return n_train >= HNSW_MIN_TRAIN

    def __call__(
        self, index: VectorIndex, train_ids: Sequence[str], val_ids: Sequence[str]
    ) -> float:
        space = "l2" if self.metric == "euclidean" else "cosine"
        allowed = np.zeros(len(index), bool)
        allowed[index.rows(train_ids)] = True
        if not allowed.any():
            raise ValueError("train split has no rows")
        xva, yva = index.select(val_ids)
        if len(yva) == 0:
            raise ValueError("val_x has no rows")
        nearest = graph_nearest(index, np.asarray(xva, np.float32), allowed, space, ef=self.ef)
        return _accuracy(np.asarray(index.labels)[nearest], np.asarray(yva))


def _accuracy(pred: np.ndarray, val_y: np.ndarray) -> float:
    return float(np.mean(pred == val_y))


#: what a query may set: ``RANK BY knn(k=5, metric=cosine)``
KNN_ARGS = (
    Arg("k", int, "neighbours that vote", low=1, high=MAX_K),
    Arg("metric", str, "distance", choices=("euclidean", "cosine")),
)


def graph_hook(kwargs: dict[str, Any]) -> GraphKnn | None:
    """The hnsw ``from_index`` hook for a setting: 1-NN only (k > 1 always scores exactly)."""
    return GraphKnn(kwargs["metric"]) if kwargs.get("k", 1) == 1 else None


def _labels(
    train_x: Any, train_y: Any, val_x: Any, val_y: Any, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The checked label arrays: 1-d, one per feature row, some validation rows, k >= 1."""
    ty, vy = np.asarray(train_y), np.asarray(val_y)
    if ty.shape != (np.shape(train_x)[0],) or vy.shape != (np.shape(val_x)[0],):
        raise ValueError("labels must be 1-d and match the number of feature rows")
    if vy.size == 0:
        raise ValueError("val_x has no rows")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return ty, vy


def knn_accuracy_many(
    problems: Sequence[tuple[Any, Any, Any, Any]],
    metric: Metric = "euclidean",
    *,
    k: int = 1,
    block_bytes: int | None = None,
    device: str | None = None,
) -> list[float]:
    """:func:`knn_accuracy` of every ``(train_x, train_y, val_x, val_y)`` problem (the kNN
    proxies' ``many``: one per model). On numpy one after another; on a torch device every
    problem is staged, searched and scored there in turn and the accuracies are read back once
    at the end (a non-finite feature raises the numpy path's ValueError then)."""
    dev = knn_device() if device is None else device
    if dev == "numpy":
        return [
            knn_accuracy(*p, metric, k=k, block_bytes=block_bytes, device=dev) for p in problems
        ]
    import torch

    t_dev = torch.device(dev)
    with torch_threads(t_dev):
        return _knn_many_torch(problems, metric, k, block_bytes, t_dev)


def _knn_many_torch(
    problems: Sequence[tuple[Any, Any, Any, Any]],
    metric: Metric,
    k: int,
    block_bytes: int | None,
    t_dev: torch.device,
) -> list[float]:
    import torch

    accs, flags = [], []
    for train_x, train_y, val_x, val_y in problems:
        ty, vy = _labels(train_x, train_y, val_x, val_y, k)
        classes, ty_code = np.unique(ty, return_inverse=True)
        pos = np.clip(np.searchsorted(classes, vy), 0, len(classes) - 1)
        vy_code = np.where(classes[pos] == vy, pos, -1)  # unseen in training: never predicted
        tx, qx, finite = _torch_inputs(train_x, val_x, metric, t_dev)
        flags.append(finite)
        ty_t = to_device(ty_code.astype(np.int64).reshape(-1), t_dev)
        vy_t = to_device(vy_code.astype(np.int64), t_dev)
        if k == 1:
            pred = ty_t[_nearest_torch(tx, qx, block_bytes)[0]]
        else:
            pred = _vote_torch(ty_t[_k_nearest_torch(tx, qx, k, block_bytes)], len(classes))
        accs.append((pred == vy_t).to(torch.float64).mean())
    if not accs:
        return []
    for finite in torch.stack(flags).cpu().numpy():
        _raise_unless_finite(finite)
    return [float(a) for a in torch.stack(accs).cpu().numpy()]


# stacked: the lower decorator registers first (``knn`` before ``knn_cosine``)
@proxy(
    "knn_cosine",
    description="1-nearest-neighbour validation accuracy, cosine similarity (exact; through the "
    f"index's hnsw graph from {HNSW_MIN_TRAIN:,} training samples)",
    cost_per_1k=0.02,
    many=knn_accuracy_many,
    from_index=GraphKnn("cosine"),
    args=KNN_ARGS,
    index_hook=graph_hook,
    k=1,
    metric="cosine",
)
@proxy(
    "knn",
    description="k-nearest-neighbour validation accuracy (default 1-NN, euclidean; exact; 1-NN "
    f"through the index's hnsw graph from {HNSW_MIN_TRAIN:,} training samples)",
    cost_per_1k=0.02,
    many=knn_accuracy_many,
    from_index=GraphKnn("euclidean"),
    args=KNN_ARGS,
    index_hook=graph_hook,
    k=1,
    metric="euclidean",
)
def knn_accuracy(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    metric: Metric = "euclidean",
    *,
    k: int = 1,
    block_bytes: int | None = None,
    device: str | None = None,
) -> float:
    """Exact k-NN validation accuracy ``mean(vote_k(val_x) == val_y)`` (see module doc); k = 1
    is ``mean(train_y[nn(val_x)] == val_y)``. The vote is the most frequent label among the k
    nearest training rows (k capped at the training rows); a tie goes to the tied label with
    the nearest member. ``device``: as for :func:`nearest_neighbors`."""
    dev = knn_device() if device is None else device
    if dev != "numpy":
        problem = (train_x, train_y, val_x, val_y)
        return knn_accuracy_many([problem], metric, k=k, block_bytes=block_bytes, device=dev)[0]
    ty, vy = _labels(train_x, train_y, val_x, val_y, k)
    if k == 1:
        idx, _ = nearest_neighbors(train_x, val_x, metric, block_bytes=block_bytes, device=dev)
        return _accuracy(ty[idx], vy)
    near = k_nearest(train_x, val_x, k, metric, block_bytes=block_bytes, device=dev)
    return _accuracy(_vote(ty[near]), vy)


def k_nearest(
    train_x: Any,
    query_x: Any,
    k: int,
    metric: Metric = "euclidean",
    *,
    block_bytes: int | None = None,
    device: str | None = None,
) -> np.ndarray:
    """The ``min(k, n)`` nearest train rows of every query row, nearest first (int64 (m, k));
    equal distances → smaller train index first, also at the k-th place (rows with a tie there
    are sorted whole). As for 1-NN, distances equal up to float64 rounding are equal: rows are
    ordered by ``⌊d / tol⌋``, ``tol = 1e-9·(|q|² + max|t|²)``, so a rounding difference (another
    BLAS, the GPU) does not reorder tied rows. Queries go in blocks whose float64 distances to
    all train rows stay under ``block_bytes``. ``device``: as for :func:`nearest_neighbors`."""
    dev = knn_device() if device is None else device
    if dev != "numpy":
        import torch

        t_dev = torch.device(dev)
        with torch_threads(t_dev):
            tx_t, qx_t, finite = _torch_inputs(train_x, query_x, metric, t_dev)
            near_t = _k_nearest_torch(tx_t, qx_t, k, block_bytes)
            _raise_unless_finite(finite.cpu().numpy())
            return near_t.cpu().numpy()
    block_bytes = _DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes
    tx, qx = _inputs(train_x, query_x, metric)
    tx, qx = np.asarray(tx, np.float64), np.asarray(qx, np.float64)
    n, m = len(tx), len(qx)
    k = min(k, n)
    t_norms = np.einsum("ij,ij->i", tx, tx)
    t_max = float(t_norms.max())
    bq = max(1, min(m, (block_bytes // 8) // n))
    out = np.zeros((m, k), np.int64)
    for q0 in range(0, m, bq):
        q = qx[q0 : q0 + bq]
        qn = np.einsum("ij,ij->i", q, q)
        d = qn[:, None] - 2.0 * (q @ tx.T) + t_norms[None, :]
        np.maximum(d, 0.0, out=d)
        d /= np.maximum(_TIE_RTOL * (qn + t_max), _TINY)[:, None]
        np.floor(d, out=d)  # distances in units of the tie tolerance
        part = (
            np.argpartition(d, k - 1, axis=1)[:, :k]
            if k < n
            else np.tile(np.arange(n), (len(q), 1))
        )
        dk = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, dk), axis=1)  # by distance, then train index
        near = np.take_along_axis(part, order, axis=1)
        if k < n:  # argpartition keeps any of the rows tied at the k-th distance: sort those
            tied = np.flatnonzero((d <= dk.max(axis=1)[:, None]).sum(axis=1) > k)
            if tied.size:
                near[tied] = np.argsort(d[tied], axis=1, kind="stable")[:, :k]
        out[q0 : q0 + bq] = near
    return out


def _vote(labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row of ``labels`` (m, k), nearest first; a tie goes to the tied
    label that appears first (its nearest member)."""
    classes, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    counts = np.zeros((len(labels), len(classes)), np.int64)
    np.add.at(counts, (np.arange(len(labels))[:, None], inv), 1)
    top = counts == counts.max(axis=1, keepdims=True)
    first = np.take_along_axis(top, inv, axis=1).argmax(axis=1)
    return classes[inv[np.arange(len(labels)), first]]


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
