"""``RANK BY`` → the plan's step (:mod:`shift.query.steps`): the ranker, its proxy with checked
settings, the aggregate over several tasks, or the task-similarity ranker. Every error is a
positioned ``QueryError``.

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

from typing import Any

from shift.query import ast
from shift.query.steps import (
    Agnostic,
    Halving,
    Hybrid,
    Meta,
    MultiTask,
    ProxyCall,
    Random,
    RankByProxy,
    Similar,
    Step,
)
from shift.query.syntax import did_you_mean, error_at

AGGREGATES = ("avg", "min", "max", "avg_rank")
#: ``similar``'s settings: neighbours (1 to 100) and the probe model (default: the smallest)
SIMILAR_K = 3
SIMILAR_MAX_K = 100


def _valid() -> str:
    from shift.scoring.proxies import PROXIES

    return (
        "agnostic, " + ", ".join(sorted(PROXIES)) + ", PROXY(name=value), hybrid(PROXY), "
        "sh(PROXY[, budget, chunk]), meta(TABLE), random(SEED), similar(k=N), "
        "avg/min/max/avg_rank(PROXY) over several tasks"
    )


def _proxy(text: str, r: ast.Ranker) -> ProxyCall:
    """A proxy node (no positional arguments) → the proxy with its checked settings."""
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
        spec.bind(settings)
    except ArgError as e:
        raise error_at(text, r.kwarg_span(e.arg), e.message, e.hint) from None
    return ProxyCall(r.name, settings)


def _example(spec: Any) -> str:
    a = spec.args[0]
    v = a.choices[0] if a.choices else spec.settings.get(a.kwarg or a.name, 1)
    v = v[0] if isinstance(v, tuple | list) else v
    return f"{spec.name}({a.name}={v})"


def _inner(text: str, r: ast.Ranker, what: str) -> ast.Ranker:
    """The one proxy argument of ``hybrid``/``avg``/...: a name or ``PROXY(k=v)``."""
    if len(r.args) != 1 or r.kwargs or not isinstance(r.args[0], str | ast.Ranker):
        raise error_at(text, r.pos, f"{r.name} takes one proxy", f"e.g. RANK BY {r.name}({what})")
    a = r.args[0]
    return ast.Ranker(a, pos=r.arg_span(0)) if isinstance(a, str) else a


def resolve(text: str, r: ast.Ranker, tasks: list[str]) -> Step:
    """Check ranker ``r`` for a query naming ``tasks``; the step that runs it."""
    n_tasks = len(tasks)
    task = tasks[0] if n_tasks == 1 else None
    if r.name in ("agnostic", "random"):
        _no_kwargs(text, r)
        if r.name == "agnostic":
            if r.args:
                raise error_at(text, r.pos, "agnostic takes no arguments", "write RANK BY agnostic")
            return Agnostic(task)
        seed = r.args[0] if r.args else 0
        if len(r.args) > 1 or not isinstance(seed, int) or isinstance(seed, bool):
            raise error_at(text, r.pos, "random takes one integer seed", "e.g. RANK BY random(7)")
        return Random(seed)
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
        return Meta(table, task)
    if r.name == "similar":
        return _similar(text, r, task)
    if r.name == "sh":
        return _halving(text, r, task)
    if r.name in AGGREGATES or (n_tasks > 1 and r.name in PROXIES):
        inner = _inner(text, r, "linear") if r.name in AGGREGATES else r
        proxy = _proxy(text, inner)
        _needs_task(text, r, n_tasks)
        agg = r.name if r.name in AGGREGATES else "avg_rank"
        return MultiTask(proxy, tuple(tasks), agg)
    if r.name == "hybrid":
        proxy = _proxy(text, _inner(text, r, "linear"))
        _needs_task(text, r, n_tasks)
        assert task is not None
        return Hybrid(proxy, task)
    proxy = _proxy(text, r)
    _needs_task(text, r, n_tasks)
    assert task is not None
    return RankByProxy(proxy, task)


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


def _halving(text: str, r: ast.Ranker, task: str | None) -> Halving:
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
    if task is None:
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r} needs a task",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )
    budget, chunk = (a if isinstance(a, int) else None for a in [*extra, "auto", "auto"][:2])
    return Halving(ProxyCall(proxy), task, budget, chunk)


def _similar(text: str, r: ast.Ranker, task: str | None) -> Similar:
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
    if task is None:
        raise error_at(
            text,
            r.pos,
            f"RANK BY {r} finds tasks similar to the query's task, but the query names none",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )
    return Similar(task, opts["k"], opts["probe"])
