"""AST → plan: resolve the pool, separate the task from model filters, check columns, values and
the ranker, and compile filters to SQL. Every semantic error is a positioned ``QueryError``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Protocol

from shift.errors import QueryError
from shift.query import ast
from shift.query.columns import COLUMNS, TASK_COLUMN
from shift.query.compile import column, compile_condition
from shift.query.format import expr_text
from shift.query.parser import parse, parse_condition
from shift.records import PoolRecord


class Catalog(Protocol):
    """What planning needs to know of the registry: its pools and task names."""

    def get_pool(self, name: str) -> PoolRecord | None: ...

    def pools(self) -> list[PoolRecord]: ...

    def has_task(self, name: str) -> bool: ...

    def task_names(self) -> list[str]: ...


DEFAULT_TASK_RANKER = ast.Ranker("hybrid", ("linear",))
DEFAULT_RANKER = ast.Ranker("agnostic")


@dataclass
class Filter:
    """One AND-ed model filter: where it comes from, its SQL and parameters."""

    label: str
    sql: str
    params: list[Any]


@dataclass
class Plan:
    text: str
    select: ast.Select
    pool: str
    filters: list[Filter] = field(default_factory=list)
    task: str | None = None
    strategy: str = "agnostic"  # agnostic | proxy | hybrid | sh | meta | random | order
    proxy: str | None = None
    proxy_args: tuple = ()
    budget: int | None = None
    order: ast.OrderBy | None = None

    @property
    def where_sql(self) -> tuple[str, list[Any]]:
        if not self.filters:
            return "", []
        return " AND ".join(f.sql for f in self.filters), [
            p for f in self.filters for p in f.params
        ]

    @property
    def ranker(self) -> str:
        if self.strategy == "hybrid":
            return f"hybrid({self.proxy})"
        if self.strategy == "proxy":
            return str(self.proxy)
        if self.strategy in ("random", "meta"):
            return f"{self.strategy}({self.proxy_args[0]})"
        if self.strategy == "sh":
            b, c = (x if x is not None else "auto" for x in self.proxy_args)
            return f"sh({self.proxy}, {b}, {c})"
        if self.strategy == "order":
            assert self.order is not None
            return f"ORDER BY {self.order.column} {'DESC' if self.order.descending else 'ASC'}"
        return "agnostic"


def _err(text: str, span: ast.Span, msg: str, hint: str | None = None) -> QueryError:
    return QueryError(
        msg, text=text, line=span.line, column=span.column, length=span.length, hint=hint
    )


def _near(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def check_condition(condition: str) -> str:
    """Validate a pool condition; return it normalised (without a leading WHERE)."""
    text = condition.strip()
    if text[:5].lower() == "where":
        text = text[5:].strip()
    if not text:
        return ""
    expr = parse_condition(text)
    for term in ast.conjuncts(expr):
        if getattr(term, "column", None) == TASK_COLUMN:
            raise _err(
                text,
                term.column_pos,
                "a pool cannot name a task",
                "pools filter models; give the task in the query",
            )
    compile_condition(expr, text)
    return text


def _resolve_ranker(text: str, r: ast.Ranker, has_task: bool) -> tuple[str, str | None, tuple]:
    from shift.scoring.proxies import PROXIES

    proxies = sorted(PROXIES)
    valid = (
        "agnostic, " + ", ".join(proxies) + ", hybrid(PROXY), sh(PROXY[, budget, chunk]), "
        "meta(TABLE), random(SEED)"
    )
    if r.name == "agnostic":
        if r.args:
            raise _err(text, r.pos, "agnostic takes no arguments", "write RANK BY agnostic")
        return "agnostic", None, ()
    if r.name == "random":
        if len(r.args) > 1 or (
            r.args and (not isinstance(r.args[0], int) or isinstance(r.args[0], bool))
        ):
            raise _err(text, r.pos, "random takes one integer seed", "e.g. RANK BY random(7)")
        return "random", None, (r.args[0] if r.args else 0,)
    if r.name == "meta":
        from shift.scoring.meta import available_tables

        tables = available_tables()
        table = r.args[0] if r.args else "vtab1k"
        if len(r.args) > 1 or table not in tables:
            raise _err(
                text,
                r.pos,
                f"unknown fine-tuning table {table!r}",
                "tables: " + ", ".join(tables) + "; e.g. RANK BY meta(vtab1k)",
            )
        return "meta", None, (table,)
    if r.name == "sh":
        proxy = r.args[0] if r.args else "linear"
        extra = r.args[1:]
        if (
            len(extra) > 2
            or proxy not in PROXIES
            or any(not (isinstance(a, int) and a > 0) and a != "auto" for a in extra)
        ):
            raise _err(
                text,
                r.pos,
                "sh takes a proxy and optional budget and chunk",
                "e.g. RANK BY sh(linear) or sh(knn, auto, 50); proxies: " + ", ".join(proxies),
            )
        if not has_task:
            raise _err(
                text,
                r.pos,
                f"RANK BY {r} needs a task",
                "add WHERE task=NAME (see `shift-cli tasks list`)",
            )
        budget, chunk = (list(extra) + ["auto", "auto"])[:2]
        return (
            "sh",
            proxy,
            (None if budget == "auto" else budget, None if chunk == "auto" else chunk),
        )
    if r.name == "hybrid":
        if len(r.args) != 1 or not isinstance(r.args[0], str):
            raise _err(text, r.pos, "hybrid takes one proxy", "e.g. RANK BY hybrid(linear)")
        proxy = r.args[0]
        kind = "hybrid"
        args: tuple = ()
    else:
        proxy, kind, args = r.name, "proxy", r.args
    if proxy not in PROXIES:
        raise _err(
            text,
            r.pos,
            f"unknown proxy {proxy!r}",
            _near(proxy, proxies) + f"valid rankers: {valid}",
        )
    if args:
        raise _err(text, r.pos, f"{proxy} takes no arguments", f"write RANK BY {proxy}")
    if not has_task:
        raise _err(
            text,
            r.pos,
            f"RANK BY {r} scores models on a task, but the query names none",
            "add WHERE task=NAME (see `shift-cli tasks list`)",
        )
    return kind, proxy, args


def pool_filter(pool: PoolRecord) -> Filter | None:
    """A pool's condition as a model filter (``None`` for a pool of every model)."""
    if not pool.filter:
        return None
    sql, params = compile_condition(parse_condition(pool.filter), pool.filter)
    return Filter(f"pool {pool.name}: {pool.filter}", sql, params)


