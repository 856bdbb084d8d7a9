"""IndexStore: incremental resumable builds, crash safety, tamper checks, append and relabel."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import hnswlib
import numpy as np
import pytest

import shift.store.index as index_pkg
from shift.errors import ShiftError
from shift.fsutil import sha256_file
from shift.store.index.meta import IndexCorruptError, IndexKey, IndexStoreError
from shift.store.index.reader import EmbeddingIndex
from shift.store.index.store import IndexStore

DIM, NCLS, N = 8, 5, 60


def make_key(task: str = "task-1") -> IndexKey:
    return IndexKey(task_hash=task, model_sha="a" * 64, preprocess='{"height":32}')


def make_data(n: int = N, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"s{seed}-{i:04d}" for i in range(n)]
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    logits = rng.normal(size=(n, NCLS)).astype(np.float32)
    labels = rng.integers(0, 3, n).astype(np.int64)
    return ids, emb, logits, labels


def build(
    store: IndexStore, key: IndexKey, seed: int = 0, n: int = N, batches: int = 3
) -> tuple[EmbeddingIndex, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    ids, emb, logits, labels = make_data(n, seed)
    w = store.begin(key, DIM, NCLS, providers=["CPUExecutionProvider"])
    for b, chunk in enumerate(np.array_split(np.arange(n), batches)):
        w.add_batch(f"b{b}", [ids[i] for i in chunk], emb[chunk], logits[chunk])
    index = w.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
    return index, (ids, emb, logits, labels)


def assert_same(index: EmbeddingIndex, data: tuple) -> None:
    ids, emb, logits, labels = data
    assert index.sample_ids == ids
    np.testing.assert_array_equal(index.vectors, emb)
    np.testing.assert_array_equal(index.labels, labels)
    np.testing.assert_array_equal(index.logits, logits)
    assert index.vectors.dtype == np.float32 and index.labels.dtype == np.int64
    assert index.meta.count == len(ids) and index.meta.dim == DIM


@pytest.fixture(autouse=True)
def persisted_graphs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit hnsw graphs at every size, so the tests of graph files (tamper, resume, append,
    lazy load) see them; tests marked ``lazy_graphs`` keep the real threshold."""
    from shift.scoring import knn

    if "lazy_graphs" not in request.keywords:
        monkeypatch.setattr(knn, "HNSW_MIN_TRAIN", 0)


@pytest.fixture
def store(tmp_path: Path) -> IndexStore:
    return IndexStore(tmp_path / "indexes" / "task" / "model")


def test_key_digest_is_stable_and_distinguishes_keys() -> None:
    a, b = make_key("x"), make_key("y")
    assert a.digest() == make_key("x").digest()
    assert a.digest() != b.digest()
    assert len(a.digest()) == 16 and int(a.digest(), 16) >= 0


def test_build_in_batches_then_reopen(store: IndexStore) -> None:
    key = make_key()
    index, data = build(store, key)
    assert_same(index, data)
    reopened = store.open(key)
    assert reopened is not None
    assert_same(reopened, data)
    meta = json.loads((store.root / "meta.json").read_text())
    assert meta["complete"] is True and meta["has_logits"] is True and meta["logits_dim"] == NCLS
    assert meta["providers"] == ["CPUExecutionProvider"]
    assert set(meta["spaces"]) == {"l2", "cosine"}
    assert meta["hnsw"] == {"M": 16, "ef_construction": 200, "seed": 100}
    expected = {
        "vectors.npy",
        "logits.npy",
        "labels.npy",
        "sample_ids.json",
        "hnsw-l2.bin",
        "hnsw-cosine.bin",
    }
    assert set(meta["files"]) == expected
    assert not list(store.root.glob("parts-*")), "parts are removed after finalize"
    assert not list(store.root.glob(".*.tmp-*")), "no temp files left behind"


