"""Proxy scores: cheap estimates of how well a model transfers to a task (higher is better).

Every proxy takes ``(train_x, train_y, val_x, val_y)`` frozen features and labels and returns a
score: a validation accuracy in ``[0, 1]`` for ``knn``/``knn_cosine``/``linear``; an unbounded
transferability estimate for the ``shift.scoring.estimators`` proxies (``logme``, ``leep``, ``nce``,
``hscore``, ``shrink_hscore``, ``transrate``, ``gbc``, ``parc``, ``sfda``, ``ncti``, ``lfc``,
``lgc``), which score the train split only and ignore the validation split. Proxies with
``needs_logits`` receive the model's source-classifier logits in place of the features. ``ncti``
is pool-relative: its ``many`` normalises over the models scored together. ``PROXIES`` maps
names to ``ProxySpec``; ``get_proxy`` looks one up. Importing this package loads numpy only
(torch and hnswlib are imported on use, each estimator module on its first call).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from shift.scoring.knn import knn_accuracy, knn_accuracy_hnsw, nearest_neighbors
from shift.scoring.linear import (
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


@dataclass(frozen=True)
class _Estimator:
    """Adapter from ``shift.scoring.estimators.<module>.<func>(x, y, **kwargs)`` to the proxy
    signature, on the train split; the module is imported on the first call (picklable, no
    closures)."""

    module: str
    func: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    transform: str | None = None  # a function of the module applied to train_x first

    def _resolve(self, name: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(f"shift.scoring.estimators.{self.module}"), name)

    def __call__(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        x = self._resolve(self.transform)(train_x) if self.transform else train_x
        return float(self._resolve(self.func)(x, train_y, **dict(self.kwargs)))


@dataclass(frozen=True)
class _PoolEstimator:
    """Pool-relative estimator: ``func([(train_x, train_y), ...]) -> scores``, one per problem."""

    module: str
    func: str

    def __call__(self, problems: Sequence[tuple[Any, Any, Any, Any]]) -> list[float]:
        fn = getattr(importlib.import_module(f"shift.scoring.estimators.{self.module}"), self.func)
        return [float(v) for v in fn([(p[0], p[1]) for p in problems])]

    def single(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        return self([(train_x, train_y, val_x, val_y)])[0]


def _estimator_spec(
    name: str,
    description: str,
    module: str,
    func: str,
    *,
    needs_logits: bool = False,
    transform: str | None = None,
    **kwargs: Any,
) -> ProxySpec:
    params: dict[str, Any] = {"split": "train", **kwargs}
    if transform:
        params["transform"] = transform
    return ProxySpec(
        name=name,
        description=description,
        needs_logits=needs_logits,
        params=params,
        fn=_Estimator(module, func, tuple(sorted(kwargs.items())), transform),
    )


def _ncti_spec() -> ProxySpec:
    pool = _PoolEstimator("ncti", "ncti")
    return ProxySpec(
        name="ncti",
        description=(
            "NCTI (Wang et al. 2023): neural-collapse index on 64 PCA components; min-max "
            "normalised over the models scored together (pool-relative; one model scores 0)"
        ),
        needs_logits=False,
        params={"split": "train", "pca_dim": 64, "pool_relative": True},
        fn=pool.single,
        many=pool,
    )


_ESTIMATORS: list[ProxySpec] = [
    _estimator_spec(
        "logme",
        "LogME (You et al. 2021): mean per-class log maximum evidence / N of a Bayesian linear "
        "model on the features (fixed-point solver, N < D corrected)",
        "logme",
        "logme",
        max_iter=11,
        tol=1e-3,
    ),
    _estimator_spec(
        "leep",
        "LEEP (Nguyen et al. 2020): log expected empirical prediction from the source head",
        "leep",
        "leep",
        needs_logits=True,
    ),
    _estimator_spec(
        "nce",
        "NCE (Tran et al. 2019): negative conditional entropy of target given source argmax",
        "leep",
        "nce",
        needs_logits=True,
    ),
    _estimator_spec(
        "hscore",
        "H-score (Bao et al. 2019): tr(cov_f^+ cov_g); saturates at C-1 when N < D",
        "hscore",
        "hscore",
    ),
    _estimator_spec(
        "shrink_hscore",
        "shrinkage H-score (Ibrahim et al. 2022): H-score with a Ledoit-Wolf feature covariance",
        "hscore",
        "shrinkage_hscore",
    ),
    _estimator_spec(
        "transrate",
        "TransRate (Huang et al. 2022): coding rate of all minus mean per-class coding rate",
        "transrate",
        "transrate",
        eps=1e-4,
    ),
    _estimator_spec(
        "gbc",
        "GBC (Pandy et al. 2022): minus the summed Bhattacharyya coefficients of per-class "
        "diagonal Gaussians on 64 PCA components",
        "gbc",
        "gbc",
        pca_dim=64,
        covariance="diagonal",
    ),
    _estimator_spec(
        "parc",
        "PARC (Bolya et al. 2021): 100 x Spearman between feature and label dissimilarities "
        "on 32 PCA components (class-balanced probe of at most 1000 samples)",
        "parc",
        "parc",
        pca_dim=32,
        max_samples=1000,
        seed=0,
    ),
    _estimator_spec(
        "sfda",
        "SFDA (Shao et al. 2022): self-challenging Fisher discriminant analysis, mean "
        "true-class posterior after ConfMix",
        "sfda",
        "sfda",
    ),
    _ncti_spec(),
    _estimator_spec(
        "lfc",
        "LFC (Deshpande et al. 2021): correlation of the feature Gram matrix with the label "
        "agreement matrix (at most 25 samples per class)",
        "linearized",
        "lfc",
        max_per_class=25,
        seed=0,
    ),
    _estimator_spec(
        "lgc",
        "LGC (Deshpande et al. 2021) on source-head logit gradients e_argmax - softmax "
        "(stand-in for the paper's last-conv-layer gradients, which stored logits cannot give)",
        "linearized",
        "lgc",
        needs_logits=True,
        transform="logit_gradients",
        max_per_class=25,
        seed=0,
    ),
]

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
    **{spec.name: spec for spec in _ESTIMATORS},
}


def get_proxy(name: str) -> ProxySpec:
    """The ``ProxySpec`` called ``name``; ``KeyError`` (with suggestions) for unknown names."""
    try:
        return PROXIES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), PROXIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)}){hint}") from None
