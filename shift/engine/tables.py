"""Queries over what has been measured: ``SELECT * FROM finetunes WHERE task=digits ORDER BY
accuracy DESC`` and ``SELECT * FROM scores WHERE proxy=knn AND score > 0.5``.

The tables (:data:`shift.query.columns.TABLES`) join each cached result to the task and model it
belongs to, by their current content hashes: a result measured on an older state of a task or
model is not shown (it is not a result for what is registered now). The WHERE clause and the
ORDER BY column were checked against the table's columns when the query was planned; values are
bound as parameters, never written into the SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shift.query.columns import TABLES
from shift.query.planner import Plan
from shift.records import Result, Timings

if TYPE_CHECKING:
    from shift.store.registry import Registry


def _sql(plan: Plan, count: bool = False) -> tuple[str, list[Any]]:
    assert plan.table is not None
    table = TABLES[plan.table]
    where, params = plan.where_sql
    cols = ", ".join(f"{c.sql} AS {name}" for name, c in table.columns.items())
    sql = f"SELECT {'count(*)' if count else cols} FROM {table.sql_from}"
    if where:
        sql += f" WHERE {where}"
    if count:
        return sql, params
    order = table.default_order
    if plan.order is not None:
        col = table.columns[plan.order.column]
        direction = "DESC" if plan.order.descending else "ASC"
        order = f"({col.sql} IS NULL), {col.sql} {direction}, {order}"
    sql += f" ORDER BY {order}"
    if plan.budget is not None:
        sql += " LIMIT ?"
        params = [*params, plan.budget]
    return sql, params


def table_rows(plan: Plan, registry: Registry) -> list[dict[str, Any]]:
    """The table's rows matching the plan, in its order, at most ``plan.budget``."""
    sql, params = _sql(plan)
    return list(registry.db.query(sql, params))


def run_table(plan: Plan, registry: Registry, timings: Timings) -> Result:
    assert plan.table is not None
    rows = table_rows(plan, registry)
    return Result(
        query=plan.text,
        columns=list(TABLES[plan.table].columns),
        rows=rows,
        plan={
            "table": plan.table,
            "filters": [f.label for f in plan.filters],
            "order": None
            if plan.order is None
            else f"{plan.order.column} {'DESC' if plan.order.descending else 'ASC'}",
            "limit": plan.budget,
        },
        timings=timings,
    )


def explain_table(plan: Plan, registry: Registry) -> Result:
    """Rows after each filter, then the order and limit."""
    assert plan.table is not None
    full = Plan(text=plan.text, select=plan.select, pool="all", strategy="table", table=plan.table)
    sql, params = _sql(full, count=True)
    steps: list[dict[str, Any]] = [
        {"step": f"all {plan.table}", "detail": "", "models": _one(registry, sql, params)}
    ]
    for i, f in enumerate(plan.filters):
        full.filters = plan.filters[: i + 1]
        sql, params = _sql(full, count=True)
        steps.append({"step": "filter", "detail": f.label, "models": _one(registry, sql, params)})
    order = (
        f"{plan.order.column} {'DESC' if plan.order.descending else 'ASC'}"
        if plan.order
        else "by task (default)"
    )
    limit = f", keep {plan.budget}" if plan.budget is not None else ""
    steps.append({"step": "order", "detail": order + limit, "models": None})
    return Result(
        query=plan.text,
        columns=["step", "detail", "models"],
        rows=steps,
        plan={"table": plan.table, "steps": steps},
    )


def _one(registry: Registry, sql: str, params: list[Any]) -> int:
    return int(registry.db.execute(sql, params).fetchone()[0])
