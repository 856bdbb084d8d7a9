"""Tasks: labelled image datasets, stored once in the home and addressed by content hash.

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
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from shift.config import validate_name
from shift.errors import NotFoundError, ShiftError, TaskDataError
from shift.fsutil import atomic_open
from shift.records import Samples, TaskRecord
from shift.store.registry import Registry

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DEFAULT_STORE_SIZE = 224
MAX_IMAGE_PIXELS = 64_000_000


def _hash16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def sample_hash(img: np.ndarray) -> str:
    return _hash16(str(img.shape).encode() + img.tobytes())


def hash_split(sample_id: str, val_fraction: float, seed: int) -> str:
    h = int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:12], 16) % 1_000_000
    return "val" if h < val_fraction * 1_000_000 else "train"


# ---- reading inputs ------------------------------------------------------------------------------
def decode_image(path: Path, size: int | None) -> np.ndarray:
    """Decode one file to uint8 RGB (H, W, 3); centre-crop + resize to ``size`` if given."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        raise TaskDataError(
            f"cannot decode image {path}: {e}", hint="remove or replace the file; jpg/png expected"
        ) from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        rgb = rgb.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(d: Path) -> list[Path]:
    return sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))


def read_image_folder(
    root: Path, store_size: int | None = None, classes: list[str] | None = None
) -> Samples:
    """``root/<class>/*`` or ``root/train/<class>/*`` + ``root/val/<class>/*``.

    Images keep their size when all share one, else are centre-cropped and resized to
    ``store_size`` (default 224) squares. ``classes`` extends an existing class list (append)."""
    root = Path(root)
    if not root.is_dir():
        raise TaskDataError(f"{root}: not a directory")
    split_dirs = {
        d.name.lower(): d for d in _class_dirs(root) if d.name.lower() in ("train", "val")
    }
    if split_dirs and set(split_dirs) != {"train", "val"}:
        missing = {"train", "val"} - set(split_dirs)
        raise TaskDataError(
            f"{root}: has a {next(iter(split_dirs))}/ folder but no {missing.pop()}/ folder",
            hint="give both train/ and val/, or neither",
        )
    parts = (
        [(split_dirs["train"], "train"), (split_dirs["val"], "val")]
        if split_dirs
        else [(root, None)]
    )
    files: list[tuple[Path, str, str | None]] = []
    for base, split in parts:
        for cdir in _class_dirs(base):
            for f in _image_files(cdir):
                files.append((f, cdir.name, split))
    if not files:
        raise TaskDataError(
            f"{root}: no images found",
            hint="put images in one sub-folder per class: ROOT/<class>/*.jpg",
        )
    class_list = list(classes or [])
    for name in sorted({c for _, c, _ in files}):
        if name not in class_list:
            class_list.append(name)
    imgs = [decode_image(f, None) for f, _, _ in files]
    shapes = {im.shape for im in imgs}
    if len(shapes) > 1 or store_size is not None:
        size = store_size or DEFAULT_STORE_SIZE
        imgs = [decode_image(f, size) for f, _, _ in files]
    labels = np.array([class_list.index(c) for _, c, _ in files], dtype=np.int64)
    splits = [s for _, _, s in files] if split_dirs else None
    return Samples(np.stack(imgs), labels, splits, class_list, [str(f) for f, _, _ in files])


def read_npz(path: Path) -> Samples:
    """Arrays ``x`` (N, H, W[, C]) and integer ``y`` (N,), optional ``split`` ('train'/'val' or
    0/1). Float images in [0, 1] are scaled by 255; values are clipped to 0..255."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise TaskDataError(
            f"{path}: refused ({e})",
            hint="object arrays are never unpickled; save plain numeric arrays",
        ) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise TaskDataError(f"{path}: not a readable .npz file ({e})") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise TaskDataError(
                f"{path}: missing array {k!r}", hint=f"arrays found: {', '.join(arrays) or 'none'}"
            )
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TaskDataError(
            f"{path}: field 'x' has shape {x.shape}",
            hint="expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)",
        )
    if y.ndim != 1 or len(y) != len(x):
        raise TaskDataError(
            f"{path}: field 'y' has shape {y.shape} but 'x' has {len(x)} samples",
            hint="one integer label per image",
        )
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            y = y.astype(np.int64)
        else:
            raise TaskDataError(f"{path}: field 'y' holds {y.dtype} values, not integer labels")
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise TaskDataError(f"{path}: field 'x' holds {x.dtype}, not numbers")
    if x.dtype != np.uint8:
        xf = x.astype(np.float64)
        if not np.all(np.isfinite(xf)):
            raise TaskDataError(f"{path}: field 'x' contains NaN or Inf")
        if xf.max(initial=0) <= 1.0:
            xf = xf * 255.0
        x = np.clip(np.round(xf), 0, 255).astype(np.uint8)
    splits = None
    if "split" in arrays:
        s = arrays["split"]
        if len(s) != len(x):
            raise TaskDataError(f"{path}: field 'split' has {len(s)} entries for {len(x)} samples")
        if np.issubdtype(s.dtype, np.integer):
            splits = ["val" if int(v) else "train" for v in s]
        else:
            splits = [str(v).lower() for v in s]
            bad = sorted(set(splits) - {"train", "val"})
            if bad:
                raise TaskDataError(
                    f"{path}: field 'split' has values {bad}",
                    hint="use 'train'/'val' or 0 (train)/1 (val)",
                )
    if len(y) and y.min() < 0:
        raise TaskDataError(f"{path}: field 'y' has negative labels")
    n_cls = int(y.max()) + 1 if len(y) else 0
    return Samples(
        np.ascontiguousarray(x),
        y.astype(np.int64),
        splits,
        [str(i) for i in range(n_cls)],
        [f"{path.name}[{i}]" for i in range(len(x))],
    )


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
            buf = io.BytesIO()
            np.save(buf, images, allow_pickle=False)
            with atomic_open(path) as f:
                f.write(buf.getvalue())
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
