"""The query language: text → AST, positioned errors with hints, planner checks, fuzzing,
round-trips through ``to_text`` and equality with the fluent builder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import fake_model as make_model
from records import fake_task as make_task

from shift.errors import QueryError
from shift.query import ast
from shift.query.ast import And, Compare, InList, IsNull, Like, Literal, Not, Or, OrderBy, Ranker
from shift.query.builder import select
from shift.query.format import to_text
from shift.query.parser import MAX_NESTING, MAX_QUERY_CHARS, parse, parse_number
from shift.query.planner import check_condition, plan_text
from shift.query.steps import Agnostic, Hybrid, Order, ProxyCall, RankByProxy
from shift.store.registry import Registry


def C(col: str, op: str, v: object) -> Compare:  # noqa: N802 - reads like the AST
    return Compare(col, op, Literal(v))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry.open(tmp_path_factory.mktemp("parser-home"))
    reg.put_task(make_task("flowers"))
    reg.put_task(make_task("digits"))
    reg.add_model(make_model("m1", imagenet_top1=76.1, imagenet_source="paper"))
    reg.add_model(make_model("m2", params=60_000_000, dim=2048))
    reg.add_pool("small", "params < 10M")
    yield reg
    reg.close()


# ---- the examples of the language ------------------------------------------------------------


def test_example_budget_and_pool() -> None:
    q = parse("SELECT top 2 FROM pool resnet50 WHERE task=flowers")
    assert q == ast.Select(top=2, pool="resnet50", where=C("task", "=", "flowers"))
    assert q.rank is None and q.order is None and q.limit is None and q.explain is False
    assert q.pool_pos == ast.Span(1, 24, 8)
    assert q.top_pos == ast.Span(1, 12, 1)


def test_example_filters_and_hybrid() -> None:
    q = parse(
        "SELECT top 3 FROM pool all WHERE task=flowers AND params < 30M AND dim <= 2048 "
        "RANK BY hybrid(linear)"
    )
    assert q == ast.Select(
        top=3,
        pool="all",
        where=And((C("task", "=", "flowers"), C("params", "<", 30_000_000), C("dim", "<=", 2048))),
        rank=Ranker("hybrid", ("linear",)),
    )
    assert str(q.rank) == "hybrid(linear)"


def test_example_models_order_limit() -> None:
    q = parse("SELECT * FROM models WHERE source='torchvision' ORDER BY imagenet_top1 DESC LIMIT 5")
    assert q == ast.Select(
        top=None,
        pool="all",
        where=C("source", "=", "torchvision"),
        order=OrderBy("imagenet_top1", descending=True),
        limit=5,
    )
    assert q.limit_pos == ast.Span(1, 83, 1)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT top 2 FROM pool resnet50 WHERE task=flowers",
        "SELECT * FROM models WHERE source='torchvision' ORDER BY imagenet_top1 DESC LIMIT 5",
        "SELECT top 3 FROM pool all WHERE task=flowers AND params < 30M RANK BY hybrid(linear)",
    ],
)
def test_explain_prefix(text: str) -> None:
    plain = parse(text)
    explained = parse("EXPLAIN " + text)
    assert explained.explain is True and plain.explain is False
    assert explained == ast.Select(**{**plain.__dict__, "explain": True})
    assert parse("explain\n" + text).explain is True


def test_keywords_are_case_insensitive() -> None:
    upper = parse(
        "EXPLAIN SELECT TOP 2 FROM POOL all WHERE task = flowers AND NOT dim IN (1, 2) "
        "AND name LIKE 'a%' AND license IS NOT NULL RANK BY HYBRID(LINEAR)"
    )
    lower = parse(
        "explain select top 2 from pool all where task = flowers and not dim in (1, 2) "
        "and name like 'a%' and license is not null rank by hybrid(linear)"
    )
    mixed = parse(
        "ExPlAiN SeLeCt ToP 2 FrOm PoOl all WhErE task = flowers AnD nOt dim In (1, 2) "
        "aNd name LiKe 'a%' AND license Is NoT nUlL RaNk bY Hybrid(Linear)"
    )
    assert upper == lower == mixed
    assert upper.rank == Ranker("hybrid", ("linear",))
    # column names are normalised to lower case too; pool names and values are not
    assert parse("SELECT * FROM models WHERE Params < 10").where == C("params", "<", 10)
    assert parse("select * from models order by Dim asc").order == OrderBy("dim", False)
    assert parse("SELECT * FROM pool Small").pool == "Small"
    assert parse("SELECT * FROM models WHERE name = 'ABC'").where == C("name", "=", "ABC")
    assert parse("SELECT * FROM models WHERE has_head = TRUE").where == C("has_head", "=", True)
    assert parse("SELECT * FROM models WHERE has_head = False").where == C("has_head", "=", False)


def test_precedence_not_and_or() -> None:
    q = parse("SELECT * FROM models WHERE a=1 OR b=2 AND NOT c=3")
    assert q.where == Or((C("a", "=", 1), And((C("b", "=", 2), Not(C("c", "=", 3))))))
    q = parse("SELECT * FROM models WHERE NOT a=1 AND b=2 OR c=3 AND d=4")
    assert q.where == Or(
        (And((Not(C("a", "=", 1)), C("b", "=", 2))), And((C("c", "=", 3), C("d", "=", 4))))
    )
    q = parse("SELECT * FROM models WHERE NOT NOT a=1")
    assert q.where == Not(Not(C("a", "=", 1)))


def test_parentheses_override_precedence() -> None:
    q = parse("SELECT * FROM models WHERE (a=1 OR b=2) AND c=3")
    assert q.where == And((Or((C("a", "=", 1), C("b", "=", 2))), C("c", "=", 3)))
    q = parse("SELECT * FROM models WHERE NOT (a=1 OR b=2)")
    assert q.where == Not(Or((C("a", "=", 1), C("b", "=", 2))))
    q = parse("SELECT * FROM models WHERE ((((a=1))))")
    assert q.where == C("a", "=", 1)
    # AND and OR are flattened, whatever the grouping
    q = parse("SELECT * FROM models WHERE a=1 AND (b=2 AND c=3)")
    assert q.where == And((C("a", "=", 1), C("b", "=", 2), C("c", "=", 3)))
    q = parse("SELECT * FROM models WHERE (a=1 OR b=2) OR c=3")
    assert q.where == Or((C("a", "=", 1), C("b", "=", 2), C("c", "=", 3)))
    # nesting up to the limit is fine
    deep = "SELECT * FROM models WHERE " + "(" * MAX_NESTING + "a=1" + ")" * MAX_NESTING
    assert parse(deep).where == C("a", "=", 1)


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("dim = 5", C("dim", "=", 5)),
        ("dim != 5", C("dim", "!=", 5)),
        ("dim <> 5", C("dim", "!=", 5)),
        ("dim < 5", C("dim", "<", 5)),
        ("dim <= 5", C("dim", "<=", 5)),
        ("dim > 5", C("dim", ">", 5)),
        ("dim >= 5", C("dim", ">=", 5)),
        ("dim=5", C("dim", "=", 5)),
        ("dim>=5", C("dim", ">=", 5)),
        ("dim IN (1, 2, 3)", InList("dim", (Literal(1), Literal(2), Literal(3)))),
        ("dim IN (7)", InList("dim", (Literal(7),))),
        ("dim NOT IN (1,2)", InList("dim", (Literal(1), Literal(2)), negated=True)),
        ("x IN (1, 'a', true, foo)", InList("x", tuple(map(Literal, (1, "a", True, "foo"))))),
        ("name LIKE 'res%'", Like("name", Literal("res%"))),
        ("name NOT LIKE '%_v2'", Like("name", Literal("%_v2"), negated=True)),
        ("license IS NULL", IsNull("license")),
        ("license IS NOT NULL", IsNull("license", negated=True)),
        ("task = flowers", C("task", "=", "flowers")),
        ("name = 'a b'", C("name", "=", "a b")),
        ('name = "a b"', C("name", "=", "a b")),
        ("family = resnet-v2", C("family", "=", "resnet-v2")),
    ],
)
def test_operators(cond: str, expected: ast.Expr) -> None:
    assert parse(f"SELECT * FROM models WHERE {cond}").where == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5K", 1500),
        ("1.5k", 1500),
        ("30M", 30_000_000),
        ("30m", 30_000_000),
        ("2G", 2_000_000_000),
        ("0.5g", 500_000_000),
        ("25.6M", 25_600_000),
        ("1.2345k", 1234.5),
        ("7", 7),
        ("-3", -3),
        ("+4", 4),
        ("1.5", 1.5),
        (".5", 0.5),
        ("1e3", 1000),
        ("2.5E-1", 0.25),
        ("0", 0),
    ],
)
def test_number_suffixes(text: str, value: float) -> None:
    lit = parse(f"SELECT * FROM models WHERE params < {text}").where
    assert isinstance(lit, Compare)
    assert lit.value.value == value
    assert type(lit.value.value) is type(value)
    assert parse_number(text) == value


def test_one_sided_ranges() -> None:
    q = parse("SELECT * FROM models WHERE params >= 10M")
    assert q.where == C("params", ">=", 10_000_000)
    q = parse("SELECT * FROM models WHERE params > 1M AND params <= 30M")
    assert q.where == And((C("params", ">", 1_000_000), C("params", "<=", 30_000_000)))
    q = parse("SELECT * FROM models WHERE imagenet_top1 > 80.5")
    assert q.where == C("imagenet_top1", ">", 80.5)


def test_strings_with_escaped_quotes() -> None:
    q = parse(r"SELECT * FROM models WHERE name = 'it\'s'")
    assert q.where == C("name", "=", "it's")
    q = parse(r'SELECT * FROM models WHERE name = "say \"hi\""')
    assert q.where == C("name", "=", 'say "hi"')
    q = parse(r"SELECT * FROM models WHERE name = 'back\\slash'")
    assert q.where == C("name", "=", "back\\slash")
    q = parse('SELECT * FROM models WHERE name = "it\'s" AND family = \'say "x"\'')
    assert q.where == And((C("name", "=", "it's"), C("family", "=", 'say "x"')))
    assert parse("SELECT * FROM models WHERE source = ''").where == C("source", "=", "")


def test_multiline_query() -> None:
    text = (
        "SELECT top 3\n"
        "  FROM pool all\n"
        "  WHERE task = flowers\n"
        "    AND (params < 30M OR dim <= 2048)\n"
        "  RANK BY hybrid(linear)\n"
    )
    q = parse(text)
    assert q == ast.Select(
        top=3,
        pool="all",
        where=And(
            (
                C("task", "=", "flowers"),
                Or((C("params", "<", 30_000_000), C("dim", "<=", 2048))),
            )
        ),
        rank=Ranker("hybrid", ("linear",)),
    )
    assert q.pool_pos == ast.Span(2, 13, 3)
    items = q.where.items  # type: ignore[union-attr]
    assert items[0].column_pos == ast.Span(3, 9, 4)


def test_rankers() -> None:
    assert parse("SELECT top 2 FROM pool all RANK BY agnostic").rank == Ranker("agnostic")
    assert parse("SELECT top 2 FROM pool all RANK BY knn").rank == Ranker("knn")
    assert parse("SELECT top 2 FROM pool all RANK BY foo(1, 'A b', bar)").rank == Ranker(
        "foo", (1, "A b", "bar")
    )


# ---- malformed queries: exact position and a hint naming what was expected ------------------

DEEP = "SELECT * FROM models WHERE " + "(" * 100 + "dim = 1" + ")" * 100
TOO_LONG = "SELECT * FROM models WHERE name = '" + "a" * MAX_QUERY_CHARS + "'"

MALFORMED = [
    # (query, line, column, words in the hint)
    ("SELECT top 2 pool all", 1, 14, "FROM"),
    ("SELECT * models", 1, 10, "FROM"),
    ("SELECT top 2 FROM pool", 1, 23, "a name"),
    ("SELECT top 2 FROM", 1, 18, "FROM pool NAME"),
    ("SELECT top FROM pool all", 1, 12, "an integer"),
    ("SELECT top 2.5 FROM pool all", 1, 12, "an integer"),
    ("SELECT top -1 FROM pool all", 1, 12, "an integer"),
    ("SELECT top 2 FROM pool all WHERE dim ~ 5", 1, 38, "comparison"),
    ("SELECT * FROM models WHERE name = 'abc", 1, 35, "quote"),
    ('SELECT * FROM models WHERE name = "abc', 1, 35, "quote"),
    ("SELECT * FROM models WHERE dim = 1 garbage", 1, 36, "RANK BY"),
    ("SELECT * FROM models WHERE (dim = 1", 1, 36, "expected )"),
    ("SELECT * FROM models WHERE dim = 1)", 1, 35, "end of query"),
    ("SELECT * FROM models WHERE ((dim = 1)", 1, 38, "expected )"),
    ("SELECT top 2 FROM pool all RANK BY", 1, 35, "a name"),
    ("SELECT top 2 FROM pool all RANK BY hybrid()", 1, 43, "a name"),
    ("SELECT top 2 FROM pool all RANK knn", 1, 33, "BY"),
    ("SELECT * FROM models LIMIT x", 1, 28, "an integer"),
    ("SELECT * FROM models LIMIT", 1, 27, "an integer"),
    ("SELECT * FROM models ORDER imagenet_top1", 1, 28, "BY"),
    ("SELECT * FROM models ORDER BY", 1, 30, "a name"),
    ("", 1, 1, "SELECT"),
    ("   \n\t ", 1, 1, "SELECT"),
    ("FROM models", 1, 1, "SELECT"),
    ("EXPLAIN EXPLAIN SELECT * FROM models", 1, 9, "SELECT"),
    ("SELECT * * FROM models", 1, 10, "FROM"),
    ("SELECT * FROM models WHERE", 1, 27, "a name"),
    ("SELECT * FROM models WHERE dim = 1 AND", 1, 39, "NOT"),
    ("SELECT * FROM models WHERE dim = = 1", 1, 34, "a number"),
    ("SELECT * FROM models WHERE dim IN ()", 1, 36, "a number"),
    ("SELECT * FROM models WHERE name LIKE 5", 1, 38, "a quoted string"),
    ("SELECT * FROM models WHERE license IS 5", 1, 39, "NULL"),
    ("SELECT * FROM models WHERE dim = @", 1, 34, "a quoted string"),
    ("SELECT * FROM models; DROP TABLE models", 1, 21, "WHERE"),
    ("SELECT * FROM pool 'all'", 1, 20, "a name"),
    ("SELECT * FROM models WHERE dim = 1 LIMIT 5 WHERE dim = 2", 1, 44, "end of query"),
    ("SELECT * FROM models ORDER BY dim LIMIT 1 RANK BY knn", 1, 43, "end of query"),
    (DEEP, 1, 27 + MAX_NESTING + 1, f"at most {MAX_NESTING} levels"),
    (TOO_LONG, 1, 1, f"{MAX_QUERY_CHARS} characters"),
    ("SELECT top 2\n  FROM pool all\n  WHERE name = 'abc\n", 3, 16, "quote"),
    ("SELECT *\nFROM models\nWHERE dim = = 1", 3, 13, "a number"),
    ("SELECT *\nFROM models\nWHERE (dim < 5", 3, 15, "expected )"),
    ("SELECT top 2\nFROM pool all\n\nRANK BY", 4, 8, "a name"),
]


@pytest.mark.parametrize(("text", "line", "column", "hint"), MALFORMED)
def test_malformed(text: str, line: int, column: int, hint: str) -> None:
    with pytest.raises(QueryError) as info:
        parse(text)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert e.hint is not None and hint in e.hint, e.hint
    # the rendered error names the position, shows a caret under the column and the hint
    rendered = str(e)
    assert f"(line {line}, column {column})" in rendered
    snippet_line, caret_line = e.snippet.splitlines()[-2:]
    assert caret_line.startswith(" " * (column - 1) + "^")
    assert rendered.endswith(f"hint: {e.hint}")


def test_malformed_points_at_the_offending_token() -> None:
    with pytest.raises(QueryError) as info:
        parse("SELECT top 2 FROM pool all\nWHERE dim = 1 nonsense\nLIMIT 3")
    e = info.value
    assert (e.line, e.column, e.length) == (2, 15, 8)
    assert e.snippet == "WHERE dim = 1 nonsense\n              ^^^^^^^^"


def test_lone_quote_is_malformed() -> None:
    with pytest.raises(QueryError) as info:
        parse("SELECT * FROM models WHERE source = ''' ")
    assert (info.value.line, info.value.column) == (1, 39)


@pytest.mark.parametrize("bad", [None, 5, b"SELECT * FROM models"])
def test_non_text_is_a_query_error(bad: object) -> None:
    with pytest.raises(QueryError):
        parse(bad)  # type: ignore[arg-type]


# ---- planner errors against a real registry ----------------------------------------------------

PLAN_ERRORS = [
    # (query, line, column, message words, hint words)
    (
        "SELECT top 2 FROM pool all WHERE parms < 30M",
        1,
        34,
        "unknown column 'parms'",
        ["did you mean 'params'", "valid columns:", "dim", "imagenet_top1", "tag"],
    ),
    (
        "SELECT *\nFROM models\nWHERE dim < 5\n  AND zzzz = 1",
        4,
        7,
        "unknown column 'zzzz'",
        ["valid columns: name, family, params"],
    ),
    (
        "SELECT top 2 FROM pool resnet5",
        1,
        24,
        "unknown pool 'resnet5'",
        ["did you mean 'resnet50'", "pools: all, resnet50, dim2048, expert, imagenet, small"],
    ),
    ("SELECT top 2 FROM pool qqqq", 1, 24, "unknown pool", ["pools: all, resnet50"]),
    (
        "SELECT top 2 FROM pool all WHERE task=flower",
        1,
        39,
        "unknown task 'flower'",
        ["did you mean 'flowers'", "tasks: digits, flowers"],
    ),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers RANK BY knnn",
        1,
        55,
        "unknown proxy 'knnn'",
        ["did you mean 'knn'", "valid rankers: agnostic,", "knn", "linear", "hybrid(PROXY)"],
    ),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers RANK BY hybrid(nope)",
        1,
        62,  # the proxy itself, inside hybrid(...)
        "unknown proxy 'nope'",
        ["valid rankers:", "linear"],
    ),
    (
        "SELECT top 2 FROM pool all RANK BY knn",
        1,
        36,
        "names none",
        ["WHERE task=NAME"],
    ),
    (
        "SELECT top 2 FROM pool all RANK BY hybrid(linear)",
        1,
        36,
        "names none",
        ["WHERE task=NAME"],
    ),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers OR params < 3M",
        1,
        34,
        "task can only be chosen",
        ["AND"],
    ),
    (
        "SELECT top 2 FROM pool all WHERE NOT task = flowers",
        1,
        38,
        "task can only be chosen",
        ["AND"],
    ),
    ("SELECT top 2 FROM pool all WHERE task != flowers", 1, 34, "task = NAME", ["task=flowers"]),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers AND task=digits",
        1,
        51,
        "tasks once",
        ["task IN (A, B, ...)", "second task"],
    ),
    (
        "SELECT * FROM models RANK BY agnostic ORDER BY params",
        1,
        48,
        "either RANK BY or ORDER BY",
        ["ORDER BY sorts"],
    ),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers RANK BY knn ORDER BY dim",
        1,
        68,
        "either RANK BY or ORDER BY",
        ["RANK BY ranks"],
    ),
    (
        "SELECT * FROM models WHERE task=flowers ORDER BY params",
        1,
        50,
        "ignores the task",
        ["RANK BY"],
    ),
    ("SELECT top 2 FROM pool all LIMIT 3", 1, 34, "LIMIT and top", ["SELECT * ... LIMIT N"]),
    ("SELECT top 0 FROM pool all", 1, 12, "at least 1", ["SELECT top 2"]),
    (
        "SELECT * FROM models WHERE params = 'big'",
        1,
        37,
        "params is a number, got 'big'",
        ["params < 30M"],
    ),
    ("SELECT * FROM models WHERE params < huge", 1, 37, "params is a number", ["number"]),
    ("SELECT * FROM models WHERE dim IN (1, 'x')", 1, 39, "dim is a number", ["number"]),
    ("SELECT * FROM models WHERE params LIKE '1%'", 1, 28, "LIKE needs a text column", ["= < >"]),
    ("SELECT * FROM models WHERE has_head = 1", 1, 39, "true or false", ["has_head = true"]),
    ("SELECT * FROM models WHERE tag > 'a'", 1, 28, "tag supports only", ["tag = 'expert'"]),
    ("SELECT * FROM models ORDER BY tag", 1, 31, "cannot sort by tag", ["scalar"]),
    ("SELECT * FROM models ORDER BY colour", 1, 31, "unknown column 'colour'", ["valid columns"]),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers RANK BY hybrid(knn, linear)",
        1,
        55,
        "hybrid takes one proxy",
        ["hybrid(linear)"],
    ),
    ("SELECT top 2 FROM pool all RANK BY agnostic(1)", 1, 36, "no arguments", ["agnostic"]),
    (
        "SELECT top 2 FROM pool all WHERE task=flowers RANK BY knn(3)",
        1,
        59,  # the positional argument
        "only named parameters",
        ["RANK BY knn(k=1)"],
    ),
]


@pytest.mark.parametrize(("text", "line", "column", "message", "hints"), PLAN_ERRORS)
def test_planner_errors(
    registry: Registry, text: str, line: int, column: int, message: str, hints: list[str]
) -> None:
    with pytest.raises(QueryError) as info:
        plan_text(text, registry)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.message
    assert e.hint is not None
    for word in hints:
        assert word in e.hint, (word, e.hint)


def test_unknown_task_with_no_tasks(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as reg, pytest.raises(QueryError) as info:
        plan_text("SELECT top 1 FROM pool all WHERE task=flowers", reg)
    assert "no tasks yet" in (info.value.hint or "")


def test_valid_plans(registry: Registry) -> None:
    p = plan_text("SELECT top 2 FROM pool resnet50 WHERE task=flowers", registry)
    assert (p.pool, p.task, p.step, p.budget) == (
        "resnet50",
        "flowers",
        Hybrid(ProxyCall("linear"), "flowers"),
        2,
    )
    assert p.ranker == "hybrid(linear)"
    sql, binds = p.where_sql
    assert binds == ["resnet50"] and "m.architecture" in sql  # the pool's condition

    p = plan_text(
        "SELECT top 3 FROM pool all WHERE task=flowers AND params < 30M AND dim <= 2048 "
        "RANK BY knn",
        registry,
    )
    assert (p.task, p.step, p.budget) == ("flowers", RankByProxy(ProxyCall("knn"), "flowers"), 3)
    assert [f.label for f in p.filters] == ["params < 30M", "dim <= 2048"]
    assert p.where_sql[1] == [30_000_000, 2048]

    p = plan_text("SELECT top 2 FROM pool small", registry)
    assert (p.task, p.step, p.budget) == (None, Agnostic(), 2)
    assert p.where_sql[1] == [10_000_000]

    p = plan_text("SELECT * FROM models ORDER BY imagenet_top1 DESC LIMIT 5", registry)
    assert isinstance(p.step, Order)
    assert (p.budget, p.ranker) == (5, "ORDER BY imagenet_top1 DESC")

    # values never enter the SQL text
    p = plan_text(r"SELECT * FROM models WHERE source = 'x\'; DROP TABLE models; --'", registry)
    assert "DROP" not in p.where_sql[0]
    assert p.where_sql[1] == ["x'; DROP TABLE models; --"]


# ---- fuzzing: nothing but QueryError ------------------------------------------------------------

KEYWORDS = [
    "EXPLAIN",
    "SELECT",
    "FROM",
    "top",
    "pool",
    "models",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "IS",
    "NULL",
    "true",
    "false",
    "RANK",
    "BY",
    "ORDER",
    "ASC",
    "DESC",
    "LIMIT",
    "*",
]
OPERATORS = ["=", "!=", "<>", "<", "<=", ">", ">=", "(", ")", ",", "~", ";", "'", '"']
VALUES = [
    "0",
    "1",
    "2",
    "-1",
    "30M",
    "1.5K",
    "2G",
    "1e400",
    "99999999999999999999999",
    "0.5",
    "'x'",
    "'it\\'s'",
    '"q"',
    "''",
    "flowers",
    "digits",
    "all",
    "resnet50",
    "small",
    "nope",
    "params",
    "dim",
    "name",
    "task",
    "tag",
    "has_head",
    "imagenet_top1",
    "source",
    "knn",
    "linear",
    "hybrid",
    "agnostic",
    "hybrid(linear)",
    "hybrid(knn)",
    "\n",
    "ü",
    "'%'",
]
TOKENS = st.sampled_from(KEYWORDS + OPERATORS + VALUES)
SOUP = st.lists(TOKENS, max_size=25).map(" ".join)
PREFIXES = st.sampled_from(
    ["", "SELECT top 2 FROM pool all WHERE ", "SELECT * FROM models WHERE ", "SELECT top 2 "]
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _only_query_errors(text: str, registry: Registry | None = None) -> None:
    try:
        q = parse(text)
    except QueryError as e:
        assert e.line >= 1 and e.column >= 1
        str(e)  # rendering never fails
        return
    assert isinstance(q, ast.Select)
    if registry is not None:
        try:
            plan_text(text, registry)
        except QueryError as e:
            assert e.line >= 1 and e.column >= 1
            str(e)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    _only_query_errors(text)


@FUZZ
@given(PREFIXES, SOUP)
def test_fuzz_token_soup_parse(prefix: str, soup: str) -> None:
    _only_query_errors(prefix + soup)


@FUZZ
@given(PREFIXES, SOUP)
def test_fuzz_token_soup_plan(registry: Registry, prefix: str, soup: str) -> None:
    _only_query_errors(prefix + soup, registry)


@FUZZ
@given(st.text(max_size=120))
def test_fuzz_text_plan(registry: Registry, text: str) -> None:
    _only_query_errors(text, registry)


# ---- round trips ---------------------------------------------------------------------------------

ROUND_TRIP = [
    "SELECT top 2 FROM pool resnet50 WHERE task=flowers",
    "SELECT top 3 FROM pool all WHERE task=flowers AND params < 30M AND dim <= 2048 "
    "RANK BY hybrid(linear)",
    "SELECT * FROM models WHERE source='torchvision' ORDER BY imagenet_top1 DESC LIMIT 5",
    "EXPLAIN SELECT top 1 FROM pool dim2048 RANK BY agnostic",
    "SELECT * FROM models WHERE a=1 OR b=2 AND NOT c=3",
    "SELECT * FROM models WHERE NOT (a=1 OR b=2) AND (c=3 OR NOT d=4)",
    "SELECT * FROM models WHERE (a=1 OR b=2) OR (c=3 OR d=4)",
    "SELECT * FROM models WHERE NOT NOT NOT a=1",
    "SELECT * FROM models WHERE NOT (a=1 AND b=2)",
    "SELECT * FROM models WHERE dim IN (1, 2) AND name NOT IN ('a', \"b'c\") AND x IN (true)",
    "SELECT * FROM models WHERE name LIKE 'a\\'%' AND family NOT LIKE '%\\\\x'",
    "SELECT * FROM models WHERE license IS NULL OR license IS NOT NULL",
    "SELECT * FROM models WHERE x = 1.5K AND y = 0.25 AND z = -7 AND w = 1e-05 AND v = false",
    "SELECT * FROM models ORDER BY params ASC",
    "SELECT top 2 FROM pool all RANK BY foo(1, 'A b', bar, 2.5)",
    "SELECT * FROM models LIMIT 0",
    "select top 5\n from pool expert\n where task = flowers\n rank by knn",
    "SELECT top 2 FROM pool all WHERE task IN (a, b) RANK BY avg(knn(k=5, metric=cosine))",
    "SELECT top 1 FROM pool all RANK BY linear(lr=0.01, epochs=400, seed=-1, note='A b')",
    "SELECT * FROM finetunes WHERE task='x' AND accuracy >= 0.5 ORDER BY accuracy DESC LIMIT 3",
    "EXPLAIN SELECT top 3 FROM scores WHERE proxy LIKE 'knn%'",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_examples(text: str) -> None:
    q = parse(text)
    again = to_text(q)
    assert parse(again) == q
    assert to_text(parse(again)) == again  # the text form is a fixed point


COLUMNS = ["name", "family", "params", "dim", "source", "tag", "imagenet_top1", "has_head"]
SCALARS = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(st.characters(exclude_characters="\n"), max_size=12),
)


def _pred() -> st.SearchStrategy[ast.Expr]:
    col = st.sampled_from(COLUMNS)
    lit = SCALARS.map(Literal)
    return st.one_of(
        st.builds(Compare, col, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), lit),
        st.builds(InList, col, st.lists(lit, min_size=1, max_size=3).map(tuple), st.booleans()),
        st.builds(
            Like,
            col,
            st.text(st.characters(exclude_characters="\n"), max_size=8).map(Literal),
            st.booleans(),
        ),
        st.builds(IsNull, col, st.booleans()),
    )


def _norm(e: ast.Expr) -> ast.Expr:
    """What the parser produces for an expression: AND/OR flattened."""
    if isinstance(e, And | Or):
        kind = type(e)
        items = []
        for i in e.items:
            n = _norm(i)
            items.extend(n.items if isinstance(n, kind) else (n,))
        return kind(tuple(items))
    if isinstance(e, Not):
        return Not(_norm(e.expr))
    return e


EXPRS = st.recursive(
    _pred(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        inner.map(Not),
    ),
    max_leaves=8,
).map(_norm)

SELECTS = st.builds(
    ast.Select,
    top=st.one_of(st.none(), st.integers(0, 1000)),
    pool=st.sampled_from(["all", "resnet50", "dim2048", "expert", "imagenet", "My-Pool_2"]),
    where=st.one_of(st.none(), EXPRS),
    rank=st.one_of(
        st.none(),
        st.sampled_from(
            [
                Ranker("agnostic"),
                Ranker("knn"),
                Ranker("linear"),
                Ranker("hybrid", ("linear",)),
                Ranker("knn", (), (("k", 5), ("metric", "cosine"))),
                Ranker("avg", (Ranker("linear", (), (("lr", 0.01), ("epochs", 400))),)),
                Ranker("similar", (), (("k", 3),)),
            ]
        ),
    ),
    order=st.one_of(st.none(), st.builds(OrderBy, st.sampled_from(COLUMNS), st.booleans())),
    limit=st.one_of(st.none(), st.integers(0, 1000)),
    explain=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(SELECTS)
def test_round_trip_generated_asts(q: ast.Select) -> None:
    assert parse(to_text(q)) == q


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 50),
    st.sampled_from(["all", "resnet50", "imagenet"]),
    st.dictionaries(st.sampled_from(COLUMNS), SCALARS, max_size=3),
    st.sampled_from([None, "params < 30M", "dim <= 2048 OR tag = 'expert'", "NOT dim = 3"]),
)
def test_round_trip_builder(top: int, pool: str, equals: dict, cond: str | None) -> None:
    q = select(top).pool(pool).where(cond, **equals).rank("hybrid", "linear").to_ast()
    assert parse(to_text(q)) == q


# ---- the fluent builder builds the same AST as the text ------------------------------------------


def test_builder_matches_text() -> None:
    b = select(2).pool("resnet50").where(task="flowers").rank("hybrid", "linear")
    assert b.to_ast() == parse(
        "SELECT top 2 FROM pool resnet50 WHERE task=flowers RANK BY hybrid(linear)"
    )
    assert parse(b.to_text()) == b.to_ast()
    assert str(b) == b.to_text()


@pytest.mark.parametrize(
    ("built", "text"),
    [
        (
            select(3).pool("all").where("params < 30M AND dim <= 2048", task="flowers").rank("knn"),
            "SELECT top 3 FROM pool all WHERE params < 30M AND dim <= 2048 AND task = flowers "
            "RANK BY knn",
        ),
        (
            select().models().where(source="torchvision").order_by("imagenet_top1", True).limit(5),
            "SELECT * FROM models WHERE source='torchvision' ORDER BY imagenet_top1 DESC LIMIT 5",
        ),
        (select("*").pool("imagenet").explain(), "EXPLAIN SELECT * FROM pool imagenet"),
        (
            select(1).where(source=["a", "b"]).where("NOT dim > 5 OR dim IS NULL"),
            "SELECT top 1 FROM models WHERE source IN ('a', 'b') AND (NOT dim > 5 OR dim IS NULL)",
        ),
        (
            select(2).pool("expert").where(task="digits").rank("HYBRID", "KNN"),
            "SELECT top 2 FROM pool expert WHERE task=digits RANK BY hybrid(knn)",
        ),
        (select(4).where(has_head=True), "SELECT top 4 FROM models WHERE has_head = true"),
        (select(4).rank("agnostic"), "select top 4 from models rank by agnostic"),
    ],
)
def test_builder_equals_parse(built: object, text: str) -> None:
    assert built.to_ast() == parse(text)  # type: ignore[attr-defined]


def test_builder_is_immutable() -> None:
    base = select(2).pool("all")
    narrowed = base.where("dim < 5")
    assert base.to_ast().where is None
    assert narrowed.to_ast().where == C("dim", "<", 5)
    assert narrowed.where(params=3).to_ast().where == And((C("dim", "<", 5), C("params", "=", 3)))


def test_builder_rejects_bad_input() -> None:
    with pytest.raises(QueryError):
        select(2).where("dim <")
    with pytest.raises(TypeError):
        select(2).where(dim=object())
    with pytest.raises(RuntimeError):
        select(2).run()


# ---- known bugs (strict xfail: they turn into failures once fixed, then drop the marker) ------


def test_large_integers_are_exact() -> None:
    q = parse("SELECT * FROM models WHERE upstream_size = 9007199254740993")
    assert q.where == C("upstream_size", "=", 9007199254740993)


def test_overflowing_number_is_a_positioned_error() -> None:
    with pytest.raises(QueryError) as e:
        parse("SELECT * FROM models WHERE params < 1e400")
    assert (e.value.line, e.value.column) == (1, 37)
    assert "out of range" in e.value.message


def test_round_trip_ranker_string_argument() -> None:
    q = parse("SELECT top 2 FROM pool all RANK BY hybrid('Linear')")
    assert parse(to_text(q)) == q


def test_round_trip_keyword_pool_name() -> None:
    q = parse("SELECT * FROM pool models")
    assert q.pool == "models"
    assert parse(to_text(q)) == q


def _alternating(levels: int) -> str:
    cond = "dim = 0"
    for i in range(levels):
        cond = f"dim = {i} {'OR' if i % 2 else 'AND'} ({cond})"
    return cond


@pytest.mark.parametrize("condition", ["NOT " * 40 + "dim = 1", _alternating(40)])
def test_deep_conditions_are_refused_before_sqlite(condition: str) -> None:
    with pytest.raises(QueryError) as e:
        parse(f"SELECT * FROM models WHERE {condition}")
    assert "nested too deeply" in e.value.message and "AND/OR/NOT" in (e.value.hint or "")


def test_nesting_at_the_limit_parses() -> None:
    from shift.query.parser import MAX_EXPR_DEPTH

    q = parse("SELECT * FROM models WHERE " + "NOT " * MAX_EXPR_DEPTH + "dim = 1")
    depth, node = 0, q.where
    while isinstance(node, Not):
        depth, node = depth + 1, node.expr
    assert depth == MAX_EXPR_DEPTH


# ---- integers SQLite cannot hold (issue 12, item 10) ------------------------------------------

WHERE = "SELECT * FROM models WHERE "


@pytest.mark.parametrize(
    ("condition", "column"),
    [
        ("params < 9223372036854775808", 10),  # 2**63
        ("dim IN (1, -9223372036854775809)", 12),  # -2**63 - 1
        ("upstream_size >= 1e19", 18),
        ("NOT (imagenet_top1 > 99999999999999999999)", 22),
    ],
)
def test_integers_beyond_64_bits_are_positioned_errors(
    registry: Registry, condition: str, column: int
) -> None:
    with pytest.raises(QueryError) as e:
        plan_text(WHERE + condition, registry)
    assert (e.value.line, e.value.column) == (1, len(WHERE) + column), str(e.value)
    assert "out of range" in e.value.message and "64-bit" in (e.value.hint or "")
    # saved in a pool: refused with the position in the condition, nothing saved
    with pytest.raises(QueryError) as e:
        registry.add_pool("huge", check_condition(condition))
    assert e.value.column == column and registry.get_pool("huge") is None


def test_the_64_bit_limits_themselves_run(registry: Registry) -> None:
    p = plan_text(WHERE + "params <= 9223372036854775807 AND dim >= -9223372036854775808", registry)
    assert p.where_sql[1] == [2**63 - 1, -(2**63)]
    assert {m.name for m in registry.models(*p.where_sql)} == {"m1", "m2"}
