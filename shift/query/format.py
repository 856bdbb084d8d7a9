"""AST → query text. ``parse(to_text(q)) == q`` for every AST the parser or builder produces."""

from __future__ import annotations

import re

from shift.query import ast

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
KEYWORDS = {
    "explain",
    "select",
    "from",
    "top",
    "pool",
    "models",
    "where",
    "and",
    "or",
    "not",
    "in",
    "like",
    "is",
    "null",
    "true",
    "false",
    "rank",
    "by",
    "order",
    "asc",
    "desc",
    "limit",
}


def quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def literal(v: ast.Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return quote(str(v))


def ident(s: str) -> str:
    if _IDENT.match(s) and s.lower() not in KEYWORDS:
        return s
    raise ValueError(f"{s!r} is not a valid name in a query")


def expr_text(e: ast.Expr, parent: str = "") -> str:
    if isinstance(e, ast.And):
        inner = " AND ".join(expr_text(i, "and") for i in e.items)
        return f"({inner})" if parent == "not" else inner
    if isinstance(e, ast.Or):
        inner = " OR ".join(expr_text(i, "or") for i in e.items)
        return f"({inner})" if parent in ("and", "not") else inner
    if isinstance(e, ast.Not):
        return f"NOT {expr_text(e.expr, 'not')}"
    if isinstance(e, ast.Compare):
        return f"{ident(e.column)} {e.op} {literal(e.value.value)}"
    if isinstance(e, ast.InList):
        vals = ", ".join(literal(v.value) for v in e.values)
        return f"{ident(e.column)} {'NOT ' if e.negated else ''}IN ({vals})"
    if isinstance(e, ast.Like):
        return f"{ident(e.column)} {'NOT ' if e.negated else ''}LIKE {literal(e.pattern.value)}"
    if isinstance(e, ast.IsNull):
        return f"{ident(e.column)} IS {'NOT ' if e.negated else ''}NULL"
    raise TypeError(f"not an expression: {e!r}")


def _arg(a: ast.Scalar | ast.Ranker) -> str:
    if isinstance(a, ast.Ranker):
        return ranker_text(a)
    if isinstance(a, str) and _IDENT.match(a) and a == a.lower() and a not in KEYWORDS:
        return a
    return literal(a)


def ranker_text(r: ast.Ranker) -> str:
    """``name``, ``name(a, b)`` or ``name(a, key=value)``; nested rankers keep their arguments."""
    parts = [_arg(a) for a in r.args] + [f"{ident(k)}={_arg(v)}" for k, v in r.kwargs]
    return ident(r.name) + (f"({', '.join(parts)})" if parts else "")


def to_text(q: ast.Select) -> str:
    parts = ["EXPLAIN"] if q.explain else []
    parts.append("SELECT " + ("*" if q.top is None else f"top {q.top}"))
    if not _IDENT.match(q.pool):  # after `pool` any name, even a keyword, is read as a name
        raise ValueError(f"{q.pool!r} is not a valid pool name in a query")
    parts.append(f"FROM {ident(q.table)}" if q.table else f"FROM pool {q.pool}")
    if q.where is not None:
        parts.append("WHERE " + expr_text(q.where))
    if q.rank is not None:
        parts.append(f"RANK BY {ranker_text(q.rank)}")
    if q.order is not None:
        parts.append(f"ORDER BY {ident(q.order.column)} {'DESC' if q.order.descending else 'ASC'}")
    if q.limit is not None:
        parts.append(f"LIMIT {q.limit}")
    return " ".join(parts)
