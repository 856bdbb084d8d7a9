"""Condition AST → parameterised SQL over the ``models`` table (aliased ``m``).

Values never enter the SQL text: every literal becomes a ``?`` parameter."""

from __future__ import annotations

from typing import Any

from shift.errors import QueryError
from shift.query import ast
from shift.query.columns import COLUMNS, TASK_COLUMN, Column
from shift.query.syntax import did_you_mean, error_at

_OPS = {"=", "!=", "<", "<=", ">", ">="}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what SQLite can bind


def column(
    name: str,
    span: ast.Span,
    text: str,
    columns: dict[str, Column] = COLUMNS,
    table: str | None = None,
) -> Column:
    """Look up a column (of the models, or of ``table`` with ``columns``) or raise a QueryError
    listing the valid ones (with a close match)."""
    col = columns.get(name)
    if col is not None:
        return col
    valid = [*columns] if table else [*columns, TASK_COLUMN]
    hint = (
        did_you_mean(name, valid)
        + (f"columns of {table}: " if table else "valid columns: ")
        + ", ".join(valid)
    )
    where = f" in {table}" if table else ""
    return _raise(error_at(text, span, f"unknown column {name!r}{where}", hint))


def _raise(err: QueryError) -> Any:
    raise err


def _value(col: Column, lit: ast.Literal, text: str) -> Any:
    v = lit.value
    if col.type in ("int", "real"):
        if isinstance(v, bool) or not isinstance(v, int | float):
            _raise(
                error_at(
                    text,
                    lit.pos,
                    f"{col.name} is a number, got {v!r}",
                    f"compare {col.name} with a number, e.g. {col.name} < 30M",
                )
            )
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:  # SQLite would overflow
            _raise(
                error_at(
                    text,
                    lit.pos,
                    f"number {v} is out of range",
                    f"numbers in a condition lie within ±{INT64_MAX:,} (64-bit integers)",
                )
            )
        return v
    if col.type == "bool":
        if not isinstance(v, bool):
            _raise(
                error_at(
                    text,
                    lit.pos,
                    f"{col.name} is true or false, got {v!r}",
                    f"write {col.name} = true",
                )
            )
        return int(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if not isinstance(v, str) else v


def compile_condition(
    expr: ast.Expr,
    text: str,
    columns: dict[str, Column] = COLUMNS,
    table: str | None = None,
) -> tuple[str, list[Any]]:
    """Return ``(sql, binds)`` (the SQL and its bind values) for a condition on models (``task``
    must have been removed), or on the rows of ``table`` whose ``columns`` are given (there
    ``task`` is a column)."""
    binds: list[Any] = []

    def walk(node: ast.Expr) -> str:
        if isinstance(node, ast.And):
            return "(" + " AND ".join(walk(i) for i in node.items) + ")"
        if isinstance(node, ast.Or):
            return "(" + " OR ".join(walk(i) for i in node.items) + ")"
        if isinstance(node, ast.Not):
            return f"(NOT {walk(node.expr)})"
        if node.column == TASK_COLUMN and table is None:
            _raise(
                error_at(
                    text,
                    node.column_pos,
                    "task can only be chosen as task = NAME joined "
                    "to the rest of the condition with AND",
                    "e.g. WHERE task=flowers AND params < 30M",
                )
            )
        col = column(node.column, node.column_pos, text, columns, table)
        if isinstance(node, ast.Compare):
            if node.op not in _OPS:  # pragma: no cover - grammar guarantees it
                _raise(error_at(text, node.pos, f"unknown operator {node.op}", None))
            if col.type == "tags":
                if node.op not in ("=", "!="):
                    _raise(
                        error_at(
                            text,
                            node.pos,
                            "tag supports only = and != and IN",
                            "e.g. tag = 'expert'",
                        )
                    )
                binds.append(_value(col, node.value, text))
                neg = "NOT " if node.op == "!=" else ""
                return f"({neg}EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value = ?))"
            binds.append(_value(col, node.value, text))
            return f"({col.sql} {node.op} ?)"
        if isinstance(node, ast.InList):
            vals = [_value(col, v, text) for v in node.values]
            binds.extend(vals)
            marks = ", ".join("?" * len(vals))
            neg = "NOT " if node.negated else ""
            if col.type == "tags":
                return f"({neg}EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value IN ({marks})))"
            return f"({col.sql} {neg}IN ({marks}))"
        if isinstance(node, ast.Like):
            if col.type not in ("text", "tags"):
                _raise(
                    error_at(
                        text,
                        node.pos,
                        f"LIKE needs a text column; {col.name} is {col.type}",
                        "use = < > for numbers",
                    )
                )
            binds.append(_value(col, node.pattern, text))
            neg = "NOT " if node.negated else ""
            if col.type == "tags":
                return f"({neg}EXISTS (SELECT 1 FROM json_each(m.tags) WHERE value LIKE ?))"
            return f"({col.sql} {neg}LIKE ?)"
        if isinstance(node, ast.IsNull):
            neg = "NOT " if node.negated else ""
            return f"({col.sql} IS {neg}NULL)"
        raise TypeError(f"unknown node {node!r}")  # pragma: no cover

    return walk(expr), binds
