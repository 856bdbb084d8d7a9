"""Shipped data reaches a wheel: the catalog, the VTAB-1k table (+ its provenance), the query
grammar and its compiled parser are package data, and an installed copy outside the checkout
finds them (``models import-catalog`` reads the catalog, ``RANK BY meta(vtab1k)`` ranks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    "shift/data/catalog.yaml",
    "shift/data/benchmarks/vtab1k_finetune.csv",
    "shift/data/benchmarks/README.md",
    "shift/query/grammar.lark",
    "shift/query/grammar_tables.py",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the source (no build/ left in the checkout, no
    stale files from an earlier build)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "shift", src / "shift", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("shift-*.whl")
    return whl


def test_the_wheel_holds_the_shipped_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = [p for p in SHIPPED if p not in names]
        assert missing == []
        assert z.read("shift/data/catalog.yaml") == (ROOT / "shift/data/catalog.yaml").read_bytes()
    assert not any(n.startswith(("registry/", "tests/", "benchmarks/")) for n in names)


@pytest.mark.slow  # ~8 s: the wheel run from outside the checkout in fresh interpreters
def test_an_installed_copy_finds_the_catalog_and_the_vtab_table(
    wheel: Path, tmp_path: Path
) -> None:
    """The wheel unpacked as site-packages would hold it, run from outside the checkout (its
    dependencies from this environment)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    env.pop("SHIFT_HOME", None)

    def py(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=work
        )

    check = (
        "import json, shift, shift.data\n"
        "from shift.catalog.entries import SHIPPED_CATALOG, load_catalog\n"
        "from shift.scoring.meta import available_tables, load_table\n"
        "print(json.dumps({'shift': shift.__file__, 'catalog': str(SHIPPED_CATALOG),\n"
        "  'entries': [e.name for e in load_catalog(SHIPPED_CATALOG)],\n"
        "  'tables': available_tables(), 'vtab_models': len(load_table('vtab1k').models)}))\n"
    )
    proc = py("-c", check)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert Path(got["shift"]).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(got["catalog"]).is_relative_to(site)
    assert {"mobilenet-v2", "efficientnet-lite0"} <= set(got["entries"])
    assert got["tables"] == ["vtab1k"] and got["vtab_models"] == 291

    # the command reads the shipped catalog (an unknown entry is named as not in it)
    r = py("-m", "shift", "models", "import-catalog", "--name", "no-such", "--home", str(home))
    assert r.returncode == 1 and "not in the catalog: no-such" in r.stdout + r.stderr, r.stderr
    assert "cannot read the catalog" not in r.stdout + r.stderr

    r = py("-m", "shift", "models", "import", "vtab1k", "--home", str(home))
    assert r.returncode == 0, r.stderr
    q = "SELECT top 3 FROM models RANK BY meta(vtab1k)"
    r = py("-m", "shift", "query", q, "--json", "--home", str(home))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 3 and all(row["score"] is not None for row in rows)
