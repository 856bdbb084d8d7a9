"""AST → plan: resolve the pool, separate the task from model filters, check columns, values and
the ranker, and compile filters to SQL. Every semantic error is a positioned ``QueryError``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shift.query import ast
from shift.query.columns import COLUMNS, TABLES, TASK_COLUMN
from shift.query.compile import column, compile_condition
from shift.query.format import expr_text
from shift.query.parser import parse, parse_condition
from shift.query.rankers import resolve
from shift.query.syntax import did_you_mean, error_at
from shift.records import PoolRecord


class Catalog(Protocol):
    """What planning needs to know of the registry: its pools and task names."""

    def get_pool(self, name: str) -> PoolRecord | None: ...

    def pools(self) -> list[PoolRecord]: ...

    def has_task(self, name: str) -> bool: ...

    def task_names(self) -> list[str]: ...


DEFAULT_TASK_RANKER = ast.Ranker("hybrid", ("linear",))
DEFAULT_RANKER = ast.Ranker("agnostic")
#: several tasks, no RANK BY: the mean of each model's per-task linear-probe ranks
DEFAULT_MULTI_RANKER = ast.Ranker("avg_rank", ("linear",))


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
    strategy: str = "agnostic"  # agnostic|proxy|hybrid|sh|meta|random|order|multi|similar|table
    proxy: str | None = None
    proxy_args: tuple = ()
    budget: int | None = None
    order: ast.OrderBy | None = None
    #: every task the query names (``task = a`` or ``task IN (a, b)``); ``task`` when one
    tasks: list[str] = field(default_factory=list)
    #: the proxy's settings as written (checked; {} for its defaults) and its full parameters
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    aggregate: str | None = None  # multi: avg | min | max | avg_rank
    similar: dict[str, Any] = field(default_factory=dict)  # similar: k, probe
    table: str | None = None  # table: finetunes | scores

    @property
    def proxy_label(self) -> str:
        """``knn`` or ``knn(k=5, metric=cosine)``: the proxy with its settings, sorted."""
        if not self.settings:
            return str(self.proxy)
        return f"{self.proxy}({', '.join(f'{k}={v}' for k, v in sorted(self.settings.items()))})"

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
            return f"hybrid({self.proxy_label})"
        if self.strategy == "proxy":
            return self.proxy_label
        if self.strategy == "multi":
            return f"{self.aggregate}({self.proxy_label})"
        if self.strategy == "similar":
            probe = f", probe={self.similar['probe']}" if self.similar.get("probe") else ""
            return f"similar(k={self.similar['k']}{probe})"
        if self.strategy == "table":
            return "table"
        if self.strategy in ("random", "meta"):
            return f"{self.strategy}({self.proxy_args[0]})"
        if self.strategy == "sh":
            b, c = (x if x is not None else "auto" for x in self.proxy_args)
            return f"sh({self.proxy}, {b}, {c})"
        if self.strategy == "order":
            assert self.order is not None
            return f"ORDER BY {self.order.column} {'DESC' if self.order.descending else 'ASC'}"
        return "agnostic"


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
            raise error_at(
                text,
                term.column_pos,
                "a pool cannot name a task",
                "pools filter models; give the task in the query",
            )
    compile_condition(expr, text)
    return text


def pool_filter(pool: PoolRecord) -> Filter | None:
    """A pool's condition as a model filter (``None`` for a pool of every model)."""
    if not pool.filter:
        return None
    sql, params = compile_condition(parse_condition(pool.filter), pool.filter)
    return Filter(f"pool {pool.name}: {pool.filter}", sql, params)


