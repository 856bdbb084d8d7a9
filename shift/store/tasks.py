"""Tasks: labelled image datasets, stored once in the home and addressed by content hash
(``TaskStore``; the input readers that produce ``Samples`` are in ``shift.store.readers``).

Layout: ``<registry>/tasks/<task>/chunk-<sha16>.npy`` holds uint8 images (N, H, W, C); the
``samples`` table maps each sample id to its chunk, offset, label and split. A sample id is the
hash of its pixels (its content hash; ``-k`` suffix for the k-th duplicate), so ids survive
appends and relabels.

* ``data_hash``    = sha256 over the ordered sample ids → keys embedding indexes;
* ``content_hash`` = sha256 over (sample id, label, split) → keys proxy scores.

Splits: ``train/`` and ``val/`` folders (or an npz ``split`` array) when given, else a sample is in
validation iff ``sha256(seed:content_hash) mod 10⁶ < val_fraction·10⁶`` — deterministic, and stable
when samples are appended. Exact duplicates share one split: a duplicate of an image already in
the task (or earlier in the same batch) takes that image's split, so it is never on both sides.

Concurrency: every write (add, append, relabel, remove) reads what it depends on and commits in
one ``BEGIN IMMEDIATE`` transaction, so writers are serialised per home and no name is registered
twice. Chunks are written before that transaction (content-addressed, atomically) and re-written
inside it if something removed them meanwhile. Garbage collection runs inside the transaction of
a replace: it deletes the replaced rows' chunks and unreferenced ones older than ``CHUNK_GRACE_S``,
never a younger one (another writer's, staged for its commit).
Appends are idempotent: a sample whose pixels and label are already in the task is skipped.

Memory: images are read, hashed and staged ``BATCH_BYTES`` (32 MiB) of pixels at a time, one
chunk per batch (``shift.store.images``), so ingest holds one batch of decoded images, never the
whole task; rows, hashes and labels (a few hundred bytes per sample) are all that grow with N.
Labels are normalised first (``normalised``): 0..C−1, original values kept as class names.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from shift.config import validate_name
from shift.errors import NotFoundError, ShiftError, TaskDataError
from shift.fsutil import atomic_write, named_write_errors
from shift.records import Samples, TaskRecord
from shift.store.images import batch_size, batches, remap_labels
from shift.store.registry import Registry
from shift.store.task_rows import (
    check,
    chunk_name,
    hash_split,
    hashes,
    normalised,
    plan_rows,
    sample_hash,
)

__all__ = ["CHUNK_GRACE_S", "Appended", "TaskStore", "chunk_name", "hash_split", "sample_hash"]


@dataclass
class _Staged:
    """Chunks one writer staged: ``chunks`` (name → positions of the source images it holds,
    in order), ``at`` (position → (chunk, offset)), ``created`` (the chunks it wrote)."""

    chunks: dict[str, list[int]] = field(default_factory=dict)
    at: dict[int, tuple[str, int]] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)


#: an unreferenced chunk younger than this may be another writer's, about to be committed
CHUNK_GRACE_S = 300.0


class Appended(tuple):  # noqa: SLOT001 - carries ``skipped`` beside the (record, added) pair
    """What :meth:`TaskStore.append` did: unpacks as ``(record, added)``; ``skipped`` counts the
    samples not added because the same pixels with the same label were already in the task."""

    record: TaskRecord
    added: int
    skipped: int

    def __new__(cls, record: TaskRecord, added: int, skipped: int) -> Appended:
        self = super().__new__(cls, (record, added))
        self.record, self.added, self.skipped = record, added, skipped
        return self


# ---- storing -------------------------------------------------------------------------------------
class TaskStore:
    """Reads and writes task data under a registry home."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.root = registry.home.tasks_dir

    def task_dir(self, name: str) -> Path:
        return self.root / validate_name(name, "task name")

    # -- hashing / validation (shift.store.task_rows)
    hashes = staticmethod(hashes)
    check = staticmethod(check)
    _rows = staticmethod(plan_rows)

    # -- chunks
    @staticmethod
    def _chunk_name(images: np.ndarray) -> str:
        return chunk_name(images)

    def _stage_chunk(self, name: str, images: np.ndarray) -> tuple[str, bool]:
        """Write ``images`` as a content-addressed chunk unless it exists (then its mtime is
        refreshed, so garbage collection's grace period counts from now). ``(chunk, created)``."""
        chunk = self._chunk_name(images)
        path = self.task_dir(name) / chunk
        try:
            with named_write_errors(path.parent):
                os.utime(path)
            return chunk, False
        except FileNotFoundError:
            atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
            return chunk, True

    def _stream(self, name: str, s: Samples, wanted: Any, staged: _Staged) -> list[str]:
        """One pass over ``s``'s images, ``BATCH_BYTES`` of pixels at a time: hash each image
        and stage, per batch, a chunk of those for which ``wanted(position, hash, label)``
        holds.
        Returns every image's hash; ``staged`` records where each staged image lies."""
        hashes: list[str] = []
        labels = s.labels.tolist()
        for start, part in batches(s.images):
            pos, take = [], []
            for j in range(len(part)):
                h = sample_hash(part[j])
                hashes.append(h)
                if wanted(start + j, h, int(labels[start + j])):
                    pos.append(start + j)
                    take.append(j)
            if take:
                self._stage_positions(
                    name, s, pos, part[take] if len(take) < len(part) else part, staged
                )
            del part
        return hashes

    def _stage_positions(
        self, name: str, s: Samples, pos: list[int], images: np.ndarray, staged: _Staged
    ) -> None:
        chunk, created = self._stage_chunk(name, images)
        staged.chunks[chunk] = pos
        if created:
            staged.created.add(chunk)
        for k, p in enumerate(pos):
            staged.at[p] = (chunk, k)

    def _place(
        self, name: str, s: Samples, rows: list[dict[str, Any]], keep: list[int], staged: _Staged
    ) -> None:
        """Fill in each row's chunk and offset; images not staged yet (an append whose plan
        changed under the lock) are staged now, a batch at a time."""
        missing = [p for p in keep if p not in staged.at]
        step = batch_size(s.images.shape[1:])
        for i in range(0, len(missing), step):
            pos = missing[i : i + step]
            self._stage_positions(name, s, pos, np.ascontiguousarray(s.images[pos]), staged)
        for r, p in zip(rows, keep, strict=True):
            r["chunk"], r["offset"] = staged.at[p]

    def _ensure_chunks(self, name: str, s: Samples, chunks: set[str], staged: _Staged) -> None:
        """Inside the write transaction: re-write a staged chunk that a remove or a garbage
        collection deleted after it was staged (nothing can delete it from now until the
        commit), from the source images (read again, lazily)."""
        for chunk in chunks:
            path = self.task_dir(name) / chunk
            if not path.is_file():
                images = np.ascontiguousarray(s.images[staged.chunks[chunk]])
                atomic_write(path, functools.partial(np.save, arr=images, allow_pickle=False))

    def _refresh(self, name: str, chunks: set[str]) -> None:
        """Touch staged chunks just before the write transaction, so a long ingest's early
        chunks are as young as its last one for other writers' garbage collection."""
        for chunk in chunks:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.task_dir(name) / chunk)

    def _drop_unused(self, name: str, chunks: set[str], *, folder: bool = False) -> None:
        """Delete chunks this writer created but did not commit, unless a sample uses them;
        ``folder``: also the task's folder when no task of that name is registered and nothing
        is left in it (a failed add leaves no empty folder behind). Inside a write transaction:
        a writer staging there meanwhile re-writes its chunks inside its own."""
        if not chunks and not folder:
            return
        with self.registry.transaction():
            used = self._chunks_used(name)
            for chunk in chunks - used:
                (self.task_dir(name) / chunk).unlink(missing_ok=True)
            if folder and not self.registry.has_task(name):
                with contextlib.suppress(OSError):  # absent, or holds another writer's chunk
                    self.task_dir(name).rmdir()

    def _chunks_used(self, name: str) -> set[str]:
        sql = "SELECT DISTINCT chunk FROM samples WHERE task = ?"
        return {r[0] for r in self.registry.db.execute(sql, [name])}

    def _gc_chunks(self, name: str, replaced: set[str]) -> None:
        """Inside the write transaction: delete this task's chunks that no sample uses and that
        either held the rows just ``replaced`` or are older than ``CHUNK_GRACE_S``; a younger
        one may be another writer's, staged for its commit, and is left alone."""
        used = self._chunks_used(name)
        now = time.time()
        for f in self.task_dir(name).glob("chunk-*.npy"):
            with contextlib.suppress(FileNotFoundError):
                if f.name not in used and (
                    f.name in replaced or now - f.stat().st_mtime >= CHUNK_GRACE_S
                ):
                    f.unlink()

    # -- writing
    def add(
        self,
        name: str,
        samples: Samples,
        *,
        kind: str,
        source: str,
        val_fraction: float = 0.2,
        seed: int = 0,
        replace: bool = False,
    ) -> TaskRecord:
        """Register a new task (or replace one). The images are read, hashed and staged as
        chunks a batch at a time; if validation fails the staged chunks are removed and
        nothing is registered. Of writers racing for one new name exactly one wins, the others
        get :class:`AlreadyExistsError`."""
        validate_name(name, "task name", queryable=True)
        if not 0 < val_fraction < 1:
            raise TaskDataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        samples = normalised(samples, f"task {name!r}")
        self.registry.require_writable()
        if not replace:
            self.registry.ensure_new("tasks", name)  # early: no chunk written in vain
        self._precheck(name, samples)
        staged = _Staged()
        try:
            hashes = self._stream(name, samples, lambda *_: True, staged)
            rows, keep, _ = self._rows(name, hashes, samples, [], val_fraction, seed)
            self.check(name, rows)
            rec = self._record(name, rows, kind, source, samples.classes)
            self._place(name, samples, rows, keep, staged)
            self._refresh(name, set(staged.chunks))
            with self.registry.transaction():
                replaced = self._chunks_used(name)
                self._ensure_chunks(name, samples, set(staged.chunks), staged)
                self.registry.put_task(rec, rows, replace_samples=True, create=not replace)
                self._gc_chunks(name, replaced)
        except BaseException:  # refused or failed: leave no chunk (and no empty folder) behind
            with contextlib.suppress(ShiftError, OSError, sqlite3.Error):
                self._drop_unused(name, staged.created, folder=True)
            raise
        return rec

    def _precheck(self, name: str, s: Samples) -> None:
        """What can be refused from the labels alone, before any image is decoded."""
        if len(s.labels) != len(s.images):
            raise TaskDataError(f"task {name!r}: {len(s.labels)} labels for {len(s.images)} images")
        if len(s.labels) and len(np.unique(s.labels)) < 2:
            raise TaskDataError(
                f"task {name!r}: only one class ({int(s.labels[0])}) in train",
                hint="ranking models needs at least two classes",
            )

    @staticmethod
    def _record(
        name: str, rows: list[dict[str, Any]], kind: str, source: str, classes: list[str]
    ) -> TaskRecord:
        content, data = TaskStore.hashes(rows)
        try:
            return TaskRecord(
                name=name,
                content_hash=content,
                data_hash=data,
                kind=kind,
                source=source,
                num_samples=len(rows),
                num_train=sum(r["split"] == "train" for r in rows),
                num_val=sum(r["split"] == "val" for r in rows),
                num_classes=len({r["label"] for r in rows}),
                classes=classes,
            )
        except ValidationError as e:
            raise TaskDataError(f"task {name!r}: {e.errors()[0]['msg']}") from None

    def is_current(
        self, name: str, samples: Samples, val_fraction: float = 0.2, seed: int = 0
    ) -> bool:
        """Whether task ``name`` already holds exactly these samples, labels and splits."""
        if not self.registry.has_task(name):
            return False
        samples = normalised(samples, f"task {name!r}")
        hashes = [
            sample_hash(part[j]) for _, part in batches(samples.images) for j in range(len(part))
        ]
        rows, _, _ = self._rows(name, hashes, samples, [], val_fraction, seed)
        return self.registry.get_task(name).content_hash == self.hashes(rows)[0]

    def append(
        self, name: str, samples: Samples, *, val_fraction: float = 0.2, seed: int = 0
    ) -> Appended:
        """Add samples to a task: ``(record, added)``, and ``.skipped`` for samples whose pixels
        and label were already there (so re-running an append adds nothing). The images are
        hashed and the new ones staged a batch at a time, outside the lock; the rows are then
        read and written in one write transaction, so racing appends and relabels are
        serialised (an image that became new meanwhile is read again and staged there)."""
        self.registry.require_writable()
        old, existing = self.registry.task_snapshot(name)  # plan and stage outside the lock
        samples = normalised(samples, f"task {name!r}", old.classes)
        present = {(r["content_hash"], r["label"]) for r in existing}
        staged = _Staged()
        committed: set[str] = set()
        try:
            hashes = self._stream(name, samples, lambda p, h, y: (h, y) not in present, staged)
            rows, keep, skipped = self._rows(
                name, hashes, samples, existing, val_fraction, seed, True
            )
            if not rows:
                return Appended(old, 0, skipped)
            self.check(name, [*existing, *rows])
            self._refresh(name, set(staged.chunks))
            with self.registry.transaction():  # again, under the write lock: this one counts
                old, existing = self.registry.task_snapshot(name)
                rows, keep, skipped = self._rows(
                    name, hashes, samples, existing, val_fraction, seed, True
                )
                rec = old
                if rows:
                    all_rows = [*existing, *rows]
                    self.check(name, all_rows)
                    self._place(name, samples, rows, keep, staged)
                    committed = {r["chunk"] for r in rows}
                    self._ensure_chunks(name, samples, committed, staged)
                    rec = self._updated(old, all_rows, samples.classes)
                    self.registry.put_task(rec, rows)
        except BaseException:  # refused or failed: leave no chunk behind
            with contextlib.suppress(ShiftError, OSError, sqlite3.Error):
                self._drop_unused(name, staged.created)
            raise
        self._drop_unused(name, staged.created - committed)  # another writer added them first
        return Appended(rec, len(rows), skipped)

    @staticmethod
    def _updated(old: TaskRecord, rows: list[dict[str, Any]], classes: list[str]) -> TaskRecord:
        """``old`` with the hashes and counts of ``rows`` (the task's rows, in order)."""
        content, data = TaskStore.hashes(rows)
        return old.model_copy(
            update={
                "content_hash": content,
                "data_hash": data,
                "num_samples": len(rows),
                "num_train": sum(r["split"] == "train" for r in rows),
                "num_val": sum(r["split"] == "val" for r in rows),
                "num_classes": len({r["label"] for r in rows}),
                "classes": classes if len(classes) >= len(old.classes) else old.classes,
            }
        )

    def relabel(self, name: str, labels: np.ndarray) -> TaskRecord:
        """New labels for every sample, in task order. The images (and indexes) stay valid. The
        rows are read and written in one write transaction (serialised with appends)."""
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise TaskDataError(f"task {name!r}: labels must be non-negative integers")
        with self.registry.transaction():
            old, rows = self.registry.task_snapshot(name)
            if labels.ndim != 1 or len(labels) != len(rows):
                raise TaskDataError(
                    f"task {name!r} has {len(rows)} samples but {labels.shape} labels were given"
                )
            names = old.classes
            if labels.size and int(labels.max()) >= len(old.classes):
                labels, names = remap_labels(labels, None, f"task {name!r}")
            new_rows = [{**r, "label": int(v)} for r, v in zip(rows, labels.tolist(), strict=True)]
            self.check(name, new_rows)
            rec = self._updated(old, new_rows, names).model_copy(update={"classes": names})
            self.registry.put_task(rec, new_rows)
        return rec

    def remove(self, name: str) -> None:
        """Remove a task and its files, in one write transaction (a writer that staged a chunk
        meanwhile re-writes it inside its own)."""
        with self.registry.transaction():
            self.registry.remove_task(name)
            d = self.task_dir(name)
            for f in d.iterdir() if d.is_dir() else []:
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # absent, or holds a chunk staged just now
                d.rmdir()

    # -- reading
    def chunk(self, name: str, chunk: str) -> np.ndarray:
        """The stored images of one chunk file of task ``name``, memory-mapped (never
        unpickled); a missing file is a named ``TaskDataError``."""
        path = self.task_dir(name) / chunk
        if not path.is_file():
            raise TaskDataError(
                f"task {name!r}: data file {path.name} is missing",
                hint="re-add the task (`shift-cli tasks add --replace`)",
            )
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def load(self, name: str, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Images of ``rows`` (from :meth:`Registry.samples`) in order, uint8 (N, H, W, C)."""
        if not rows:
            raise NotFoundError(f"task {name!r}: no samples")
        cache: dict[str, np.ndarray] = {}
        out = []
        for r in rows:
            arr = cache.get(r["chunk"])
            if arr is None:
                arr = cache[r["chunk"]] = self.chunk(name, r["chunk"])
            out.append(arr[r["offset"]])
        shapes = {o.shape for o in out}
        if len(shapes) > 1:  # appended data of another size: bring all to the first size
            from PIL import Image

            h, w = out[0].shape[:2]
            out = [
                o
                if o.shape[:2] == (h, w)
                else np.asarray(
                    Image.fromarray(np.asarray(o).squeeze())
                    .convert("RGB" if out[0].shape[-1] == 3 else "L")
                    .resize((w, h), Image.Resampling.BILINEAR)
                ).reshape(h, w, -1)
                for o in out
            ]
        return np.stack(out)
