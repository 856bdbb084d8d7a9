"""The command line's signals (issue 12): ``index`` exits non-zero naming the models that failed
(item 12); a number SQLite cannot hold is a positioned query error, also in a pool (item 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

try:
    from onnx_factory import build_tiny_cnn
except ImportError:  # tests/ is a package
    from tests.onnx_factory import build_tiny_cnn

try:
    from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
except ImportError:  # tests/ is a package
    from tests.cli_runner import cli, runner, wide_consoles  # noqa: F401


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
