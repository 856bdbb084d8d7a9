"""Scores on the device (issue 19, item 5): the torch paths of the 1-NN/k-NN and linear-probe
proxies, run here on CPU tensors (the same code a GPU runs), against the numpy/today's paths; the
``$SHIFT_SCORE_DEVICE`` selector; batched across models vs one by one; unchanged cache keys."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from shift.errors import ShiftError
from shift.scoring import device as sd
from shift.scoring import knn, linear
from shift.scoring.proxies import get_proxy
from shift.scoring.scale import unit_scale

torch = pytest.importorskip("torch")

POINTS = 0.005  # 0.5 accuracy points
STEPS = 100


def blobs(n: int, d: int, c: int, *, sep: float = 1.5, seed: int = 0) -> tuple:
    """Clustered float32 features, split 2:1 into train/val."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    k = 2 * n // 3
    return x[:k], y[:k], x[k:], y[k:]


def uniform(n: int, d: int, c: int, *, seed: int = 0) -> tuple:
    """Random features and labels (accuracy near chance, so every neighbour matters)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    k = 2 * n // 3
    return x[:k], y[:k], x[k:], y[k:]


def ties(n: int, d: int, c: int, *, seed: int = 0) -> tuple:
    """Small-integer features with many duplicated rows under different labels, and validation
    rows that equal training rows: exact distance ties everywhere (the smallest index wins)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-1, 2, size=(n // 4, d)).astype(np.float32)
    x = base[rng.integers(0, len(base), n)]
    y = rng.integers(0, c, n)
    k = 2 * n // 3
    return x[:k], y[:k], x[k:], y[k:]


PROBLEMS = {
    "blobs": blobs(240, 24, 4),
    "blobs_wide": blobs(180, 300, 6, sep=0.4, seed=1),
    "uniform": uniform(210, 16, 3, seed=2),
    "ties": ties(240, 6, 3, seed=3),
    "ties_wide": ties(150, 40, 5, seed=4),
}


# ------------------------------------------------------------------------------ selector


def test_requested_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sd.ENV, raising=False)
    assert sd.requested() == "auto"
    monkeypatch.setenv(sd.ENV, " CUDA ")
    assert sd.requested() == "cuda"
    assert sd.requested("cpu") == "cpu"  # an argument wins over the environment
    monkeypatch.setenv(sd.ENV, "tpu")
    with pytest.raises(ShiftError, match="unknown score device 'tpu'") as err:
        sd.requested()
    assert "auto, cpu, cuda" in str(err.value)


@pytest.mark.parametrize(
    ("choice", "gpu", "device", "knn_dev"),
    [
        ("auto", False, "cpu", "numpy"),
        ("auto", True, "cuda", "cuda"),
        ("cpu", True, "cpu", "numpy"),
        ("cuda", True, "cuda", "cuda"),
    ],
)
def test_selector_picks_as_documented(
    monkeypatch: pytest.MonkeyPatch, choice: str, gpu: bool, device: str, knn_dev: str
) -> None:
    """auto: CUDA with a GPU, else the CPU paths (kNN in numpy, ``CPU_KNN``); cpu: never CUDA."""
    monkeypatch.setattr(sd, "gpu_available", lambda: gpu)
    monkeypatch.setenv(sd.ENV, choice)
    assert sd.CPU_KNN == "numpy"  # measured: benchmarks/results/scores_device.json
    assert sd.score_device() == device
    assert sd.probe_device() == device
    assert sd.knn_device() == knn_dev


def test_cuda_without_a_gpu_warns_and_scores_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sd, "gpu_available", lambda: False)
    monkeypatch.setenv(sd.ENV, "cuda")
    with caplog.at_level(logging.WARNING, logger=sd.__name__):
        assert sd.knn_device() == "numpy"
    assert "no GPU" in caplog.text


def test_no_gpu_node_or_hidden_devices_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not sd._gpu_may_exist()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not sd._gpu_may_exist()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(sd, "_GPU_NODES", ("/nonexistent/nvidiactl",))
    assert not sd._gpu_may_exist()
    assert sd.gpu_available() == bool(torch.cuda.is_available())  # torch imported: it decides


