"""Runner of ``SELECT * FROM finetunes|scores``: the rows of a table of measurements
(:mod:`shift.engine.tables`), not a ranking of models."""

from __future__ import annotations

from typing import Any

from shift.engine.steps.base import Context, Runner
from shift.engine.tables import table_count, table_rows
from shift.query.steps import Table
from shift.records import Result


class TableRunner(Runner[Table]):
    """The table's rows matching the filters, in its order, at most the budget; ``plan`` says
    the table, filters, order and limit. EXPLAIN: the rows after each filter, then the order."""

    def run(self, step: Table, cx: Context) -> Result:
        plan = cx.plan
        return Result(
            query=plan.text,
            columns=step.columns(),
            rows=table_rows(step, plan.filters, plan.budget, cx.registry),
            plan={
                "table": step.table,
                "filters": [f.label for f in plan.filters],
                "order": None if step.order is None else _order(step),
                "limit": plan.budget,
            },
            timings=cx.timings,
        )

    def explain(self, step: Table, cx: Context) -> Result:
        plan = cx.plan
        rows: list[dict[str, Any]] = [
            {
                "step": f"all {step.table}",
                "detail": "",
                "models": table_count(step, [], cx.registry),
            }
        ]
        for i, f in enumerate(plan.filters):
            n = table_count(step, plan.filters[: i + 1], cx.registry)
            rows.append({"step": "filter", "detail": f.label, "models": n})
        order = _order(step) if step.order else "by task (default)"
        limit = f", keep {plan.budget}" if plan.budget is not None else ""
        rows.append({"step": "order", "detail": order + limit, "models": None})
        return Result(
            query=plan.text,
            columns=["step", "detail", "models"],
            rows=rows,
            plan={"table": step.table, "steps": rows},
        )


def _order(step: Table) -> str:
    assert step.order is not None
    return f"{step.order.column} {'DESC' if step.order.descending else 'ASC'}"
