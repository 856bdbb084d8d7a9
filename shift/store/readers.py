"""Input readers: an image folder or an ``.npz`` file → ``Samples`` (uint8 images, labels,
optional splits, class names, source names). They validate and decode; storing is
``shift.store.tasks``'s job.

* ``read_image_folder``: ``root/<class>/*`` or ``root/train/<class>/*`` + ``root/val/<class>/*``;
* ``read_npz``: arrays ``x`` and ``y`` (+ ``split``), never unpickled.

Decoding refuses images over ``MAX_IMAGE_PIXELS`` pixels (decompression bombs).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shift.errors import TaskDataError
from shift.records import Samples

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
DEFAULT_STORE_SIZE = 224
MAX_IMAGE_PIXELS = 64_000_000


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