@pytest.mark.skipif(sd._gpu_may_exist(), reason="a GPU may exist here: auto imports torch")
@pytest.mark.parametrize("choice", ["auto", "cpu"])
def test_knn_scoring_on_the_cpu_never_imports_torch(choice: str) -> None:
    code = (
        "import sys, numpy as np\n"
        "from shift.scoring.proxies import get_proxy\n"
        "x = np.random.default_rng(0).normal(size=(30, 4)); y = np.arange(30) % 3\n"
        "p = (x[:20], y[:20], x[20:], y[20:])\n"
        "print(get_proxy('knn').score_many([p, p]), get_proxy('knn_cosine')(*p))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, sd.ENV: choice}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_proxies_follow_the_selector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered kNN proxies run the torch path when the selector says so (here forced to
    torch-on-CPU), batched through their ``many``, with the numpy path's scores."""
    calls: list[int] = []
    real = knn._knn_many_torch

    def spy(problems, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(problems))
        return real(problems, *args, **kwargs)

    problems = list(PROBLEMS.values())
    for name in ("knn", "knn_cosine"):
        spec = get_proxy(name)
        want = [spec.fn(*p) for p in problems]  # numpy: no GPU here
        monkeypatch.setattr(knn, "knn_device", lambda: "cpu")
        monkeypatch.setattr(knn, "_knn_many_torch", spy)
        assert spec.score_many(problems) == want
        assert spec.bind({"k": 3}).score_many(problems) == pytest.approx(
            [spec.bind({"k": 3}).fn(*p) for p in problems]
        )
        monkeypatch.undo()
    assert calls == [5, 5, 1, 1, 1, 1, 1] * 2  # per proxy: two batches, then one by one


