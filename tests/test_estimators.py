"""Transferability estimators: hand-computed values, naive/reference re-implementations,
invariances, monotonicity and numerical stability."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from shift.scoring.estimators import (
    gbc,
    hscore,
    leep,
    lfc,
    lgc,
    logme,
    nce,
    ncti,
    ncti_components,
    ncti_scores,
    parc,
    sfda,
    shrinkage_hscore,
    transrate,
)
from shift.scoring.estimators.gbc import bhattacharyya_distances
from shift.scoring.estimators.hscore import ledoit_wolf_shrinkage
from shift.scoring.estimators.linearized import logit_gradients, project
from shift.scoring.estimators.logme import log_evidence
from shift.scoring.estimators.ncti import NCTIComponents, lda_fit
from shift.scoring.estimators.sfda import lda_posterior, power_lambda_max
from shift.scoring.proxies import PROXIES, get_proxy


def blobs(
    n: int, d: int, c: int, *, sep: float = 3.0, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    centers = rng.normal(size=(c, d)) * sep
    return centers[y] + noise * rng.normal(size=(n, d)), y


def source_logits(y: np.ndarray, cs: int = 12, strength: float = 3.0, seed: int = 0):
    """Source-head logits where target class c mostly lights up source class 2c."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(y), cs))
    z[np.arange(len(y)), (2 * y) % cs] += strength
    return z


FEATURE_ESTIMATORS: dict[str, Callable[..., float]] = {
    "logme": logme,
    "hscore": hscore,
    "shrink_hscore": shrinkage_hscore,
    "transrate": transrate,
    "gbc": gbc,
    "gbc_spherical": lambda x, y: gbc(x, y, covariance="spherical"),
    "parc": parc,
    "sfda": sfda,
    "lfc": lfc,
    "lgc": lgc,  # on any per-sample rows
}
LOGIT_ESTIMATORS: dict[str, Callable[..., float]] = {
    "leep": leep,
    "nce": nce,
    "lgc_logits": lambda z, y: lgc(logit_gradients(z), y),
}


# ------------------------------------------------------------------------------ hand values


def test_hscore_two_class_1d_by_hand() -> None:
    # x = 0, 2 | 4, 6: cov_f = 20/3, class means 1, 5 -> cov_g = 16/3; H = 0.8
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    assert hscore(x, y) == pytest.approx(0.8, rel=1e-12)
    # 1-d Ledoit-Wolf: delta = 0 -> shrinkage 0; H_a = cov_g(unbiased) / S(biased) = (16/3)/5
    assert ledoit_wolf_shrinkage(x - x.mean()) == 0.0
    assert shrinkage_hscore(x, y) == pytest.approx(16 / 15, rel=1e-12)


def test_leep_by_hand() -> None:
    theta = np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]])
    y = np.array([0, 0, 1])
    # joint: y=0 -> (1.3, 0.7)/3, y=1 -> (0.1, 0.9)/3; P(z) = (1.4, 1.6)/3
    p0 = (1.3 / 1.4, 0.7 / 1.6)  # P(y=0 | z)
    p1 = (0.1 / 1.4, 0.9 / 1.6)  # P(y=1 | z)
    eep = [0.8 * p0[0] + 0.2 * p0[1], 0.5 * p0[0] + 0.5 * p0[1], 0.1 * p1[0] + 0.9 * p1[1]]
    expected = sum(math.log(e) for e in eep) / 3  # -0.41128...
    assert leep(theta, y, probabilities=True) == pytest.approx(expected, rel=1e-12)
    assert leep(np.log(theta) + 7.0, y) == pytest.approx(expected, rel=1e-12)  # logits
    assert expected == pytest.approx(-0.411274, abs=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        leep(theta * 2, y, probabilities=True)


def test_leep_detects_probabilities() -> None:
    """Softmax outputs passed without ``probabilities=True`` are not softmaxed a second time
    (issue #15): the same hand value as above; ``probabilities=False`` forces the softmax."""
    theta = np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]])
    y = np.array([0, 0, 1])
    assert leep(theta, y) == pytest.approx(-0.411274, abs=1e-6)
    assert leep(theta.astype(np.float32), y) == pytest.approx(-0.411274, abs=1e-6)
    # forced softmax of the probabilities: theta' = softmax(theta), by hand
    e = np.exp(theta)
    t2 = e / e.sum(axis=1, keepdims=True)
    j0, j1 = t2[0] + t2[1], t2[2]  # joint * N per target class
    m = j0 + j1
    eep = [t2[0] @ (j0 / m), t2[1] @ (j0 / m), t2[2] @ (j1 / m)]
    forced = sum(math.log(v) for v in eep) / 3
    assert leep(theta, y, probabilities=False) == pytest.approx(forced, rel=1e-12)
    assert forced < -0.55  # the double softmax flattens theta: a much lower score
    # logits that are non-negative but do not sum to 1 stay logits
    z = np.array([[2.0, 0.5], [1.0, 1.0], [0.0, 3.0]])
    assert leep(z, y) == pytest.approx(leep(z - 5.0, y), rel=1e-12)


