"""The typed AST of a shift query. Text queries and the fluent builder both produce these nodes;
positions (``Span``) are carried for error messages and ignored by equality."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Span:
    """1-based line/column of the first character and the length of the text."""

    line: int = 1
    column: int = 1
    length: int = 1


NOWHERE = Span()
Scalar = int | float | str | bool


def _pos() -> Span:
    return field(default=NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Literal:
    value: Scalar
    pos: Span = _pos()


@dataclass(frozen=True)
class Compare:
    """``column op value`` with op in ``= != < <= > >=``."""

    column: str
    op: str
    value: Literal
    pos: Span = _pos()
    column_pos: Span = _pos()


@dataclass(frozen=True)
class InList:
    column: str
    values: tuple[Literal, ...]
    negated: bool = False
    pos: Span = _pos()
    column_pos: Span = _pos()


@dataclass(frozen=True)
class Like:
    column: str
    pattern: Literal
    negated: bool = False
    pos: Span = _pos()
    column_pos: Span = _pos()


@dataclass(frozen=True)
class IsNull:
    column: str
    negated: bool = False
    pos: Span = _pos()
    column_pos: Span = _pos()


@dataclass(frozen=True)
class Not:
    expr: Expr
    pos: Span = _pos()


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]
    pos: Span = _pos()


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]
    pos: Span = _pos()


Predicate = Compare | InList | Like | IsNull
Expr = Predicate | Not | And | Or


@dataclass(frozen=True)
class Ranker:
    """``RANK BY name`` or ``RANK BY name(arg, ..., key=value, ...)``: ``agnostic``, ``knn``,
    ``hybrid(linear)``, ``knn(k=5, metric=cosine)``, ``avg(linear(lr=0.01))``.

    ``args`` are positional: scalars (a bare name is its lower-case string) or nested rankers
    written with parentheses; ``kwargs`` are ``(name, value)`` pairs in the order written.
    ``arg_pos``/``kwarg_pos`` locate each one in the text (ignored by equality)."""

    name: str
    args: tuple[Scalar | Ranker, ...] = ()
    kwargs: tuple[tuple[str, Scalar], ...] = ()
    pos: Span = _pos()
    arg_pos: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    kwarg_pos: tuple[Span, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        parts = [str(a) for a in self.args] + [f"{k}={v}" for k, v in self.kwargs]
        return self.name if not parts else f"{self.name}({', '.join(parts)})"

    def arg_span(self, i: int) -> Span:
        """Where positional argument ``i`` is (the whole ranker if unknown)."""
        return self.arg_pos[i] if i < len(self.arg_pos) else self.pos

    def kwarg_span(self, name: str) -> Span:
        """Where ``name=value`` is (the whole ranker if unknown)."""
        for (k, _), sp in zip(self.kwargs, self.kwarg_pos, strict=False):
            if k == name:
                return sp
        return self.pos


@dataclass(frozen=True)
class OrderBy:
    column: str
    descending: bool = False
    pos: Span = _pos()


@dataclass(frozen=True)
class Select:
    """``[EXPLAIN] SELECT (top N | *) FROM (pool P | models) [WHERE e] [RANK BY r]
    [ORDER BY c] [LIMIT n]``.

    ``top`` is the budget B (None for ``*``); ``pool`` is ``"all"`` for ``FROM models``.
    ``table`` names a table of measurements instead of models (``FROM finetunes``, ``FROM
    scores``; ``pool`` is then ``"all"`` and unused).
    """

    top: int | None
    pool: str
    where: Expr | None = None
    rank: Ranker | None = None
    order: OrderBy | None = None
    limit: int | None = None
    explain: bool = False
    table: str | None = None
    pool_pos: Span = _pos()
    top_pos: Span = _pos()
    limit_pos: Span = _pos()


def conjuncts(expr: Expr | None) -> list[Expr]:
    """The top-level AND terms of ``expr`` (``[]`` for none)."""
    if expr is None:
        return []
    if isinstance(expr, And):
        return [t for item in expr.items for t in conjuncts(item)]
    return [expr]


def and_all(items: list[Expr]) -> Expr | None:
    """Inverse of :func:`conjuncts`: ``None`` for no term, the term for one, a flat ``And`` else."""
    flat = [t for item in items for t in conjuncts(item)]
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def without_positions(node: Any) -> Any:
    """``node`` with every ``Span`` reset to ``NOWHERE``: for nodes parsed from another text (the
    builder's condition strings), whose positions would point into the wrong query."""
    if isinstance(node, tuple):
        return tuple(without_positions(x) for x in node)
    if not is_dataclass(node) or isinstance(node, (Span, type)):
        return node
    changes = {
        f.name: NOWHERE if isinstance(v, Span) else without_positions(v)
        for f in fields(node)
        if (v := getattr(node, f.name)) is not None
    }
    return replace(node, **changes)
