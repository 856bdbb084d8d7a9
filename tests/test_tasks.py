"""Task ingestion: image folders, npz files, validation, deterministic splits, append, relabel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shift.errors import AlreadyExistsError, InvalidNameError, TaskDataError
from shift.records import Samples
from shift.store.readers import read_image_folder, read_npz
from shift.store.registry import Registry
from shift.store.tasks import CHUNK_GRACE_S, TaskStore


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


# ---- idempotent appends, splits by content, named refusals, chunk garbage collection ---------


def test_append_rerun_adds_nothing(reg: Registry) -> None:
    ts = TaskStore(reg)
    ts.add("t", toy(), kind="npz", source="gen")
    more = toy(10, seed=5)
    rec1, added = ts.append("t", more)
    res = ts.append("t", more)  # the re-run of an append that had committed
    rec2, again = res
    assert (added, again) == (10, 0)
    assert res.skipped == 10
    assert rec2.content_hash == rec1.content_hash and rec2.num_samples == 50
    fresh = toy(6, seed=9)
    mixed = Samples(
        np.concatenate([more.images[:5], fresh.images]),
        np.concatenate([more.labels[:5], fresh.labels]),
        None,
        more.classes,
        [],
    )
    res = ts.append("t", mixed)
    assert (res.added, res.skipped, res.record.num_samples) == (6, 5, 56)
    rows = reg.samples("t")
    assert [r["seq"] for r in rows] == list(range(56))
    assert np.array_equal(ts.load("t", rows[50:]), fresh.images)  # offsets into the new chunk


def splits_by_content(reg: Registry, task: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in reg.samples(task):
        out.setdefault(r["content_hash"], set()).add(r["split"])
    return out


def test_exact_duplicates_follow_one_split(reg: Registry) -> None:
    base = toy(20, seed=1)
    idx = np.arange(200) % 20  # every image ten times, same label
    s = Samples(base.images[idx], base.labels[idx], None, base.classes, [])
    rec = TaskStore(reg).add("t", s, kind="npz", source="gen", val_fraction=0.3)
    splits = splits_by_content(reg, "t")
    assert len(splits) == 20 and all(len(v) == 1 for v in splits.values())
    assert rec.num_samples == 200 and 0 < rec.num_val < 200


def test_same_pixels_new_label_is_added_in_the_same_split(reg: Registry) -> None:
    ts = TaskStore(reg)
    s = toy()
    ts.add("t", s, kind="npz", source="gen")
    _, added = ts.append("t", Samples(s.images, 1 - s.labels, None, s.classes, []))
    assert added == 40  # not the same samples: their labels differ
    assert all(len(v) == 1 for v in splits_by_content(reg, "t").values())


def test_given_splits_never_put_one_image_on_both_sides(reg: Registry) -> None:
    s = toy(20, seed=2)
    images = np.concatenate([s.images, s.images[:3]])
    labels = np.concatenate([s.labels, s.labels[:3]])
    splits = ["train"] * 16 + ["val"] * 4 + ["val"] * 3  # copies of train images under val/
    TaskStore(reg).add("t", Samples(images, labels, splits, s.classes, []), kind="npz", source="x")
    assert [r["split"] for r in reg.samples("t")][20:] == ["train"] * 3


def test_add_existing_task_is_a_named_error_writing_nothing(reg: Registry) -> None:
    ts = TaskStore(reg)
    rec = ts.add("t", toy(seed=1), kind="npz", source="gen")
    files = sorted(ts.task_dir("t").iterdir())
    with pytest.raises(AlreadyExistsError, match="task 't' already exists") as info:
        ts.add("t", toy(seed=2), kind="npz", source="gen")
    assert "append" in (info.value.hint or "")
    assert sorted(ts.task_dir("t").iterdir()) == files
    assert reg.get_task("t") == rec


def test_chunk_gc_spares_chunks_another_writer_may_commit(reg: Registry) -> None:
    ts = TaskStore(reg)
    ts.add("t", toy(seed=1), kind="npz", source="gen")
    d = ts.task_dir("t")
    first = d / reg.samples("t")[0]["chunk"]
    staged = d / "chunk-0123456789abcdef.npy"  # as another writer leaves it just before its commit
    np.save(staged, np.zeros((1, 8, 8, 3), np.uint8))
    ts.add("t", toy(seed=2), kind="npz", source="gen", replace=True)
    second = d / reg.samples("t")[0]["chunk"]
    assert not first.exists()  # the replaced rows' chunk goes at once
    assert staged.exists()  # unreferenced but young: spared
    past = time.time() - CHUNK_GRACE_S - 1
    os.utime(staged, (past, past))
    ts.add("t", toy(seed=3), kind="npz", source="gen", replace=True)
    third = d / reg.samples("t")[0]["chunk"]
    assert sorted(f.name for f in d.iterdir()) == [third.name]
    assert not second.exists()
    assert np.array_equal(ts.load("t", reg.samples("t")), toy(seed=3).images)
