"""A task's rows, computed from its samples before anything is stored: content hashes, the
deterministic split, label normalisation, the two task hashes and the checks a task must pass
(``TaskStore`` in ``shift.store.tasks`` stores them; see its docstring for the layout).

* ``sample_hash``  = ``sha256(str(shape) + pixel bytes)[:16]`` (a sample's base id);
* ``hash_split``   = ``"val"`` iff ``sha256(f"{seed}:{content_hash}")[:12] mod 10⁶ <
  val_fraction·10⁶``;
* ``hashes(rows)`` = (content hash over (sample id, label, split), data hash over sample ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from shift.errors import TaskDataError
from shift.records import Samples
from shift.store.images import remap_labels


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


def normalised(s: Samples, where: str, classes: list[str] | None = None) -> Samples:
    """``s`` with integer labels that index its class list: labels already in
    ``0..len(classes)−1`` are kept; otherwise they are remapped to 0..C−1 with their original
    values as class names (:func:`remap_labels`, after ``classes``: the task's, on append), so
    a label of 10⁹ never makes a 10⁹-entry class list. Negative or non-integer labels are
    refused."""
    y = np.asarray(s.labels)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise TaskDataError(
            f"{where}: labels must be one integer per image, got {y.dtype}{y.shape}"
        )
    names = list(classes) if classes is not None and len(classes) >= len(s.classes) else None
    names = names if names is not None else list(s.classes)
    if y.size and y.min() < 0:
        raise TaskDataError(f"{where}: negative labels")
    if y.size == 0 or int(y.max()) < len(names):
        return s if y.dtype == np.int64 else replace(s, labels=y.astype(np.int64))
    labels, names = remap_labels(y, classes, where)
    return replace(s, labels=labels, classes=names)


def hashes(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    data = hashlib.sha256()
    content = hashlib.sha256()
    for r in rows:
        data.update(r["sample_id"].encode() + b"\n")
        content.update(f"{r['sample_id']}:{r['label']}:{r['split']}\n".encode())
    return content.hexdigest(), data.hexdigest()


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


def plan_rows(
    name: str,
    hashes: Sequence[str],
    s: Samples,
    existing: Sequence[dict[str, Any]],
    val_fraction: float,
    seed: int,
    skip_present: bool = False,
) -> tuple[list[dict[str, Any]], list[int], int]:
    """Rows for ``s`` (``hashes``: its images' :func:`sample_hash`) after ``existing``:
    ``(rows, kept positions in s, skipped)``. With ``skip_present`` a sample whose pixels and
    label are already in ``existing`` is skipped. ``chunk``/``offset`` are filled in later."""
    taken = {r["sample_id"] for r in existing}
    split_of: dict[str, str] = {}
    for r in existing:
        split_of.setdefault(r["content_hash"], r["split"])
    present = {(r["content_hash"], r["label"]) for r in existing} if skip_present else set()
    start = max((r["seq"] for r in existing), default=-1) + 1
    rows: list[dict[str, Any]] = []
    keep: list[int] = []
    labels = s.labels.tolist()
    for i, base in enumerate(hashes):
        label = int(labels[i])
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
        rows.append({**row, "split": split, "chunk": "", "offset": -1})
        rows[-1]["seq"] = start + len(keep)
        keep.append(i)
    return rows, keep, len(hashes) - len(keep)
