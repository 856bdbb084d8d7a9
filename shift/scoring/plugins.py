"""The proxy plug-ins: each proxy registers itself with a decorator next to its function.

``@proxy(name, ...)`` registers ``fn(train_x, train_y, val_x, val_y) -> score``;
``@estimator(name, ...)`` registers a transferability estimator ``fn(x, y, **kwargs)`` scored on
the train split (``pool_relative=True``: ``fn([(x, y), ...]) -> scores`` over the models scored
together). Keyword arguments are bound to the function and recorded in ``settings``, which is
part of the score-cache key (a cached score's ``params`` column), so the same proxy always gets
the same ``settings``. The decorators return the function unchanged (it stays importable and
picklable by name). Registering the same name twice is an error. The lookup side (``PROXIES``,
``get_proxy``) is ``shift.scoring.proxies``. A registered proxy never returns a NaN or infinite
score: ``ProxySpec`` raises :class:`~shift.errors.NonFiniteScoreError` instead
(:func:`check_finite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np

from shift.errors import NonFiniteScoreError
from shift.scoring.args import Arg, check_args, inferred

__all__ = [
    "Arg",
    "IndexScorer",
    "ProxyFn",
    "ProxySpec",
    "check_finite",
    "estimator",
    "proxy",
    "register",
    "registered",
]

ProxyFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]
ManyFn = Callable[[Sequence[tuple[Any, Any, Any, Any]]], list[float]]
F = TypeVar("F", bound=Callable[..., Any])

#: seconds per 1,000 training samples for a proxy registered without ``cost_per_1k``
DEFAULT_COST_PER_1K = 0.2


def check_finite(
    proxy: str, values: Sequence[Any], names: Sequence[str] | None = None
) -> list[float]:
    """``values`` as floats, or :class:`~shift.errors.NonFiniteScoreError` naming ``proxy`` and
    the problems (``names``, else their positions) whose score is NaN or infinite."""
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if not bad:
        return out
    which = ", ".join(names[i] if names is not None else f"#{i}" for i in bad)
    raise NonFiniteScoreError(
        f"proxy {proxy!r} gave a non-finite score ({out[bad[0]]}) for {which}; "
        "it is neither cached nor ranked",
        hint="rank with another proxy, or leave these models out of the pool",
    )


class IndexScorer(Protocol):
    """Optional hook of a proxy that can score straight from a stored embedding index (e.g. the
    kNN proxies through its hnsw graph) instead of from the selected arrays."""

    @property
    def path(self) -> str:
        """What EXPLAIN and the engine report when the hook runs, e.g. "hnsw"."""
        ...

    def applies(self, n_train: int) -> bool:
        """Whether to use the hook for a training split of ``n_train`` samples."""
        ...

    def __call__(self, index: Any, train_ids: Sequence[str], val_ids: Sequence[str]) -> float:
        """The proxy's score of ``index`` with these train/validation samples."""
        ...