def test_nce_by_hand() -> None:
    # (y, z) pairs: (0,a) (0,a) (1,a) (1,b) -> 1/2 log(2/3) + 1/4 log(1/3) + 1/4 log 1
    z = np.array([0, 0, 0, 1])
    logits = np.eye(3)[z] * 5.0
    y = np.array([10, 10, 20, 20])
    expected = 0.5 * math.log(2 / 3) + 0.25 * math.log(1 / 3)
    assert nce(logits, y) == pytest.approx(expected, rel=1e-12)
    assert nce(logits, y) == pytest.approx(-0.477386, abs=1e-6)
    # a perfect source->target mapping has NCE 0
    assert nce(np.eye(3)[[0, 1, 2, 2]], [5, 6, 7, 7]) == 0.0


def test_nce_accepts_integer_source_labels() -> None:
    # the same (y, z) pairs as above, with z given as 1-d source labels (any integer ids)
    y = np.array([10, 10, 20, 20])
    expected = 0.5 * math.log(2 / 3) + 0.25 * math.log(1 / 3)
    assert nce(np.array([0, 0, 0, 1]), y) == pytest.approx(expected, rel=1e-12)
    assert nce(np.array([7, 7, 7, 913]), y) == pytest.approx(expected, rel=1e-12)
    assert nce(np.array([3.0, 3.0, 3.0, 1.0]), y) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="integers"):
        nce(np.array([0.2, 0.7, 0.1, 0.9]), y)  # 1-d scores are not labels
    with pytest.raises(ValueError, match="labels"):
        nce(np.array([0, 1, 1]), y)


def test_parc_three_points_by_hand() -> None:
    # columns already have mean 0 and population std 1, so the z-scoring is the identity.
    # Row correlations: corr01 = -0.866, corr02 = +0.707, corr12 = -0.966, so the distances
    # order D02 < D01 < D12, i.e. ranks (2, 1, 3) for the pairs (01, 02, 12).
    r2, s15 = math.sqrt(2), math.sqrt(1.5)
    x = np.array(
        [
            [r2, s15, 1 / r2],
            [-1 / r2, -s15, 1 / r2],
            [-1 / r2, 0.0, -r2],
        ]
    )
    # labels (0,1,0): different-class indicator (1,0,1) -> Spearman sqrt(3)/2
    assert parc(x, [0, 1, 0], pca_dim=None) == pytest.approx(50 * math.sqrt(3), rel=1e-9)
    # (0,0,1): indicator (0,1,1) -> 0;  (1,0,0): indicator (1,1,0) -> -sqrt(3)/2
    assert parc(x, [0, 0, 1], pca_dim=None) == pytest.approx(0.0, abs=1e-9)
    assert parc(x, [1, 0, 0], pca_dim=None) == pytest.approx(-50 * math.sqrt(3), rel=1e-9)


def test_transrate_by_hand() -> None:
    # x = 0, 2 | 3, 7 with eps = 1: Z = -3, -1 | 0, 4 (centred once, classes NOT re-centred)
    # R(Z) = 1/2 log(1 + 26/4), R(Z_0) = 1/2 log(1 + 10/2), R(Z_1) = 1/2 log(1 + 16/2)
    x = np.array([[0.0], [2.0], [3.0], [7.0]])
    expected = 0.5 * math.log(7.5) - 0.5 * (0.5 * math.log(6) + 0.5 * math.log(9))
    assert transrate(x, [0, 0, 1, 1], eps=1.0) == pytest.approx(expected, rel=1e-12)


def test_gbc_1d_by_hand() -> None:
    # class 0: 0, 2 (var 1); class 1: 3, 7 (var 4); centred means -2, 2
    x = np.array([[0.0], [2.0], [3.0], [7.0]])
    y = np.array([0, 0, 1, 1])
    db = 16 / 2.5 / 8 + 0.5 * (math.log(2.5) - 0.5 * math.log(1) - 0.5 * math.log(4))
    assert gbc(x, y) == pytest.approx(-2 * math.exp(-db), rel=1e-12)
    assert gbc(x, y, covariance="spherical") == pytest.approx(-2 * math.exp(-db), rel=1e-12)
    # equal variances: D_B = (4^2)/8 = 2
    assert gbc(np.array([[0.0], [2.0], [4.0], [6.0]]), y) == pytest.approx(-2 * math.exp(-2))


