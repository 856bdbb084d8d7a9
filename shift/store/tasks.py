"""Tasks: labelled image datasets, stored once in the home and addressed by content hash
(``TaskStore``; the input readers that produce ``Samples`` are in ``shift.store.readers``).

Layout: ``<registry>/tasks/<task>/chunk-<sha16>.npy`` holds uint8 images (N, H, W, C); the
``samples`` table maps each sample id to its chunk, offset, label and split. A sample id is the
hash of its pixels (``-k`` suffix for the k-th duplicate), so ids survive appends and relabels.

* ``data_hash``    = sha256 over the ordered sample ids → keys embedding indexes;
* ``content_hash`` = sha256 over (sample id, label, split) → keys proxy scores.

Splits: ``train/`` and ``val/`` folders (or an npz ``split`` array) when given, else a sample is in
validation iff ``sha256(seed:sample_id) mod 10⁶ < val_fraction·10⁶`` — deterministic, and stable
when samples are appended.
"""

from __future__ import annotations

import hashlib
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


def sample_hash(img: np.ndarray) -> str:
    """A sample's base id: ``sha256(str(shape) + pixel bytes)[:16]``."""
    return _hash16(str(img.shape).encode() + img.tobytes())


def hash_split(sample_id: str, val_fraction: float, seed: int) -> str:
    """``"val"`` iff ``int(sha256(f"{seed}:{sample_id}")[:12], 16) mod 10⁶ < val_fraction·10⁶``."""
    h = int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:12], 16) % 1_000_000
    return "val" if h < val_fraction * 1_000_000 else "train"


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

    def _rows(
        self,
        name: str,
        s: Samples,
        start_seq: int,
        taken: set[str],
        chunk: str,
        val_fraction: float,
        seed: int,
    ) -> list[dict[str, Any]]:
        rows = []
        for i in range(len(s.images)):
            base = sample_hash(s.images[i])
            sid, k = base, 0
            while sid in taken:
                k += 1
                sid = f"{base}-{k}"
            taken.add(sid)
            split = s.splits[i] if s.splits is not None else hash_split(sid, val_fraction, seed)
            rows.append(
                {
                    "task": name,
                    "sample_id": sid,
                    "content_hash": base,
                    "label": int(s.labels[i]),
                    "split": split,
                    "chunk": chunk,
                    "offset": i,
                    "seq": start_seq + i,
                }
            )
        return rows

    def _write_chunk(self, name: str, images: np.ndarray) -> str:
        chunk = f"chunk-{_hash16(str(images.shape).encode() + images.tobytes())}.npy"
        path = self.task_dir(name) / chunk
        if not path.exists():
            atomic_write(path, lambda f: np.save(f, images, allow_pickle=False))
        return chunk

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
        """Register a new task (or replace one). Nothing is written if validation fails."""
        validate_name(name, "task name", queryable=True)
        if not 0 < val_fraction < 1:
            raise TaskDataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        if self.registry.has_task(name) and not replace:
            raise ShiftError(
                f"task {name!r} already exists",
                hint="use `shift tasks append` to add samples, or --replace",
            )
        rows = self._rows(name, samples, 0, set(), "", val_fraction, seed)
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
        chunk = self._write_chunk(name, samples.images)  # only once the task is known valid
        for r in rows:
            r["chunk"] = chunk
        self.registry.put_task(rec, rows, replace_samples=True)
        self._gc_chunks(name)
        return rec

    def is_current(
        self, name: str, samples: Samples, val_fraction: float = 0.2, seed: int = 0
    ) -> bool:
        """Whether task ``name`` already holds exactly these samples, labels and splits."""
        if not self.registry.has_task(name):
            return False
        rows = self._rows(name, samples, 0, set(), "", val_fraction, seed)
        return self.registry.get_task(name).content_hash == self.hashes(rows)[0]

    def append(
        self, name: str, samples: Samples, *, val_fraction: float = 0.2, seed: int = 0
    ) -> tuple[TaskRecord, int]:
        """Add samples to a task; returns the new record and how many samples were new."""
        old = self.registry.get_task(name)
        existing = self.registry.samples(name)
        taken = {r["sample_id"] for r in existing}
        rows = self._rows(name, samples, len(existing), taken, "", val_fraction, seed)
        all_rows = existing + rows
        self.check(name, all_rows)
        chunk = self._write_chunk(name, samples.images)
        for r in rows:
            r["chunk"] = chunk
        content, data = self.hashes(all_rows)
        classes = samples.classes if len(samples.classes) >= len(old.classes) else old.classes
        rec = old.model_copy(
            update={
                "content_hash": content,
                "data_hash": data,
                "num_samples": len(all_rows),
                "num_train": sum(r["split"] == "train" for r in all_rows),
                "num_val": sum(r["split"] == "val" for r in all_rows),
                "num_classes": len({r["label"] for r in all_rows}),
                "classes": classes,
            }
        )
        self.registry.put_task(rec, rows)
        return rec, len(rows)

    def relabel(self, name: str, labels: np.ndarray) -> TaskRecord:
        """New labels for every sample, in task order. The images (and indexes) stay valid."""
        old = self.registry.get_task(name)
        rows = self.registry.samples(name)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(rows):
            raise TaskDataError(
                f"task {name!r} has {len(rows)} samples but {labels.shape} labels were given"
            )
        if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
            raise TaskDataError(f"task {name!r}: labels must be non-negative integers")
        new_rows = [{**r, "label": int(v)} for r, v in zip(rows, labels, strict=True)]
        self.check(name, new_rows)
        content, data = self.hashes(new_rows)
        n_cls = int(labels.max()) + 1
        classes = old.classes if len(old.classes) >= n_cls else [str(i) for i in range(n_cls)]
        rec = old.model_copy(
            update={
                "content_hash": content,
                "data_hash": data,
                "num_classes": len(set(labels.tolist())),
                "classes": classes,
            }
        )
        self.registry.put_task(rec, new_rows)
        return rec

    def remove(self, name: str) -> None:
        self.registry.remove_task(name)
        d = self.task_dir(name)
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()

    def _gc_chunks(self, name: str) -> None:
        used = {r["chunk"] for r in self.registry.samples(name)}
        for f in self.task_dir(name).glob("chunk-*.npy"):
            if f.name not in used:
                f.unlink(missing_ok=True)

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
                        hint="re-add the task (`shift tasks add --replace`)",
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
