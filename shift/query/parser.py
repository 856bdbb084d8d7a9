"""Text → typed AST. ``parse(text)`` returns a :class:`~shift.query.ast.Select` or raises
:class:`~shift.errors.QueryError` with line, column, a caret and a hint — never anything else."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from shift.errors import QueryError
from shift.query import ast
from shift.query.columns import TABLES
from shift.query.syntax import SYNTAX, Named, PositionedError, build_ranker, hint_for
from shift.query.syntax import span_of as _span

MAX_QUERY_CHARS = 20_000
MAX_NESTING = 64
#: AND/OR/NOT nodes nested deeper than this are refused (SQLite's parser stack is ~100 deep)
MAX_EXPR_DEPTH = 32
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


@functools.cache
def _lark() -> Any:
    from lark import Lark

    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse_number(text: str) -> int | float:
    """``'30M'`` → 30_000_000; suffixes K/M/G (case-insensitive) multiply by 1e3/1e6/1e9."""
    from decimal import Decimal

    mult = 1
    if text and text[-1].lower() in _SUFFIX:
        mult = int(_SUFFIX[text[-1].lower()])
        text = text[:-1]
    exact = Decimal(text) * mult
    if not exact.is_finite() or abs(exact) > Decimal(sys.float_info.max):
        raise ValueError(f"number {text} is out of range")
    if not any(c in text for c in ".eE"):  # integer notation: exact at any size
        return int(exact)
    value = float(exact)
    return int(value) if value.is_integer() else value


def _unquote(tok: str) -> str:
    body = tok[1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _build_transformer() -> Any:
    from lark import Token, Transformer, v_args

    def lit(tok: Any) -> ast.Literal:
        if isinstance(tok, ast.Literal):
            return tok
        kind = tok.type
        if kind in ("NUMBER", "INT"):
            try:
                return ast.Literal(parse_number(str(tok)), _span(tok))
            except (ValueError, ArithmeticError):
                raise PositionedError(
                    f"number {tok} is out of range",
                    _span(tok),
                    "numbers must be finite and at most 1.8e308",
                ) from None
        if kind == "STRING":
            return ast.Literal(_unquote(str(tok)), _span(tok))
        if kind in ("TRUE", "FALSE"):
            return ast.Literal(kind == "TRUE", _span(tok))
        return ast.Literal(str(tok), _span(tok))

    @v_args(meta=True)
    class ToAst(Transformer):  # type: ignore[misc]
        def ident(self, meta: Any, children: list[Any]) -> ast.Literal:
            return ast.Literal(str(children[0]), _span(children[0]))

        def column(self, meta: Any, children: list[Any]) -> Token:
            return children[0]

        def compare(self, meta: Any, c: list[Any]) -> ast.Compare:
            col, op, val = c
            op = "!=" if str(op) == "<>" else str(op)
            return ast.Compare(str(col).lower(), op, lit(val), _span(meta), _span(col))

        def in_list(self, meta: Any, c: list[Any]) -> ast.InList:
            col = c[0]
            negated = any(isinstance(x, Token) and x.type == "NOT" for x in c)
            values = [x for x in c[1:] if not (isinstance(x, Token) and x.type in ("NOT", "IN"))]
            return ast.InList(
                str(col).lower(), tuple(lit(v) for v in values), negated, _span(meta), _span(col)
            )

        def like(self, meta: Any, c: list[Any]) -> ast.Like:
            col, pattern = c[0], c[-1]
            negated = any(isinstance(x, Token) and x.type == "NOT" for x in c)
            return ast.Like(str(col).lower(), lit(pattern), negated, _span(meta), _span(col))

        def is_null(self, meta: Any, c: list[Any]) -> ast.IsNull:
            negated = any(isinstance(x, Token) and x.type == "NOT" for x in c)
            return ast.IsNull(str(c[0]).lower(), negated, _span(meta), _span(c[0]))

        def not_(self, meta: Any, c: list[Any]) -> ast.Not:
            return ast.Not(c[-1], _span(meta))

        def and_expr(self, meta: Any, c: list[Any]) -> ast.Expr:
            return ast.And(tuple(t for x in c for t in ast.conjuncts(x)), _span(meta))

        def or_expr(self, meta: Any, c: list[Any]) -> ast.Or:
            flat = (t for x in c for t in (x.items if isinstance(x, ast.Or) else (x,)))
            return ast.Or(tuple(flat), _span(meta))

        def where_clause(self, meta: Any, c: list[Any]) -> tuple[str, Any]:
            return ("where", c[-1])

        def named_arg(self, meta: Any, c: list[Any]) -> Named:
            name, op, value = c
            if str(op) != "=":
                raise PositionedError(
                    f"unexpected {str(op)!r} in an argument",
                    _span(op),
                    f"write arguments as name=value, e.g. {name.value.lower()}=5",
                )
            v = value.value.lower() if isinstance(value, ast.Literal) else lit(value).value
            return Named(name.value.lower(), v, _span(meta))

        def ranker(self, meta: Any, c: list[Any]) -> ast.Ranker:
            return build_ranker(c, _span(meta), lit)

        def rank_clause(self, meta: Any, c: list[Any]) -> tuple[str, Any]:
            return ("rank", c[-1])

        def order_clause(self, meta: Any, c: list[Any]) -> tuple[str, Any]:
            col = c[2]
            desc = len(c) > 3 and str(c[3]).lower() == "desc"
            return ("order", ast.OrderBy(str(col).lower(), desc, _span(col)))

        def limit_clause(self, meta: Any, c: list[Any]) -> tuple[str, Any]:
            return ("limit", (int(str(c[1])), _span(c[1])))

        def all_rows(self, meta: Any, c: list[Any]) -> tuple[None, ast.Span]:
            return (None, _span(c[0]))

        def top_n(self, meta: Any, c: list[Any]) -> tuple[int, ast.Span]:
            return (int(str(c[1])), _span(c[1]))

        def pool_source(self, meta: Any, c: list[Any]) -> tuple[str, ast.Span]:
            return (c[1].value, c[1].pos)

        def models_source(self, meta: Any, c: list[Any]) -> tuple[str, ast.Span]:
            return ("all", _span(c[0]))

        def table_source(self, meta: Any, c: list[Any]) -> tuple[str, ast.Span, str]:
            name = str(c[0].value).lower()
            if name not in TABLES:
                raise PositionedError(
                    f"unknown source {c[0].value!r}",
                    c[0].pos,
                    "write FROM pool NAME, FROM models, or a table of measurements: "
                    + ", ".join(TABLES),
                )
            return ("all", c[0].pos, name)

        def select(self, meta: Any, c: list[Any]) -> ast.Select:
            (top, top_pos), (pool, pool_pos, *table) = c[1], c[3]
            clauses = dict(x for x in c[4:])
            limit, limit_pos = clauses.get("limit", (None, ast.NOWHERE))
            return ast.Select(
                top=top,
                pool=pool,
                where=clauses.get("where"),
                rank=clauses.get("rank"),
                order=clauses.get("order"),
                limit=limit,
                table=table[0] if table else None,
                pool_pos=pool_pos,
                top_pos=top_pos,
                limit_pos=limit_pos,
            )

        def start(self, meta: Any, c: list[Any]) -> ast.Select:
            sel: ast.Select = c[-1]
            if len(c) == 2:
                from dataclasses import replace

                sel = replace(sel, explain=True)
            return sel

    return ToAst()


@functools.cache
def _transformer() -> Any:
    return _build_transformer()


def _check_limits(text: str) -> None:
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"query is too long ({len(text)} characters)",
            text=text[:200],
            line=1,
            column=1,
            hint=f"queries are limited to {MAX_QUERY_CHARS} characters",
        )
    depth, line, col = 0, 1, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise QueryError(
                    "query is nested too deeply",
                    text=text,
                    line=line,
                    column=col,
                    hint=f"at most {MAX_NESTING} levels of parentheses",
                )
        elif ch == ")":
            depth = max(0, depth - 1)


def parse(text: str) -> ast.Select:
    """Parse one query. Raises :class:`QueryError` (and only that) on any malformed input."""
    from lark.exceptions import (
        UnexpectedCharacters,
        UnexpectedEOF,
        UnexpectedInput,
        UnexpectedToken,
        VisitError,
    )

    if not isinstance(text, str):
        raise QueryError("a query must be text", text=str(text), line=1, column=1)
    _check_limits(text)
    if not text.strip():
        raise QueryError("empty query", text=text, line=1, column=1, hint=SYNTAX)
    try:
        tree = _lark().parse(text)
    except UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            msg = "unexpected end of query"
        else:
            line, col = tok.line or 1, tok.column or 1
            msg = f"unexpected {str(tok)!r}"
        raise QueryError(
            msg,
            text=text,
            line=line,
            column=col,
            length=len(str(tok)) or 1,
            hint=hint_for(e.expected, text),
        ) from None
    except UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        hint = hint_for(e.allowed or set(), text)
        if ch in "'\"":
            hint = "strings must be closed on the same line with a matching quote"
        raise QueryError(
            f"unexpected character {ch!r}", text=text, line=e.line, column=e.column, hint=hint
        ) from None
    except UnexpectedEOF as e:
        lines = text.splitlines() or [""]
        raise QueryError(
            "unexpected end of query",
            text=text,
            line=len(lines),
            column=len(lines[-1]) + 1,
            hint=hint_for(set(e.expected), text),
        ) from None
    except UnexpectedInput as e:  # pragma: no cover - other lark input errors
        raise QueryError(
            "malformed query",
            text=text,
            line=getattr(e, "line", 1) or 1,
            column=getattr(e, "column", 1) or 1,
            hint=SYNTAX,
        ) from None
    try:
        select = _transformer().transform(tree)
    except VisitError as e:
        orig = e.orig_exc
        if isinstance(orig, PositionedError):
            sp = orig.span
            raise QueryError(
                orig.message,
                text=text,
                line=sp.line,
                column=sp.column,
                length=sp.length,
                hint=orig.hint,
            ) from None
        raise QueryError(
            f"malformed query: {orig}", text=text, line=1, column=1, hint=SYNTAX
        ) from None
    except (RecursionError, ValueError, OverflowError) as e:
        raise QueryError(
            f"malformed query: {e}", text=text, line=1, column=1, hint=SYNTAX
        ) from None
    _check_depth(select.where, text)
    return select


def _check_depth(expr: ast.Expr | None, text: str) -> None:
    """Refuse conditions whose AND/OR/NOT nesting exceeds ``MAX_EXPR_DEPTH`` (iteratively)."""
    stack: list[tuple[Any, int]] = [(expr, 0)] if expr is not None else []
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, ast.And | ast.Or | ast.Not):
            continue
        if depth >= MAX_EXPR_DEPTH:
            sp = node.pos
            raise QueryError(
                "condition is nested too deeply",
                text=text,
                line=sp.line,
                column=sp.column,
                hint=f"at most {MAX_EXPR_DEPTH} levels of AND/OR/NOT; simplify the condition",
            )
        children = [node.expr] if isinstance(node, ast.Not) else list(node.items)
        stack.extend((c, depth + 1) for c in children)


def parse_condition(text: str) -> ast.Expr:
    """Parse a bare condition (what follows WHERE), e.g. for pools and the fluent builder."""
    stripped = text.strip()
    if stripped[:5].lower() == "where":
        stripped = stripped[5:]
    prefix = "SELECT * FROM models WHERE "
    try:
        sel = parse(prefix + stripped)
    except QueryError as e:
        col = e.column - len(prefix) if e.line == 1 else e.column
        raise QueryError(
            e.message,
            text=stripped,
            line=e.line,
            column=max(1, col),
            length=e.length,
            hint=e.hint,
        ) from None
    if sel.rank or sel.order or sel.limit is not None or sel.where is None:
        raise QueryError(
            "a condition cannot contain RANK BY, ORDER BY or LIMIT",
            text=stripped,
            line=1,
            column=1,
            hint="write only the condition, e.g. params < 30M AND dim <= 2048",
        )
    return _shift_positions(sel.where, len(prefix))


def _shift_positions(expr: ast.Expr, offset: int) -> ast.Expr:
    """Positions in the condition text, not in the wrapper query (line-1 columns only)."""
    from dataclasses import fields, replace

    def fix(span: ast.Span) -> ast.Span:
        if span.line == 1:
            return ast.Span(1, max(1, span.column - offset), span.length)
        return span

    def walk(node: Any) -> Any:
        if isinstance(node, tuple):
            return tuple(walk(n) for n in node)
        if not hasattr(node, "__dataclass_fields__"):
            return node
        changes = {}
        for f in fields(node):
            v = getattr(node, f.name)
            if isinstance(v, ast.Span):
                changes[f.name] = fix(v)
            elif hasattr(v, "__dataclass_fields__") or isinstance(v, tuple):
                changes[f.name] = walk(v)
        return replace(node, **changes)

    return walk(expr)
