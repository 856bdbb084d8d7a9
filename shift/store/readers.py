"""Input readers: an image folder or an ``.npz`` file → ``Samples`` (uint8 images, labels,
optional splits, class names, source names). They validate and decode; storing is
``shift.store.tasks``'s job.

* ``read_image_folder``: ``root/<class>/*`` or ``root/train/<class>/*`` + ``root/val/<class>/*``
  (only when those two are root's only folders and hold class folders, not images), skipping
  and counting files that are not images;
* ``read_npz``: arrays ``x`` and ``y`` (+ ``split``), never unpickled.

Decoding refuses images over ``MAX_IMAGE_PIXELS`` pixels (decompression bombs).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from shift.errors import TaskDataError
from shift.records import Samples

log = logging.getLogger(__name__)

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
            f"cannot decode image {path_text(path)}: {e}",
            hint="remove or replace the file; jpg/png expected",
        ) from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        rgb = rgb.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _visible_files(d: Path, recursive: bool) -> list[Path]:
    found = d.rglob("*") if recursive else d.iterdir()
    return sorted(f for f in found if f.is_file() and not f.name.startswith("."))


def _is_image(path: Path) -> bool:
    """An image extension, or (for any other name) content PIL recognises as an image. A file
    with an image extension counts even when broken: decoding then refuses it by name."""
    if path.suffix.lower() in IMAGE_EXTS:
        return True
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def path_text(path: Path) -> str:
    """``path`` as text that can be stored and printed: bytes that are not UTF-8 are shown
    as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _class_name(d: Path) -> str:
    """The class a folder names; a name that is not valid UTF-8 is refused naming the folder."""
    try:
        d.name.encode("utf-8")
    except UnicodeEncodeError:
        raise TaskDataError(
            f"class folder {path_text(d)}: its name is not valid UTF-8",
            hint="rename the folder with a UTF-8 name (the name becomes the class name)",
        ) from None
    return d.name


def _split_dirs(root: Path, dirs: list[Path]) -> dict[str, Path] | None:
    """``{"train": dir, "val": dir}`` when ``root`` uses the split layout, else None.

    The split layout is explicit: ``root``'s only folders are ``train/`` and ``val/`` (any
    case) and each holds class folders and no images of its own. Anything else is the flat
    layout, where a folder called ``train`` or ``val`` is just a class (PASCAL VOC has
    ``train``). Only ``train/`` (or only ``val/``) holding class folders is refused."""
    named = {d.name.lower(): d for d in dirs if d.name.lower() in ("train", "val")}
    if not named or len(named) != len(dirs):
        return None
    for d in named.values():
        if not _class_dirs(d) or any(_is_image(f) for f in _visible_files(d, False)):
            return None
    if set(named) != {"train", "val"}:
        missing = ({"train", "val"} - set(named)).pop()
        raise TaskDataError(
            f"{path_text(root)}: has a {next(iter(named))}/ folder of classes but no "
            f"{missing}/ folder",
            hint="give both train/ and val/, or put the class folders directly in the root",
        )
    return named


def read_image_folder(
    root: Path, store_size: int | None = None, classes: list[str] | None = None
) -> Samples:
    """``root/<class>/*`` (flat) or ``root/train/<class>/*`` + ``root/val/<class>/*`` (split;
    the rule is in ``_split_dirs``).

    Images keep their size when all share one, else are centre-cropped and resized to
    ``store_size`` (default 224) squares. ``classes`` extends an existing class list (append).
    Files that are not images (a README, notes), and files outside the class folders, are
    skipped and listed in ``Samples.skipped``; a file with an image extension that does not
    decode is refused by name. Hidden files and folders are ignored. Paths that are not UTF-8
    are kept with ``\\xNN`` escapes in ``origin``; such a class folder is refused by name."""
    root = Path(root)
    if not root.is_dir():
        raise TaskDataError(f"{path_text(root)}: not a directory")
    split_dirs = _split_dirs(root, _class_dirs(root))
    parts = (
        [(d, split) for split, d in sorted(split_dirs.items())] if split_dirs else [(root, None)]
    )
    files: list[tuple[Path, str, str | None]] = []
    skipped = [path_text(f) for f in _visible_files(root, False)]  # outside any class folder
    for base, split in parts:
        if split is not None:
            skipped += [path_text(f) for f in _visible_files(base, False)]
        for cdir in _class_dirs(base):
            name = _class_name(cdir)
            for f in _visible_files(cdir, True):
                if _is_image(f):
                    files.append((f, name, split))
                else:
                    skipped.append(path_text(f))
    if skipped:
        log.warning(
            "%s: skipped %d files (not images, or outside a class folder)",
            path_text(root),
            len(skipped),
        )
    if not files:
        raise TaskDataError(
            f"{path_text(root)}: no images found",
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
    origin = [path_text(f) for f, _, _ in files]
    return Samples(np.stack(imgs), labels, splits, class_list, origin, skipped=skipped)


def read_npz(path: Path) -> Samples:
    """Arrays ``x`` (N, H, W[, C]) and integer ``y`` (N,), optional ``split`` ('train'/'val' or
    0/1). Float images in [0, 1] are scaled by 255; values are clipped to 0..255."""
    path = Path(path)
    where = path_text(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise TaskDataError(
            f"{where}: refused ({e})",
            hint="object arrays are never unpickled; save plain numeric arrays",
        ) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise TaskDataError(f"{where}: not a readable .npz file ({e})") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise TaskDataError(
                f"{where}: missing array {k!r}", hint=f"arrays found: {', '.join(arrays) or 'none'}"
            )
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TaskDataError(
            f"{where}: field 'x' has shape {x.shape}",
            hint="expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)",
        )
    if y.ndim != 1 or len(y) != len(x):
        raise TaskDataError(
            f"{where}: field 'y' has shape {y.shape} but 'x' has {len(x)} samples",
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
            raise TaskDataError(f"{where}: field 'y' holds {y.dtype} values, not integer labels")
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise TaskDataError(f"{where}: field 'x' holds {x.dtype}, not numbers")
    if x.dtype != np.uint8:
        xf = x.astype(np.float64)
        if not np.all(np.isfinite(xf)):
            raise TaskDataError(f"{where}: field 'x' contains NaN or Inf")
        if xf.max(initial=0) <= 1.0:
            xf = xf * 255.0
        x = np.clip(np.round(xf), 0, 255).astype(np.uint8)
    splits = None
    if "split" in arrays:
        s = arrays["split"]
        if len(s) != len(x):
            raise TaskDataError(f"{where}: field 'split' has {len(s)} entries for {len(x)} samples")
        if np.issubdtype(s.dtype, np.integer):
            splits = ["val" if int(v) else "train" for v in s]
        else:
            splits = [str(v).lower() for v in s]
            bad = sorted(set(splits) - {"train", "val"})
            if bad:
                raise TaskDataError(
                    f"{where}: field 'split' has values {bad}",
                    hint="use 'train'/'val' or 0 (train)/1 (val)",
                )
    if len(y) and y.min() < 0:
        raise TaskDataError(f"{where}: field 'y' has negative labels")
    n_cls = int(y.max()) + 1 if len(y) else 0
    return Samples(
        np.ascontiguousarray(x),
        y.astype(np.int64),
        splits,
        [str(i) for i in range(n_cls)],
        [f"{path_text(Path(path.name))}[{i}]" for i in range(len(x))],
    )
