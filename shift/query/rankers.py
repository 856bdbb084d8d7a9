"""``RANK BY`` → what to run: the strategy, the proxy and its checked settings, the aggregate over
several tasks, or the task-similarity ranker. Every error is a positioned ``QueryError``.

* ``PROXY`` or ``PROXY(name=value, ...)``: a proxy with settings checked against its declared
  parameters (:mod:`shift.scoring.args`); ``hybrid(PROXY(...))`` likewise.
* ``avg(P)``, ``min(P)``, ``max(P)``: the mean / lowest / highest score of proxy ``P`` over the
  query's tasks (``WHERE task IN (a, b, c)``); ``avg_rank(P)`` the mean of the per-task ranks,
  the default when a bare proxy ranks several tasks (scores of different tasks need not share a
  scale; ranks do).
* ``similar`` or ``similar(k=3, probe=MODEL)``: fine-tuning results on the ``k`` registered
  tasks nearest to the query's task (:mod:`shift.engine.similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shift.query import ast
from shift.query.syntax import did_you_mean, error_at

AGGREGATES = ("avg", "min", "max", "avg_rank")
#: ``similar``'s settings: neighbours (1 to 100) and the probe model (default: the smallest)
SIMILAR_K = 3
SIMILAR_MAX_K = 100


@dataclass
class Resolved:
    """What a ranker asks for. ``settings``: the proxy's parameter values as the query wrote
    them, checked (an empty dict for the defaults); ``params``: the proxy's full parameters."""

    strategy: str  # agnostic | proxy | hybrid | sh | meta | random | multi | similar
    proxy: str | None = None
    proxy_args: tuple = ()
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    aggregate: str | None = None
    similar: dict[str, Any] = field(default_factory=dict)


def _valid() -> str:
    from shift.scoring.proxies import PROXIES

    return (
        "agnostic, " + ", ".join(sorted(PROXIES)) + ", PROXY(name=value), hybrid(PROXY), "
        "sh(PROXY[, budget, chunk]), meta(TABLE), random(SEED), similar(k=N), "
        "avg/min/max/avg_rank(PROXY) over several tasks"
    )