def plan(select: ast.Select, text: str, registry: Catalog) -> Plan:
    """Check ``select`` against the catalog (the registry) and build the plan."""
    pool = registry.get_pool(select.pool)
    if pool is None:
        names = [p.name for p in registry.pools()]
        raise _err(
            text,
            select.pool_pos,
            f"unknown pool {select.pool!r}",
            _near(select.pool, names) + "pools: " + ", ".join(names),
        )
    if select.top is not None and select.top < 1:
        raise _err(text, select.top_pos, "top needs a budget of at least 1", "e.g. SELECT top 2")
    if select.top is not None and select.limit is not None:
        raise _err(
            text,
            select.limit_pos,
            "LIMIT and top both cap the result",
            "use SELECT top N, or SELECT * ... LIMIT N",
        )

    p = Plan(text=text, select=select, pool=pool.name)
    pool_term = pool_filter(pool)
    if pool_term is not None:
        p.filters.append(pool_term)

    task_term: ast.Compare | None = None
    for term in ast.conjuncts(select.where):
        if (
            isinstance(term, ast.Compare | ast.InList | ast.Like | ast.IsNull)
            and term.column == TASK_COLUMN
        ):
            if not isinstance(term, ast.Compare) or term.op != "=":
                raise _err(
                    text, term.pos, "task is chosen with task = NAME", "e.g. WHERE task=flowers"
                )
            if task_term is not None:
                raise _err(
                    text, term.pos, "a query ranks for one task", "remove the second task = ..."
                )
            task_term = term
            continue
        sql, params = compile_condition(term, text)
        p.filters.append(Filter(_describe(term, text), sql, params))

    if task_term is not None:
        name = str(task_term.value.value)
        if not registry.has_task(name):
            tasks = registry.task_names()
            raise _err(
                text,
                task_term.value.pos,
                f"unknown task {name!r}",
                _near(name, tasks)
                + (
                    "tasks: " + ", ".join(tasks)
                    if tasks
                    else "no tasks yet: add one with `shift-cli tasks add`"
                ),
            )
        p.task = name

    if select.order is not None:
        column(select.order.column, select.order.pos, text)
        if COLUMNS[select.order.column].type == "tags":
            raise _err(text, select.order.pos, "cannot sort by tag", "sort by a scalar column")
        if select.rank is not None:
            raise _err(
                text,
                select.order.pos,
                "use either RANK BY or ORDER BY",
                "RANK BY ranks models for a task; ORDER BY sorts by a column",
            )
        if p.task is not None:
            raise _err(
                text,
                select.order.pos,
                "ORDER BY sorts by a column and ignores the task",
                f"rank for the task with RANK BY (default {DEFAULT_TASK_RANKER})",
            )
        p.strategy, p.order = "order", select.order
    else:
        ranker = select.rank or (DEFAULT_TASK_RANKER if p.task else DEFAULT_RANKER)
        p.strategy, p.proxy, p.proxy_args = _resolve_ranker(text, ranker, p.task is not None)
    p.budget = select.top if select.top is not None else select.limit
    return p


def _describe(term: ast.Expr, text: str) -> str:
    span = getattr(term, "pos", None)
    if span is not None and span is not ast.NOWHERE:
        lines = text.splitlines()
        if span.line <= len(lines):
            frag = lines[span.line - 1][span.column - 1 : span.column - 1 + span.length]
            if frag.strip():
                return frag.strip()
    return expr_text(term)


def plan_text(text: str, registry: Catalog) -> Plan:
    return plan(parse(text), text, registry)
