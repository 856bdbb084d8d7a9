"""Shared numerics for the estimators: input checks, stable softmax, Gram spectra, exact PCA,
average ranks, class-balanced subsampling. Everything is float64 numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------------------------ inputs


def as_matrix(x: Any, name: str = "features", *, min_rows: int = 2) -> np.ndarray:
    """A float64 **copy** of a finite 2-d array with at least ``min_rows`` rows (callers may
    mutate it freely; the caller's array is never touched)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array, got shape {list(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least {min_rows} rows and one column, got {list(arr.shape)}"
        )
    out = np.array(arr, dtype=np.float64, copy=True)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def as_labels(y: Any, n: int, *, min_classes: int = 2) -> tuple[np.ndarray, int]:
    """Labels remapped to contiguous ids ``0..C-1`` (sorted order of the original values)."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"labels must be 1-d with {n} entries, got shape {list(arr.shape)}")
    classes, inv = np.unique(arr, return_inverse=True)
    if len(classes) < min_classes:
        raise ValueError(f"needs at least {min_classes} classes, got {len(classes)}")
    return inv.reshape(-1).astype(np.int64), len(classes)


def check_xy(x: Any, y: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray, int]:
    """``(X float64 copy, labels 0..C-1, C)``; at least 2 rows and 2 classes."""
    X = as_matrix(x, name)
    labels, c = as_labels(y, X.shape[0])
    return X, labels, c


def one_hot(y: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((len(y), c))
    out[np.arange(len(y)), y] = 1.0
    return out


def class_means(X: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means (C, D), counts (C,))``."""
    counts = np.bincount(y, minlength=c).astype(np.float64)
    sums = one_hot(y, c).T @ X
    return sums / counts[:, None], counts


# ------------------------------------------------------------------------------ softmax


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=axis, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Row softmax with the max subtracted first (no overflow; rows sum to 1)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------------------ spectra


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of the smaller Gram matrix of ``X`` (N × D): ``X Xᵀ`` (N × N) when
    ``N <= D`` (``left``: ``vecs`` are the left singular vectors U), else ``Xᵀ X`` (D × D,
    ``vecs`` = right singular vectors V). ``sigma`` are the squared singular values, descending,
    clamped at 0. Eigenvalues at or below ``floor = sigma_max · max(N, D) · eps`` are at the
    rounding-noise level of the Gram matrix and carry no information."""

    sigma: np.ndarray
    vecs: np.ndarray
    left: bool
    floor: float

    def rank(self, rcond: float = 0.0, abs_floor: float = 0.0) -> int:
        """Number of eigenvalues above the noise floor, ``rcond · sigma_max`` and ``abs_floor``."""
        if not len(self.sigma):
            return 0
        tol = max(self.floor, rcond * float(self.sigma[0]), abs_floor)
        return int(np.count_nonzero(self.sigma > tol))

    def scores(self, X: np.ndarray, k: int) -> np.ndarray:
        """``X V_k`` (N × k): coordinates of the rows in the top-k right singular basis."""
        if self.left:
            return self.vecs[:, :k] * np.sqrt(self.sigma[:k])
        return X @ self.vecs[:, :k]

    def left_vectors(self, X: np.ndarray, k: int) -> np.ndarray:
        """``U_k`` (N × k). Only for ``k <= rank()``: divides by the singular values."""
        if self.left:
            return self.vecs[:, :k]
        return (X @ self.vecs[:, :k]) / np.sqrt(self.sigma[:k])

    def right_vectors(self, X: np.ndarray, k: int) -> np.ndarray:
        """``V_k`` (D × k). Only for ``k <= rank()``: divides by the singular values."""
        if self.left:
            return (X.T @ self.vecs[:, :k]) / np.sqrt(self.sigma[:k])
        return self.vecs[:, :k]


def spectrum(X: np.ndarray) -> Spectrum:
    """Spectrum of ``X`` through the smaller Gram matrix (one GEMM + one symmetric eigh)."""
    n, d = X.shape
    left = n <= d
    gram = X @ X.T if left else X.T @ X
    w, v = np.linalg.eigh(gram)
    w, v = np.maximum(w[::-1], 0.0), v[:, ::-1]
    floor = float(w[0]) * max(n, d) * EPS if len(w) else 0.0
    return Spectrum(sigma=w, vecs=v, left=left, floor=floor)


def pca(X: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact PCA of the centred rows: ``(scores (N × k), explained variance (k,))`` with
    ``k = min(dim, numerical rank)``; variance = ``s²/(N−1)`` as in scikit-learn. Component
    signs follow scikit-learn's ``svd_flip(u_based_decision=False)``: the largest-magnitude
    loading of every component is positive, so the output is deterministic."""
    Xc = X - X.mean(axis=0)
    sp = spectrum(Xc)
    k = min(int(dim), sp.rank())
    if k == 0:
        return np.zeros((X.shape[0], 0)), np.zeros(0)
    scores = sp.scores(Xc, k)
    loadings = sp.right_vectors(Xc, k)
    top = np.abs(loadings).argmax(axis=0)
    signs = np.sign(loadings[top, np.arange(k)])
    signs[signs == 0] = 1.0
    return scores * signs, sp.sigma[:k] / (X.shape[0] - 1)


