"""Syntax helpers of the parser: how terminals are named in hints, positioned errors raised while
building the AST, and the ranker node (positional, nested and ``name=value`` arguments)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from shift.errors import QueryError
from shift.query import ast

# how terminals are named in "expected ..." hints
READABLE = {
    "EXPLAIN": "EXPLAIN",
    "SELECT": "SELECT",
    "FROM": "FROM",
    "TOP": "top",
    "POOL": "pool",
    "MODELS": "models",
    "WHERE": "WHERE",
    "_AND": "AND",
    "_OR": "OR",
    "NOT": "NOT",
    "IN": "IN",
    "LIKE": "LIKE",
    "IS": "IS",
    "NULL": "NULL",
    "TRUE": "true",
    "FALSE": "false",
    "RANK": "RANK BY",
    "BY": "BY",
    "ORDER": "ORDER BY",
    "DIRECTION": "ASC/DESC",
    "LIMIT": "LIMIT",
    "STAR": "*",
    "COMP_OP": "a comparison (= != < <= > >=)",
    "INT": "an integer",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "IDENT": "a name",
    "LPAR": "(",
    "RPAR": ")",
    "COMMA": ",",
    "$END": "end of query",
    "<END-OF-FILE>": "end of query",
}

SYNTAX = (
    "SELECT (top N | *) FROM (pool NAME | models | finetunes | scores) [WHERE cond] "
    "[RANK BY agnostic | PROXY[(name=value, ...)] | hybrid(PROXY) | avg(PROXY) | similar(k=N)] "
    "[ORDER BY col [ASC|DESC]] [LIMIT n]"
)


def error_at(text: str, span: ast.Span, msg: str, hint: str | None = None) -> QueryError:
    """A QueryError pointing at ``span`` of the query ``text``."""
    return QueryError(
        msg, text=text, line=span.line, column=span.column, length=span.length, hint=hint
    )


def did_you_mean(word: str, options: list[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``options``, else ``""`` (a hint's prefix)."""
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def span_of(meta_or_tok: Any) -> ast.Span:
    line = getattr(meta_or_tok, "line", 1) or 1
    col = getattr(meta_or_tok, "column", 1) or 1
    end = getattr(meta_or_tok, "end_pos", None)
    start = getattr(meta_or_tok, "start_pos", None)
    length = (end - start) if (end is not None and start is not None) else 1
    return ast.Span(line, col, max(1, length))


class PositionedError(Exception):
    """Raised inside the transformer; ``parse`` turns it into a QueryError with the text."""

    def __init__(self, message: str, span: ast.Span, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.span, self.hint = message, span, hint


@dataclass(frozen=True)
class Named:
    """A ``name=value`` ranker argument while the tree is built."""

    name: str
    value: ast.Scalar
    span: ast.Span


def build_ranker(c: list[Any], span: ast.Span, lit: Any) -> ast.Ranker:
    """Build a :class:`~shift.query.ast.Ranker` from ``name`` and its transformed arguments: a
    nested ranker without parentheses is a bare name (its lower-case string); named arguments
    follow the positional ones and appear once each."""
    name = c[0].value.lower()
    args: list[Any] = []
    arg_pos: list[ast.Span] = []
    kwargs: list[tuple[str, Any]] = []
    kwarg_pos: list[ast.Span] = []
    for x in c[1:]:
        if isinstance(x, Named):
            if any(k == x.name for k, _ in kwargs):
                raise PositionedError(
                    f"{x.name} is given twice", x.span, f"give {x.name}=... once in {name}(...)"
                )
            kwargs.append((x.name, x.value))
            kwarg_pos.append(x.span)
            continue
        if kwargs:
            sp = x.pos if isinstance(x, ast.Ranker) else span_of(x)
            raise PositionedError(
                "a positional argument cannot follow a named one",
                sp,
                f"put positional arguments first, e.g. {name}(linear, k=5)",
            )
        if isinstance(x, ast.Ranker):
            args.append(x if (x.args or x.kwargs) else x.name)
            arg_pos.append(x.pos)
        else:
            args.append(lit(x).value)
            arg_pos.append(span_of(x))
    return ast.Ranker(name, tuple(args), tuple(kwargs), span, tuple(arg_pos), tuple(kwarg_pos))


def expected_hint(expected: set[str] | frozenset[str]) -> str:
    words = sorted({READABLE.get(e, e) for e in expected})
    return "expected " + (
        ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    )


def hint_for(expected: Any, text: str) -> str:
    exp = {str(x) for x in expected}
    if exp == {"FROM"}:
        return "after SELECT top N or SELECT *, write FROM pool NAME or FROM models"
    if "TOP" in exp and "STAR" in exp:
        return "write SELECT top N (the budget) or SELECT *"
    if exp and exp <= {"POOL", "MODELS", "IDENT"} and "POOL" in exp:
        return (
            "write FROM pool NAME (see `shift-cli pools list`), FROM models, "
            "FROM finetunes or FROM scores"
        )
    if "COMP_OP" in exp:
        return expected_hint(exp) + "; e.g. params < 30M, task=flowers, source IN ('a', 'b')"
    return expected_hint(exp) if exp else SYNTAX
