"""EXPLAIN's cost model: rough seconds to embed a task with a model and to score a proxy."""

from __future__ import annotations

#: rough CPU cost used by EXPLAIN: seconds per image per million parameters at 224 px on one
#: core (EfficientNet-Lite0 72 img/s → 0.0030; ResNet-18 24 img/s → 0.0036; environment.md §5.2)
SECONDS_PER_IMAGE_PER_MPARAM_224 = 0.0033


def embed_seconds(params: int, height: int, width: int, images: int) -> float:
    """Seconds to embed ``images`` with a model of ``params`` parameters at ``height``×``width``
    on one core: images · s/(image·Mparam at 224 px) · Mparams · pixels / 224²."""
    return images * SECONDS_PER_IMAGE_PER_MPARAM_224 * params / 1e6 * (height * width) / 224**2


def score_seconds(cost_per_1k: float, n_train: int) -> float:
    """Seconds to score one model with a proxy registered at ``cost_per_1k`` seconds per 1,000
    training samples (``ProxySpec.cost_per_1k``) on ``n_train`` samples: cost · n / 1000."""
    return cost_per_1k * max(n_train, 1) / 1000