def test_select_and_knn_query(store: IndexStore) -> None:
    key = make_key()
    build(store, key)
    index = store.open(key)
    assert index is not None
    ids = [index.sample_ids[5], index.sample_ids[2]]
    x, y = index.select(ids)
    np.testing.assert_array_equal(x, index.vectors[[5, 2]])
    np.testing.assert_array_equal(y, index.labels[[5, 2]])
    with pytest.raises(IndexStoreError, match="not in the index"):
        index.select(["nope"])
    # hnsw (loaded lazily from disk) against brute force
    q = np.random.default_rng(9).normal(size=(20, DIM)).astype(np.float32)
    rows, dist = index.knn_query(q, k=3, space="l2", ef=200)
    d2 = ((q[:, None, :] - index.vectors[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(rows, np.argsort(d2, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(d2, axis=1)[:, :3], rtol=1e-4)
    rows_c, _ = index.knn_query(q, k=1, space="cosine", ef=200)
    vn = index.vectors / np.linalg.norm(index.vectors, axis=1, keepdims=True)
    np.testing.assert_array_equal(rows_c[:, 0], np.argmax(q @ vn.T, axis=1))


def test_builds_are_deterministic(tmp_path: Path) -> None:
    a, b = IndexStore(tmp_path / "a"), IndexStore(tmp_path / "b")
    build(a, make_key())
    build(b, make_key(), batches=5)
    for name in ("vectors.npy", "hnsw-l2.bin", "hnsw-cosine.bin", "labels.npy"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name


def test_open_absent_or_other_key_is_none(store: IndexStore) -> None:
    assert store.open(make_key()) is None
    build(store, make_key("one"))
    assert store.open(make_key("two")) is None
    assert store.open(make_key("one")) is not None
    assert store.exists(make_key("one")) and not store.exists(make_key("two"))


@pytest.mark.parametrize(
    "name", ["vectors.npy", "labels.npy", "logits.npy", "sample_ids.json", "hnsw-cosine.bin"]
)
def test_tampered_file_is_reported(store: IndexStore, name: str) -> None:
    key = make_key()
    build(store, key)
    path = store.root / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match=name) as err:
        store.open(key)
    assert err.value.path == path
    assert isinstance(err.value, ShiftError)


def test_missing_file_and_garbage_meta_are_reported(store: IndexStore) -> None:
    key = make_key()
    build(store, key)
    (store.root / "hnsw-l2.bin").unlink()
    with pytest.raises(IndexCorruptError, match="hnsw-l2.bin"):
        store.open(key)
    (store.root / "meta.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="meta.json"):
        store.open(key)


def test_resume_after_killed_build(store: IndexStore) -> None:
    key = make_key()
    ids, emb, logits, labels = make_data()
    chunks = np.array_split(np.arange(N), 4)
    w = store.begin(key, DIM, NCLS)
    for b in (0, 1):
        w.add_batch(f"b{b}", [ids[i] for i in chunks[b]], emb[chunks[b]], logits[chunks[b]])
    # batch 2 died half-way: its arrays were written, its marker never was
    np.save(w.part_path("b2"), emb[chunks[2]])
    (w.parts_dir / f"{w.part_path('b2').stem}.json").write_text('{"batch_id": "b2", "sampl')
    del w  # the process is killed: nothing is finalized

    assert store.open(key) is None
    w2 = store.begin(key, DIM, NCLS)
    assert w2.done_batches() == {"b0", "b1"}
    for b in (2, 3):
        w2.add_batch(f"b{b}", [ids[i] for i in chunks[b]], emb[chunks[b]], logits[chunks[b]])
    assert w2.done_batches() == {"b0", "b1", "b2", "b3"}
    index = w2.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
    assert_same(index, (ids, emb, logits, labels))
    reopened = store.open(key)
    assert reopened is not None
    assert_same(reopened, (ids, emb, logits, labels))


def test_damaged_part_is_dropped_from_done_batches(store: IndexStore) -> None:
    key = make_key()
    ids, emb, logits, _ = make_data()
    w = store.begin(key, DIM, NCLS)
    w.add_batch("b0", ids[:10], emb[:10], logits[:10])
    w.add_batch("b1", ids[10:20], emb[10:20], logits[10:20])
    part = w.part_path("b1")
    raw = bytearray(part.read_bytes())
    raw[-1] ^= 0xFF
    part.write_bytes(bytes(raw))
    assert store.begin(key, DIM, NCLS).done_batches() == {"b0"}


def test_begin_with_other_dims_discards_old_parts(store: IndexStore) -> None:
    key = make_key()
    ids, emb, logits, _ = make_data()
    store.begin(key, DIM, NCLS).add_batch("b0", ids[:10], emb[:10], logits[:10])
    assert store.begin(key, DIM, None).done_batches() == set()


def test_finalize_reports_missing_samples_and_labels(store: IndexStore) -> None:
    key = make_key()
    ids, emb, logits, labels = make_data()
    w = store.begin(key, DIM, NCLS)
    w.add_batch("b0", ids[:30], emb[:30], logits[:30])
    lab = dict(zip(ids, labels.tolist(), strict=True))
    with pytest.raises(IndexStoreError, match="never added"):
        w.finalize(ids, lab)
    with pytest.raises(IndexStoreError, match="no label"):
        w.finalize(ids[:30], {})
    assert store.open(key) is None
    # a subset in another order is fine
    index = w.finalize(ids[29::-1], lab)
    np.testing.assert_array_equal(index.vectors, emb[29::-1])


def test_add_batch_validates(store: IndexStore) -> None:
    w = store.begin(make_key(), DIM, None)
    ids, emb, logits, _ = make_data(4)
    with pytest.raises(IndexStoreError, match="columns"):
        w.add_batch("b", ids, emb[:, :3])
    with pytest.raises(IndexStoreError, match="logits"):
        w.add_batch("b", ids, emb, logits)
    with pytest.raises(IndexStoreError, match="NaN"):
        w.add_batch("b", ids, np.full_like(emb, np.nan))
    with pytest.raises(IndexStoreError, match="duplicate"):
        w.add_batch("b", [ids[0]] * 4, emb)


def _crashing_replace(monkeypatch: pytest.MonkeyPatch, crash_at: int) -> list[str]:
    """Make the ``crash_at``-th ``os.replace`` raise (as if the process died there)."""
    calls: list[str] = []
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(dst).name)
        if len(calls) - 1 == crash_at:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("crash_at", range(12))
def test_crash_during_finalize_never_leaves_a_broken_index(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    old_key, new_key = make_key("old"), make_key("new")
    _, old_data = build(store, old_key, seed=1)
    ids, emb, logits, labels = make_data(seed=2)
    w = store.begin(new_key, DIM, NCLS)
    w.add_batch("all", ids, emb, logits)
    calls = _crashing_replace(monkeypatch, crash_at)
    try:
        w.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
        crashed = False
    except OSError:
        crashed = True
    monkeypatch.undo()
    if crash_at >= len(calls):
        assert not crashed and calls[-1] == "meta.json"
        return
    assert crashed
    old = store.open(old_key)  # either still the old complete index, or none at all
    if old is not None:
        assert_same(old, old_data)
    assert store.open(new_key) is None
    # resuming the build finishes it from the parts that survived
    w2 = store.begin(new_key, DIM, NCLS)
    assert w2.done_batches() == {"all"}
    w2.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
    new = store.open(new_key)
    assert new is not None
    assert_same(new, (ids, emb, logits, labels))
    assert store.open(old_key) is None


def test_crash_on_final_meta_write(store: IndexStore, monkeypatch: pytest.MonkeyPatch) -> None:
    old_key, new_key = make_key("old"), make_key("new")
    build(store, old_key, seed=1)
    ids, emb, _, labels = make_data(seed=2)
    w = store.begin(new_key, DIM, None)
    w.add_batch("all", ids, emb)
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "meta.json" and json.loads(Path(src).read_text())["complete"]:
            raise OSError("simulated crash while writing meta.json")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        w.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
    monkeypatch.undo()
    # data files are new but the meta never said so: no complete index is accepted
    assert store.open(old_key) is None
    assert store.open(new_key) is None
    assert not store.exists()


def test_first_build_crash_leaves_nothing(store: IndexStore, monkeypatch: pytest.MonkeyPatch):
    key = make_key()
    ids, emb, _, labels = make_data()
    w = store.begin(key, DIM, None)
    w.add_batch("all", ids, emb)
    _crashing_replace(monkeypatch, 2)
    with pytest.raises(OSError):
        w.finalize(ids, dict(zip(ids, labels.tolist(), strict=True)))
    monkeypatch.undo()
    assert store.open(key) is None


def test_append_adds_rows_without_touching_old_ones(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key("v1")
    index, (ids, emb, logits, labels) = build(store, key)
    new_ids, new_emb, new_logits, new_labels = make_data(7, seed=5)

    added: list[int] = []
    real_add = hnswlib.Index.add_items

    def add_items(self: hnswlib.Index, data: np.ndarray, *args: object, **kw: object) -> None:
        added.append(len(data))
        real_add(self, data, *args, **kw)

    monkeypatch.setattr(hnswlib.Index, "add_items", add_items)
    key2 = make_key("v2")
    out = store.append(index, new_ids, new_emb, new_logits, new_labels, key=key2)
    monkeypatch.undo()
    assert added == [7, 7], "only the new rows are inserted, once per space"

    for got in (out, store.open(key2)):
        assert got is not None
        assert got.meta.count == N + 7 and got.meta.key == key2
        assert got.sample_ids == ids + new_ids
        np.testing.assert_array_equal(got.vectors[:N], emb)
        np.testing.assert_array_equal(got.vectors[N:], new_emb)
        np.testing.assert_array_equal(got.logits, np.concatenate([logits, new_logits]))
        np.testing.assert_array_equal(got.labels, np.concatenate([labels, new_labels]))
        rows, dist = got.knn_query(new_emb, k=1, ef=200)
        np.testing.assert_array_equal(rows[:, 0], np.arange(N, N + 7))
        assert got.hnsw("cosine").get_current_count() == N + 7
    assert store.open(key) is None
    # the old object is stale now
    with pytest.raises(IndexStoreError, match="changed"):
        store.append(index, ["z"], new_emb[:1], new_logits[:1], [0], key=key2)


def test_append_validates(store: IndexStore) -> None:
    index, (ids, emb, logits, _) = build(store, make_key())
    with pytest.raises(IndexStoreError, match="already in the index"):
        store.append(index, ids[:1], emb[:1], logits[:1], [0], key=make_key("2"))
    with pytest.raises(IndexStoreError, match="logits"):
        store.append(index, ["new"], emb[:1], None, [0], key=make_key("2"))
    with pytest.raises(IndexStoreError, match="no label"):
        store.append(index, ["new"], emb[:1], logits[:1], {}, key=make_key("2"))


def test_relabel_touches_only_labels(store: IndexStore) -> None:
    key = make_key("v1")
    index, (ids, emb, logits, labels) = build(store, key)
    untouched = ["vectors.npy", "logits.npy", "sample_ids.json", "hnsw-l2.bin", "hnsw-cosine.bin"]
    before = {n: (store.root / n).stat() for n in untouched}
    key2 = make_key("v2")
    out = store.relabel(index, key2, {ids[0]: 9, ids[3]: 7})
    expected = labels.copy()
    expected[[0, 3]] = [9, 7]
    np.testing.assert_array_equal(out.labels, expected)
    for n in untouched:
        after = (store.root / n).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[n].st_ino, before[n].st_mtime_ns), n
    reopened = store.open(key2)
    assert reopened is not None
    np.testing.assert_array_equal(reopened.labels, expected)
    np.testing.assert_array_equal(reopened.vectors, emb)
    assert store.open(key) is None
    with pytest.raises(IndexStoreError, match="not in the index"):
        store.relabel(reopened, key, {"ghost": 1})


class _Evil:
    """Unpickling this would create a directory: the proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_object_arrays_are_refused_not_unpickled(store: IndexStore, tmp_path: Path) -> None:
    key = make_key()
    build(store, key)
    marker = tmp_path / "pwned"
    evil = np.empty(N, dtype=object)
    evil[:] = [_Evil(marker)] * N
    np.save(store.root / "labels.npy", evil, allow_pickle=True)
    # forge the checksum too, so only the allow_pickle=False guard stands in the way
    meta = json.loads((store.root / "meta.json").read_text())
    meta["files"]["labels.npy"] = sha256_file(store.root / "labels.npy")
    (store.root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="labels.npy") as err:
        store.open(key)
    assert "pickle" in str(err.value).lower() or "object" in str(err.value).lower()
    assert not marker.exists()


def test_wrong_dtype_with_forged_checksum_is_refused(store: IndexStore) -> None:
    key = make_key()
    build(store, key)
    np.save(store.root / "labels.npy", np.zeros(N, np.float64))
    meta = json.loads((store.root / "meta.json").read_text())
    meta["files"]["labels.npy"] = sha256_file(store.root / "labels.npy")
    (store.root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="expected int64"):
        store.open(key)


def test_no_pickle_in_module_source() -> None:
    modules = sorted(Path(index_pkg.__file__).parent.glob("*.py"))
    assert len(modules) >= 6
    loads = []
    for path in modules:
        src = path.read_text()
        assert "allow_pickle=True" not in src and "import pickle" not in src, path
        loads += [line for line in src.splitlines() if re.search(r"\bnp\.(load|save)\(", line)]
    assert loads and all("allow_pickle=False" in line for line in loads)


def test_lazy_graph_load_notices_a_later_commit(store: IndexStore) -> None:
    key = make_key("v1")
    build(store, key)
    reader, writer_view = store.open(key), store.open(key)
    assert reader is not None and writer_view is not None
    new_ids, new_emb, new_logits, new_labels = make_data(3, seed=9)
    store.append(writer_view, new_ids, new_emb, new_logits, new_labels, key=make_key("v2"))
    with pytest.raises(IndexStoreError, match="changed since"):
        reader.hnsw("l2")
    # the memory-mapped vectors of the old view still read the old rows
    assert reader.vectors.shape == (N, DIM)


@pytest.mark.lazy_graphs
def test_small_indexes_commit_no_graph_and_build_it_on_first_use(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the kNN proxies' graph threshold no graph is written (each cost ~0.75 s per 2k
    rows); a query builds the same graph in memory; an append that crosses the threshold
    commits both graphs."""
    from shift.scoring import knn

    index, (ids, emb, _, _) = build(store, make_key())
    assert index.meta.spaces == [] and not list(store.root.glob("hnsw-*.bin"))
    reopened = store.open(make_key())
    for space in ("l2", "cosine"):
        rows, dist = reopened.knn_query(emb[:5], k=3, space=space)
        assert rows[:, 0].tolist() == list(range(5)) and np.allclose(dist[:, 0], 0, atol=1e-4)
    monkeypatch.setattr(knn, "HNSW_MIN_TRAIN", N + 2)
    new_ids, new_emb, new_logits, new_labels = make_data(3, seed=9)
    grown = store.append(reopened, new_ids, new_emb, new_logits, new_labels, key=make_key("v2"))
    assert grown.meta.spaces == ["l2", "cosine"]
    again = store.open(make_key("v2"))
    assert again.meta.spaces == ["l2", "cosine"] and sorted(
        p.name for p in store.root.glob("hnsw-*")
    )
    assert again.knn_query(new_emb[:1], k=1)[0][0, 0] == N
