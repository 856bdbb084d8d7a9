"""Bounded image handling shared by the input readers and the task store.

* ``LazyImages``: an array-like view of N uint8 images (N, H, W, C) that decodes only the
  images asked for, so a task is ingested ``BATCH_BYTES`` of pixels at a time (``batches``)
  instead of holding every decoded image at once;
* the size rules: a decoded image may hold at most ``MAX_IMAGE_PIXELS`` pixels (checked from
  the header, before anything is decoded: a decompression bomb is refused by name), and an
  image is stored with its short side at most ``STORE_CAP`` pixels (``capped_size``);
* ``remap_labels``: any non-negative integer labels → 0..C−1, the original values kept as the
  class names (labels up to 10⁹ never build a 10⁹-entry list).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import TaskDataError

#: pixels (width × height) an image may declare; larger ones are refused before decoding
MAX_IMAGE_PIXELS = 64_000_000
#: images are stored with their short side at most this many pixels (aspect kept)
STORE_CAP = 512
#: the square side images of mixed sizes are centre-cropped and resized to (unless given)
DEFAULT_STORE_SIZE = 224
#: decoded pixels held at once while ingesting (one batch, one chunk file)
BATCH_BYTES = 32 << 20
#: samples one task input may hold (labels and splits of this many are held in memory)
MAX_SAMPLES = 20_000_000


def path_text(path: Path) -> str:
    """``path`` as text that can be stored and printed: bytes that are not UTF-8 are shown
    as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def capped_size(width: int, height: int, cap: int = STORE_CAP) -> tuple[int, int]:
    """``(width, height)`` scaled so the short side is at most ``cap`` (aspect kept, each side
    ``round(side · cap / short)``, at least 1); unchanged when already within the cap."""
    short = min(width, height)
    if short <= cap:
        return width, height
    return max(1, round(width * cap / short)), max(1, round(height * cap / short))


def resize_to(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """A uint8 (H, W, C) image resized (PIL bilinear) to ``height × width``, C kept."""
    from PIL import Image

    if img.shape[:2] == (height, width):
        return img
    grey = img.shape[-1] == 1
    im = Image.fromarray(img[..., 0] if grey else img)
    out = np.asarray(im.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[..., None] if grey else out


class LazyImages:
    """N uint8 images of one shape, decoded on demand by ``load(indices) -> (k, H, W, C)``.

    Indexing works as on an array (an int, a slice, a list or an integer array of positions;
    a tuple indexes the selected images further); ``np.asarray`` decodes everything (only for
    small inputs: the task store reads it through ``batches``)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self, shape: tuple[int, int, int, int], load: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self._load = load

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, int | np.integer):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of bounds for {len(self)} images")
            out = self._load(np.array([i]))[0]
        else:
            idx = np.arange(len(self))[key]
            out = self._load(idx) if len(idx) else np.empty((0, *self.shape[1:]), np.uint8)
        return out[rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for start, part in batches(self):
            out[start : start + len(part)] = part
        return out if dtype is None else out.astype(dtype)


def batch_size(image_shape: Sequence[int], budget: int | None = None, itemsize: int = 1) -> int:
    """Images of ``image_shape`` (``itemsize`` bytes per value) that fit in ``budget`` bytes
    (default ``BATCH_BYTES``), at least 1."""
    per = int(np.prod(image_shape, dtype=np.int64)) * itemsize
    return max(1, (BATCH_BYTES if budget is None else budget) // max(1, per))


def batches(images: np.ndarray | LazyImages) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, images[start:start + k])`` for consecutive batches of at most
    ``BATCH_BYTES`` bytes (a lazy source decodes only the batch at hand)."""
    step = batch_size(images.shape[1:])
    for start in range(0, len(images), step):
        yield start, np.ascontiguousarray(images[start : start + step])


def remap_labels(
    labels: np.ndarray, classes: Sequence[str] | None = None, where: str = "labels"
) -> tuple[np.ndarray, list[str]]:
    """Labels ``0..C−1`` and class names for non-negative integer ``labels``.

    The names are the original values (``str(v)``); ``classes`` (an existing task's names)
    keep their positions and a value not among them is appended in ascending order, so the
    values ``0..k−1`` of a fresh input map to themselves. Only the distinct values are
    looked at (``np.unique``), never ``max(labels)`` entries."""
    y = np.asarray(labels)
    if y.size and y.min() < 0:
        raise TaskDataError(f"{where}: negative labels")
    values, inverse = np.unique(y, return_inverse=True)
    names = list(classes or [])
    index = {n: i for i, n in enumerate(names)}
    lut = np.empty(len(values), np.int64)
    for j, v in enumerate(values.tolist()):
        key = str(int(v))
        if key not in index:
            index[key] = len(names)
            names.append(key)
        lut[j] = index[key]
    return lut[inverse.reshape(-1)].astype(np.int64), names
