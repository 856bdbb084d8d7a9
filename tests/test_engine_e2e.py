"""End to end: real ONNX models, real SQLite registry, real hnswlib indexes, through the client."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn, write_corrupt_model

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.engine import model_cache_key, proxy_params_key
from shift.records import Samples
from shift.scoring.proxies import get_proxy
from shift.store.index.meta import IndexKey
from shift.store.index.store import IndexStore
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

N = 120
BATCH = 64
QUERY = "SELECT top 2 FROM pool all WHERE task=toy"
KNN_KEY = proxy_params_key(get_proxy("knn").settings)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("e2e_models")
    paths = [d / f"m{i}.onnx" for i in range(4)]
    for i, p in enumerate(paths):
        build_tiny_cnn(p, seed=i)
    return paths


def toy_samples(n: int = N, seed: int = 0, offset: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40 + offset).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


def make_client(home: Path, files: list[Path], n_models: int = 3, **opts: Any) -> shift.Client:
    c = shift.connect(home, executor=opts.pop("executor", "inprocess"), **opts)
    for i in range(n_models):
        register_onnx(
            c.registry, files[i], f"tiny{i}", imagenet_top1=50 + i, imagenet_source="test"
        )
    TaskStore(c.registry).add("toy", toy_samples(), kind="npz", source="gen")
    return c


@pytest.fixture
def client(tmp_path: Path, onnx_files: list[Path]) -> Any:
    c = make_client(tmp_path / "home", onnx_files)
    yield c
    c.close()


def open_index(reg: Registry, task: str, model: str) -> Any:
    rec, m = reg.get_task(task), reg.get_model(model)
    key = IndexKey(task_hash=rec.data_hash, model_sha=m.sha256, preprocess=m.input.key())
    return IndexStore(reg.home.index_path(task, model)).open(key)


def batches(n: int) -> int:
    return math.ceil(n / BATCH)


# ---- ranking -------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [2, 3])
@pytest.mark.parametrize("ranker", ["hybrid(knn)", "knn", "linear", None])
def test_task_query_ranks_distinct_models(
    tmp_path: Path, onnx_files: list[Path], budget: int, ranker: str | None
) -> None:
    with make_client(tmp_path / "home", onnx_files) as c:
        q = f"SELECT top {budget} FROM pool all WHERE task=toy"
        if ranker:
            q += f" RANK BY {ranker}"
        res = c.query(q)
        names = res.names
        assert len(names) == budget and len(set(names)) == budget
        assert set(names) <= {"tiny0", "tiny1", "tiny2"}
        for name in names:
            s = res.scores[name]
            assert isinstance(s, float) and 0.0 <= s <= 1.0
        if ranker is None or ranker.startswith("hybrid"):
            assert names[0] == "tiny2"  # the agnostic top (highest imagenet_top1)
        if ranker in ("knn", "linear"):
            got = [res.scores[n] for n in names]
            assert got == sorted(got, reverse=True)
        rep = c.engine.last_report
        assert rep.failed == {}
        assert rep.embedded == {f"tiny{i}": N for i in range(3)}
        assert c.engine.executor.inference_calls == 3 * batches(N)


def test_repeat_query_computes_nothing(client: shift.Client) -> None:
    first = client.query(QUERY)
    calls = client.engine.executor.inference_calls
    assert calls == 3 * batches(N)
    client.engine.last_report = None
    again = client.query(QUERY)
    assert again.names == first.names
    assert again.scores == first.scores
    assert client.engine.executor.inference_calls == calls
    rep = client.engine.last_report
    assert rep is None or rep.embedded == {}  # scores all cached: index() not even called
    # another proxy on the same task reuses every index
    client.query(QUERY + " RANK BY knn")
    assert client.engine.executor.inference_calls == calls
    rep = client.engine.last_report
    assert rep.embedded == {} and sorted(rep.reused) == ["tiny0", "tiny1", "tiny2"]


def test_new_model_embeds_only_it(client: shift.Client, onnx_files: list[Path]) -> None:
    client.query(QUERY)
    calls = client.engine.executor.inference_calls
    register_onnx(client.registry, onnx_files[3], "tiny3", imagenet_top1=40, imagenet_source="test")
    res = client.query("SELECT top 4 FROM pool all WHERE task=toy")
    assert len(res.names) == 4
    assert client.engine.executor.inference_calls == calls + batches(N)
    assert client.engine.last_report.embedded == {"tiny3": N}


def test_append_embeds_only_new_samples(client: shift.Client) -> None:
    first = client.query(QUERY + " RANK BY knn")
    reg = client.registry
    old_hash = reg.get_task("toy").content_hash
    calls = client.engine.executor.inference_calls
    rec, added = TaskStore(reg).append("toy", toy_samples(20, seed=7, offset=3))
    assert added == 20 and rec.num_samples == N + 20
    assert rec.content_hash != old_hash
    models = reg.models()
    shas = [model_cache_key(m, "onnxruntime") for m in models]
    assert reg.get_scores(rec.content_hash, "knn", KNN_KEY, shas) == {}
    res = client.query(QUERY + " RANK BY knn")
    rep = client.engine.last_report
    assert rep.embedded == {f"tiny{i}": 20 for i in range(3)}
    assert client.engine.executor.inference_calls == calls + 3 * batches(20)
    for i in range(3):
        idx = open_index(reg, "toy", f"tiny{i}")
        assert idx is not None and len(idx) == N + 20
        assert sorted(idx.sample_ids) == sorted(r["sample_id"] for r in reg.samples("toy"))
    # scores were recomputed for the new content (cached under the new hash)
    assert len(res.names) == 2 and len(first.names) == 2
    assert len(reg.get_scores(rec.content_hash, "knn", KNN_KEY, shas)) == 3


def test_relabel_does_no_inference(client: shift.Client) -> None:
    client.query(QUERY + " RANK BY knn")
    reg = client.registry
    calls = client.engine.executor.inference_calls
    rows = reg.samples("toy")
    perm = np.array([2, 0, 3, 1])
    new = perm[np.array([r["label"] for r in rows])]
    old = reg.get_task("toy")
    rec = TaskStore(reg).relabel("toy", new)
    assert rec.data_hash == old.data_hash and rec.content_hash != old.content_hash
    client.query(QUERY + " RANK BY knn")
    rep = client.engine.last_report
    assert client.engine.executor.inference_calls == calls
    assert rep.embedded == {}
    assert sorted(rep.relabelled) == ["tiny0", "tiny1", "tiny2"]
    want = {r["sample_id"]: int(v) for r, v in zip(rows, new, strict=True)}
    for i in range(3):
        idx = open_index(reg, "toy", f"tiny{i}")
        assert idx is not None
        assert np.array_equal(np.asarray(idx.labels), [want[s] for s in idx.sample_ids])


def test_killed_run_resumes(tmp_path: Path, onnx_files: list[Path]) -> None:
    with make_client(tmp_path / "fresh", onnx_files) as ref:
        ref.query(QUERY + " RANK BY knn")
        full_calls = ref.engine.executor.inference_calls
        ref_vecs = {
            f"tiny{i}": np.array(open_index(ref.registry, "toy", f"tiny{i}").vectors)
            for i in range(3)
        }
        ref_ids = {
            f"tiny{i}": open_index(ref.registry, "toy", f"tiny{i}").sample_ids for i in range(3)
        }
    assert full_calls == 3 * batches(N)

    with make_client(tmp_path / "home", onnx_files) as c:
        ex = c.engine.executor
        real_run = ex.run

        def dying_run(jobs: Any, on_result: Any, on_failure: Any, progress: bool = True) -> None:
            def one_then_die(r: Any) -> None:
                on_result(r)  # the batch is durable once delivered
                raise KeyboardInterrupt

            real_run(jobs, one_then_die, on_failure, progress=progress)

        ex.run = dying_run
        with pytest.raises(KeyboardInterrupt):
            c.query(QUERY + " RANK BY knn")
        killed_calls = ex.inference_calls
        assert killed_calls == 1
        for i in range(3):
            assert open_index(c.registry, "toy", f"tiny{i}") is None
        ex.run = real_run
        res = c.query(QUERY + " RANK BY knn")
        assert len(res.names) == 2
        new_calls = ex.inference_calls - killed_calls
        assert new_calls == full_calls - 1
        for i in range(3):
            name = f"tiny{i}"
            idx = open_index(c.registry, "toy", name)
            assert idx is not None and len(idx) == N
            assert idx.sample_ids == ref_ids[name]
            assert np.allclose(np.asarray(idx.vectors), ref_vecs[name], atol=1e-5)


def test_broken_model_is_reported_not_fatal(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = tmp_path / "home"
    with make_client(home, onnx_files) as c:
        bad = write_corrupt_model(tmp_path / "bad.onnx", name="broken")
        c.registry.add_model(bad, src_file=tmp_path / "bad.onnx")
        res = c.query("SELECT top 4 FROM pool all WHERE task=toy RANK BY knn")
        good = {"tiny0", "tiny1", "tiny2"}
        assert good <= set(res.names)
        for g in good:
            assert isinstance(res.scores[g], float)
        rep = c.engine.last_report
        assert set(rep.failed) == {"broken"}
        assert rep.failed["broken"]
        assert "broken" not in rep.embedded
        assert res.scores.get("broken") is None
    with shift.connect(home, executor="inprocess") as again:
        assert "broken" in again.registry.model_names()
        assert len(again.query("SELECT * FROM models").names) == 4


def test_explain_before_and_after(client: shift.Client) -> None:
    before = client.explain(QUERY)
    work = before.plan["work"]
    assert work["to_embed"] == 3 and work["images_to_embed"] == 3 * N
    assert work["to_score"] == 3
    assert client.engine.executor.inference_calls == 0  # explain computes nothing
    client.query(QUERY)
    after = client.explain(QUERY).plan["work"]
    assert after["to_embed"] == 0 and after["indexed"] == 3
    assert after["to_score"] == 0
    assert all(v["score_cached"] and v["embed"] == 0 for v in after["per_model"].values())


@pytest.mark.ray
def test_ray_matches_inprocess(ray_runtime: None, tmp_path: Path, onnx_files: list[Path]) -> None:
    q = "SELECT top 3 FROM pool all WHERE task=toy RANK BY knn"
    with make_client(tmp_path / "local", onnx_files) as local:
        want = local.query(q)
    with make_client(tmp_path / "ray", onnx_files, executor="ray") as rc:
        got = rc.query(q)
        assert rc.engine.last_report.embedded == {f"tiny{i}": N for i in range(3)}
        assert rc.engine.last_report.failed == {}
    assert got.names == want.names
    assert got.scores == pytest.approx(want.scores)