def plan(select: ast.Select, text: str, registry: Catalog) -> Plan:
    """Check ``select`` against the catalog (the registry) and build the plan."""
    if select.table is not None:
        return plan_table(select, text)
    pool = registry.get_pool(select.pool)
    if pool is None:
        names = [p.name for p in registry.pools()]
        raise error_at(
            text,
            select.pool_pos,
            f"unknown pool {select.pool!r}",
            did_you_mean(select.pool, names) + "pools: " + ", ".join(names),
        )
    if select.top is not None and select.top < 1:
        raise error_at(
            text, select.top_pos, "top needs a budget of at least 1", "e.g. SELECT top 2"
        )
    if select.top is not None and select.limit is not None:
        raise error_at(
            text,
            select.limit_pos,
            "LIMIT and top both cap the result",
            "use SELECT top N, or SELECT * ... LIMIT N",
        )

    p = Plan(text=text, select=select, pool=pool.name)
    pool_term = pool_filter(pool)
    if pool_term is not None:
        p.filters.append(pool_term)

    task_terms: list[ast.Compare | ast.InList] = []
    for term in ast.conjuncts(select.where):
        if (
            isinstance(term, ast.Compare | ast.InList | ast.Like | ast.IsNull)
            and term.column == TASK_COLUMN
        ):
            if not (
                (isinstance(term, ast.Compare) and term.op == "=")
                or (isinstance(term, ast.InList) and not term.negated)
            ):
                raise error_at(
                    text,
                    term.pos,
                    "tasks are chosen with task = NAME or task IN (A, B, ...)",
                    "e.g. WHERE task=flowers, or WHERE task IN (flowers, pets) to rank for both",
                )
            if task_terms:
                raise error_at(
                    text,
                    term.pos,
                    "a query names its tasks once",
                    "name every task in one task IN (A, B, ...), not in a second task = ...",
                )
            task_terms.append(term)
            continue
        sql, params = compile_condition(term, text)
        p.filters.append(Filter(_describe(term, text), sql, params))

    for term in task_terms:
        values = [term.value] if isinstance(term, ast.Compare) else list(term.values)
        for lit in values:
            name = str(lit.value)
            if not registry.has_task(name):
                tasks = registry.task_names()
                raise error_at(
                    text,
                    lit.pos,
                    f"unknown task {name!r}",
                    did_you_mean(name, tasks)
                    + (
                        "tasks: " + ", ".join(tasks)
                        if tasks
                        else "no tasks yet: add one with `shift-cli tasks add`"
                    ),
                )
            if name not in p.tasks:
                p.tasks.append(name)
    p.task = p.tasks[0] if len(p.tasks) == 1 else None

    if select.order is not None:
        column(select.order.column, select.order.pos, text)
        if COLUMNS[select.order.column].type == "tags":
            raise error_at(text, select.order.pos, "cannot sort by tag", "sort by a scalar column")
        if select.rank is not None:
            raise error_at(
                text,
                select.order.pos,
                "use either RANK BY or ORDER BY",
                "RANK BY ranks models for a task; ORDER BY sorts by a column",
            )
        if p.tasks:
            raise error_at(
                text,
                select.order.pos,
                "ORDER BY sorts by a column and ignores the task",
                f"rank for the task with RANK BY (default {DEFAULT_TASK_RANKER})",
            )
        p.strategy, p.order = "order", select.order
    else:
        if select.rank is not None:
            ranker = select.rank
        elif len(p.tasks) > 1:
            ranker = DEFAULT_MULTI_RANKER
        else:
            ranker = DEFAULT_TASK_RANKER if p.tasks else DEFAULT_RANKER
        r = resolve(text, ranker, len(p.tasks))
        p.strategy, p.proxy, p.proxy_args = r.strategy, r.proxy, r.proxy_args
        p.settings, p.params, p.aggregate, p.similar = r.settings, r.params, r.aggregate, r.similar
    p.budget = select.top if select.top is not None else select.limit
    return p


def plan_table(select: ast.Select, text: str) -> Plan:
    """``SELECT * FROM finetunes|scores [WHERE ...] [ORDER BY col] [LIMIT n]``: the filters
    compiled against the table's columns (``task`` is an ordinary column there)."""
    assert select.table is not None
    table = TABLES[select.table]
    if select.rank is not None:
        raise error_at(
            text,
            select.rank.pos,
            f"{select.table} is a table of measurements: sort it with ORDER BY",
            f"e.g. SELECT * FROM {select.table} ORDER BY "
            + ("accuracy DESC" if select.table == "finetunes" else "score DESC"),
        )
    if select.top is not None and select.top < 1:
        raise error_at(text, select.top_pos, "top needs at least 1 row", "e.g. SELECT top 5")
    if select.top is not None and select.limit is not None:
        raise error_at(
            text,
            select.limit_pos,
            "LIMIT and top both cap the result",
            "use SELECT top N, or SELECT * ... LIMIT N",
        )
    p = Plan(text=text, select=select, pool="all", strategy="table", table=select.table)
    for term in ast.conjuncts(select.where):
        sql, params = compile_condition(term, text, table.columns, select.table)
        p.filters.append(Filter(_describe(term, text), sql, params))
    if select.order is not None:
        column(select.order.column, select.order.pos, text, table.columns, select.table)
        p.order = select.order
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