def _proxy(text: str, r: ast.Ranker) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A proxy node (no positional arguments) → its name, checked settings and parameters."""
    from shift.scoring.args import ArgError
    from shift.scoring.proxies import PROXIES, get_proxy

    if r.name not in PROXIES:
        raise error_at(
            text,
            r.pos,
            f"unknown proxy {r.name!r}",
            did_you_mean(r.name, sorted(PROXIES)) + f"valid rankers: {_valid()}",
        )
    spec = get_proxy(r.name)
    if r.args:
        raise error_at(
            text,
            r.arg_span(0),
            f"{r.name} takes only named parameters",
            f"e.g. RANK BY {_example(spec)}"
            if spec.args
            else f"{r.name} takes no parameters: write RANK BY {r.name}",
        )
    settings = dict(r.kwargs)
    try:
        bound = spec.bind(settings)
    except ArgError as e:
        raise error_at(text, r.kwarg_span(e.arg), e.message, e.hint) from None
    return r.name, settings, bound.params


def _example(spec: Any) -> str:
    a = spec.args[0]
    v = a.choices[0] if a.choices else spec.params.get(a.kwarg or a.name, 1)
    v = v[0] if isinstance(v, tuple | list) else v
    return f"{spec.name}({a.name}={v})"


def _inner(text: str, r: ast.Ranker, what: str) -> ast.Ranker:
    """The one proxy argument of ``hybrid``/``avg``/...: a name or ``PROXY(k=v)``."""
    if len(r.args) != 1 or r.kwargs or not isinstance(r.args[0], str | ast.Ranker):
        raise error_at(text, r.pos, f"{r.name} takes one proxy", f"e.g. RANK BY {r.name}({what})")
    a = r.args[0]
    return ast.Ranker(a, pos=r.arg_span(0)) if isinstance(a, str) else a


def resolve(text: str, r: ast.Ranker, n_tasks: int) -> Resolved:
    """Check ranker ``r`` for a query naming ``n_tasks`` tasks."""
    if r.name in ("agnostic", "random"):
        _no_kwargs(text, r)
        if r.name == "agnostic":
            if r.args:
                raise error_at(text, r.pos, "agnostic takes no arguments", "write RANK BY agnostic")
            return Resolved("agnostic")
        if len(r.args) > 1 or (
            r.args and (not isinstance(r.args[0], int) or isinstance(r.args[0], bool))
        ):
            raise error_at(text, r.pos, "random takes one integer seed", "e.g. RANK BY random(7)")
        return Resolved("random", proxy_args=(r.args[0] if r.args else 0,))
    from shift.scoring.proxies import PROXIES  # numpy and the proxies: not for agnostic

    if n_tasks > 1 and r.name in ("meta", "sh", "hybrid", "similar"):
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r.name} ranks for one task, but the query names {n_tasks}",
            "with several tasks rank by avg(PROXY), min(PROXY), max(PROXY) or avg_rank(PROXY)",
        )
    if r.name == "meta":
        from shift.scoring.meta import available_tables

        _no_kwargs(text, r)
        tables = available_tables()
        table = r.args[0] if r.args else "vtab1k"
        if len(r.args) > 1 or table not in tables:
            raise error_at(
                text,
                r.pos,
                f"unknown fine-tuning table {table!r}",
                "tables: " + ", ".join(tables) + "; e.g. RANK BY meta(vtab1k)",
            )
        return Resolved("meta", proxy_args=(table,))
    if r.name == "similar":
        return _similar(text, r, n_tasks)
    if r.name == "sh":
        return _halving(text, r, n_tasks)
    if r.name in AGGREGATES or (n_tasks > 1 and r.name in PROXIES):
        inner = _inner(text, r, "linear") if r.name in AGGREGATES else r
        name, settings, params = _proxy(text, inner)
        _needs_task(text, r, n_tasks)
        agg = r.name if r.name in AGGREGATES else "avg_rank"
        return Resolved("multi", name, (), settings, params, aggregate=agg)
    if r.name == "hybrid":
        name, settings, params = _proxy(text, _inner(text, r, "linear"))
        _needs_task(text, r, n_tasks)
        return Resolved("hybrid", name, (), settings, params)
    name, settings, params = _proxy(text, r)
    _needs_task(text, r, n_tasks)
    return Resolved("proxy", name, (), settings, params)


def _no_kwargs(text: str, r: ast.Ranker) -> None:
    if r.kwargs:
        raise error_at(
            text,
            r.kwarg_span(r.kwargs[0][0]),
            f"{r.name} takes no named parameters",
            f"valid rankers: {_valid()}",
        )


def _needs_task(text: str, r: ast.Ranker, n_tasks: int) -> None:
    if n_tasks == 0:
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r} scores models on a task, but the query names none",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )


def _halving(text: str, r: ast.Ranker, n_tasks: int) -> Resolved:
    from shift.scoring.proxies import PROXIES

    _no_kwargs(text, r)
    proxy = r.args[0] if r.args else "linear"
    extra = r.args[1:]
    if (
        len(extra) > 2
        or not isinstance(proxy, str)
        or proxy not in PROXIES
        or any(not (isinstance(a, int) and a > 0) and a != "auto" for a in extra)
    ):
        raise error_at(
            text,
            r.pos,
            "sh takes a proxy and optional budget and chunk",
            "e.g. RANK BY sh(linear) or sh(knn, auto, 50); proxies: " + ", ".join(sorted(PROXIES)),
        )
    if n_tasks == 0:
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r} needs a task",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )
    budget, chunk = (list(extra) + ["auto", "auto"])[:2]
    return Resolved(
        "sh", proxy, (None if budget == "auto" else budget, None if chunk == "auto" else chunk)
    )


def _similar(text: str, r: ast.Ranker, n_tasks: int) -> Resolved:
    if r.args:
        raise error_at(
            text,
            r.arg_span(0),
            "similar takes only named parameters",
            "e.g. RANK BY similar(k=3) or similar(k=3, probe=MODEL)",
        )
    opts: dict[str, Any] = {"k": SIMILAR_K, "probe": None}
    for key, v in r.kwargs:
        sp = r.kwarg_span(key)
        if key == "k":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= SIMILAR_MAX_K:
                raise error_at(
                    text,
                    sp,
                    f"k={v!r} is not valid",
                    f"k is the number of similar tasks, 1 to {SIMILAR_MAX_K}",
                )
        elif key == "probe":
            if not isinstance(v, str):
                raise error_at(text, sp, f"probe={v!r} is not a model name", "e.g. probe=resnet18")
        else:
            raise error_at(
                text,
                sp,
                f"similar has no parameter {key!r}",
                "similar takes k (int 1 to 100, default 3) and probe (a model name; default "
                "the registry's smallest model)",
            )
        opts[key] = v
    if n_tasks == 0:
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r} finds tasks similar to the query's task, but the query names none",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )
    return Resolved("similar", similar=opts)