@dataclass(frozen=True)
class ProxySpec:
    """A named proxy. ``fn(train_x, train_y, val_x, val_y) -> score`` (higher is better);
    ``many`` (optional) scores several problems at once, e.g. one per model, in one batch;
    ``from_index`` (optional) scores from the stored index when it ``applies``;
    ``cost_per_1k``: EXPLAIN's seconds to score one model per 1,000 training samples (D ≈ 2,048)
    on this kind of CPU, from benchmarks/results/estimators.json and the proxy timings."""

    name: str
    description: str
    needs_logits: bool
    settings: dict[str, Any] = field(default_factory=dict, hash=False)
    fn: ProxyFn | None = None
    many: ManyFn | None = field(default=None, compare=False)
    cost_per_1k: float = DEFAULT_COST_PER_1K
    from_index: IndexScorer | None = field(default=None, compare=False)
    #: the parameters a query may set (``RANK BY knn(k=5)``), and how a setting rebinds the
    #: functions: ``binder(overrides) -> {"fn": ..., "many": ..., "from_index": ...}``
    args: tuple[Arg, ...] = field(default=(), compare=False)
    binder: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)

    def bind(self, values: Mapping[str, Any]) -> ProxySpec:
        """This proxy with a query's parameter values set, checked against ``args``
        (:class:`~shift.scoring.args.ArgError` names a bad one): ``settings``, the score-cache
        key, gets the converted keywords, so equal settings written differently share a key and
        a setting equal to the default is the default proxy. No values: ``self``."""
        if not values:
            return self
        overrides = check_args(self.name, self.args, values)
        settings = {**self.settings, **overrides}
        if settings == self.settings or self.binder is None:
            return self
        return replace(self, settings=settings, **self.binder(overrides))

    @property
    def pool_relative(self) -> bool:
        """Scores are relative to the models scored together (never cached per model)."""
        return bool(self.settings.get("pool_relative"))

    def __call__(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        """The score of one problem (finite, else NonFiniteScoreError)."""
        if self.fn is None:
            raise NotImplementedError(f"proxy {self.name!r} has no single-problem function")
        return check_finite(self.name, [self.fn(train_x, train_y, val_x, val_y)])[0]

    def score_many(
        self, problems: Sequence[tuple[Any, Any, Any, Any]], names: Sequence[str] | None = None
    ) -> list[float]:
        """Scores of several problems: the batched ``many`` if set, else ``fn`` per problem;
        all finite, else NonFiniteScoreError naming the problems (``names``, else positions)."""
        if self.many is not None:
            return check_finite(self.name, self.many(problems), names)
        if self.fn is None:
            raise NotImplementedError(f"proxy {self.name!r} has no single-problem function")
        return check_finite(self.name, [self.fn(*p) for p in problems], names)

    def index_path(self, n_train: int) -> str | None:
        """The ``from_index`` hook's path name if it runs for ``n_train`` samples, else None."""
        hook = self.from_index
        return hook.path if hook is not None and hook.applies(n_train) else None


_SPECS: dict[str, ProxySpec] = {}


def register(spec: ProxySpec) -> ProxySpec:
    """Add ``spec`` to the registry (in registration order); a taken name raises ValueError."""
    if spec.name in _SPECS:
        raise ValueError(f"proxy {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def registered() -> dict[str, ProxySpec]:
    """The registered specs by name, in registration order (the live dict; do not mutate)."""
    return _SPECS


def proxy(
    name: str,
    *,
    description: str,
    cost_per_1k: float = DEFAULT_COST_PER_1K,
    needs_logits: bool = False,
    many: Callable[..., list[float]] | None = None,
    from_index: IndexScorer | None = None,
    record: dict[str, Any] | None = None,
    args: Sequence[Arg] = (),
    index_hook: Callable[[dict[str, Any]], IndexScorer | None] | None = None,
    **kwargs: Any,
) -> Callable[[F], F]:
    """Register ``fn(train_x, train_y, val_x, val_y, **kwargs)`` (and its batched ``many``,
    called with the same ``kwargs``) as ``name``; ``settings = {**record, **kwargs}``. ``args``
    declares what a query may set (the other ``kwargs`` are :func:`~shift.scoring.args.inferred`);
    ``index_hook(kwargs)`` gives the ``from_index`` hook for other settings (default: none)."""

    def decorate(fn: F) -> F:
        register(
            ProxySpec(
                name=name,
                description=description,
                needs_logits=needs_logits,
                settings={**(record or {}), **kwargs},
                fn=partial(fn, **kwargs),
                many=None if many is None else partial(many, **kwargs),
                cost_per_1k=cost_per_1k,
                from_index=from_index,
                args=_declared(args, kwargs),
                binder=_ProxyBinder(fn, many, tuple(kwargs.items()), index_hook),
            )
        )
        return fn

    return decorate


def _declared(args: Sequence[Arg], kwargs: dict[str, Any]) -> tuple[Arg, ...]:
    """Declared args first, then those inferred from the other keyword defaults."""
    named = {a.kwarg or a.name for a in args} | {a.name for a in args}
    return (*args, *inferred({k: v for k, v in kwargs.items() if k not in named}))


@dataclass(frozen=True)
class _ProxyBinder:
    """Rebinds a ``@proxy``'s functions to its keywords with ``overrides``; picklable."""

    fn: Callable[..., Any]
    many: Callable[..., Any] | None
    kwargs: tuple[tuple[str, Any], ...]
    index_hook: Callable[[dict[str, Any]], Any] | None

    def __call__(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kw = {**dict(self.kwargs), **overrides}
        return {
            "fn": partial(self.fn, **kw),
            "many": None if self.many is None else partial(self.many, **kw),
            "from_index": self.index_hook(kw) if self.index_hook else None,
        }


@dataclass(frozen=True)
class _EstimatorBinder:
    """Rebinds an ``@estimator``'s train-split adapter to its keywords with ``overrides``."""

    func: Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...]
    transform: Callable[[Any], Any] | None

    def __call__(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kw = {**dict(self.kwargs), **overrides}
        return {"fn": _TrainSplit(self.func, tuple(sorted(kw.items())), self.transform)}


@dataclass(frozen=True)
class _TrainSplit:
    """Adapter from an estimator ``func(x, y, **kwargs)`` to the proxy signature, on the train
    split (``transform`` applied to ``train_x`` first); picklable, no closures."""

    func: Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...] = ()
    transform: Callable[[Any], Any] | None = None

    def __call__(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        x = self.transform(train_x) if self.transform else train_x
        return float(self.func(x, train_y, **dict(self.kwargs)))


@dataclass(frozen=True)
class _PoolTrainSplit:
    """Adapter of a pool-relative estimator ``func([(train_x, train_y), ...]) -> scores``."""

    func: Callable[..., Any]

    def __call__(self, problems: Sequence[tuple[Any, Any, Any, Any]]) -> list[float]:
        return [float(v) for v in self.func([(p[0], p[1]) for p in problems])]

    def single(self, train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> float:
        return self([(train_x, train_y, val_x, val_y)])[0]


def estimator(
    name: str,
    *,
    description: str,
    cost_per_1k: float = DEFAULT_COST_PER_1K,
    needs_logits: bool = False,
    pool_relative: bool = False,
    transform: Callable[[Any], Any] | None = None,
    record: dict[str, Any] | None = None,
    args: Sequence[Arg] = (),
    **kwargs: Any,
) -> Callable[[F], F]:
    """Register an estimator scored on the train split as ``name`` (``args``: as for
    :func:`proxy`):
    ``settings = {"split": "train", **record, **kwargs}`` plus ``transform`` (by function name) and
    ``pool_relative: True`` when set."""

    def decorate(fn: F) -> F:
        settings: dict[str, Any] = {"split": "train", **(record or {}), **kwargs}
        if transform is not None:
            settings["transform"] = transform.__name__
        if pool_relative:
            if kwargs or transform is not None:
                raise ValueError("a pool-relative estimator takes no kwargs or transform")
            settings["pool_relative"] = True
            pool = _PoolTrainSplit(fn)
            single, many = pool.single, pool
        else:
            single, many = _TrainSplit(fn, tuple(sorted(kwargs.items())), transform), None
        register(
            ProxySpec(
                name=name,
                description=description,
                needs_logits=needs_logits,
                settings=settings,
                fn=single,
                many=many,
                cost_per_1k=cost_per_1k,
                args=() if pool_relative else _declared(args, kwargs),
                binder=None
                if pool_relative
                else _EstimatorBinder(fn, tuple(sorted(kwargs.items())), transform),
            )
        )
        return fn

    return decorate
