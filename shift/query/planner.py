"""AST → plan: resolve the pool, separate the task from model filters, check columns, values and
the ranker, and compile filters to SQL; the ranker becomes the plan's typed step
(:mod:`shift.query.steps`). Every semantic error is a positioned ``QueryError``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shift.query import ast
from shift.query.columns import COLUMNS, TABLES, TASK_COLUMN
from shift.query.compile import column, compile_condition
from shift.query.format import expr_text
from shift.query.parser import parse, parse_condition
from shift.query.rankers import resolve
from shift.query.steps import Order, Step, Table
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
    """One AND-ed model filter: where it comes from, its SQL and the SQL's bind values."""

    label: str
    sql: str
    binds: list[Any]


@dataclass
class Plan:
    """A checked query: the pool's model filters, the task(s), the budget and the step that ranks
    (or lists) the rows."""

    text: str
    select: ast.Select
    pool: str
    step: Step
    filters: list[Filter] = field(default_factory=list)
    task: str | None = None
    budget: int | None = None
    #: every task the query names (``task = a`` or ``task IN (a, b)``); ``task`` when one
    tasks: list[str] = field(default_factory=list)

    @property
    def where_sql(self) -> tuple[str, list[Any]]:
        """The filters AND-ed, with their bind values ("" for none)."""
        if not self.filters:
            return "", []
        return " AND ".join(f.sql for f in self.filters), [b for f in self.filters for b in f.binds]

    @property
    def ranker(self) -> str:
        """The step's label: ``hybrid(linear)``, ``ORDER BY params DESC``, ..."""
        return self.step.label


def check_condition(condition: str) -> str:
    """Validate a pool condition; return it normalised (without a leading WHERE)."""
    text = condition.strip()
    if text[:5].lower() == "where":
        text = text[5:].strip()
    if not text:
        return ""
    expr = parse_condition(text)
    for term in ast.conjuncts(expr):
        columned = (ast.Compare, ast.InList, ast.Like, ast.IsNull)
        if isinstance(term, columned) and term.column == TASK_COLUMN:
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
    sql, binds = compile_condition(parse_condition(pool.filter), pool.filter)
    return Filter(f"pool {pool.name}: {pool.filter}", sql, binds)


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

    filters: list[Filter] = []
    tasks: list[str] = []
    pool_term = pool_filter(pool)
    if pool_term is not None:
        filters.append(pool_term)

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
        sql, binds = compile_condition(term, text)
        filters.append(Filter(_describe(term, text), sql, binds))

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
            if name not in tasks:
                tasks.append(name)

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
        if tasks:
            raise error_at(
                text,
                select.order.pos,
                "ORDER BY sorts by a column and ignores the task",
                f"rank for the task with RANK BY (default {DEFAULT_TASK_RANKER})",
            )
        step: Step = Order(select.order)
    else:
        if select.rank is not None:
            ranker = select.rank
        elif len(tasks) > 1:
            ranker = DEFAULT_MULTI_RANKER
        else:
            ranker = DEFAULT_TASK_RANKER if tasks else DEFAULT_RANKER
        step = resolve(text, ranker, tasks)
    return Plan(
        text=text,
        select=select,
        pool=pool.name,
        step=step,
        filters=filters,
        task=tasks[0] if len(tasks) == 1 else None,
        budget=select.top if select.top is not None else select.limit,
        tasks=tasks,
    )


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
    filters = []
    for term in ast.conjuncts(select.where):
        sql, binds = compile_condition(term, text, table.columns, select.table)
        filters.append(Filter(_describe(term, text), sql, binds))
    if select.order is not None:
        column(select.order.column, select.order.pos, text, table.columns, select.table)
    return Plan(
        text=text,
        select=select,
        pool="all",
        step=Table(select.table, select.order),
        filters=filters,
        budget=select.top if select.top is not None else select.limit,
    )


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
