"""Task ingestion: image folders, npz files, validation, deterministic splits, append, relabel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shift.errors import InvalidNameError, TaskDataError
from shift.records import Samples
from shift.store.readers import read_image_folder, read_npz
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry.open(tmp_path / "home")
    yield r
    r.close()


def write_pngs(
    root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0, start: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"img{start + i:03d}.png")


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def toy(n: int = 40, classes: int = 2, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return Samples(x, y, None, [str(i) for i in range(classes)], [])


# ---- image folders ---------------------------------------------------------------------------


def test_image_folder_flat(tmp_path: Path, reg: Registry) -> None:
    root = tmp_path / "data"
    write_pngs(root, {"cat": 12, "dog": 9, "eel": 10})
    s = read_image_folder(root)
    assert s.images.shape == (31, 16, 16, 3) and s.images.dtype == np.uint8
    assert s.classes == ["cat", "dog", "eel"]
    assert np.bincount(s.labels).tolist() == [12, 9, 10]
    assert s.splits is None
    rec = TaskStore(reg).add("pets", s, kind="images", source=str(root))
    assert rec.num_samples == 31 and rec.num_classes == 3
    assert rec.num_train + rec.num_val == 31 and rec.num_val > 0
    assert rec.classes == ["cat", "dog", "eel"]
    assert len(reg.samples("pets")) == 31


def test_image_folder_train_val(tmp_path: Path, reg: Registry) -> None:
    root = tmp_path / "data"
    write_pngs(root / "train", {"a": 6, "b": 5}, seed=1)
    write_pngs(root / "val", {"a": 2, "b": 3}, seed=2)
    s = read_image_folder(root)
    assert s.classes == ["a", "b"]
    assert s.splits is not None and s.splits.count("train") == 11 and s.splits.count("val") == 5
    rec = TaskStore(reg).add("ab", s, kind="images", source=str(root))
    assert (rec.num_train, rec.num_val, rec.num_classes) == (11, 5, 2)
    rows = reg.samples("ab")
    val_labels = sorted(r["label"] for r in rows if r["split"] == "val")
    assert val_labels == [0, 0, 1, 1, 1]


def test_image_folder_mixed_sizes_resized(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pngs(root, {"a": 2}, size=16)
    write_pngs(root, {"b": 2}, size=20, seed=3)
    s = read_image_folder(root, store_size=12)
    assert s.images.shape == (4, 12, 12, 3)


def test_split_deterministic_and_stable_on_append(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_pngs(root, {"a": 20, "b": 20})
    with Registry.open(tmp_path / "h1") as r1, Registry.open(tmp_path / "h2") as r2:
        rec1 = TaskStore(r1).add("t", read_image_folder(root), kind="images", source="x")
        rec2 = TaskStore(r2).add("t", read_image_folder(root), kind="images", source="x")
        assert rec1.content_hash == rec2.content_hash and rec1.data_hash == rec2.data_hash
        before = {r["sample_id"]: r["split"] for r in r1.samples("t")}
        assert set(before.values()) == {"train", "val"}

        more = tmp_path / "more"
        write_pngs(more, {"a": 5, "b": 5}, seed=9)
        rec3, added = TaskStore(r1).append("t", read_image_folder(more, classes=rec1.classes))
        assert added == 10 and rec3.num_samples == 50
        assert rec3.content_hash != rec1.content_hash
        after = {r["sample_id"]: r["split"] for r in r1.samples("t")}
        assert {k: after[k] for k in before} == before  # old samples keep their split


def test_undecodable_image_names_file(tmp_path: Path, reg: Registry) -> None:
    root = tmp_path / "data"
    write_pngs(root, {"a": 3, "b": 3})
    bad = root / "a" / "x.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(TaskDataError, match="x.png"):
        TaskStore(reg).add("t", read_image_folder(root), kind="images", source="x")
    assert not reg.has_task("t")
    assert reg.task_names() == []


def test_one_class_task_refused(tmp_path: Path, reg: Registry) -> None:
    root = tmp_path / "data"
    write_pngs(root, {"only": 20})
    s = read_image_folder(root)
    with pytest.raises(TaskDataError, match="one class"):
        TaskStore(reg).add("t", s, kind="images", source="x")
    assert not reg.has_task("t")
    tdir = TaskStore(reg).task_dir("t")
    assert not tdir.exists() or list(tdir.iterdir()) == []  # no chunk written


def test_val_labels_unseen_in_train(tmp_path: Path, reg: Registry) -> None:
    root = tmp_path / "data"
    write_pngs(root / "train", {"a": 4, "b": 4})
    write_pngs(root / "val", {"a": 2, "c": 2}, seed=5)
    with pytest.raises(TaskDataError, match="never occur in train"):
        TaskStore(reg).add("t", read_image_folder(root), kind="images", source="x")
    assert not reg.has_task("t")


# ---- npz ---------------------------------------------------------------------------------------


def test_npz_ok(tmp_path: Path, reg: Registry) -> None:
    x = np.random.default_rng(0).random((30, 8, 8))  # float in [0, 1], grayscale
    y = (np.arange(30) % 3).astype(np.float32)  # integral floats are accepted
    s = read_npz(npz(tmp_path / "d.npz", x=x, y=y))
    assert s.images.shape == (30, 8, 8, 1) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int64 and s.classes == ["0", "1", "2"]
    rec = TaskStore(reg).add("d", s, kind="npz", source="d.npz")
    assert rec.num_samples == 30 and rec.num_classes == 3


def test_npz_split_array(tmp_path: Path) -> None:
    x = np.zeros((6, 4, 4, 3), np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None, None]
    s = read_npz(
        npz(tmp_path / "d.npz", x=x, y=np.array([0, 1] * 3), split=np.array([0] * 4 + [1] * 2))
    )
    assert s.splits == ["train"] * 4 + ["val"] * 2


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((5, 4, 4, 3), np.uint8), "y": np.zeros(4, np.int64)}, "'y'"),
        ({"x": np.zeros((5, 4, 4, 3), np.uint8)}, "missing array 'y'"),
        ({"x": np.zeros((4, 4, 4, 3), np.uint8), "y": np.array([0, 1.5, 1, 0])}, "not integer"),
        ({"x": np.zeros((4, 4, 4, 3), np.uint8), "y": np.array([0, 1, -1, 0])}, "negative"),
        ({"x": np.zeros((4, 4, 4, 2), np.uint8), "y": np.array([0, 1, 1, 0])}, "'x'"),
    ],
)
def test_npz_bad_fields(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(TaskDataError, match=match):
        read_npz(npz(tmp_path / "bad.npz", **arrays))


class _Boom:
    def __reduce__(self) -> tuple:
        return (_explode, ())


def _explode() -> None:
    raise AssertionError("read_npz unpickled an object array")


def test_npz_object_array_never_unpickled(tmp_path: Path) -> None:
    obj = np.empty(4, dtype=object)
    obj[:] = [_Boom(), 1, 2, 3]
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.zeros((4, 4, 4, 3), np.uint8), y=obj)  # savez pickles object arrays
    with pytest.raises(TaskDataError, match="refused"):
        read_npz(path)
    # a lone pickled object array under the key x as well
    path2 = tmp_path / "obj2.npz"
    np.savez(path2, x=obj, y=np.array([0, 1, 0, 1]))
    with pytest.raises(TaskDataError):
        read_npz(path2)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(TaskDataError):
        read_npz(p)


# ---- relabel / names -----------------------------------------------------------------------------


def test_relabel_wrong_length(reg: Registry) -> None:
    ts = TaskStore(reg)
    rec = ts.add("t", toy(), kind="npz", source="gen")
    with pytest.raises(TaskDataError, match="40 samples"):
        ts.relabel("t", np.zeros(39, np.int64))
    with pytest.raises(TaskDataError):
        ts.relabel("t", np.zeros((40, 1), np.int64))
    assert reg.get_task("t").content_hash == rec.content_hash


def test_relabel_keeps_data_hash(reg: Registry) -> None:
    ts = TaskStore(reg)
    rec = ts.add("t", toy(classes=2), kind="npz", source="gen")
    labels = np.array([r["label"] for r in reg.samples("t")])
    new = ts.relabel("t", 1 - labels)
    assert new.data_hash == rec.data_hash and new.content_hash != rec.content_hash
    assert [r["label"] for r in reg.samples("t")] == (1 - labels).tolist()


@pytest.mark.parametrize("name", ["../evil", "a/../b", "..", "a/b", "", "1abc", "x" * 200])
def test_bad_task_names(reg: Registry, name: str) -> None:
    with pytest.raises(InvalidNameError):
        TaskStore(reg).add(name, toy(), kind="npz", source="gen")
    assert reg.task_names() == []


def test_task_dir_refuses_traversal(reg: Registry) -> None:
    with pytest.raises(InvalidNameError):
        TaskStore(reg).task_dir("../outside")
