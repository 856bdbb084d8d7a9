"""A fluent builder producing the same AST as the text form::

c.select(2).pool("resnet50").where(task="flowers").rank("hybrid", "linear")
==  SELECT top 2 FROM pool resnet50 WHERE task=flowers RANK BY hybrid(linear)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from shift.errors import ShiftError
from shift.query import ast
from shift.query.format import to_text
from shift.query.parser import parse_condition

if TYPE_CHECKING:
    from shift.records import Result


class Runner(Protocol):
    """What runs a built query: the client."""

    def query(self, query: ast.Select) -> Result: ...


def _lit(v: Any) -> ast.Literal:
    if not isinstance(v, int | float | str | bool):
        raise TypeError(f"unsupported value {v!r}")
    return ast.Literal(v)


class QueryBuilder:
    """Immutable: every method returns a new builder."""

    def __init__(self, client: Runner | None, select: ast.Select) -> None:
        self._client = client
        self._select = select

    def _with(self, **changes: Any) -> QueryBuilder:
        return QueryBuilder(self._client, replace(self._select, **changes))

    def pool(self, name: str) -> QueryBuilder:
        return self._with(pool=name)

    def models(self) -> QueryBuilder:
        return self._with(pool="all")

    def where(self, condition: str | None = None, **equals: Any) -> QueryBuilder:
        """AND a condition: a text condition (``"params < 30M"``) and/or ``column=value`` pairs
        (a list or tuple value means ``IN``)."""
        terms: list[ast.Expr] = ast.conjuncts(self._select.where)
        if condition:
            terms.append(ast.without_positions(parse_condition(condition)))
        for col, v in equals.items():
            if isinstance(v, list | tuple):
                terms.append(ast.InList(col, tuple(_lit(x) for x in v)))
            else:
                terms.append(ast.Compare(col, "=", _lit(v)))
        return self._with(where=ast.and_all(terms))

    def rank(self, name: str | ast.Ranker, *args: Any, **kwargs: Any) -> QueryBuilder:
        """``rank("knn", k=5)`` → ``RANK BY knn(k=5)``; a nested ranker is a :func:`ranker`:
        ``rank("avg", ranker("linear", lr=0.01))``."""
        return self._with(
            rank=name if isinstance(name, ast.Ranker) else ranker(name, *args, **kwargs)
        )

    def order_by(self, column: str, descending: bool = False) -> QueryBuilder:
        return self._with(order=ast.OrderBy(column, descending))

    def limit(self, n: int) -> QueryBuilder:
        return self._with(limit=n)

    def explain(self) -> QueryBuilder:
        return self._with(explain=True)

    def to_ast(self) -> ast.Select:
        return self._select

    def to_text(self) -> str:
        try:
            return to_text(self._select)
        except (ValueError, TypeError) as e:
            raise ShiftError(f"cannot build the query: {e}") from None

    def __str__(self) -> str:
        return self.to_text()

    def run(self) -> Result:
        if self._client is None:
            raise RuntimeError("this builder is not bound to a client")
        return self._client.query(self._select)


def ranker(name: str, *args: Any, **kwargs: Any) -> ast.Ranker:
    """A ranker node as the parser makes it: names and string values lower-case."""

    def norm(a: Any) -> Any:
        return a.lower() if isinstance(a, str) else a

    return ast.Ranker(
        name.lower(),
        tuple(norm(a) for a in args),
        tuple((k.lower(), norm(v)) for k, v in kwargs.items()),
    )


def table(name: str, client: Runner | None = None) -> QueryBuilder:
    """``table("finetunes")`` → ``SELECT * FROM finetunes`` (add ``where``/``order_by``)."""
    return QueryBuilder(client, ast.Select(top=None, pool="all", table=name.lower()))


def select(top: int | str | None = None, client: Runner | None = None) -> QueryBuilder:
    """``select(2)`` → ``SELECT top 2``; ``select()`` or ``select("*")`` → ``SELECT *``."""
    n = None if top in (None, "*") else int(top)
    return QueryBuilder(client, ast.Select(top=n, pool="all"))
