"""Queries over what has been measured: ``SELECT * FROM finetunes WHERE task=digits ORDER BY
accuracy DESC`` and ``SELECT * FROM scores WHERE proxy=knn AND score > 0.5``.

The tables (:data:`shift.query.columns.TABLES`) join each cached result to the task and model it
belongs to, by their current content hashes: a result measured on an older state of a task or
model is not shown (it is not a result for what is registered now). The WHERE clause and the
ORDER BY column were checked against the table's columns when the query was planned; values are
bound as parameters, never written into the SQL; the store (:mod:`shift.store.finetunes`)
runs it. The step runs in
:class:`shift.engine.steps.table.TableRunner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shift.query.columns import TABLES
from shift.query.planner import Filter
from shift.query.steps import Table
from shift.store import finetunes

if TYPE_CHECKING:
    from shift.store.registry import Registry


def table_sql(
    step: Table, filters: list[Filter], budget: int | None = None, count: bool = False
) -> tuple[str, list[Any]]:
    """The SQL (and its bind values) of the table's rows matching ``filters``, in the step's
    order, at most ``budget``; ``count=True``: of their number."""
    table = TABLES[step.table]
    where = " AND ".join(f.sql for f in filters)
    binds = [b for f in filters for b in f.binds]
    cols = ", ".join(f"{c.sql} AS {name}" for name, c in table.columns.items())
    sql = f"SELECT {'count(*)' if count else cols} FROM {table.sql_from}"
    if where:
        sql += f" WHERE {where}"
    if count:
        return sql, binds
    order = table.default_order
    if step.order is not None:
        col = table.columns[step.order.column]
        direction = "DESC" if step.order.descending else "ASC"
        order = f"({col.sql} IS NULL), {col.sql} {direction}, {order}"
    sql += f" ORDER BY {order}"
    if budget is not None:
        sql += " LIMIT ?"
        binds = [*binds, budget]
    return sql, binds


def table_rows(
    step: Table, filters: list[Filter], budget: int | None, registry: Registry
) -> list[dict[str, Any]]:
    """The table's rows matching ``filters``, in the step's order, at most ``budget``."""
    sql, binds = table_sql(step, filters, budget)
    return finetunes.select_rows(registry, sql, binds)


def table_count(step: Table, filters: list[Filter], registry: Registry) -> int:
    """How many of the table's rows match ``filters``."""
    sql, binds = table_sql(step, filters, count=True)
    return finetunes.count_rows(registry, sql, binds)
