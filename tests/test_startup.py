"""What start-up costs, checked by what is imported (the figures are a benchmark:
``benchmarks/bench_startup.py``): a cached agnostic query and ``models list`` import neither
pandas nor numpy (nor ray, torch, onnxruntime); sqlite-utils is imported without pandas and
numpy, and both still work afterwards, ``Result.to_pandas()`` included; the query parser comes
compiled (``grammar_tables.py``) and is the grammar's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from records import fake_model

from shift.store.registry import Registry

QUERY = "SELECT top 2 FROM pool all RANK BY agnostic"
#: what a listing or a cached agnostic query has no use for: each costs start-up time
UNNEEDED = {"pandas", "numpy", "ray", "torch", "onnxruntime"}


def seed(home: Path) -> None:
    with Registry.open(home) as reg:
        for name, top1 in (("r50", 76.1), ("vit", 81.1), ("birds", None)):
            source = "torchvision" if top1 else None
            reg.add_model(fake_model(name, imagenet_top1=top1, imagenet_source=source))


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def imported(stderr: str) -> set[str]:
    """Top-level packages in ``-X importtime``'s report."""
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "command",
    [
        ["query", QUERY, "--json"],
        ["query", QUERY],
        ["models", "list"],
        ["models", "list", "--json"],
    ],
    ids=["query-json", "query", "models-list", "models-list-json"],
)
def test_listing_and_cached_agnostic_query_import_no_pandas_or_numpy(
    tmp_path: Path, command: list[str]
) -> None:
    home = tmp_path / "h"
    seed(home)
    proc = run("-X", "importtime", "-m", "shift", *command, "--home", str(home))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vit" in proc.stdout and "r50" in proc.stdout
    mods = imported(proc.stderr)
    assert "shift" in mods and "sqlite3" in mods
    assert mods & UNNEEDED == set(), f"{' '.join(command)} imports {sorted(mods & UNNEEDED)}"


def test_the_engine_and_the_store_never_import_pandas() -> None:
    """Every path that reads or writes the registry (sqlite-utils' optional pandas import)."""
    code = """
        import sys
        import shift.cli, shift.client, shift.engine.execute, shift.engine.indexing
        import shift.engine.engine, shift.scoring.proxies, shift.scoring.meta
        import shift.store.registry, shift.store.migrations, shift.store.tasks, shift.tools.doctor
        print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
    """
    proc = run("-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_sqlite_utils_keeps_pandas_and_numpy_out_only_while_it_imports() -> None:
    code = """
        import sys
        from shift.store.sqlite import Database
        import sqlite_utils.db
        assert "pandas" not in sys.modules and "numpy" not in sys.modules
        import numpy as np, pandas as pd  # importable afterwards: no None left in sys.modules
        db = Database(memory=True)
        db["t"].insert({"i": np.int64(3), "u": np.uint8(1), "f": np.float32(0.5), "s": "x"})
        types = {c.name: c.type for c in db["t"].columns}
        assert types == {"i": "INTEGER", "u": "INTEGER", "f": "REAL", "s": "TEXT"}, types
        assert pd.DataFrame({"a": [1]}).shape == (1, 1)
        print("ok")
    """
    proc = run("-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_sqlite_utils_sees_pandas_that_was_imported_before() -> None:
    code = """
        import pandas
        from shift.store.sqlite import Database
        import sqlite_utils.db
        assert sqlite_utils.db.pd is pandas and sqlite_utils.db.np is not None
        print("ok")
    """
    proc = run("-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr


def test_to_pandas_works_after_a_query_that_loaded_no_pandas(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    home = tmp_path / "h"
    seed(home)
    code = f"""
        import json, sys
        import shift
        with shift.connect({str(home)!r}) as c:
            res = c.query({QUERY!r})
        before = "pandas" in sys.modules
        df = res.to_pandas()
        print(json.dumps({{"before": before, "names": list(df["name"]), "cols": list(df.columns)}}))
    """
    proc = run("-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["before"] is False
    assert got["names"] == ["vit", "r50"]
    assert got["cols"][:2] == ["rank", "name"]


def test_result_to_pandas_in_process() -> None:
    pd = pytest.importorskip("pandas")
    from shift.records import Result

    res = Result(
        query=QUERY,
        columns=["rank", "name"],
        rows=[{"rank": 1, "name": "vit", "why": "a"}, {"rank": 2, "name": "r50", "why": "b"}],
    )
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["rank", "name", "why"] and list(df["name"]) == ["vit", "r50"]


# ---- the compiled query parser -------------------------------------------------------------

PARSED = [
    "SELECT top 2 FROM pool all",
    "explain SELECT * FROM models WHERE params < 30M AND (dim >= 512 OR tag = 'x') LIMIT 3",
    "SELECT top 3 FROM pool all WHERE task IN (a, b) AND name NOT LIKE 'tv-%' "
    "RANK BY hybrid(knn(k=5, metric=cosine)) ORDER BY imagenet_top1 DESC",
    "SELECT * FROM scores WHERE task = digits AND score IS NOT NULL",
    "SELECT top 1 FROM pool resnet50 RANK BY sh(linear, 400, auto)",
]
MALFORMED = [
    "SELECT top FROM pool all",
    "SELECT top 2 FROM pool all WHERE",
    "SELECT top 2 FROM pool all WHERE name = 'open",
    "SELECT top 2 FROM pool all RANK BY knn(k=)",
    "SELECT top 2 pool all",
    "SELECT top 2 FROM pool all WHERE params < 3 ORDER",
]


def test_the_shipped_parser_is_compiled_from_this_grammar() -> None:
    """``grammar_tables.py`` is current (after changing grammar.lark, run ``python -m
    shift.query.parser``), and is what the parser uses."""
    from shift.query import grammar_tables, parser

    grammar = (Path(parser.__file__).parent / "grammar.lark").read_text()
    assert parser._tables_key(grammar) == grammar_tables.KEY, "run: python -m shift.query.parser"
    assert parser._lark().source_path == "<deserialized>"


def test_the_compiled_parser_parses_as_the_grammar_does() -> None:
    from lark import Lark
    from lark.exceptions import UnexpectedInput

    from shift.query import parser

    grammar = (Path(parser.__file__).parent / "grammar.lark").read_text()
    built, shipped = Lark(grammar, **parser._LARK_OPTIONS), parser._lark()
    for text in PARSED:
        assert shipped.parse(text) == built.parse(text), text
    for text in MALFORMED:
        errors = []
        for p in (built, shipped):
            with pytest.raises(UnexpectedInput) as e:
                p.parse(text)
            err = e.value
            expected = getattr(err, "expected", None) or getattr(err, "allowed", None)
            errors.append((type(err), err.line, err.column, sorted(expected or ())))
        assert errors[0] == errors[1], text


def test_a_changed_grammar_is_compiled_not_read_from_stale_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shift.query import grammar_tables, parser

    monkeypatch.setattr(grammar_tables, "KEY", "0" * 64)
    parser._lark.cache_clear()
    try:
        lark = parser._lark()
        assert lark.source_path != "<deserialized>"
        assert parser.parse("SELECT top 2 FROM pool all").top == 2
    finally:
        parser._lark.cache_clear()
