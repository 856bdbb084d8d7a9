"""Input readers: an image folder or an ``.npz`` file → ``Samples`` (uint8 images, labels,
optional splits, class names, source names). They validate and decode; storing is
``shift.store.tasks``'s job.

* ``read_image_folder``: ``root/<class>/*`` or ``root/train/<class>/*`` + ``root/val/<class>/*``
  (only when those two are root's only folders and hold class folders, not images), skipping
  and counting files that are not images;
* ``read_npz`` (in ``shift.store.npz_reader``): arrays ``x`` and ``y`` (+ ``split``), never
  unpickled, headers checked before anything is loaded.

Memory is bounded (see ``shift.store.images``): the images of a folder are only *probed* here
(their headers give the sizes) and decoded later, a batch at a time, by the task store; an
image declaring more than ``MAX_IMAGE_PIXELS`` pixels is refused by name before decoding (a
decompression bomb); stored images keep their size when all share one and their short side is
at most ``STORE_CAP`` (512) pixels, are scaled down to that short side (aspect kept) when all
share a larger size, and are centre-cropped and resized to ``store_size`` (default 224)
squares when sizes differ or ``store_size`` is given.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from shift.errors import TaskDataError
from shift.records import Samples
from shift.store.images import (
    DEFAULT_STORE_SIZE,
    MAX_IMAGE_PIXELS,
    STORE_CAP,
    LazyImages,
    capped_size,
    path_text,
)
from shift.store.npz_reader import read_labels, read_npz

__all__ = [
    "DEFAULT_STORE_SIZE",
    "IMAGE_EXTS",
    "MAX_IMAGE_PIXELS",
    "STORE_CAP",
    "decode_image",
    "path_text",
    "read_image_folder",
    "read_labels",
    "read_npz",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_STORE_SIZE = 4096
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError)


def _refuse(path: Path, e: object) -> TaskDataError:
    return TaskDataError(
        f"cannot decode image {path_text(path)}: {e}",
        hint="remove or replace the file; jpg/png expected",
    )


def probe_image(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding the pixels; an image over
    ``MAX_IMAGE_PIXELS`` pixels (a decompression bomb) or one that is not an image is refused
    naming the file."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    unreadable: tuple[type[BaseException], ...] = (UnidentifiedImageError, *_DECODE_ERRORS)
    try:
        with warnings.catch_warnings():  # over the limit: refused below, by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:  # over twice the limit: PIL refuses to open it
        raise _bomb(path, str(e)) from None
    except unreadable as e:
        raise _refuse(path, e) from None
    if w * h > MAX_IMAGE_PIXELS:
        raise _bomb(path, f"it declares {w}x{h} = {w * h:,} pixels")
    return w, h


def _bomb(path: Path, what: str) -> TaskDataError:
    return TaskDataError(
        f"image {path_text(path)} is too large to decode: {what}, over the limit of "
        f"{MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, or a scan far larger than needed)",
        hint="remove the file or scale it down first",
    )


def decode_image(path: Path, size: int | None, fit: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one file to uint8 RGB (H, W, 3): centre-crop + resize to a ``size`` square if
    given, else resize to ``fit`` = (width, height) if given. The header is checked against
    ``MAX_IMAGE_PIXELS`` before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    probe_image(path)
    unreadable: tuple[type[BaseException], ...] = (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        *_DECODE_ERRORS,
    )
    try:
        with Image.open(path) as im:
            if size is not None or fit is not None:  # JPEG: decode at a reduced scale when it can
                want = (size, size) if size is not None else fit
                im.draft("RGB", want)
            im.load()
            rgb = im.convert("RGB")
    except unreadable as e:
        raise _refuse(path, e) from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        rgb = rgb.crop((left, top, left + s, top + s)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
    elif size is None and fit is not None and rgb.size != fit:
        rgb = rgb.resize(fit, Image.Resampling.BILINEAR)
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
    paths = [f for f, _, _ in files]
    sizes = {probe_image(f) for f in paths}  # headers only: nothing is decoded yet
    if store_size is not None and not 1 <= store_size <= MAX_STORE_SIZE:
        raise TaskDataError(f"--store-size must be between 1 and {MAX_STORE_SIZE}")
    square, fit = None, None
    if len(sizes) > 1 or store_size is not None:
        square = store_size or DEFAULT_STORE_SIZE
        w, h = square, square
    else:
        native = next(iter(sizes))
        w, h = capped_size(*native)
        fit = (w, h) if (w, h) != native else None

    def load(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), h, w, 3), np.uint8)
        for k, i in enumerate(idx.tolist()):
            img = decode_image(paths[i], square, fit)
            if img.shape != (h, w, 3):  # the file changed since it was probed
                raise TaskDataError(
                    f"image {path_text(paths[i])} changed while it was being read",
                    hint="re-run once the folder is no longer being written",
                )
            out[k] = img
        return out

    labels = np.array([class_list.index(c) for _, c, _ in files], dtype=np.int64)
    splits = [s for _, _, s in files] if split_dirs else None
    origin = [path_text(f) for f in paths]
    images = LazyImages((len(paths), h, w, 3), load)
    return Samples(images, labels, splits, class_list, origin, skipped=skipped)  # type: ignore[arg-type]
