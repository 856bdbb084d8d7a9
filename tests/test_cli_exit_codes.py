"""The command line's signals (issue 12): ``index`` exits non-zero naming the models that failed
(item 12); a number SQLite cannot hold is a positioned query error, also in a pool (item 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn

from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = (rng.random((48, 32, 32, 3)) * 60 + y[:, None, None, None] * 50).astype(np.uint8)
    with Registry.open(home) as reg:
        for i in range(2):
            register_onnx(reg, build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i).path, f"tiny{i}")
        TaskStore(reg).add("toy", Samples(x, y, None, ["a", "b", "c"], []), kind="npz", source="t")
    return home


def test_index_exits_non_zero_naming_the_failed_models(home: Path) -> None:
    with Registry.open(home) as reg:
        path = reg.model_file(reg.get_model("tiny1"))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"\0")  # no longer the registered model
    r = cli(home, "index", "toy", "--executor", "inprocess")
    assert r.exit_code == 1, r.output
    assert "1 failed" in r.output and "tiny1" in r.output and "sha256" in r.output
    assert "1 models embedded" in r.output  # tiny0 was still indexed
    with Registry.open(home) as reg:
        assert set(reg.index_entries("toy")) == {"tiny0"}


def test_index_exits_zero_when_every_model_is_indexed(home: Path) -> None:
    r = cli(home, "index", "toy", "--executor", "inprocess")
    assert r.exit_code == 0, r.output
    assert "2 models embedded" in r.output and "0 failed" in r.output
    r = cli(home, "index", "toy", "--executor", "inprocess")
    assert r.exit_code == 0 and "2 reused" in r.output


def test_a_pool_with_a_number_beyond_64_bits_is_refused(home: Path) -> None:
    r = cli(home, "pools", "add", "huge", "WHERE params < 9223372036854775808")
    assert r.exit_code == 1
    assert "out of range" in r.output and "column 10" in r.output
    r = cli(home, "pools", "list")
    assert r.exit_code == 0 and "huge" not in r.output
    r = cli(home, "query", "SELECT * FROM models WHERE dim > -99999999999999999999")
    assert r.exit_code == 1 and "out of range" in r.output and "column 34" in r.output


def _break(home: Path, name: str) -> None:
    """Overwrite ``name``'s file in the home with bytes that are no ONNX model."""
    with Registry.open(home) as reg:
        path = reg.model_file(reg.get_model(name))
    path.chmod(0o644)
    path.write_bytes(b"not an onnx model")


@pytest.mark.parametrize("ranker", ["knn", "hybrid(knn)", "sh(knn)", "avg(knn)"])
def test_a_query_leaves_failed_models_out_names_them_and_exits_non_zero(
    home: Path, ranker: str
) -> None:
    """Issue 20, item 5: a model that fails is not ranked ("#2 by knn" with no score), it is
    named under failed, on the console and in --json, and the query exits 1 as index does."""
    import json

    with Registry.open(home) as reg:
        rng = np.random.default_rng(1)
        y = np.arange(24) % 3
        x = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
        TaskStore(reg).add("toy2", Samples(x, y, None, ["a", "b", "c"], []), kind="npz", source="t")
    _break(home, "tiny1")
    where = "task IN (toy, toy2)" if ranker.startswith("avg") else "task=toy"
    q = f"SELECT top 2 FROM pool all WHERE {where} RANK BY {ranker}"
    r = cli(home, "query", q, "--executor", "inprocess", "--format", "table")
    assert r.exit_code == 1, r.output
    table, _, after = r.output[r.output.index("┏") :].partition("failed:")  # past progress bars
    assert "tiny0" in table and "tiny1" not in table, r.output
    assert after.startswith(" tiny1: model 'tiny1'"), r.output  # with the reason
    assert "1 rows, 1 failed (not ranked)" in after, r.output
    r = cli(home, "query", q, "--executor", "inprocess", "--json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert [row["name"] for row in out["rows"]] == ["tiny0"]
    assert list(out["failed"]) == ["tiny1"] and "tiny1" in out["failed"]["tiny1"]


def test_the_client_result_names_the_failed_models(home: Path) -> None:
    import shift

    _break(home, "tiny0")
    with shift.connect(home, executor="inprocess") as c:
        res = c.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY linear")
    assert res.names == ["tiny1"] and set(res.failed) == {"tiny0"}
    assert "'tiny0'" in res.failed["tiny0"]
