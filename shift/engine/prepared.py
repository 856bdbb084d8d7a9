"""Prepared inputs: a task's images cropped and resized to one model geometry once, and shared by
every model of that geometry (most of a zoo is 224 px centre crop).

A geometry is ``(height, width, resize)`` of an :class:`~shift.records.InputSpec`; channels,
normalisation, layout and colour order stay with the backend, which is handed uint8 batches
already at the model's size (its own resize is then a no-op). The pixels are those of
:func:`shift.inference.preprocess.resize_images`, image by image, so indexes do not change.

On disk: ``<registry>/prepared/<H>x<W>-<resize>/<chunk>.npy``, one file per task chunk. Chunks
are content-addressed (``chunk-<sha16>.npy``), so a prepared file is keyed by the content it was
made from and the geometry, serves every task holding that chunk, and an append (a new chunk)
prepares only the new samples. Files are written atomically and read memory-mapped; a file that
does not hold its chunk's row count is made again. The folder is a cache: bounded by
``$SHIFT_PREPARED_MAX_BYTES`` (default 16 GiB), least recently used files evicted first, never
one the current run uses; deleting it loses nothing.

Images are resized by a thread pool (PIL releases the GIL). A task whose chunks hold images of
different sizes is not prepared: its batches take the original path (``TaskStore.load``, then the
backend's resize), whose pixels depend on the batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import TaskDataError
from shift.fsutil import atomic_write
from shift.records import InputSpec
from shift.store.index.arrays import load_npy

#: environment variable bounding the prepared-inputs cache, in bytes
MAX_BYTES_ENV = "SHIFT_PREPARED_MAX_BYTES"
DEFAULT_MAX_BYTES = 16 * 2**30


@dataclass(frozen=True)
class Geometry:
    """The part of an input spec that decides the pixels a model is handed."""

    height: int
    width: int
    resize: str

    @classmethod
    def of(cls, spec: InputSpec) -> Geometry:
        return cls(spec.height, spec.width, spec.resize)

    @property
    def folder(self) -> str:
        return f"{self.height}x{self.width}-{self.resize}"

    def spec(self) -> InputSpec:
        """An input spec with this geometry (what ``resize_images`` reads of it)."""
        return InputSpec(height=self.height, width=self.width, resize=self.resize)


class PreparedInputs:
    """The prepared-inputs cache of one task store (``shift.store.tasks.TaskStore``)."""

    def __init__(self, tasks: Any, *, threads: int | None = None) -> None:
        self.tasks = tasks
        self.root: Path = tasks.registry.home.registry_dir / "prepared"
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self.prepared_images = 0  # images resized by this object (what a test counts)

    # ---- what can be prepared -----------------------------------------------------------------
    def uniform(self, task: str, rows: Sequence[dict[str, Any]]) -> bool:
        """Whether every chunk ``rows`` use holds images of one size (else: no preparing)."""
        shapes = {self._source(task, c).shape[1:3] for c in {r["chunk"] for r in rows}}
        return len(shapes) <= 1

    def ensure(self, task: str, rows: Sequence[dict[str, Any]], geom: Geometry) -> int:
        """Prepare, for ``geom``, every chunk ``rows`` use that is not prepared yet; returns the
        number of images resized."""
        done = 0
        for chunk in sorted({r["chunk"] for r in rows}):
            if self._valid(chunk, geom):
                continue
            done += self._prepare(task, chunk, geom)
        return done

    # ---- reading ------------------------------------------------------------------------------
    def load(self, rows: Sequence[dict[str, Any]], geom: Geometry) -> np.ndarray:
        """uint8 (N, H, W, C) images of ``rows`` at ``geom``, in order (prepared first)."""
        out: np.ndarray | None = None
        by_chunk: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_chunk.setdefault(r["chunk"], []).append(i)
        for chunk, pos in by_chunk.items():
            arr = self._map(chunk, geom)
            if out is None:
                out = np.empty((len(rows), *arr.shape[1:]), np.uint8)
            offsets = np.fromiter((rows[i]["offset"] for i in pos), np.int64, len(pos))
            out[np.asarray(pos)] = arr[offsets]
        if out is None:
            raise TaskDataError("no samples to load")
        return out

    # ---- files --------------------------------------------------------------------------------
    def path(self, chunk: str, geom: Geometry) -> Path:
        return self.root / geom.folder / chunk

    def _source(self, task: str, chunk: str) -> np.ndarray:
        arr = self.tasks.chunk(task, chunk)
        return arr[..., None] if arr.ndim == 3 else arr

    def _valid(self, chunk: str, geom: Geometry) -> bool:
        path = self.path(chunk, geom)
        if not path.is_file():
            return False
        try:
            arr = self._map(chunk, geom)
        except Exception:  # noqa: BLE001 - a damaged cache file is simply made again
            self._maps.pop((chunk, geom.folder), None)
            return False
        return arr.shape[1:3] == (geom.height, geom.width)

    def _map(self, chunk: str, geom: Geometry) -> np.ndarray:
        key = (chunk, geom.folder)
        arr = self._maps.get(key)
        if arr is None:
            path = self.path(chunk, geom)
            arr = self._maps[key] = load_npy(path, mmap=True)
            os.utime(path)  # recently used: the last to be evicted
        return arr

    def _prepare(self, task: str, chunk: str, geom: Geometry) -> int:
        from shift.inference.preprocess import resize_images

        src = self._source(task, chunk)
        spec = geom.spec()
        n = len(src)
        step = max(1, -(-n // (self.threads * 4)))
        parts = [(i, min(n, i + step)) for i in range(0, n, step)]
        with ThreadPoolExecutor(self.threads) as pool:
            done = list(
                pool.map(lambda p: resize_images(np.asarray(src[p[0] : p[1]]), spec), parts)
            )
        out = np.concatenate(done) if done else np.zeros((0, geom.height, geom.width, 1), np.uint8)
        path = self.path(chunk, geom)
        self._evict(keep={path}, incoming=out.nbytes)
        atomic_write(
            path, lambda f: np.save(f, np.ascontiguousarray(out), allow_pickle=False), hashed=False
        )
        self._maps.pop((chunk, geom.folder), None)
        self.prepared_images += n
        return n

    def _evict(self, keep: Iterable[Path], incoming: int) -> None:
        """Delete least recently used prepared files until ``incoming`` more bytes fit the
        bound; files this object has open, and ``keep``, stay."""
        limit = max_bytes()
        files = [p for p in self.root.glob("*/chunk-*.npy") if p.is_file()]
        total = sum(p.stat().st_size for p in files) + incoming
        if total <= limit:
            return
        in_use = {self.path(c, Geometry(*_parse(g))) for c, g in self._maps} | set(keep)
        for p in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= limit:
                break
            if p in in_use:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


def _parse(folder: str) -> tuple[int, int, str]:
    size, _, resize = folder.partition("-")
    h, _, w = size.partition("x")
    return int(h), int(w), resize


def max_bytes() -> int:
    """The cache bound: ``$SHIFT_PREPARED_MAX_BYTES`` (bytes) or 16 GiB."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES
