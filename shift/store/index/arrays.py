"""Arrays in and out of an index: input validation, checked ``.npy`` loads and staged saves.

Nothing is ever unpickled: arrays are loaded with ``np.load(..., allow_pickle=False)`` and object
arrays are refused."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shift.fsutil import Staged, put_staged, stage
from shift.store.index.meta import IndexCorruptError, IndexStoreError


def _save(array: np.ndarray) -> Any:
    return lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def stage_npy(target: Path, array: np.ndarray) -> Staged:
    """Stage ``array`` as ``.npy`` (never pickled) for ``target`` (see ``fsutil.stage``)."""
    return stage(target, _save(array))


def atomic_npy(target: Path, array: np.ndarray) -> str:
    """Atomically replace ``target`` (its folder must exist) with ``array`` as ``.npy``; returns
    the file's sha256."""
    return put_staged(target, stage_npy(target, array))


def load_npy(path: Path, data: bytes | None = None, *, mmap: bool = False) -> np.ndarray:
    """``np.load`` of ``path`` (or of ``data``, its bytes) with ``allow_pickle=False``; any failure
    → ``IndexCorruptError`` naming ``path`` (object arrays are refused, never unpickled)."""
    try:
        if data is not None:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexCorruptError(f"cannot load {path}: {e}", path=path) from e
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:  # pragma: no cover - defensive
        raise IndexCorruptError(f"{path} holds objects, refusing to load it", path=path)
    return arr


def check_array(
    path: Path, arr: np.ndarray, dtype: np.dtype[Any] | type, shape: tuple[int, ...]
) -> None:
    """``IndexCorruptError`` unless ``arr`` (loaded from ``path``) has ``dtype`` and ``shape``."""
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise IndexCorruptError(
            f"{path} holds {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}{list(shape)}",
            path=path,
        )


def as_matrix(name: str, x: Any, cols: int | None, n: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous finite float32 matrix with ``cols`` columns (and ``n`` rows)."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise IndexStoreError(f"{name} must be a 2-d array, got shape {list(arr.shape)}")
    if cols is not None and arr.shape[1] != cols:
        raise IndexStoreError(f"{name} has {arr.shape[1]} columns, expected {cols}")
    if n is not None and arr.shape[0] != n:
        raise IndexStoreError(f"{name} has {arr.shape[0]} rows, expected {n}")
    if not np.isfinite(arr).all():
        raise IndexStoreError(f"{name} contains NaN or infinite values")
    return arr


def check_ids(ids: Sequence[str], what: str) -> list[str]:
    """``ids`` as a list, refusing non-strings and duplicates."""
    out = list(ids)
    if not all(isinstance(s, str) for s in out):
        raise IndexStoreError(f"{what}: sample ids must be strings")
    if len(set(out)) != len(out):
        raise IndexStoreError(f"{what}: duplicate sample ids")
    return out
