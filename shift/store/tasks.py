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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from shift.config import validate_name
from shift.errors import NotFoundError, ShiftError, TaskDataError
from shift.fsutil import atomic_write
from shift.records import Samples, TaskRecord
from shift.store.registry import Registry


def _hash16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def chunk_name(images: np.ndarray) -> str:
    """A chunk's content-addressed file name: ``chunk-<sha256(str(shape) + bytes)[:16]>.npy``,
    hashed ~64 MB at a time, so a memory-mapped chunk is checked without loading it whole."""
    h = hashlib.sha256(str(images.shape).encode())
    step = max(1, (64 << 20) // max(1, images[:1].nbytes))
    for i in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[i : i + step]).data)
    return f"chunk-{h.hexdigest()[:16]}.npy"


def sample_hash(img: np.ndarray) -> str:
    """A sample's base id: ``sha256(str(shape) + pixel bytes)[:16]``."""
    return _hash16(str(img.shape).encode() + img.tobytes())


def hash_split(content_hash: str, val_fraction: float, seed: int) -> str:
    """``"val"`` iff ``int(sha256(f"{seed}:{content_hash}")[:12], 16) mod 10⁶ < val_fraction·10⁶``
    (``content_hash``: :func:`sample_hash`, so exact duplicates get one split)."""
    h = int(hashlib.sha256(f"{seed}:{content_hash}".encode()).hexdigest()[:12], 16) % 1_000_000
    return "val" if h < val_fraction * 1_000_000 else "train"


