"""Proxy plug-ins: decorator registration next to the functions, EXPLAIN's cost from the spec,
and the kNN proxies' hnsw-graph path (``GraphKnn``) against exact 1-NN, alone and in the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shift.scoring import knn, plugins
from shift.scoring.knn import GraphKnn, graph_nearest, knn_accuracy, nearest_neighbors
from shift.scoring.proxies import PROXIES, get_proxy

#: EXPLAIN's seconds per 1,000 training samples before they moved into the registrations
COSTS = {
    "knn": 0.02,
    "knn_cosine": 0.02,
    "linear": 0.5,
    "logme": 0.12,
    "leep": 0.01,
    "nce": 0.01,
    "hscore": 0.11,
    "shrink_hscore": 0.14,
    "transrate": 0.05,
    "gbc": 0.16,
    "parc": 0.23,
    "sfda": 0.81,
    "ncti": 0.17,
    "lfc": 0.04,
    "lgc": 0.02,
}


# ------------------------------------------------------------------------------ plug-ins


def test_every_proxy_registers_next_to_its_function() -> None:
    assert list(PROXIES) == list(COSTS)  # registration order: knn, linear, estimators' table
    for name, spec in PROXIES.items():
        assert spec.cost_per_1k == COSTS[name], name
        fn = spec.fn.func if hasattr(spec.fn, "func") else spec.fn  # partial / adapter
        module = getattr(fn, "__module__", None) or type(fn).__module__
        assert module.startswith("shift.scoring"), (name, module)
    assert get_proxy("ncti").pool_relative and not get_proxy("logme").pool_relative
    assert get_proxy("lgc").settings["transform"] == "logit_gradients"
    assert get_proxy("knn").from_index == GraphKnn("euclidean")
    assert get_proxy("knn_cosine").from_index == GraphKnn("cosine")
    assert all(PROXIES[n].from_index is None for n in PROXIES if not n.startswith("knn"))


def test_decorators_bind_kwargs_record_params_and_refuse_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "logme" in PROXIES  # loads the estimators before the registry is copied
    monkeypatch.setattr(plugins, "_SPECS", dict(plugins._SPECS))

    @plugins.proxy("t_scaled", description="test", cost_per_1k=1.5, record={"k": 1}, scale=3)
    def scaled(tx: Any, ty: Any, vx: Any, vy: Any, scale: int = 1) -> float:
        return float(scale * len(tx))

    @plugins.estimator("t_est", description="test", transform=np.abs, power=2)
    def est(x: Any, y: Any, power: int = 1) -> float:
        return float((np.asarray(x) ** power).sum())

    @plugins.estimator("t_pool", description="test", pool_relative=True)
    def pool(problems: list[tuple[Any, Any]]) -> list[float]:
        return [float(len(x)) for x, _ in problems]

    specs = plugins.registered()
    assert scaled.__name__ == "scaled"  # the function itself is returned
    assert specs["t_scaled"].settings == {"k": 1, "scale": 3}
    assert specs["t_scaled"]([1, 2], None, None, None) == 6.0
    assert specs["t_scaled"].cost_per_1k == 1.5
    assert specs["t_est"].settings == {"split": "train", "power": 2, "transform": "absolute"}
    assert specs["t_est"](np.array([-1.0, 2.0]), None, None, None) == 5.0
    assert specs["t_est"].cost_per_1k == plugins.DEFAULT_COST_PER_1K
    assert specs["t_pool"].settings == {"split": "train", "pool_relative": True}
    assert specs["t_pool"].score_many([([1], 0, 0, 0), ([1, 2], 0, 0, 0)]) == [1.0, 2.0]
    assert specs["t_pool"]([1, 2, 3], 0, 0, 0) == 3.0
    with pytest.raises(ValueError, match="already registered"):
        plugins.proxy("t_scaled", description="again")(scaled)
    with pytest.raises(ValueError, match="already registered"):
        plugins.estimator("logme", description="again")(est)


def test_explain_cost_comes_from_the_spec() -> None:
    from shift.engine.cost import score_seconds

    assert score_seconds(get_proxy("sfda").cost_per_1k, 2000) == pytest.approx(1.62)
    assert score_seconds(get_proxy("knn").cost_per_1k, 0) == pytest.approx(0.02 / 1000)


# ------------------------------------------------------------------------------ graph path


class FakeIndex:
    """The part of an ``EmbeddingIndex`` the graph path uses: rows, select, labels, knn_query."""

    def __init__(self, x: np.ndarray, y: np.ndarray, space: str) -> None:
        import hnswlib

        self.x, self.labels, self.space, self.queries = x, y, space, 0
        self.graph = hnswlib.Index(space=space, dim=x.shape[1])
        self.graph.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100)
        self.graph.add_items(x, np.arange(len(x)), num_threads=1)

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, ids: Any) -> np.ndarray:
        return np.asarray([int(s[1:]) for s in ids], np.int64)

    def select(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        r = self.rows(ids)
        return self.x[r], self.labels[r]

    def knn_query(self, q: Any, k: int = 1, space: str = "l2", ef: int | None = None) -> Any:
        assert space == self.space
        self.queries += 1
        self.graph.set_ef(max(ef or 64, k))
        rows, dist = self.graph.knn_query(q, k=min(k, len(self.x)))
        return rows.astype(np.int64), dist


def graph_data(n: int = 1200, d: int = 24, c: int = 6, seed: int = 0) -> tuple[Any, ...]:
    """Overlapping Gaussian classes (1-NN well below 100%), every 4th row a validation row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = (rng.normal(size=(c, d))[y] * 0.4 + rng.normal(size=(n, d))).astype(np.float32)
    val = np.arange(n) % 4 == 0
    ids = np.array([f"s{i}" for i in range(n)])
    return x, y, list(ids[~val]), list(ids[val]), ~val


