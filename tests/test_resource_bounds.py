"""Memory bounds of task ingest (issue #12, item 6), each on real files, a real SQLite registry
and the real task store:

* a decompression bomb (a small PNG declaring 81 M pixels) is refused by name before decoding;
* an ``.npz`` whose header lies about its shape is refused by name before loading (never a raw
  ``MemoryError``), as are members declaring too much;
* labels up to 10⁹ are remapped to 0..C−1, the original values kept as class names;
* large photos are stored with their short side at ``STORE_CAP``;
* ``tasks add`` streams: the decoded pixels held at once stay far below the task's size
  (tracemalloc sees numpy's allocations), from a folder and from a float ``.npz``.
"""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shift.errors import TaskDataError
from shift.store import images as images_mod
from shift.store.images import STORE_CAP
from shift.store.readers import read_image_folder, read_labels, read_npz
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


def _folder(
    root: Path, per_class: int, size: tuple[int, int], fmt: str = "png", seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.{fmt}")
    return root


def _stored(reg: Registry, task: str) -> list[np.ndarray]:
    store = TaskStore(reg)
    chunks = {r["chunk"] for r in reg.samples(task)}
    return [np.load(store.task_dir(task) / c, allow_pickle=False) for c in sorted(chunks)]


# ---- decompression bombs ---------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_by_name(tmp_path: Path, reg: Registry) -> None:
    root = _folder(tmp_path / "d", 3, (16, 16))
    Image.new("1", (9_000, 9_000)).save(root / "a" / "bomb.png")  # 81 M pixels, ~10 KB
    assert (root / "a" / "bomb.png").stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(TaskDataError, match=r"bomb\.png.*81,000,000 pixels"):
            TaskStore(reg).add("t", read_image_folder(root), kind="images", source="x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20  # never decoded (81 MB as L, 243 MB as RGB)
    assert reg.task_names() == []


# ---- npz headers -----------------------------------------------------------------------------


def _npz_with_header(path: Path, arrays: dict[str, tuple[tuple[int, ...], str, bytes]]) -> Path:
    """An npz whose members carry the given header (shape, dtype) over the given data bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, (shape, dtype, data) in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(f, header)
                f.write(data)
    return path


def test_a_lying_npz_header_is_a_named_error(tmp_path: Path) -> None:
    y = np.arange(4, dtype=np.int64) % 2
    lie = _npz_with_header(
        tmp_path / "lie.npz",
        {
            "x": ((100_000, 4096, 4096, 3), "<f4", bytes(4 * 8 * 8 * 3 * 4)),
            "y": ((4,), "<i8", y.tobytes()),
        },
    )
    with pytest.raises(TaskDataError, match=r"lie\.npz.*'x'.*forged"):
        read_npz(lie)
    lie_y = _npz_with_header(
        tmp_path / "liey.npz",
        {
            "x": ((4, 8, 8, 3), "|u1", bytes(4 * 8 * 8 * 3)),
            "y": ((10**12,), "<i8", y.tobytes()),
        },
    )
    with pytest.raises(TaskDataError, match=r"'y'.*forged"):
        read_npz(lie_y)
    with pytest.raises(TaskDataError, match=r"'y'.*forged"):
        read_labels(lie_y)


def test_an_npz_declaring_too_much_is_refused_before_loading(tmp_path: Path) -> None:
    n = 2
    path = _npz_with_header(
        tmp_path / "big.npz",
        {
            "x": ((n, 10_000, 10_000, 3), "|u1", bytes(0)),
            "y": ((n,), "<i8", np.arange(n, dtype=np.int64).tobytes()),
        },
    )
    with pytest.raises(TaskDataError, match="over the limits|forged"):
        read_npz(path)


def test_a_compressed_float_npz_streams(tmp_path: Path, reg: Registry) -> None:
    """300 distinct 128 px float32 images (59 MB as float32, 118 MB as float64) from a small
    compressed file: the store never holds more than a few batches."""
    n, side = 300, 128
    x = np.zeros((n, side, side, 3), np.float32)
    x[np.arange(n), 0, 0, 0] = np.arange(n) / n  # distinct images, compresses to almost nothing
    path = tmp_path / "f.npz"
    np.savez_compressed(path, x=x, y=np.arange(n) % 3)
    assert path.stat().st_size < 2 << 20
    del x
    images_mod.BATCH_BYTES, saved = 2 << 20, images_mod.BATCH_BYTES
    tracemalloc.start()
    try:
        rec = TaskStore(reg).add("f", read_npz(path), kind="npz", source="f.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        images_mod.BATCH_BYTES = saved
    assert rec.num_samples == n
    assert peak < 40 << 20, peak  # the float32 x alone is 59 MB
    stored = np.concatenate(_stored(reg, "f"))
    assert stored.dtype == np.uint8 and stored.shape[1:] == (side, side, 3)
    want = np.round((np.arange(n) / n).astype(np.float32).astype(np.float64) * 255)
    assert sorted(stored[:, 0, 0, 0].tolist()) == want.astype(np.uint8).tolist()


# ---- labels ------------------------------------------------------------------------------------


def test_huge_labels_are_remapped_and_kept(tmp_path: Path, reg: Registry) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = np.array([10**9, 7, 123_456] * 13 + [7])
    np.savez(tmp_path / "h.npz", x=x, y=y)
    s = read_npz(tmp_path / "h.npz")
    assert s.classes == ["7", "123456", "1000000000"]
    assert s.labels.max() == 2 and [s.classes[v] for v in s.labels] == [str(v) for v in y]
    rec = TaskStore(reg).add("h", s, kind="npz", source="h.npz")
    assert rec.num_classes == 3 and rec.classes == ["7", "123456", "1000000000"]
    # relabel with huge values: remapped too, no 10**9-entry list
    new = np.array([2 * 10**9, 5] * 20)
    rec = TaskStore(reg).relabel("h", new)
    assert rec.classes == ["5", "2000000000"] and rec.num_classes == 2
    # append with a known and a new huge value keeps the existing positions
    y_more = np.array([5, 999_999_999, 2 * 10**9, 999_999_999])
    np.savez(tmp_path / "more.npz", x=x[:4] // 2, y=y_more, split=np.array([0, 0, 0, 1]))
    rec, added = TaskStore(reg).append("h", read_npz(tmp_path / "more.npz", rec.classes))
    assert added == 4 and rec.classes == ["5", "2000000000", "999999999"]
    labels = {r["label"] for r in reg.samples("h")}
    assert labels == {0, 1, 2}


# ---- stored size -------------------------------------------------------------------------------


def test_large_photos_are_stored_at_the_cap(tmp_path: Path, reg: Registry) -> None:
    root = _folder(tmp_path / "photos", 3, (1200, 900), fmt="jpg")
    s = read_image_folder(root)
    assert s.images.shape == (6, STORE_CAP, 683, 3)  # short side 900 → 512, aspect kept
    TaskStore(reg).add("p", s, kind="images", source="x", val_fraction=0.5)
    (chunk,) = _stored(reg, "p")
    assert chunk.shape == (6, STORE_CAP, 683, 3)
    # small images of one size keep their size; mixed sizes become 224 squares
    assert read_image_folder(_folder(tmp_path / "small", 2, (40, 30))).images.shape == (
        4,
        30,
        40,
        3,
    )
    mixed = _folder(tmp_path / "mixed", 2, (40, 30))
    Image.new("RGB", (64, 64)).save(mixed / "b" / "odd.png")
    assert read_image_folder(mixed).images.shape == (5, 224, 224, 3)


# ---- streaming -------------------------------------------------------------------------------


def test_tasks_add_and_append_hold_one_batch_of_pixels_not_all(
    tmp_path: Path, reg: Registry
) -> None:
    root = _folder(tmp_path / "d", 200, (96, 96))  # 400 images, 11 MB decoded
    total = 400 * 96 * 96 * 3
    images_mod.BATCH_BYTES, saved = 1 << 20, images_mod.BATCH_BYTES
    tracemalloc.start()
    try:
        rec = TaskStore(reg).add("d", read_image_folder(root), kind="images", source="x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        images_mod.BATCH_BYTES = saved
    assert rec.num_samples == 400
    assert peak < total / 3, (peak, total)  # holding every decoded image takes >= total
    more = _folder(tmp_path / "more", 200, (96, 96), seed=1)  # append streams as well
    images_mod.BATCH_BYTES = 1 << 20
    tracemalloc.start()
    try:
        rec, added = TaskStore(reg).append("d", read_image_folder(more, classes=rec.classes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        images_mod.BATCH_BYTES = saved
    assert added == 400 and rec.num_samples == 800
    assert peak < total / 3, (peak, total)
    chunks = _stored(reg, "d")
    assert len(chunks) > 5 and sum(len(c) for c in chunks) == 800
    # the stored pixels are the files' pixels, in row order
    rows = reg.samples("d")
    imgs = TaskStore(reg).load("d", rows[:3])
    files = sorted((root / "a").glob("*.png"), key=lambda p: int(p.stem))
    assert any(np.array_equal(imgs[0], np.asarray(Image.open(f))) for f in files[:3])
