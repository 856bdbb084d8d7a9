"""EXPLAIN's cost model: rough seconds to embed a task with a model and to score a proxy."""

from __future__ import annotations

#: rough CPU cost used by EXPLAIN: seconds per image per million parameters at 224 px on one
#: core (EfficientNet-Lite0 72 img/s → 0.0030; ResNet-18 24 img/s → 0.0036; environment.md §5.2)
SECONDS_PER_IMAGE_PER_MPARAM_224 = 0.0033

#: seconds to score one model per 1,000 training samples (D ≈ 2,048) on this kind of CPU, from
#: benchmarks/results/estimators.json and the proxy timings; EXPLAIN's estimate of scoring work
SCORE_SECONDS_PER_1K = {
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


def embed_seconds(params: int, height: int, width: int, images: int) -> float:
    """Seconds to embed ``images`` with a model of ``params`` parameters at ``height``×``width``
    on one core: images · s/(image·Mparam at 224 px) · Mparams · pixels / 224²."""
    return images * SECONDS_PER_IMAGE_PER_MPARAM_224 * params / 1e6 * (height * width) / 224**2


def score_seconds(proxy: str, n_train: int) -> float:
    """Seconds to score one model with ``proxy`` on ``n_train`` training samples."""
    return SCORE_SECONDS_PER_1K.get(proxy, 0.2) * max(n_train, 1) / 1000