@pytest.mark.parametrize(("metric", "space"), [("euclidean", "l2"), ("cosine", "cosine")])
def test_graph_nearest_takes_nearest_training_row_and_widens(metric: str, space: str) -> None:
    x, y, _, _, is_train = graph_data()
    index = FakeIndex(x, y, space)
    val_rows = np.flatnonzero(~is_train)
    train_rows = np.flatnonzero(is_train)
    exact = train_rows[nearest_neighbors(x[train_rows], x[val_rows], metric)[0]]  # type: ignore[arg-type]
    # k=1: every query's first hit is itself (a validation row), so all must widen
    got = graph_nearest(index, x[val_rows], is_train, space, k=1, ef=400)
    assert is_train[got].all()
    assert np.mean(got == exact) >= 0.98
    assert index.queries >= 2, "widened"
    with pytest.raises(ValueError, match="no allowed"):
        graph_nearest(index, x[val_rows], np.zeros(len(x), bool), space)


@pytest.mark.parametrize(("metric", "space"), [("euclidean", "l2"), ("cosine", "cosine")])
def test_graph_knn_agrees_with_exact(metric: str, space: str) -> None:
    x, y, train, val, is_train = graph_data(seed=1)
    exact = knn_accuracy(x[is_train], y[is_train], x[~is_train], y[~is_train], metric)  # type: ignore[arg-type]
    assert 0.3 < exact < 0.95, "a problem where neighbours matter"
    got = GraphKnn(metric)(FakeIndex(x, y, space), train, val)  # type: ignore[arg-type]
    assert got == pytest.approx(exact, abs=0.02)


def test_graph_path_applies_from_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_proxy("knn")
    assert spec.index_path(knn.HNSW_MIN_TRAIN) == "hnsw"
    assert spec.index_path(knn.HNSW_MIN_TRAIN - 1) is None
    assert get_proxy("logme").index_path(10**9) is None
    monkeypatch.setattr(knn, "HNSW_MIN_TRAIN", 5)
    assert spec.index_path(5) == "hnsw" and spec.index_path(4) is None


# ------------------------------------------------------------------------------ engine


@pytest.fixture
def home(tmp_path: Path, tiny_models: dict[str, Any]) -> Any:
    import shift
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.tasks import TaskStore

    c = shift.connect(tmp_path / "home", executor="inprocess")
    for name in ("tiny-a", "tiny-b"):
        register_onnx(c.registry, tiny_models[name].path, name, imagenet_source="test")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 60)
    x = (rng.random((240, 32, 32, 3)) * 90 + y[:, None, None, None] * 30).astype(np.uint8)
    TaskStore(c.registry).add("toy", Samples(x, y, None, list("abcd"), []), kind="npz", source="t")
    yield c
    c.close()


def test_engine_scores_knn_through_the_graph_above_the_threshold(
    home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, models = home.engine, home.registry.models()
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(1)
        return graph_nearest(*args, **kwargs)

    monkeypatch.setattr(knn, "graph_nearest", counted)
    rows = home.registry.samples("toy")
    train = [r["sample_id"] for r in rows if r["split"] == "train"]
    val = [r["sample_id"] for r in rows if r["split"] == "val"]
    exact: dict[str, dict[str, float]] = {}
    for metric, proxy in (("euclidean", "knn"), ("cosine", "knn_cosine")):
        for name, idx in engine.index("toy", models).items():
            (xtr, ytr), (xva, yva) = idx.select(train), idx.select(val)
            exact.setdefault(proxy, {})[name] = knn_accuracy(xtr, ytr, xva, yva, metric)

    # below the threshold: the exact path on the arrays, bit for bit
    assert len(train) < knn.HNSW_MIN_TRAIN
    assert engine.status("toy", models, "knn_cosine")["score_path"] == "arrays"
    assert engine.scores("toy", models, "knn_cosine") == exact["knn_cosine"]
    assert engine.last_score_path == "arrays" and not calls

    # above it (threshold patched low): the hook queries each index's stored hnsw graph
    monkeypatch.setattr(knn, "HNSW_MIN_TRAIN", 10)
    status = engine.status("toy", models, "knn")
    assert status["score_path"] == "hnsw" and "hnsw graph" in status["score_summary"]
    got = engine.scores("toy", models, "knn")
    assert engine.last_score_path == "hnsw" and len(calls) == len(models)
    assert got.keys() == exact["knn"].keys()
    for name, value in got.items():
        assert value == pytest.approx(exact["knn"][name], abs=0.02), name