def test_gbc_spherical_default_and_diagonal_by_hand() -> None:
    """Two centred orthogonal columns (A·A = 28 > B·B = 26): the PCA is the identity, so the
    per-class statistics can be written down. Class 0 / 1 means (1/3, −5/3) / (−1/3, 5/3),
    population variances (26/9, 14/9) / (56/9, 14/9)."""
    x = np.array([[1, -3], [-2, 0], [2, -2], [-1, 2], [3, 3], [-3, 0]], dtype=float)
    y = np.array([0, 0, 0, 1, 1, 1])
    # diagonal: Σ̄ = (41/9, 14/9)
    d_diag = (4 / 41 + 100 / 14) / 8 + 0.5 * (
        math.log(41 / 9) - 0.5 * math.log(26 / 9) - 0.5 * math.log(56 / 9)
    )
    # spherical (reference): σ = 20/9 and 35/9, σ̄ = 55/18; log term on the scalars
    d_sph = (104 / 9) / (55 / 18) / 8 + 0.5 * (
        math.log(55 / 18) - 0.5 * math.log(20 / 9) - 0.5 * math.log(35 / 9)
    )
    assert gbc(x, y) == pytest.approx(-2 * math.exp(-d_sph), rel=1e-12)  # the default
    assert gbc(x, y, covariance="spherical") == pytest.approx(-2 * math.exp(-d_sph), rel=1e-12)
    assert gbc(x, y, covariance="diagonal") == pytest.approx(-2 * math.exp(-d_diag), rel=1e-12)
    spec = get_proxy("gbc")
    assert spec.settings["covariance"] == "spherical"
    diag = spec.bind({"covariance": "DIAGONAL"})  # RANK BY gbc(covariance=diagonal)
    assert diag.settings["covariance"] == "diagonal" and diag.settings != spec.settings
    assert diag(x, y, x, y) == pytest.approx(-2 * math.exp(-d_diag), rel=1e-12)
    assert spec.bind({"covariance": "spherical"}) is spec  # the default is the default


def test_gbc_spherical_uses_scalar_log_term() -> None:
    # reference (google-research) spherical form: Mahalanobis summed over d dims with the
    # scalar variance, log-determinant term on the scalars (not multiplied by d)
    means = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    var = np.array([[1.0], [4.0]])
    avg = 2.5
    expected = 5 / avg / 8 + 0.5 * (math.log(avg) - 0.5 * math.log(1) - 0.5 * math.log(4))
    d = bhattacharyya_distances(means, var)
    assert d[0, 1] == pytest.approx(expected) and d[1, 0] == pytest.approx(expected)
    diag = bhattacharyya_distances(means, np.repeat(var, 3, axis=1))
    assert diag[0, 1] == pytest.approx(5 / avg / 8 + 0.5 * 3 * (math.log(avg) - math.log(2)))


def test_lfc_by_hand() -> None:
    # Theta = x x^T, K = s s^T with s = (1, 1, -1): sum(Theta K) = 16, sum Theta^2 = 36,
    # sum K^2 = 9, means 4/9 and 1/9 -> r = (140/9) / sqrt(308/9 * 80/9)
    x = np.array([[1.0], [2.0], [-1.0]])
    expected = 140 / math.sqrt(308 * 80)
    assert lfc(x, [0, 0, 1], max_per_class=None) == pytest.approx(expected, rel=1e-12)


def test_ncti_pool_normalisation_by_hand() -> None:
    comps = [
        NCTIComponents(seli=10.0, ncc=0.5, vc=1.0, shrinkage=1e-10, solver="svd"),
        NCTIComponents(seli=20.0, ncc=0.9, vc=3.0, shrinkage=1e-10, solver="svd"),
        NCTIComponents(seli=15.0, ncc=0.7, vc=2.0, shrinkage=1e-10, solver="svd"),
    ]
    assert ncti_scores(comps) == pytest.approx([0.0, 1.0, 0.5])
    assert ncti_scores(comps[:1]) == [0.0]  # a pool of one: every component constant
    assert ncti_scores([]) == []


# ------------------------------------------------------------------------------ LogME


def naive_logme(F: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-6) -> float:
    """Per-class evidence maximisation with D × D matrices (MacKay updates, slogdet of A with
    all D eigenvalues, so the (D - k) log(alpha) term is included automatically); stops when
    alpha and beta both change by at most ``tol`` relative."""
    n, d = F.shape
    ftf = F.T @ F
    eig = np.maximum(np.linalg.eigvalsh(ftf), 0.0)
    out = []
    for c in np.unique(y):
        t = (y == c).astype(float)
        alpha = beta = 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            A = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(A, F.T @ t)
            gamma = float(np.sum(eig / (eig + lam)))
            m2, r2 = float(m @ m), float(np.sum((t - F @ m) ** 2))
            a_new, b_new = gamma / (m2 + 1e-5), (n - gamma) / (r2 + 1e-5)
            done = abs(a_new - alpha) <= tol * alpha and abs(b_new - beta) <= tol * beta
            alpha, beta = a_new, b_new
            if done:
                break
        _, logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)
        ev = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * logdet
            - beta / 2 * r2
            - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi)
        )
        out.append(ev / n)
    return float(np.mean(out))