def test_cache_keys_do_not_depend_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The score cache key (``params``) is what it was, whatever ``$SHIFT_SCORE_DEVICE`` says."""
    from shift.engine.engine import proxy_params_key

    keys = {}
    for choice in ("cpu", "cuda", "auto"):
        monkeypatch.setenv(sd.ENV, choice)
        keys[choice] = [proxy_params_key(get_proxy(n).settings) for n in ("knn", "linear")]
    assert keys["cpu"] == keys["cuda"] == keys["auto"]
    assert keys["cpu"][0] == '{"k": 1, "metric": "euclidean"}'
    assert "device" not in keys["cpu"][1]


# ------------------------------------------------------------------------------ kNN


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_torch_1nn_equals_numpy(name: str, metric: str) -> None:
    """Same neighbours (ties → smallest train index), so the same accuracy, also with tiles
    small enough that ties straddle tile borders."""
    xtr, ytr, xva, yva = PROBLEMS[name]
    want_idx, want_d = knn.nearest_neighbors(xtr, xva, metric, device="numpy")
    for block in (None, 8 * 7 * 13):
        idx, d = knn.nearest_neighbors(xtr, xva, metric, device="cpu", block_bytes=block)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(d, want_d, rtol=1e-9, atol=1e-9)
    want = knn.knn_accuracy(xtr, ytr, xva, yva, metric, device="numpy")
    got = knn.knn_accuracy(xtr, ytr, xva, yva, metric, device="cpu")
    assert got == want


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("name", ["blobs", "blobs_wide", "uniform"])
@pytest.mark.parametrize("k", [3, 5])
def test_torch_knn_vote_equals_numpy(name: str, metric: str, k: int) -> None:
    xtr, ytr, xva, yva = PROBLEMS[name]
    np.testing.assert_array_equal(
        knn.k_nearest(xtr, xva, k, metric, device="cpu", block_bytes=4096),
        knn.k_nearest(xtr, xva, k, metric, device="numpy"),
    )
    want = knn.knn_accuracy(xtr, ytr, xva, yva, metric, k=k, device="numpy")
    assert knn.knn_accuracy(xtr, ytr, xva, yva, metric, k=k, device="cpu") == want


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("name", ["ties", "ties_wide"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_torch_knn_on_ties_equals_numpy(name: str, metric: str, k: int) -> None:
    """Exact ties, also at the k-th place: smaller train index first on both paths."""
    xtr, ytr, xva, yva = PROBLEMS[name]
    np.testing.assert_array_equal(
        knn.k_nearest(xtr, xva, k, metric, device="cpu"),
        knn.k_nearest(xtr, xva, k, metric, device="numpy"),
    )
    want = knn.knn_accuracy(xtr, ytr, xva, yva, metric, k=k, device="numpy")
    assert knn.knn_accuracy(xtr, ytr, xva, yva, metric, k=k, device="cpu") == want


def test_torch_knn_k_nearest_breaks_ties_by_index() -> None:
    xtr = np.array([[1.0], [0.0], [1.0], [0.0], [2.0]])
    np.testing.assert_array_equal(
        knn.k_nearest(xtr, np.array([[0.0]]), 4, device="cpu"), [[1, 3, 0, 2]]
    )
    # vote tie (one each): the label of the nearest member wins
    ytr = np.array([7, 5, 7, 9, 1])
    assert knn.knn_accuracy(xtr, ytr, [[0.1]], [5], k=2, device="cpu") == 1.0


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e-310])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_torch_knn_at_any_magnitude(scale: float, metric: str) -> None:
    xtr, ytr, xva, yva = PROBLEMS["blobs"]
    xtr, xva = xtr.astype(np.float64), xva.astype(np.float64)
    want = knn.knn_accuracy(xtr, ytr, xva, yva, metric, device="numpy")
    assert knn.knn_accuracy(xtr * scale, ytr, xva * scale, yva, metric, device="cpu") == want
    assert knn.knn_accuracy(xtr * scale, ytr, xva * scale, yva, metric, device="numpy") == want


def test_unit_scale_torch_equals_numpy() -> None:
    rng = np.random.default_rng(5)
    for scale in (1.0, 1e-30, 1e40, 1e200, 1e-200, 1e-310, 1e307):
        a, b = rng.normal(size=(5, 3)) * scale, rng.normal(size=(2, 3)) * scale
        (wa, wb), _ = unit_scale(a, b)
        (ta, tb), finite = sd.unit_scale_torch(torch.from_numpy(a), torch.from_numpy(b))
        np.testing.assert_array_equal(ta.numpy(), wa)
        np.testing.assert_array_equal(tb.numpy(), wb)
        assert finite.tolist() == [True, True]
    ints = torch.tensor([[-128, 3]], dtype=torch.int8)  # |min| beyond the dtype: read widened
    (wide,), _ = sd.unit_scale_torch(ints)
    assert wide.dtype == torch.float64 and wide.tolist() == [[-128.0, 3.0]]
    nan = torch.tensor([[1.0, float("nan")]])
    assert sd.unit_scale_torch(torch.ones(2, 2), nan)[1].tolist() == [True, False]


def test_torch_knn_refuses_what_numpy_refuses() -> None:
    xtr, ytr, xva, yva = PROBLEMS["blobs"]
    bad = xva.copy()
    bad[3, 1] = np.inf
    for dev in ("numpy", "cpu"):
        with pytest.raises(ValueError, match="query_x must be finite"):
            knn.knn_accuracy(xtr, ytr, bad, yva, device=dev)
        with pytest.raises(ValueError, match="train_x must be finite"):
            knn.knn_accuracy_many([(xtr, ytr, xva, yva), (bad, yva, xva, yva)], device=dev)
        with pytest.raises(ValueError, match="dimension mismatch"):
            knn.knn_accuracy(xtr, ytr, xva[:, :3], yva, device=dev)
        with pytest.raises(ValueError, match="val_x has no rows"):
            knn.knn_accuracy(xtr, ytr, xva[:0], yva[:0], device=dev)
        with pytest.raises(ValueError, match="unknown metric"):
            knn.knn_accuracy(xtr, ytr, xva, yva, "manhattan", device=dev)
        with pytest.raises(ValueError, match="labels must be 1-d"):
            knn.knn_accuracy(xtr, ytr[:-1], xva, yva, device=dev)


def test_torch_knn_string_labels_and_labels_unseen_in_training() -> None:
    xtr, ytr, xva, yva = PROBLEMS["blobs"]
    names = np.array(["cat", "dog", "eel", "fox", "gnu"])
    sy_tr, sy_va = names[ytr], names[yva]
    sy_va[:10] = "yak"  # never a training label: always wrong
    for k in (1, 3):
        want = knn.knn_accuracy(xtr, sy_tr, xva, sy_va, k=k, device="numpy")
        assert knn.knn_accuracy(xtr, sy_tr, xva, sy_va, k=k, device="cpu") == want


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_batched_across_models_equals_one_by_one(metric: str) -> None:
    """Problems of different sizes and dimensions (one per model) in one call."""
    problems = list(PROBLEMS.values())
    one = [knn.knn_accuracy(*p, metric, device="cpu") for p in problems]
    assert knn.knn_accuracy_many(problems, metric, device="cpu") == one
    assert knn.knn_accuracy_many(problems, metric, device="numpy") == one
    assert knn.knn_accuracy_many([], metric, device="cpu") == []


# ------------------------------------------------------------------------------ linear probe

LINEAR_PROBLEMS = [
    blobs(240, 24, 4, sep=0.5),
    blobs(180, 60, 6, sep=0.3, seed=1),
    uniform(150, 8, 3, seed=2),
    ties(210, 10, 3, seed=3),
]


def test_linear_device_path_equals_today_within_half_a_point() -> None:
    """Standardised by torch (as on a GPU) instead of numpy, batched: within 0.5 points of
    today's CPU path on every problem."""
    today = linear.linear_probe_scores(LINEAR_PROBLEMS, steps=STEPS, device="cpu")
    dev = linear.linear_probe_scores(
        LINEAR_PROBLEMS, steps=STEPS, device="cpu", standardise_on_device=True
    )
    assert np.abs(dev - today).max() <= POINTS
    assert today.min() < 0.9  # not all trivially separable: the comparison means something


