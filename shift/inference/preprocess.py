"""Turn a batch of uint8 images into the float32 tensor a model expects (see ``InputSpec``)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shift.records import InputSpec


def crop_box(h: int, w: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the part of an (h, w) image that is resized to the
    model's size: the centred largest square for ``resize == "center_crop"``, else all of it."""
    if spec.resize == "center_crop" and h != w:
        s = min(h, w)
        return (h - s) // 2, (w - s) // 2, s, s
    return 0, 0, h, w


def normalisation(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)``, float32 arrays of ``spec.channels`` values on the 0..1 pixel scale (a
    single value broadcast): ``x = (pixel / 255 - mean[c]) / std[c]``."""
    shape = (spec.channels,)
    mean = np.broadcast_to(np.asarray(spec.mean, np.float32), shape)
    return mean.copy(), np.broadcast_to(np.asarray(spec.std, np.float32), shape).copy()


def check_batch(images: np.ndarray) -> np.ndarray:
    """``images`` as a uint8 (N, H, W, C) array, C in {1, 3} ((N, H, W) is read as grayscale);
    ``ValueError`` for anything else."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) with C in {{1, 3}}, got shape {arr.shape}")
    return arr


def _resize_one(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Crop/resize one uint8 (H, W, C) image to (spec.height, spec.width, C), bilinear via PIL."""
    top, left, h, w = crop_box(img.shape[0], img.shape[1], spec)
    img = img[top : top + h, left : left + w]
    if (h, w) == (spec.height, spec.width):
        return img
    channels = img.shape[2]
    pil = Image.fromarray(np.ascontiguousarray(img[:, :, 0] if channels == 1 else img))
    out = np.asarray(pil.resize((spec.width, spec.height), Image.Resampling.BILINEAR))
    return out[:, :, None] if channels == 1 else out


def resize_images(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A uint8 (N, H, W, C) batch cropped/resized to (spec.height, spec.width) per image as
    ``preprocess`` does it (PIL bilinear, only when the size differs). Every backend resizes
    through this one function: PIL's fixed-point, two-pass resize cannot be reproduced exactly
    on a GPU, and one level of difference on a fifth of the pixels took EfficientNet-Lite2's
    embeddings to cosine 0.97 of ONNX Runtime's."""
    n, h, w, c = arr.shape
    if not n:
        return np.zeros((0, spec.height, spec.width, c), np.uint8)
    if (h, w) == (spec.height, spec.width):
        return arr
    return np.stack([_resize_one(img, spec) for img in arr])


def preprocess(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Return the model input for ``images``, a uint8 batch (N, H, W, C) with C in {1, 3}
    ((N, H, W) is read as grayscale).

    Per image: ``resize`` ("center_crop": centre-crop to the largest square, then resize;
    "squash": resize directly) to (spec.height, spec.width), bilinear via PIL and only when the
    size differs. Channels are adapted (grayscale repeated to 3, RGB averaged to 1). Then

        ``x = (pixel / 255 - mean[c]) / std[c]``   (mean/std broadcast when of length 1)

    channels reversed when ``spec.color == "BGR"``, and transposed to NCHW when
    ``spec.layout == "NCHW"``. The result is a C-contiguous float32 array.
    """
    arr = resize_images(check_batch(images), spec)
    x = arr.astype(np.float32) / np.float32(255.0)
    if x.shape[3] != spec.channels:
        if spec.channels == 3:
            x = np.repeat(x, 3, axis=3)
        else:
            x = x.mean(axis=3, keepdims=True, dtype=np.float32)
    mean, std = normalisation(spec)
    x = (x - mean) / std
    if spec.color == "BGR" and spec.channels == 3:
        x = x[..., ::-1]
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
