"""The indexing path around the model: inputs prepared once per geometry and shared by every
model of it, the same pixels as the backend's own resize, appends that prepare only new
samples, the feeder's order, errors and early stop, and successive halving's prefix through
the indexer. Real ONNX Runtime, SQLite and task files; in-process executor."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.feeder import WriteBehind, prefetched
from shift.engine.indexing import Indexer
from shift.engine.prepared import Geometry, PreparedInputs
from shift.inference.embedder import register_backend
from shift.inference.preprocess import resize_images
from shift.records import Samples
from shift.store.tasks import TaskStore

pytest.importorskip("torch")

SEEN: list[tuple[str, tuple[int, ...]]] = []


@register_backend("shape-recorder")
class ShapeRecorder:
    """Embeds a batch as its per-channel pixel means (a real function of the pixels it is
    handed) and records the batch shape each model was given."""

    providers = ["test"]
    device = "cpu"

    def __init__(self, model_path: str, record: Any, **_: Any) -> None:
        self.name, self.record = record.name, record

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        SEEN.append((self.name, images.shape[1:]))
        x = resize_images(images, self.record.input).astype(np.float32)
        feats = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
        return np.tile(feats, (1, -(-self.record.dim // feats.shape[1])))[
            :, : self.record.dim
        ], None


def samples(n: int, size: int, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 255, (n, size, size + 8, 3), dtype=np.uint8)  # not square: crops
    return Samples(x, y, None, [], [])


@pytest.fixture
def client(tmp_path: Path) -> shift.Client:
    c = shift.connect(tmp_path / "home", executor="inprocess")
    for i, size in enumerate((32, 32, 24)):  # two models share a geometry, one does not
        build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i, size=size, dim=8, classes=None)
        register_onnx(c.registry, tmp_path / f"m{i}.onnx", f"m{i}")
    c.add_task("t", samples(90, 40))
    yield c
    c.close()


def _index(c: shift.Client, backend: str = "shape-recorder", **kw: Any) -> Indexer:
    ix = Indexer(c.registry, executor="inprocess", backend=backend, batch_size=16, **kw)
    ix.index("t", [c.registry.get_model(f"m{i}") for i in range(3)])
    return ix


def test_each_geometry_is_prepared_once_and_models_get_their_size(client: shift.Client) -> None:
    SEEN.clear()
    ix = _index(client)
    assert ix.last_report.prepared == 2 * 90  # 32x32 once for m0 and m1, 24x24 for m2
    assert {s for n, s in SEEN if n != "m2"} == {(32, 32, 3)} and {
        s for n, s in SEEN if n == "m2"
    } == {(24, 24, 3)}
    files = sorted(p.parent.name for p in ix.prepared.root.glob("*/chunk-*.npy"))
    assert files == ["24x24-center_crop", "32x32-center_crop"]
    for m in ("m0", "m1", "m2"):  # rebuilt: nothing is resized again
        client.registry.home.index_path("t", m).joinpath("meta.json").unlink()
    assert _index(client).last_report.prepared == 0


def test_prepared_pixels_equal_the_backends_own_resize(client: shift.Client) -> None:
    """Same indexes with and without prepared inputs (the ONNX Runtime backend resizes itself
    when handed stored images): indexes do not change."""
    models = [client.registry.get_model(f"m{i}") for i in range(3)]
    prepared = Indexer(client.registry, executor="inprocess", batch_size=16).index("t", models)
    got = {n: np.array(i.vectors) for n, i in prepared.items()}
    for m in models:
        client.registry.home.index_path("t", m.name).joinpath("meta.json").unlink()
    plain = Indexer(client.registry, executor="inprocess", batch_size=16, prepare_inputs=False)
    for name, idx in plain.index("t", models).items():
        np.testing.assert_array_equal(np.array(idx.vectors), got[name])
    rows = client.registry.samples("t")[:7]
    spec = models[2].input
    want = resize_images(TaskStore(client.registry).load("t", rows), spec)
    np.testing.assert_array_equal(
        PreparedInputs(TaskStore(client.registry)).load(rows, Geometry.of(spec)), want
    )


def test_an_append_prepares_only_the_new_samples(client: shift.Client) -> None:
    _index(client)
    client.append("t", samples(20, 40, seed=5))
    ix = _index(client)
    assert ix.last_report.prepared == 2 * 20
    # what index reports: the old rows kept, only the new ones embedded (issue 21, item 6)
    assert ix.last_report.kept == {"m0": 90, "m1": 90, "m2": 90}
    assert ix.last_report.embedded == {"m0": 20, "m1": 20, "m2": 20}


def test_a_task_of_mixed_sizes_is_not_prepared(client: shift.Client) -> None:
    client.append("t", samples(10, 48, seed=7))
    SEEN.clear()
    ix = _index(client)
    assert ix.last_report.prepared == 0 and not list(ix.prepared.root.glob("*/*.npy"))
    assert {s for _, s in SEEN} <= {(40, 48, 3), (48, 56, 3)}  # stored sizes: backends resize


def test_a_damaged_prepared_file_is_made_again(client: shift.Client) -> None:
    ix = _index(client)
    (path,) = ix.prepared.root.glob("24x24-*/chunk-*.npy")
    path.write_bytes(b"garbage")
    for m in ("m0", "m1", "m2"):
        client.registry.home.index_path("t", m).joinpath("meta.json").unlink()
    assert _index(client).last_report.prepared == 90


def test_the_cache_is_bounded(client: shift.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ix = _index(client)
    assert len(list(ix.prepared.root.glob("*/chunk-*.npy"))) == 2
    monkeypatch.setenv("SHIFT_PREPARED_MAX_BYTES", "1")  # only what a run needs stays
    fresh = PreparedInputs(TaskStore(client.registry))
    rows = client.registry.samples("t")
    fresh.ensure("t", rows, Geometry(16, 16, "squash"))  # a third geometry: older ones go
    left = [p.parent.name for p in fresh.root.glob("*/chunk-*.npy")]
    assert left == ["16x16-squash"]


# ---- the feeder --------------------------------------------------------------------------------


def test_prefetched_keeps_order_and_reads_ahead_boundedly() -> None:
    produced: list[int] = []

    def items() -> Any:
        for i in range(10):
            produced.append(i)
            yield i

    it = prefetched(items(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 4  # one taken, two queued, one waiting to be put
    assert list(it) == list(range(1, 10))


def test_prefetched_raises_where_the_item_would_be_and_stops_early() -> None:
    def failing() -> Any:
        yield 1
        raise ValueError("unreadable chunk")

    it = prefetched(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="unreadable chunk"):
        next(it)
    before = threading.active_count()
    endless = prefetched(iter(range(10**9)), depth=1)
    next(endless)
    endless.close()
    time.sleep(0.3)
    assert threading.active_count() <= before


def test_write_behind_keeps_order_and_raises_the_first_error_on_drain() -> None:
    done: list[int] = []
    wb = WriteBehind(depth=2)
    for i in range(20):
        wb.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
    wb.drain()
    assert done == list(range(20))

    def fail(i: int) -> None:
        if i == 3:
            raise OSError("disk full")
        done.append(i)

    done.clear()
    with pytest.raises(OSError, match="disk full"):  # raised by a later submit, or by close
        for i in range(6):
            wb.submit(fail, i)
        wb.close()
    assert done == [0, 1, 2]  # nothing after the failed write


# ---- successive halving through the indexer -----------------------------------------------------


def test_halving_prefix_goes_through_the_indexer(client: shift.Client) -> None:
    """The prefix path takes the model file's sha256 check (a tampered file fails by name) and
    its batches are the full build's first ones (a later full index embeds only the rest)."""
    ix = Indexer(client.registry, executor="inprocess", backend="shape-recorder", batch_size=16)
    models = [client.registry.get_model(f"m{i}") for i in range(3)]
    path = client.registry.model_file(models[2])
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"x")
    got = ix.index_prefix("t", models, 40)
    assert set(got) == {"m0", "m1"} and "sha256" in ix.last_report.failed["m2"]
    ids, emb, _ = got["m0"]
    assert len(ids) == 40 and emb.shape == (40, 8)
    assert ix.last_report.embedded["m0"] == 48  # whole batches of 16
    SEEN.clear()
    full = ix.index("t", models[:2])
    assert ix.last_report.embedded["m0"] == 90 - 48 and len(full["m0"]) == 90
    np.testing.assert_array_equal(np.array(full["m0"].vectors)[full["m0"].rows(ids)], emb)
