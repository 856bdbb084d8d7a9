"""Estimator numerics (issue 20, item 8): probabilities checked at their dtype's precision,
features at any finite magnitude, a scale-free constant-feature test in the linear probe, and
no non-finite score ever returned by a proxy or stored in the score cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

from shift.errors import NonFiniteScoreError, ShiftError
from shift.records import ModelRecord, Samples
from shift.scoring.estimators import (
    gbc,
    hscore,
    leep,
    lfc,
    lgc,
    logme,
    ncti_components,
    parc,
    sfda,
    shrinkage_hscore,
    transrate,
)
from shift.scoring.estimators.leep import probability_tolerance
from shift.scoring.knn import knn_accuracy
from shift.scoring.linear import linear_probe
from shift.scoring.plugins import ProxySpec

_LOG_2PI = math.log(2 * math.pi)


def blobs(n: int, d: int, c: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    return rng.normal(size=(c, d))[y] * 3.0 + rng.normal(size=(n, d)), y


def float16_probabilities(n: int = 200, cs: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """float16 softmax outputs of an informative head: row sums off by up to ~5e-4."""
    rng = np.random.default_rng(1)
    y = np.arange(n) % cs
    z = rng.normal(size=(n, cs))
    z[np.arange(n), y] += 2.5
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return p.astype(np.float16), y


# ------------------------------------------------------------------------------ probabilities


def test_float16_probabilities_are_not_softmaxed_again() -> None:
    p16, y = float16_probabilities()
    off = np.abs(p16.astype(np.float64).sum(axis=1) - 1.0).max()
    assert off > 1e-4  # beyond the old fixed PROB_ATOL, within float16's rounding
    p = p16.astype(np.float64)
    expected = leep(p / p.sum(axis=1, keepdims=True), y, probabilities=True)
    assert expected > -1.5  # an informative head; softmaxed twice it nears log(1/10) = -2.303
    assert leep(p16, y, probabilities=False) < -2.2
    assert leep(p16, y) == pytest.approx(expected, rel=1e-12)


def test_probabilities_true_renormalises_rows_within_the_dtype_tolerance() -> None:
    p16, y = float16_probabilities()
    p = p16.astype(np.float64)
    assert leep(p16, y, probabilities=True) == pytest.approx(
        leep(p / p.sum(axis=1, keepdims=True), y, probabilities=True), rel=1e-12
    )
    with pytest.raises(ValueError, match="probabilities"):  # far from 1: still refused
        leep(p16 * np.float16(1.1), y, probabilities=True)


def test_probability_tolerance_scales_with_dtype_and_classes() -> None:
    assert probability_tolerance(np.float64, 10) == 1e-4  # floor: float32 softmax upcast
    assert probability_tolerance(np.float32, 1000) == pytest.approx(1000 * 2.0**-23)
    assert probability_tolerance(np.float16, 10) == pytest.approx(10 * 2.0**-10)
    assert probability_tolerance(np.int64, 3) == 1e-4
    # a float32 row off by 5e-4 over two classes is not a probability row: it stays logits
    z = np.array([[0.7005, 0.3], [0.2, 0.8]], np.float32)
    y = np.array([0, 1])
    assert leep(z, y) == pytest.approx(leep(z, y, probabilities=False), rel=1e-12)


# ------------------------------------------------------------------------------ magnitudes

SCALE_FREE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "hscore": hscore,
    "shrink_hscore": shrinkage_hscore,
    "parc": parc,
    "lfc": lfc,
    "lgc": lgc,
    "knn": lambda x, y: knn_accuracy(x[::2], y[::2], x[1::2], y[1::2]),
    "knn_cosine": lambda x, y: knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], "cosine"),
    "knn5": lambda x, y: knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5),
    "linear": lambda x, y: linear_probe(x[::2], y[::2], x[1::2], y[1::2], steps=50),
}


@pytest.mark.parametrize("scale", [1e154, 1e200, 1e-200])
@pytest.mark.parametrize("name", sorted(SCALE_FREE))
@pytest.mark.parametrize("shape", [(90, 8, 3), (40, 100, 4)])
def test_scale_free_estimators_at_any_magnitude(
    name: str, scale: float, shape: tuple[int, int, int]
) -> None:
    """Scale-invariant estimators give their unit-scale value at extreme magnitudes (they
    raised LinAlgError, returned 0.0 or fell to chance)."""
    x, y = blobs(*shape)
    fn = SCALE_FREE[name]
    assert fn(x * scale, y) == pytest.approx(fn(x, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("scale", [1e154, 1e200])
def test_gbc_sfda_ncti_at_huge_magnitudes(scale: float) -> None:
    """Past ~1e2 their floors and shrinkage no longer act, so the value is that at 1e30."""
    x, y = blobs(90, 8, 3)
    for fn in (gbc, sfda, lambda a, b: gbc(a, b, covariance="diagonal")):
        assert fn(x * scale, y) == pytest.approx(fn(x * 1e30, y), rel=1e-9)
    big, ref = ncti_components(x * scale, y), ncti_components(x * 1e30, y)
    assert (big.seli, big.ncc, big.vc) == pytest.approx((ref.seli, ref.ncc, ref.vc), rel=1e-9)


def test_sfda_and_ncti_at_tiny_magnitudes() -> None:
    """At 1e-200 the shrinkage is 1, as at 1e-30 (they returned 1/C and 0 before)."""
    x, y = blobs(90, 8, 3)
    assert sfda(x * 1e-200, y) == pytest.approx(sfda(x * 1e-30, y), rel=1e-9)
    tiny, ref = ncti_components(x * 1e-200, y), ncti_components(x * 1e-30, y)
    assert tiny.shrinkage == ref.shrinkage == 1.0
    assert (tiny.seli, tiny.ncc, tiny.vc) == pytest.approx((ref.seli, ref.ncc, ref.vc), rel=1e-9)


def test_transrate_at_huge_magnitudes() -> None:
    """TransRate's ε is absolute: with N > D its rank terms cancel, so the value settles (it
    was NaN from 1e154); with N < D it grows by (N − 1 − mean N_c)·log s."""
    x, y = blobs(90, 8, 3)
    assert transrate(x * 1e154, y) == pytest.approx(transrate(x * 1e30, y), rel=1e-9)
    assert transrate(x * 1e300, y) == pytest.approx(transrate(x * 1e30, y), rel=1e-9)
    x, y = blobs(40, 100, 4)
    slope = (40 - 1) - 40 / 4
    grow = transrate(x * 1e200, y) - transrate(x * 1e154, y)
    assert grow == pytest.approx(slope * math.log(1e46), rel=1e-9)


def test_logme_at_huge_magnitudes_n_above_d() -> None:
    """LogME's 1e-5 in the α update makes it scale-dependent: for large s its value falls by
    (D/N)·log s (the prior's log-determinant), as the direct formula gives at 1e30."""
    x, y = blobs(90, 8, 3)
    ref = logme(x * 1e30, y)
    for scale in (1e154, 1e200, 1e300):
        expected = ref - 8 / 90 * math.log(scale / 1e30)
        assert logme(x * scale, y) == pytest.approx(expected, rel=1e-8)


def test_logme_n_below_d_large_magnitudes() -> None:
    """N < D: the fixed point's N − γ is taken as (N − k) + Σ λ/(σ + λ), not N − Σ σ/(σ + λ),
    which rounded to 0 (β = 0: NaN) from features of about 1e9; α and β are carried as logs,
    which underflowed from about 1e154. For large s the evidence/N tends to
    ½·log(1e5·N) − mean(log σ_i)/2 − log s − ½·log 2π (σ_i: eigenvalues of x xᵀ); the MacKay
    iteration 2-cycles there (as it did at 1e3), stopping within 1e-3 of that maximum."""
    x, y = blobs(40, 100, 4)
    sigma = np.linalg.eigvalsh(x @ x.T)
    for scale in (1e9, 1e30, 1e154, 1e200, 1e300):
        asymptote = 0.5 * math.log(1e5 * 40) - 0.5 * np.log(sigma).mean() - math.log(scale)
        assert logme(x * scale, y) == pytest.approx(asymptote - 0.5 * _LOG_2PI, abs=1e-3)


# ------------------------------------------------------------------------------ linear probe


def test_linear_probe_constant_features_are_relative_to_the_feature_scale() -> None:
    """The same embeddings scaled by 1e-9 score as unscaled ones (0.333: every feature was
    taken as constant by the absolute std < 1e-8 test); a column constant up to rounding is
    still constant."""
    x, y = blobs(90, 8, 3)
    tr, va = slice(0, 60), slice(60, 90)
    full = linear_probe(x[tr], y[tr], x[va], y[va], steps=50)
    assert full == 1.0
    assert linear_probe(x[tr] * 1e-9, y[tr], x[va] * 1e-9, y[va], steps=50) == full
    noisy = np.c_[x, np.full(90, 0.1) + np.random.default_rng(2).normal(size=90) * 1e-12]
    assert linear_probe(noisy[tr], y[tr], noisy[va], y[va], steps=50) == full


# ------------------------------------------------------------------------------ no NaN scores


def test_proxy_refuses_a_non_finite_score_by_name() -> None:
    x, y = blobs(20, 3, 2)
    spec = ProxySpec("broken", "returns NaN", False, fn=lambda *a: float("nan"))
    with pytest.raises(NonFiniteScoreError, match="broken"):
        spec(x, y, x, y)
    with pytest.raises(NonFiniteScoreError, match="broken"):
        spec.score_many([(x, y, x, y)])
    many = ProxySpec("inf", "", False, many=lambda problems: [1.0, float("inf")])
    with pytest.raises(NonFiniteScoreError, match="inf"):
        many.score_many([(x, y, x, y)] * 2)
    assert issubclass(NonFiniteScoreError, ShiftError)


class _NanFromIndex:
    """A ``from_index`` hook that always applies and scores NaN."""

    path = "nan-hook"

    def applies(self, n_train: int) -> bool:
        return True

    def __call__(self, index: object, train_ids: object, val_ids: object) -> float:
        return float("nan")


@pytest.fixture
def toy_home(tmp_path: Path) -> Iterator[tuple[Any, ModelRecord]]:
    """A home with a 40-image task ``toy`` and one tiny ONNX model ``m``."""
    from shift.catalog.onnx_import import register_onnx
    from shift.store.registry import Registry
    from shift.store.tasks import TaskStore

    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    x = (rng.random((40, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    reg = Registry.open(tmp_path / "home")
    TaskStore(reg).add("toy", Samples(x, y, None, list("abcd"), []), kind="npz", source="gen")
    model = register_onnx(reg, build_tiny_cnn(tmp_path / "m.onnx", seed=3).path, "m")
    yield reg, model
    reg.close()


def test_engine_never_caches_a_non_finite_score(
    toy_home: tuple[Any, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shift.engine.engine import Engine

    reg, model = toy_home
    spec = ProxySpec("nanproxy", "", False, fn=lambda *a: 0.5, from_index=_NanFromIndex())
    monkeypatch.setattr("shift.scoring.proxies.get_proxy", lambda name: spec)
    with pytest.raises(NonFiniteScoreError, match="nanproxy.*m"):
        Engine(reg, executor="inprocess").scores("toy", [model], "nanproxy")
    assert reg.db.execute("SELECT count(*) FROM scores").fetchone()[0] == 0
