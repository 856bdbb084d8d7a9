"""Proxy scores: cheap estimates of how well a model transfers to a task (higher is better).

Every proxy takes ``(train_x, train_y, val_x, val_y)`` frozen features and labels and returns a
validation accuracy in ``[0, 1]``. ``PROXIES`` maps names to ``ProxySpec``; ``get_proxy`` looks
one up. Importing this package loads numpy only (torch and hnswlib are imported on use).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from shift.proxies.knn import knn_accuracy, knn_accuracy_hnsw, nearest_neighbors
from shift.proxies.linear import (
    DEFAULT_BATCH,
    DEFAULT_LRS,
    DEFAULT_MOMENTUM,
    DEFAULT_STEPS,
    linear_probe,
    linear_probe_many,
)

__all__ = [
    "PROXIES",
    "ProxyFn",
    "ProxySpec",
    "get_proxy",
    "knn_accuracy",
    "knn_accuracy_hnsw",
    "linear_probe",
    "linear_probe_many",
    "nearest_neighbors",
]

ProxyFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]
ManyFn = Callable[[Sequence[tuple[Any, Any, Any, Any]]], list[float]]


@dataclass(frozen=True)
class ProxySpec:
    """A named proxy. ``fn(train_x, train_y, val_x, val_y) -> accuracy`` (higher is better);
    ``many`` (optional) scores several problems at once, e.g. one per model, in one batch."""

    name: str
    description: str
    needs_logits: bool
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    fn: ProxyFn | None = None
    many: ManyFn | None = field(default=None, compare=False)

    def __call__(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        if self.fn is None:
            raise NotImplementedError(f"proxy {self.name!r} has no single-problem function")
        return self.fn(train_x, train_y, val_x, val_y)

    def score_many(self, problems: Sequence[tuple[Any, Any, Any, Any]]) -> list[float]:
        """Scores of several problems: the batched ``many`` if set, else ``fn`` per problem."""
        if self.many is not None:
            return self.many(problems)
        return [self(*p) for p in problems]


def _linear_spec() -> ProxySpec:
    params: dict[str, Any] = {
        "lrs": DEFAULT_LRS,
        "steps": DEFAULT_STEPS,
        "batch_size": DEFAULT_BATCH,
        "momentum": DEFAULT_MOMENTUM,
        "seed": 0,
    }
    return ProxySpec(
        name="linear",
        description=(
            "linear probe: softmax regression on standardised features, mini-batch SGD "
            f"({DEFAULT_STEPS} steps, batch {DEFAULT_BATCH}, momentum {DEFAULT_MOMENTUM}) at "
            f"lr in {list(DEFAULT_LRS)}; best validation accuracy"
        ),
        needs_logits=False,
        params=params,
        fn=partial(linear_probe, **params),
        many=partial(linear_probe_many, **params),
    )


PROXIES: dict[str, ProxySpec] = {
    "knn": ProxySpec(
        name="knn",
        description="exact 1-nearest-neighbour validation accuracy, euclidean distance",
        needs_logits=False,
        params={"k": 1, "metric": "euclidean"},
        fn=partial(knn_accuracy, metric="euclidean"),
    ),
    "knn_cosine": ProxySpec(
        name="knn_cosine",
        description="exact 1-nearest-neighbour validation accuracy, cosine similarity",
        needs_logits=False,
        params={"k": 1, "metric": "cosine"},
        fn=partial(knn_accuracy, metric="cosine"),
    ),
    "linear": _linear_spec(),
}


def get_proxy(name: str) -> ProxySpec:
    """The ``ProxySpec`` called ``name``; ``KeyError`` (with suggestions) for unknown names."""
    try:
        return PROXIES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), PROXIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)}){hint}") from None
