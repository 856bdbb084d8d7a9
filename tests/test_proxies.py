"""Proxies: exact 1-NN (vs a naive oracle and hnswlib) and the batched linear probe."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from shift.scoring.knn import (
    knn_accuracy,
    knn_accuracy_hnsw,
    merge_nearest,
    nearest_neighbors,
)
from shift.scoring.linear import linear_probe, linear_probe_many, linear_probe_scores
from shift.scoring.proxies import PROXIES, ProxySpec, get_proxy

STEPS = 150  # enough for these small problems, keeps the file fast


def blobs(
    n: int, d: int, c: int, *, sep: float = 4.0, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs, split 2:1 into train/val."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n) if labels is None else labels
    x = (centers[y % c] + rng.normal(size=(n, d))).astype(np.float32)
    k = 2 * n // 3
    return x[:k], y[:k], x[k:], y[k:]


def naive_nn(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Obviously correct oracle: full float64 distance matrix, first minimum."""
    t, q = train.astype(np.float64), query.astype(np.float64)
    d = ((q[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1)


# ------------------------------------------------------------------------------ registry


def test_registry_names_and_lookup() -> None:
    assert {"knn", "knn_cosine", "linear"} <= set(PROXIES)
    for name, spec in PROXIES.items():
        assert isinstance(spec, ProxySpec) and spec.name == name and spec.description
        assert spec.fn is not None
        if name in ("knn", "knn_cosine", "linear"):
            assert not spec.needs_logits
    assert get_proxy("knn").settings["metric"] == "euclidean"
    assert get_proxy("knn_cosine").settings["metric"] == "cosine"
    assert get_proxy("linear").settings["lrs"] == (0.1, 0.01)
    with pytest.raises(KeyError, match="did you mean 'linear'"):
        get_proxy("lineer")
    with pytest.raises(KeyError, match="unknown proxy"):
        get_proxy("nope")
    hash(get_proxy("knn"))  # frozen specs stay hashable despite the params dict


def test_specs_score_problems() -> None:
    xtr, ytr, xva, yva = blobs(150, 6, 3)
    assert get_proxy("knn")(xtr, ytr, xva, yva) == knn_accuracy(xtr, ytr, xva, yva)
    spec = get_proxy("linear")
    batched = spec.score_many([(xtr, ytr, xva, yva), (xtr[:, :3], ytr, xva[:, :3], yva)])
    assert batched[0] == pytest.approx(spec(xtr, ytr, xva, yva), abs=1 / len(yva))


def test_import_is_light() -> None:
    code = (
        "import sys, shift.scoring.proxies; "
        "bad = [m for m in ('torch', 'hnswlib', 'ray', 'onnxruntime') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ knn


def test_knn_hand_computed() -> None:
    train = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
    ty = np.array([0, 1, 1, 2])
    val = np.array([[0.1, 0], [0.9, 0.1], [4, 4], [0.5, 0]], np.float32)
    # nearest: 0, 1, 3, and a tie between rows 0 and 1 -> smallest index 0
    idx, dist = nearest_neighbors(train, val)
    np.testing.assert_array_equal(idx, [0, 1, 3, 0])
    np.testing.assert_allclose(dist, [0.01, 0.02, 2.0, 0.25], rtol=1e-5)
    assert knn_accuracy(train, ty, val, np.array([0, 1, 2, 1])) == 0.75
    assert knn_accuracy(train, ty, val, np.array([0, 1, 2, 0])) == 1.0


@pytest.mark.parametrize("block_bytes", [8, 8 * 7, 8 * 64, 32 << 20])
def test_knn_ties_go_to_smallest_index_across_blocks(block_bytes: int) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(10, 5)).astype(np.float32)
    train = np.concatenate([base, base, base])  # each point three times, different labels
    ty = np.repeat([0, 1, 2], 10)
    query = base + 0.01 * rng.normal(size=base.shape).astype(np.float32)
    idx, _ = nearest_neighbors(train, query, block_bytes=block_bytes)
    np.testing.assert_array_equal(idx, naive_nn(base, query))
    assert knn_accuracy(train, ty, query, np.zeros(10, int), block_bytes=block_bytes) == 1.0
    # cosine: scaled copies are exact ties too, the first copy wins
    scaled = np.concatenate([base, 3 * base])
    idx, _ = nearest_neighbors(scaled, query, "cosine", block_bytes=block_bytes)
    assert (idx < 10).all()


@pytest.mark.parametrize("block_bytes", [8 * 13, 8 * 1000, 32 << 20])
def test_knn_matches_naive_oracle(block_bytes: int) -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(300, 12)).astype(np.float32)
    query = rng.normal(size=(77, 12)).astype(np.float32)
    idx, dist = nearest_neighbors(train, query, block_bytes=block_bytes)
    ref = naive_nn(train, query)
    np.testing.assert_array_equal(idx, ref)
    d_ref = ((query.astype(np.float64) - train[ref]) ** 2).sum(1)
    np.testing.assert_allclose(dist, d_ref, rtol=1e-9, atol=1e-9)


def test_knn_brute_force_agrees_with_hnswlib() -> None:
    import hnswlib

    rng = np.random.default_rng(3)
    xtr, ytr = rng.normal(size=(500, 16)).astype(np.float32), rng.integers(0, 5, 500)
    xva, yva = rng.normal(size=(200, 16)).astype(np.float32), rng.integers(0, 5, 200)
    for space, metric in (("l2", "euclidean"), ("cosine", "cosine")):
        g = hnswlib.Index(space=space, dim=16)
        g.init_index(max_elements=500, ef_construction=200, M=16, random_seed=0)
        g.add_items(xtr, np.arange(500), num_threads=1)
        g.set_ef(10)
        exact = knn_accuracy(xtr, ytr, xva, yva, metric)
        assert knn_accuracy_hnsw(g, ytr, xva, yva, space, ef=500) == exact
        assert g.ef == 10, "ef is restored"
        g.set_ef(500)
        rows, _ = g.knn_query(xva, k=1)
        if metric == "euclidean":
            np.testing.assert_array_equal(rows[:, 0], nearest_neighbors(xtr, xva)[0])
    with pytest.raises(ValueError, match="space"):
        knn_accuracy_hnsw(g, ytr, xva, yva, "l2")


def test_cosine_is_invariant_to_row_scaling() -> None:
    xtr, ytr, xva, yva = blobs(300, 10, 4, sep=1.0, seed=4)
    rng = np.random.default_rng(5)
    s_tr = rng.uniform(0.01, 100, size=(len(xtr), 1)).astype(np.float32)
    s_va = rng.uniform(0.01, 100, size=(len(xva), 1)).astype(np.float32)
    a = knn_accuracy(xtr, ytr, xva, yva, "cosine")
    b = knn_accuracy(xtr * s_tr, ytr, xva * s_va, yva, "cosine")
    assert a == b
    np.testing.assert_array_equal(
        nearest_neighbors(xtr, xva, "cosine")[0],
        nearest_neighbors(xtr * s_tr, xva * s_va, "cosine")[0],
    )
    # euclidean is not scale invariant on the same data
    assert knn_accuracy(xtr * s_tr, ytr, xva * s_va, yva) != a


def test_euclidean_and_cosine_differ() -> None:
    train = np.array([[1.0, 0.0], [10.0, 10.0]], np.float32)
    ty = np.array([0, 1])
    val = np.array([[3.0, 2.5]], np.float32)  # closer to [1, 0], but in the direction of [1, 1]
    assert knn_accuracy(train, ty, val, np.array([1])) == 0.0
    assert knn_accuracy(train, ty, val, np.array([1]), "cosine") == 1.0


def test_zero_rows_under_cosine_are_finite() -> None:
    train = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    idx, dist = nearest_neighbors(train, np.array([[0.0, 0.0], [2.0, 0.0]]), "cosine")
    assert np.isfinite(dist).all()
    np.testing.assert_array_equal(idx, [0, 1])


def test_merge_nearest_over_chunks_equals_full() -> None:
    rng = np.random.default_rng(6)
    train = rng.normal(size=(200, 8))
    query = rng.normal(size=(50, 8))
    ia, da = nearest_neighbors(train[:120], query)
    ib, db = nearest_neighbors(train[120:], query)
    idx, _ = merge_nearest(ia, da, ib + 120, db)
    np.testing.assert_array_equal(idx, nearest_neighbors(train, query)[0])


def test_knn_validates_inputs() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="metric"):
        knn_accuracy(x, [0, 1, 2], x, [0, 1, 2], "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension"):
        knn_accuracy(x, [0, 1, 2], np.zeros((3, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(x, [0, 1], x, [0, 1, 2])
    with pytest.raises(ValueError, match="finite"):
        knn_accuracy(x, [0, 1, 2], np.full((3, 2), np.nan), [0, 1, 2])


# ------------------------------------------------------------------------------ linear


def test_linear_separable_is_near_perfect() -> None:
    xtr, ytr, xva, yva = blobs(600, 16, 4, sep=4.0, seed=7)
    assert linear_probe(xtr, ytr, xva, yva, steps=STEPS) >= 0.97


def test_linear_random_labels_is_near_chance() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(900, 20)).astype(np.float32)
    y = rng.integers(0, 4, 900)
    acc = linear_probe(x[:600], y[:600], x[600:], y[600:], steps=STEPS)
    assert 0.12 <= acc <= 0.38


def test_linear_batched_equals_single() -> None:
    problems = [
        blobs(300, 8, 3, sep=1.0, seed=10),
        blobs(450, 20, 5, sep=0.8, seed=11),  # wider, more classes, more rows
        blobs(120, 5, 2, sep=0.7, seed=12),  # fewer rows than one batch
        blobs(300, 13, 4, sep=0.9, seed=13),
    ]
    batched = linear_probe_scores(problems, steps=STEPS)
    single = np.array([linear_probe_scores([p], steps=STEPS)[0] for p in problems])
    tol = 1.0 / min(len(p[3]) for p in problems)
    np.testing.assert_allclose(batched, single, atol=tol + 1e-12)
    assert batched.shape == (4, 2)
    many = linear_probe_many(problems, steps=STEPS)
    assert many == pytest.approx(list(batched.max(axis=1)))
    # non-trivial accuracies, so the comparison means something
    assert all(0.5 < s < 1.0 for s in many[:2])
    # grouping under a small memory cap gives the same scores as one batch
    grouped = linear_probe_scores(problems, steps=STEPS, max_bytes=1)
    np.testing.assert_allclose(grouped, batched, atol=tol + 1e-12)


def test_linear_is_deterministic_and_seeded() -> None:
    p = blobs(300, 10, 4, sep=0.6, seed=14)
    a = linear_probe_scores([p], steps=60, seed=3)
    np.testing.assert_array_equal(a, linear_probe_scores([p], steps=60, seed=3))


def test_linear_label_remapping() -> None:
    xtr, ytr, xva, yva = blobs(450, 12, 3, sep=3.0, seed=15)
    codes = np.array([3, 7, 9])
    base = linear_probe(xtr, ytr, xva, yva, steps=STEPS)
    mapped = linear_probe(xtr, codes[ytr], xva, codes[yva], steps=STEPS)
    assert base >= 0.95 and mapped == base
    # a validation class never seen in training counts as an error
    yva_unseen = codes[yva].copy()
    yva_unseen[:10] = 11
    acc = linear_probe(xtr, codes[ytr], xva, yva_unseen, steps=STEPS)
    assert acc <= 1.0 - 10 / len(yva) + 1e-12


def test_linear_is_invariant_to_feature_scaling() -> None:
    xtr, ytr, xva, yva = blobs(450, 10, 4, sep=0.7, seed=16)
    rng = np.random.default_rng(17)
    scale = (10.0 ** rng.uniform(-3, 3, size=10)).astype(np.float32)
    shift_ = rng.uniform(-50, 50, size=10).astype(np.float32)
    a = linear_probe_scores([(xtr, ytr, xva, yva)], steps=STEPS)
    b = linear_probe_scores([(xtr * scale + shift_, ytr, xva * scale + shift_, yva)], steps=STEPS)
    np.testing.assert_allclose(a, b, atol=1.0 / len(yva) + 1e-12)
    assert 0.4 < a.max() < 1.0


def test_linear_validates_inputs() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="same number of columns"):
        linear_probe(x, [0, 1, 0, 1], np.zeros((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        linear_probe(x, [0, 1], x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="lrs"):
        linear_probe(x, [0, 1, 0, 1], x, [0, 1, 0, 1], lrs=())
    assert linear_probe_many([]) == []


def test_linear_probe_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's default thread count is the idle cores (cores minus the load average), capped,
    and never below one: spinning OpenMP threads on busy cores cost 10-30x (see idle_cores)."""
    import os

    from shift.scoring.linear import idle_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert idle_cores(4) == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (5.7, 0.0, 0.0))
    assert idle_cores(4) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert idle_cores(4) == 1