def discriminant_dim(n: int, c: int, pca_dim: int | None) -> int | None:
    """The dimension ``k = min(pca_dim, N − C − 1)`` (at least 1) that ``hscore`` and ``sfda``
    reduce features to; None when ``pca_dim`` is None (no reduction).

    Why: the within-class residual ``F − M[y]`` has rank ≤ N − C. If the centred features have
    a larger rank, some direction has within-class variance 0 but between-class variance > 0: a
    canonical correlation with the labels of exactly 1, so H-score gains 1 per such direction
    and reaches C − 1 (and SFDA's unregularised LDA separates the training set perfectly: 1.0)
    once the rank is N − 1 — for every model, whatever its features. Below ``N − C`` the score is
    defined, but pure noise still scores about ``k·(C − 1)/N``, so ``k`` is also capped at a
    fixed ``pca_dim`` (64, as ``gbc`` and ``ncti``) for every model alike: the scores of a 128-d
    and a 2,048-d model are then of the same dimension and comparable. ``N − C − 1`` only rules
    out the exact degeneracy: with fewer than about ``2·pca_dim`` samples the reduced scores
    still sit near their ceiling (use ``shrink_hscore`` there). Reducing rather than returning
    NaN keeps the estimators usable in their normal case (1,280–2,048-d features, a few hundred
    samples); a NaN would rank those models last, below every low-dimensional one, which says
    no more about transfer than the tie-break did."""
    if pca_dim is None:
        return None
    if int(pca_dim) < 1:
        raise ValueError("pca_dim must be >= 1 (or None for no reduction)")
    return max(1, min(int(pca_dim), n - c - 1))


def reduce_features(X: np.ndarray, c: int, pca_dim: int | None) -> np.ndarray:
    """``X`` reduced to its top ``k = discriminant_dim(N, C, pca_dim)`` principal components
    (:func:`pca`, centred) when it has more than ``k`` columns; else ``X`` unchanged. A matrix
    without any variance becomes one zero column."""
    k = discriminant_dim(X.shape[0], c, pca_dim)
    if k is None or X.shape[1] <= k:
        return X
    scores, _ = pca(X, k)
    return scores if scores.shape[1] else np.zeros((X.shape[0], 1))


# ------------------------------------------------------------------------------ ranks, sampling


def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (``scipy.stats.rankdata`` default)."""
    a = np.asarray(a)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, len(a)])
    avg = starts + (counts + 1) / 2.0
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, counts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (no information)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


def _within_class_order(y: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position (0, 1, ...) of every sample among its class, by increasing ``keys``."""
    order = np.lexsort((keys, y))
    ys = y[order]
    starts = np.r_[0, np.flatnonzero(ys[1:] != ys[:-1]) + 1]
    pos = np.empty(len(y), np.int64)
    pos[order] = np.arange(len(y)) - np.repeat(starts, np.diff(np.r_[starts, len(y)]))
    return pos


def balanced_subsample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples with classes as balanced as possible: every sample
    gets a seeded random key; classes are taken round-robin, each round in key order. The
    choice does not depend on the label values (a relabelling picks the same samples)."""
    n = len(y)
    if size >= n:
        return np.arange(n)
    keys = np.random.default_rng(seed).random(n)
    pos = _within_class_order(y, keys)
    return np.sort(np.lexsort((keys, pos))[:size])


def per_class_cap(y: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``cap`` samples per class (those with the smallest seeded
    random keys; independent of the label values); all samples if ``cap`` is None."""
    if cap is None:
        return np.arange(len(y))
    if cap < 1:
        raise ValueError("the per-class cap must be >= 1")
    keys = np.random.default_rng(seed).random(len(y))
    return np.flatnonzero(_within_class_order(y, keys) < cap)


def spd_solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve ``A X = B`` for symmetric positive (semi-)definite ``A``: LU with partial pivoting
    (backward stable for SPD matrices), or, if ``A`` is exactly singular, the eigen-decomposition
    with eigenvalues clamped at ``max(w) · dim · eps``."""
    try:
        out = np.linalg.solve(A, B)
        if np.isfinite(out).all():
            return out
    except np.linalg.LinAlgError:
        pass
    w, v = np.linalg.eigh(A)
    w = np.maximum(w, max(float(w[-1]), 0.0) * len(w) * EPS + np.finfo(np.float64).tiny)
    return v @ ((v.T @ B) / w[:, None])
