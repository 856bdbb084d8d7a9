"""EXPLAIN's embedding estimate comes from the rate this home measured (issue 21, item 6): before
any index run it is the one-core prior and says so; after one, the indexer has recorded the embed
phase's seconds per work unit (images x Mparams x pixels / 224^2) for its backend, and EXPLAIN
multiplies the next task's units by exactly that rate. Real ONNX Runtime, SQLite; in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.cost import SECONDS_PER_UNIT, measured_per_unit, record_throughput, work_units
from shift.records import Samples

QUERY = "SELECT top 2 FROM models WHERE task={} RANK BY knn"


def samples(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    return Samples(x, np.arange(n) % 3, None, [], [])


@pytest.fixture
def client(tmp_path: Path) -> shift.Client:
    c = shift.connect(tmp_path / "home", executor="inprocess")
    for i in range(2):
        build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i)
        register_onnx(c.registry, tmp_path / f"m{i}.onnx", f"m{i}")
    c.add_task("a", samples(60, 0))
    c.add_task("b", samples(90, 1))
    yield c
    c.close()


def _units(c: shift.Client, images: int) -> float:
    return sum(work_units(m.params, m.input.height, m.input.width, images) for m in c.models())


def test_explain_uses_the_rate_measured_by_this_home(client: shift.Client) -> None:
    home = client.home.registry_dir
    before = client.explain(QUERY.format("a")).plan["work"]
    assert "a prior" in before["estimate"]
    assert before["embed_seconds"] == pytest.approx(_units(client, 60) * SECONDS_PER_UNIT)

    rep = client.index("a")
    rate = measured_per_unit(home, "onnxruntime")
    assert rate == pytest.approx(rep.phases["embed"] / _units(client, 60))
    after = client.explain(QUERY.format("b")).plan["work"]
    assert "measured rate" in after["estimate"]
    assert after["embed_seconds"] == pytest.approx(_units(client, 90) * rate)
    assert client.doctor().ok  # the measurement file is shift's own


def test_the_rate_is_a_running_mean_and_survives_a_bad_file(tmp_path: Path) -> None:
    record_throughput(tmp_path, "onnxruntime", 10.0, 2.0)
    assert measured_per_unit(tmp_path, "onnxruntime") == pytest.approx(0.2)
    record_throughput(tmp_path, "onnxruntime", 30.0, 3.0)
    assert measured_per_unit(tmp_path, "onnxruntime") == pytest.approx(5.0 / 40.0)
    assert measured_per_unit(tmp_path, "torch") is None
    (tmp_path / "cache" / "throughput.json").write_text("{not json")
    assert measured_per_unit(tmp_path, "onnxruntime") is None
    record_throughput(tmp_path, "onnxruntime", 4.0, 1.0)  # starts again
    assert measured_per_unit(tmp_path, "onnxruntime") == pytest.approx(0.25)


def test_explain_counts_scores_cached_under_the_same_content(client: shift.Client) -> None:
    """A task added again under another name scores from cache (scores are keyed by content):
    EXPLAIN announces nothing to embed, and the query embeds nothing (it said 9 to embed)."""
    client.query(QUERY.format("a"))
    client.add_task("a-again", samples(60, 0))
    work = client.explain(QUERY.format("a-again")).plan["work"]
    assert work["to_embed"] == 0 and work["images_to_embed"] == 0
    assert "2 scored already under this content" in work["embed_summary"]
    client.query(QUERY.format("a-again"))
    assert not client.engine.last_report.embedded