def _take(images: np.ndarray, keep: list[int]) -> np.ndarray:
    """``images[keep]``, without a copy when every image is kept."""
    return images if keep == list(range(len(images))) else images[keep]


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

    # -- hashing / validation
    @staticmethod
    def hashes(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
        data = hashlib.sha256()
        content = hashlib.sha256()
        for r in rows:
            data.update(r["sample_id"].encode() + b"\n")
            content.update(f"{r['sample_id']}:{r['label']}:{r['split']}\n".encode())
        return content.hexdigest(), data.hexdigest()

    @staticmethod
    def check(name: str, rows: Sequence[dict[str, Any]]) -> None:
        train = {r["label"] for r in rows if r["split"] == "train"}
        val = [r for r in rows if r["split"] == "val"]
        if not any(r["split"] == "train" for r in rows):
            raise TaskDataError(f"task {name!r}: the train split is empty")
        if not val:
            raise TaskDataError(
                f"task {name!r}: the validation split is empty",
                hint="add val/ images or raise --val-fraction",
            )
        if len(train) < 2:
            raise TaskDataError(
                f"task {name!r}: only one class ({next(iter(train))}) in train",
                hint="ranking models needs at least two classes",
            )
        unseen = sorted({r["label"] for r in val} - train)
        if unseen:
            raise TaskDataError(
                f"task {name!r}: validation labels {unseen[:10]} never occur in train",
                hint="every validation class needs training examples",
            )

    @staticmethod
    def _rows(
        name: str,
        s: Samples,
        existing: Sequence[dict[str, Any]],
        val_fraction: float,
        seed: int,
        skip_present: bool = False,
    ) -> tuple[list[dict[str, Any]], list[int], int]:
        """Rows for ``s`` after ``existing``: ``(rows, kept positions in s, skipped)``. With
        ``skip_present`` a sample whose pixels and label are already in ``existing`` is skipped.
        Row ``offset``s index the chunk of the kept images; ``chunk`` is filled in later."""
        taken = {r["sample_id"] for r in existing}
        split_of: dict[str, str] = {}
        for r in existing:
            split_of.setdefault(r["content_hash"], r["split"])
        present = {(r["content_hash"], r["label"]) for r in existing} if skip_present else set()
        start = max((r["seq"] for r in existing), default=-1) + 1
        rows: list[dict[str, Any]] = []
        keep: list[int] = []
        for i in range(len(s.images)):
            base, label = sample_hash(s.images[i]), int(s.labels[i])
            if (base, label) in present:
                continue
            sid, k = base, 0
            while sid in taken:
                k += 1
                sid = f"{base}-{k}"
            taken.add(sid)
            given = s.splits[i] if s.splits is not None else hash_split(base, val_fraction, seed)
            split = split_of.setdefault(base, given)
            row = {"task": name, "sample_id": sid, "content_hash": base, "label": label}
            rows.append({**row, "split": split, "chunk": "", "offset": len(keep)})
            rows[-1]["seq"] = start + len(keep)
            keep.append(i)
        return rows, keep, len(s.images) - len(keep)

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
            os.utime(path)
            return chunk, False
        except FileNotFoundError:
            atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
            return chunk, True

    def _ensure_chunk(self, name: str, chunk: str, images: np.ndarray) -> None:
        """Inside the write transaction: re-write ``chunk`` if a remove or a garbage collection
        deleted it after it was staged (nothing can delete it from now until the commit)."""
        path = self.task_dir(name) / chunk
        if not path.is_file():
            atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))

    def _drop_if_unused(self, name: str, chunk: str) -> None:
        """Delete a chunk this writer created but did not commit, unless a sample uses it."""
        with self.registry.transaction():
            if chunk not in self._chunks_used(name):
                (self.task_dir(name) / chunk).unlink(missing_ok=True)

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
        """Register a new task (or replace one). Nothing is written if validation fails; of
        writers racing for one new name exactly one wins, the others get
        :class:`AlreadyExistsError`."""
        validate_name(name, "task name", queryable=True)
        if not 0 < val_fraction < 1:
            raise TaskDataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        if not replace:
            self.registry.ensure_new("tasks", name)  # early: no chunk written in vain
        rows, _, _ = self._rows(name, samples, [], val_fraction, seed)
        self.check(name, rows)
        content, data = self.hashes(rows)
        try:
            rec = TaskRecord(
                name=name,
                content_hash=content,
                data_hash=data,
                kind=kind,  # type: ignore[arg-type]
                source=source,
                num_samples=len(rows),
                num_train=sum(r["split"] == "train" for r in rows),
                num_val=sum(r["split"] == "val" for r in rows),
                num_classes=len({r["label"] for r in rows}),
                classes=samples.classes,
            )
        except ValidationError as e:
            raise TaskDataError(f"task {name!r}: {e.errors()[0]['msg']}") from None
        chunk, created = self._stage_chunk(name, samples.images)  # only once known valid
        for r in rows:
            r["chunk"] = chunk
        try:
            with self.registry.transaction():
                replaced = self._chunks_used(name)
                self._ensure_chunk(name, chunk, samples.images)
                self.registry.put_task(rec, rows, replace_samples=True, create=not replace)
                self._gc_chunks(name, replaced)
        except ShiftError:  # refused (e.g. another writer won the name): leave no chunk behind
            if created:
                self._drop_if_unused(name, chunk)
            raise
        return rec

    def is_current(
        self, name: str, samples: Samples, val_fraction: float = 0.2, seed: int = 0
    ) -> bool:
        """Whether task ``name`` already holds exactly these samples, labels and splits."""
        if not self.registry.has_task(name):
            return False
        rows, _, _ = self._rows(name, samples, [], val_fraction, seed)
        return self.registry.get_task(name).content_hash == self.hashes(rows)[0]

    def append(
        self, name: str, samples: Samples, *, val_fraction: float = 0.2, seed: int = 0
    ) -> Appended:
        """Add samples to a task: ``(record, added)``, and ``.skipped`` for samples whose pixels
        and label were already there (so re-running an append adds nothing). The rows are read
        and written in one write transaction: racing appends and relabels are serialised."""
        old, existing = self.registry.task_snapshot(name)  # plan and stage outside the lock
        rows, keep, skipped = self._rows(name, samples, existing, val_fraction, seed, True)
        if not rows:
            return Appended(old, 0, skipped)
        self.check(name, [*existing, *rows])
        staged, created = self._stage_chunk(name, _take(samples.images, keep))
        chunk: str | None = None
        try:
            with self.registry.transaction():  # again, under the write lock: this one counts
                old, existing = self.registry.task_snapshot(name)
                rows, again, skipped = self._rows(name, samples, existing, val_fraction, seed, True)
                rec = old
                if rows:
                    all_rows = [*existing, *rows]
                    self.check(name, all_rows)
                    images = _take(samples.images, again)
                    chunk = staged if again == keep else self._chunk_name(images)
                    self._ensure_chunk(name, chunk, images)
                    for r in rows:
                        r["chunk"] = chunk
                    rec = self._updated(old, all_rows, samples.classes)
                    self.registry.put_task(rec, rows)
        except ShiftError:  # refused: leave no chunk behind
            if created:
                self._drop_if_unused(name, staged)
            raise
        if created and chunk != staged:  # another writer's commit changed what is new
            self._drop_if_unused(name, staged)
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
            new_rows = [{**r, "label": int(v)} for r, v in zip(rows, labels, strict=True)]
            self.check(name, new_rows)
            n_cls = int(labels.max()) + 1
            names = old.classes if len(old.classes) >= n_cls else [str(i) for i in range(n_cls)]
            rec = self._updated(old, new_rows, names)
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
    def load(self, name: str, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Images of ``rows`` (from :meth:`Registry.samples`) in order, uint8 (N, H, W, C)."""
        if not rows:
            raise NotFoundError(f"task {name!r}: no samples")
        cache: dict[str, np.ndarray] = {}
        out = []
        for r in rows:
            arr = cache.get(r["chunk"])
            if arr is None:
                path = self.task_dir(name) / r["chunk"]
                if not path.is_file():
                    raise TaskDataError(
                        f"task {name!r}: data file {path.name} is missing",
                        hint="re-add the task (`shift-cli tasks add --replace`)",
                    )
                arr = cache[r["chunk"]] = np.load(path, mmap_mode="r", allow_pickle=False)
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
                    .resize((w, h), Image.BILINEAR)
                ).reshape(h, w, -1)
                for o in out
            ]
        return np.stack(out)