def test_linear_device_standardisation_equals_numpy() -> None:
    for i, p in enumerate(LINEAR_PROBLEMS):
        want = linear._prepare(i, p)
        raw = linear._prepare(i, p, standardise=False)
        a, b, finite = linear._standardise_torch(raw.xtr, raw.xva, torch.device("cpu"))
        np.testing.assert_allclose(a.numpy(), want.xtr, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.numpy(), want.xva, rtol=1e-6, atol=1e-6)
        assert bool(finite)


@pytest.mark.parametrize("scale", [1e-9, 1e200, 1e-200])
def test_linear_device_path_at_any_magnitude(scale: float) -> None:
    xtr, ytr, xva, yva = LINEAR_PROBLEMS[0]
    xtr, xva = xtr.astype(np.float64), xva.astype(np.float64)
    kw = {"steps": 50, "device": "cpu", "standardise_on_device": True}
    want = linear.linear_probe(xtr, ytr, xva, yva, **kw)
    assert linear.linear_probe(xtr * scale, ytr, xva * scale, yva, **kw) == pytest.approx(
        want, abs=POINTS
    )


def test_linear_device_path_constant_features_and_errors() -> None:
    xtr, ytr, xva, yva = LINEAR_PROBLEMS[0]
    kw = {"steps": 50, "device": "cpu", "standardise_on_device": True}
    plain = linear.linear_probe(xtr, ytr, xva, yva, **kw)
    const_tr = np.hstack([xtr, np.full((len(xtr), 1), 3.0, np.float32)])
    const_va = np.hstack([xva, np.full((len(xva), 1), 3.0, np.float32)])
    assert linear.linear_probe(const_tr, ytr, const_va, yva, **kw) == plain
    bad = xva.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="problem 1: features contain NaN"):
        linear.linear_probe_many([LINEAR_PROBLEMS[1], (xtr, ytr, bad, yva)], **kw)


def test_linear_batched_across_models_equals_one_by_one() -> None:
    for kw in ({"device": "cpu"}, {"device": "cpu", "standardise_on_device": True}):
        batched = linear.linear_probe_many(LINEAR_PROBLEMS, steps=STEPS, **kw)
        one = [linear.linear_probe(*p, steps=STEPS, **kw) for p in LINEAR_PROBLEMS]
        np.testing.assert_allclose(batched, one, atol=POINTS)


def test_linear_probe_follows_the_selector_and_keeps_full_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Device None asks the selector; the probe runs at "highest" float32 matmul precision (no
    TF32 or bf16 on any device) and restores the caller's setting."""
    asked: list[str] = []
    monkeypatch.setattr(linear, "probe_device", lambda: asked.append("x") or "cpu")
    prev = torch.get_float32_matmul_precision()
    seen: list[str] = []
    real = linear._run_group

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(torch.get_float32_matmul_precision())
        return real(*args, **kwargs)

    monkeypatch.setattr(linear, "_run_group", spy)
    torch.set_float32_matmul_precision("medium")
    try:
        want = linear.linear_probe(*LINEAR_PROBLEMS[0], steps=20, device="cpu")
        assert linear.linear_probe(*LINEAR_PROBLEMS[0], steps=20) == want
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(prev)
    assert asked == ["x"] and seen == ["highest", "highest"]


def test_engine_scores_a_big_pool_in_groups_of_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,000 models x 10,000 samples x 2,048-d would be 80 GB at once: the engine hands
    score_many groups that fit SCORE_GROUP_BYTES, and a pool-relative proxy the whole pool."""
    from shift.engine import engine as engine_module
    from shift.records import InputSpec, ModelRecord

    def rec(i: int) -> ModelRecord:
        return ModelRecord(
            name=f"m{i}", path="m.onnx", sha256="0" * 64, dim=2048, params=1, output="e",
            input_name="x", input=InputSpec(height=8, width=8),
        )  # fmt: skip

    models = [rec(i) for i in range(1000)]
    groups = engine_module.score_groups(models, 10_000)
    per = 4 * 10_000 * 2048
    assert all(len(g) * per <= engine_module.SCORE_GROUP_BYTES for g in groups)
    assert [m.name for g in groups for m in g] == [m.name for m in models]
    assert len(engine_module.score_groups(models, 10_000, whole=True)) == 1
    monkeypatch.setattr(engine_module, "SCORE_GROUP_BYTES", 1)
    assert [len(g) for g in engine_module.score_groups(models[:3], 10)] == [1, 1, 1]