@pytest.mark.parametrize(("n", "d", "c"), [(200, 30, 4), (40, 100, 3), (60, 60, 5)])
def test_logme_matches_naive(n: int, d: int, c: int) -> None:
    x, y = blobs(n, d, c, sep=1.0, seed=n + d)
    assert logme(x, y) == pytest.approx(naive_logme(x, y), rel=1e-7, abs=1e-9)
    x2 = x * 0.05 + 3.0  # small scale, offset (LogME does not centre)
    assert logme(x2, y) == pytest.approx(naive_logme(x2, y), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize(
    ("n", "d", "c", "sep", "scale"), [(60, 300, 3, 0.2, 0.01), (80, 400, 4, 0.3, 0.003)]
)
def test_logme_d_above_n_converges(n: int, d: int, c: int, sep: float, scale: float) -> None:
    """D > N: 11 reference steps stop > 0.01 short of the fixed point; the default iterates to
    it (reference: the naive D × D fixed point run for 20,000 steps, tol 1e-13)."""
    x, y = blobs(n, d, c, sep=sep, seed=n + d)
    x = x * scale
    reference = naive_logme(x, y, max_iter=20000, tol=1e-13)
    assert logme(x, y) == pytest.approx(reference, abs=1e-7)
    assert abs(logme(x, y, max_iter=11, tol=1e-3) - reference) > 0.01  # the old stopping rule


@pytest.mark.parametrize(("n", "d", "c"), [(200, 30, 4), (1000, 64, 10), (300, 12, 3)])
def test_logme_n_above_d_moves_less_than_1e6(n: int, d: int, c: int) -> None:
    x, y = blobs(n, d, c, sep=1.0, seed=n + d)
    assert abs(logme(x, y) - logme(x, y, max_iter=11, tol=1e-3)) < 1e-6


def test_logme_rank_deficient_matches_naive() -> None:
    x, y = blobs(200, 20, 4, sep=1.0, seed=1)
    dup = np.hstack([x, x[:, :10], np.zeros((200, 3)), np.full((200, 2), 3.0)])  # N > D
    assert logme(dup, y) == pytest.approx(naive_logme(dup, y), rel=1e-7)
    wide = np.hstack([x[:40]] * 5)  # N < D with rank 20 < N
    assert logme(wide, y[:40]) == pytest.approx(naive_logme(wide, y[:40]), rel=1e-7)


def test_logme_n_less_than_d_includes_rank_term() -> None:
    """thuml/LogME's fixed point drops (D - k) log(alpha) when N < D (issue #23): that value
    is far larger; ours agrees with the full-D naive evidence."""
    x, y = blobs(50, 512, 2, sep=0.5, seed=3)
    ours = logme(x, y)
    assert ours == pytest.approx(naive_logme(x, y), rel=1e-7)
    # the buggy evaluation: same fixed point, evidence with the rank-k log-determinant only
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    sigma = s**2
    buggy = []
    for c in (0, 1):
        t = (y == c).astype(float)
        z2 = (u.T @ t) ** 2
        r0 = t @ t - z2.sum()
        a = b = 1.0
        for _ in range(11):
            lam = a / b
            g = np.sum(sigma / (sigma + lam))
            m2 = np.sum(sigma * z2 / (sigma + lam) ** 2)
            r2 = np.sum(z2 * (lam / (sigma + lam)) ** 2) + r0
            a, b = g / (m2 + 1e-5), (50 - g) / (r2 + 1e-5)
            if abs(a / b - lam) / lam <= 1e-3:
                break
        ev = (
            512 / 2 * np.log(a)
            + 50 / 2 * np.log(b)
            - 0.5 * np.sum(np.log(a + b * sigma))
            - b / 2 * r2
            - a / 2 * m2
            - 25 * np.log(2 * np.pi)
        )
        buggy.append(ev / 50)
    assert np.mean(buggy) > ours + 5.0


def test_logme_close_to_true_maximum() -> None:
    from scipy.optimize import minimize

    x, y = blobs(150, 12, 3, sep=1.0, seed=5)
    n, d = x.shape
    ftf = x.T @ x
    t = (y == 0).astype(float)

    def neg_evidence(p: np.ndarray) -> float:
        a, b = np.exp(p)
        A = a * np.eye(d) + b * ftf
        m = b * np.linalg.solve(A, x.T @ t)
        _, logdet = np.linalg.slogdet(A)
        L = (
            d / 2 * np.log(a)
            + n / 2 * np.log(b)
            - 0.5 * logdet
            - b / 2 * np.sum((t - x @ m) ** 2)
            - a / 2 * m @ m
            - n / 2 * np.log(2 * np.pi)
        )
        return -L / n

    best = -minimize(neg_evidence, [0.0, 0.0], method="Nelder-Mead", tol=1e-12).fun
    ours = float(log_evidence(x, t[:, None])[0])
    assert ours == pytest.approx(best, abs=2e-3)


def test_logme_regression_targets_and_shapes() -> None:
    x, _ = blobs(80, 6, 2, seed=1)
    w = np.arange(1, 7.0)
    t = x @ w + 0.01 * np.random.default_rng(0).normal(size=80)
    good = log_evidence(x, t)
    bad = log_evidence(x, np.random.default_rng(1).normal(size=80))
    assert good.shape == (1,) and good[0] > bad[0]
    with pytest.raises(ValueError):
        log_evidence(x, t[:10])


# ------------------------------------------------------------------------------ references


def test_hscore_matches_pinv_formula() -> None:
    x, y = blobs(300, 20, 4, sep=1.0, seed=2)
    g = np.zeros_like(x)
    for c in range(4):
        g[y == c] = x[y == c].mean(axis=0)
    naive = np.trace(np.linalg.pinv(np.cov(x, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))
    assert hscore(x, y) == pytest.approx(naive, rel=1e-9)


def test_hscore_saturates_at_c_minus_1_when_n_below_d() -> None:
    x, y = blobs(100, 300, 4, sep=0.0, seed=3)  # no class signal at all
    assert hscore(x, y, pca_dim=None) == pytest.approx(3.0, rel=1e-9)  # raw: saturated
    # reduced to min(64, N - C - 1) = 64 components first: noise scores about 64·3/99
    assert hscore(x, y) == pytest.approx(64 * 3 / 99, rel=0.15)


def _orthonormal_basis() -> tuple[np.ndarray, ...]:
    """Centred, mutually orthogonal unit vectors in R^5 for labels (0, 0, 1, 1, 1): u is the
    centred class indicator, v, w, t carry no class information."""
    u = np.array([3.0, 3, -2, -2, -2])
    v = np.array([1.0, -1, 0, 0, 0])
    w = np.array([0.0, 0, 1, 1, -2])
    t = np.array([0.0, 0, 1, -1, 0])
    return tuple(a / np.linalg.norm(a) for a in (u, v, w, t))


def test_hscore_reduces_below_n_minus_c_by_hand() -> None:
    """Columns 3(u+v), 2(w+t), (u−v), 0.5(w−t): orthogonal, variances 18 > 8 > 2 > 0.5. Raw, the
    rank is N − 1 = 4 and H = C − 1 = 1. With C = 2 classes H is the squared norm of the
    projection of u on the kept columns' span; k = min(64, N − C − 1) = 2 keeps 3(u+v) and
    2(w+t): H = (u·(u+v)/√2)² = 1/2."""
    u, v, w, t = _orthonormal_basis()
    x = np.column_stack([3 * (u + v), 2 * (w + t), u - v, 0.5 * (w - t)])
    y = np.array([0, 0, 1, 1, 1])
    assert hscore(x, y, pca_dim=None) == pytest.approx(1.0, rel=1e-9)
    assert hscore(x, y) == pytest.approx(0.5, rel=1e-9)
    assert hscore(x, y, pca_dim=1) == pytest.approx(0.5, rel=1e-9)  # u+v alone: the same
    assert hscore(x[:, [0, 2]], y) == pytest.approx(1.0, rel=1e-9)  # 2 columns: kept raw
    with pytest.raises(ValueError, match="pca_dim"):
        hscore(x, y, pca_dim=0)


def test_hscore_and_sfda_on_reference_pca() -> None:
    """N < D: both equal the raw estimator (the pinv formula; the SFDA reference flow) on
    scikit-learn's PCA to min(64, N − C − 1) components; raw SFDA saturates at 1.0."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    x, y = blobs(150, 200, 4, sep=0.3, seed=31)
    k = 64  # min(64, N - C - 1 = 145)
    f = decomposition.PCA(n_components=k, svd_solver="full").fit_transform(x)
    g = np.zeros_like(f)
    for c in range(4):
        g[y == c] = f[y == c].mean(axis=0)
    naive = np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))
    assert hscore(x, y) == pytest.approx(naive, rel=1e-8)
    assert sfda(x, y) == pytest.approx(_reference_sfda(f, y), rel=1e-6)
    noise, y0 = blobs(150, 200, 4, sep=0.0, seed=32)  # no class signal
    assert sfda(noise, y0, pca_dim=None) == pytest.approx(1.0, abs=1e-6)  # raw: saturated
    assert sfda(noise, y0) < 0.9


@pytest.mark.parametrize(("n", "d"), [(300, 20), (40, 90)])
def test_shrinkage_hscore_matches_ledoit_wolf_formula(n: int, d: int) -> None:
    sk = pytest.importorskip("sklearn.covariance")
    x, y = blobs(n, d, 4, sep=1.0, seed=n)
    xc = x - x.mean(axis=0)
    lw = sk.LedoitWolf(assume_centered=False).fit(xc)
    assert ledoit_wolf_shrinkage(xc) == pytest.approx(lw.shrinkage_, rel=1e-9)
    g = np.zeros_like(xc)
    for c in range(4):
        g[y == c] = xc[y == c].mean(axis=0)
    cov_g = np.cov(g, rowvar=False)
    naive = np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * cov_g))
    assert shrinkage_hscore(x, y) == pytest.approx(naive, rel=1e-8)


@pytest.mark.parametrize(("n", "d"), [(120, 10), (30, 64)])
def test_transrate_matches_dxd_logdet(n: int, d: int) -> None:
    x, y = blobs(n, d, 3, sep=0.5, seed=d)

    def rate(z: np.ndarray) -> float:
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (len(z) * 1e-4))[1]

    z = x - x.mean(axis=0)
    naive = rate(z) - np.mean([rate(z[y == c]) for c in range(3)])
    assert transrate(x, y) == pytest.approx(naive, rel=1e-10)


def test_parc_matches_reference_pipeline() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    from scipy.stats import spearmanr

    x, y = blobs(150, 50, 5, sep=0.7, seed=4)
    f = decomposition.PCA(n_components=32, svd_solver="full").fit_transform(x)
    f = (f - f.mean(0)) / f.std(0)
    rdm = 1 - np.corrcoef(f)
    # np.corrcoef leaves some same-class label distances at 1.1e-16 instead of 0, which
    # breaks the ties the reference's Spearman should see; round them back (two values only)
    lab = np.round(1 - np.corrcoef(np.eye(5)[y]), 12)
    iu = np.triu_indices(150, 1)
    expected = spearmanr(rdm[iu], lab[iu])[0] * 100
    assert parc(x, y) == pytest.approx(expected, rel=1e-9)


def test_parc_subsample_is_balanced_and_capped() -> None:
    x, y = blobs(400, 10, 4, seed=6)
    y[:200] = 0  # imbalanced
    a = parc(x, y, max_samples=100)
    assert np.isfinite(a) and a == parc(x, y, max_samples=100)  # deterministic
    assert a != parc(x, y, max_samples=100, seed=1)


def test_gbc_matches_direct_loops() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    x, y = blobs(200, 80, 4, sep=0.3, seed=7)
    f = decomposition.PCA(n_components=64, svd_solver="full").fit_transform(x)
    for kind in ("diagonal", "spherical"):
        stats = []
        for c in range(4):
            m, v = f[y == c].mean(0), np.maximum(f[y == c].var(0), 1e-4)
            stats.append((m, v if kind == "diagonal" else np.array([v.mean()])))
        total = 0.0
        for i in range(4):
            for j in range(4):
                if i != j:
                    (m1, v1), (m2, v2) = stats[i], stats[j]
                    avg = (v1 + v2) / 2
                    db = np.sum((m1 - m2) ** 2 / avg) / 8 + 0.5 * (
                        np.sum(np.log(avg)) - 0.5 * np.sum(np.log(v1)) - 0.5 * np.sum(np.log(v2))
                    )
                    total += np.exp(-db)
        assert gbc(x, y, covariance=kind) == pytest.approx(-total, rel=1e-9)


def _reference_sfda(X: np.ndarray, y: np.ndarray) -> float:
    """TencentARC/SFDA's flow: generalised eigenproblem with all D eigenvectors (scipy)."""
    from scipy import linalg

    def iterative_a(A: np.ndarray) -> float:
        x = A.sum(axis=1)
        for _ in range(3):
            t = A @ x
            yv = t / np.linalg.norm(t)
            t = A @ yv
            x = t / np.linalg.norm(t)
        return float(x @ A @ yv)

    def fit(X: np.ndarray, shrink: float | None):
        classes = np.unique(y)
        priors = np.bincount(y) / len(y)
        means = np.stack([X[y == c].mean(0) for c in classes])
        Sw = sum(p * np.cov(X[y == c].T, bias=1) for p, c in zip(priors, classes, strict=True))
        if shrink is None:
            shrink = max(np.exp(-5 * iterative_a(Sw)), 1e-10)
        d = X.shape[1]
        emp = np.cov(X.T, bias=1)
        St = (1 - shrink) * emp + shrink * np.trace(emp) / d * np.eye(d)
        sw = (1 - shrink) * Sw + shrink * np.trace(Sw) / d * np.eye(d)
        evals, evecs = linalg.eigh(St - sw, sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        coef = means @ evecs @ evecs.T
        intercept = -0.5 * np.diag(means @ coef.T) + np.log(priors)
        s = X @ coef.T + intercept
        p = np.exp(s - s.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), shrink

    X = X.copy()
    prob, shrink = fit(X, None)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    means = np.stack([X[y == c].mean(0) for c in np.unique(y)])
    others = (means.sum(0) - means) / (len(means) - 1)
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        q = prob[idx, c][:, None]
        X[idx] = q * X[idx] + (1 - q) * others[c]
    prob, _ = fit(X, shrink)
    return float(np.mean(prob[np.arange(len(y)), y]))


@pytest.mark.parametrize("scale", [1.0, 0.05])
def test_sfda_matches_reference_flow(scale: float) -> None:
    x, y = blobs(240, 16, 4, sep=0.5, seed=8)
    x = x * scale
    _, s = lda_posterior(x, y, 4)
    if scale < 1:
        assert s > 1e-10  # the small-scale case exercises a real shrinkage
    ours = sfda(x, y)
    assert ours == pytest.approx(_reference_sfda(x, y), rel=1e-8)


def test_sfda_power_iteration_and_saturation() -> None:
    A = np.diag([5.0, 1.0, 0.5]) + 0.1
    assert power_lambda_max(A) == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-3)
    assert power_lambda_max(np.zeros((3, 3))) == 0.0
    x, y = blobs(40, 200, 4, sep=0.0, seed=9)  # N < D, no class signal at all
    assert sfda(x, y, pca_dim=None) == pytest.approx(1.0, abs=1e-6)  # raw: saturated


@pytest.mark.parametrize("scale", [1.0, 0.16, 0.003])
def test_ncti_lda_and_components_match_sklearn(scale: float) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    da = pytest.importorskip("sklearn.discriminant_analysis")
    x, y = blobs(200, 80, 5, sep=0.4, seed=10)
    x = x * scale
    pca = decomposition.PCA(n_components=64, svd_solver="full")
    xp = pca.fit_transform(x)
    s = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if s == 1e-10:
        clf = da.LinearDiscriminantAnalysis(solver="svd")
    else:
        clf = da.LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(s))
    low = clf.fit_transform(xp, y)
    proba = clf.predict_proba(xp)
    z, p = lda_fit(xp, y, None if s == 1e-10 else float(s))
    np.testing.assert_allclose(p, proba, rtol=1e-7, atol=1e-10)
    low = low - low.mean(0)
    seli = np.linalg.norm(low, ord="nuc")
    assert np.linalg.norm(z - z.mean(0), ord="nuc") == pytest.approx(seli, rel=1e-7)
    comp = ncti_components(x, y)
    assert comp.solver == ("svd" if s == 1e-10 else "eigen")
    assert comp.seli == pytest.approx(seli, rel=1e-7)
    assert comp.ncc == pytest.approx(np.mean(proba[np.arange(200), y]), rel=1e-7)
    vc = np.log(sum(np.linalg.norm(proba[y == c], ord="nuc") for c in range(5)))
    assert comp.vc == pytest.approx(vc, rel=1e-7)


def test_lgc_projection_estimates_exact_kernel() -> None:
    rng = np.random.default_rng(11)
    y = np.arange(60) % 3
    g = rng.normal(size=(60, 3000)) + np.eye(3)[y] @ rng.normal(size=(3, 3000))
    exact = lgc(g, y)
    assert lgc(g, y, projection_dim=2000) == pytest.approx(exact, abs=0.03)
    assert project(g[:, :50], 100) is not None and project(g[:, :50], 100).shape == (60, 50)
    grads = logit_gradients(np.array([[2.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(grads.sum(axis=1), 0.0, atol=1e-15)
    assert grads[0, 0] == pytest.approx(1 - math.exp(2) / (math.exp(2) + 1))


# ------------------------------------------------------------------------------ invariances


def _relabel(y: np.ndarray, seed: int = 0) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(int(y.max()) + 1)
    return np.array([f"class-{perm[v]}" for v in y])  # permuted and non-integer


@pytest.mark.parametrize("name", sorted(FEATURE_ESTIMATORS))
def test_label_permutation_invariance(name: str) -> None:
    x, y = blobs(120, 10, 4, sep=1.0, seed=12)
    fn = FEATURE_ESTIMATORS[name]
    assert fn(x, _relabel(y)) == pytest.approx(fn(x, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(LOGIT_ESTIMATORS))
def test_label_permutation_invariance_logits(name: str) -> None:
    y = np.arange(90) % 3
    z = source_logits(y)
    fn = LOGIT_ESTIMATORS[name]
    assert fn(z, _relabel(y)) == pytest.approx(fn(z, y), rel=1e-12, abs=1e-12)


def test_ncti_label_permutation_invariance() -> None:
    x, y = blobs(120, 70, 4, sep=0.5, seed=13)
    a = ncti([(x, y), (x[:, :66], y), (x * 2.0, y)])
    b = ncti([(x, _relabel(y)), (x[:, :66], _relabel(y)), (x * 2.0, _relabel(y))])
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "name", ["hscore", "shrink_hscore", "parc", "lfc", "lgc", "gbc", "gbc_spherical"]
)
def test_feature_scaling_invariance(name: str) -> None:
    x, y = blobs(120, 10, 4, sep=1.0, seed=14)
    fn = FEATURE_ESTIMATORS[name]
    assert fn(3.7 * x, y) == pytest.approx(fn(x, y), rel=1e-9)


def test_nce_invariant_to_logit_scaling_leep_is_not() -> None:
    y = np.arange(90) % 3
    z = source_logits(y)
    assert nce(5 * z, y) == nce(z, y)
    assert leep(5 * z, y) != pytest.approx(leep(z, y))


@pytest.mark.parametrize("name", ["logme", "hscore", "shrink_hscore", "transrate", "lfc"])
@pytest.mark.parametrize(("n", "d"), [(100, 12), (30, 50)])
def test_orthogonal_rotation_invariance(name: str, n: int, d: int) -> None:
    x, y = blobs(n, d, 3, sep=1.0, seed=15)
    q, _ = np.linalg.qr(np.random.default_rng(16).normal(size=(d, d)))
    fn = FEATURE_ESTIMATORS[name]
    assert fn(x @ q, y) == pytest.approx(fn(x, y), rel=1e-8, abs=1e-10)


# ------------------------------------------------------------------------------ monotonicity


@pytest.mark.parametrize("name", sorted(FEATURE_ESTIMATORS))
def test_separated_beats_shuffled(name: str) -> None:
    x, y = blobs(300, 16, 5, sep=2.0, seed=17)
    shuffled = np.random.default_rng(18).permutation(y)
    fn = FEATURE_ESTIMATORS[name]
    assert fn(x, y) > fn(x, shuffled)


@pytest.mark.parametrize("name", sorted(LOGIT_ESTIMATORS))
def test_informative_head_beats_shuffled(name: str) -> None:
    y = np.arange(300) % 5
    z = source_logits(y, cs=20)
    shuffled = np.random.default_rng(19).permutation(y)
    fn = LOGIT_ESTIMATORS[name]
    assert fn(z, y) > fn(z, shuffled)


def test_ncti_ranks_separated_model_first() -> None:
    x, y = blobs(200, 70, 4, sep=1.5, seed=20)
    noisy = x + np.random.default_rng(21).normal(size=x.shape) * 4.0
    scores = ncti([(noisy, y), (x, y)])
    assert scores[1] > scores[0]


# ------------------------------------------------------------------------------ stability


def _degenerate_inputs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(22)
    y = np.arange(40) % 4
    wide = rng.normal(size=(40, 300)) + np.eye(4)[y] @ rng.normal(size=(4, 300))
    dup = np.repeat(rng.normal(size=(10, 8)), 4, axis=0)
    const = rng.normal(size=(40, 12))
    const[:, :5] = 0.0
    const[:, 5] = 7.5
    big = rng.normal(size=(40, 6)) * 1e6 + 1e7
    tiny = rng.normal(size=(40, 6)) * 1e-8
    return {
        "n<d": (wide, y),
        "duplicates": (dup, np.repeat(np.arange(10) % 4, 4)),
        "constant-columns": (const, y),
        "large-offset": (big, y),
        "tiny-scale": (tiny, y),
        "all-constant": (np.ones((40, 5)), y),
    }


@pytest.mark.parametrize("case", sorted(_degenerate_inputs()))
@pytest.mark.parametrize("name", sorted(FEATURE_ESTIMATORS))
def test_degenerate_inputs_give_finite_scores(name: str, case: str) -> None:
    x, y = _degenerate_inputs()[case]
    before = x.copy()
    value = FEATURE_ESTIMATORS[name](x, y)
    assert np.isfinite(value), (name, case, value)
    np.testing.assert_array_equal(x, before)  # inputs are never modified


@pytest.mark.parametrize("case", sorted(_degenerate_inputs()))
def test_ncti_degenerate_inputs_finite(case: str) -> None:
    x, y = _degenerate_inputs()[case]
    assert np.isfinite(ncti([(x, y), (x[:, ::-1] * 2 + 1, y)])).all()


def test_logit_estimators_survive_extreme_logits() -> None:
    y = np.arange(30) % 3
    z = source_logits(y) * 1e4  # softmax underflows to exact zeros
    for fn in LOGIT_ESTIMATORS.values():
        assert np.isfinite(fn(z, y))


def test_input_validation() -> None:
    x, y = blobs(20, 3, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        logme(x, np.zeros(20))
    with pytest.raises(ValueError, match="NaN"):
        hscore(np.full((20, 3), np.nan), y)
    with pytest.raises(ValueError, match="labels"):
        gbc(x, y[:5])
    with pytest.raises(ValueError, match="2-d"):
        transrate(x[0], y)
    with pytest.raises(ValueError, match="covariance"):
        gbc(x, y, covariance="full")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ registry


def test_estimators_are_registered_as_proxies() -> None:
    names = {
        "logme",
        "leep",
        "nce",
        "hscore",
        "shrink_hscore",
        "transrate",
        "gbc",
        "parc",
        "sfda",
        "ncti",
        "lfc",
        "lgc",
    }
    assert names <= set(PROXIES)
    for name in names:
        spec = get_proxy(name)
        assert spec.needs_logits == (name in {"leep", "nce", "lgc"})
        assert spec.settings["split"] == "train"
        hash(spec)
    x, y = blobs(90, 8, 3, seed=23)
    assert get_proxy("logme")(x, y, x[:3], y[:3]) == pytest.approx(logme(x, y))
    z = source_logits(y)
    assert get_proxy("leep")(z, y, z[:3], y[:3]) == pytest.approx(leep(z, y))
    assert get_proxy("lgc")(z, y, z, y) == pytest.approx(lgc(logit_gradients(z), y))
    spec = get_proxy("ncti")
    problems = [(x, y, x, y), (x[:, :4], y, x[:, :4], y)]
    assert spec.score_many(problems) == pytest.approx(ncti([(x, y), (x[:, :4], y)]))
    assert spec(x, y, x, y) == 0.0  # a pool of one


def test_proxy_import_stays_light() -> None:
    code = (
        "import sys, shift.scoring.proxies; "
        "bad = [m for m in ('scipy', 'torch', 'sklearn', 'shift.scoring.estimators') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = (
        "import sys, shift.scoring.estimators; "
        "bad = [m for m in ('scipy', 'torch', 'sklearn') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
