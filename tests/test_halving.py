"""Successive halving (RANK BY sh(...)), random and the schedule math, on tiny real models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.halving import schedule
from shift.errors import QueryError
from shift.records import Samples
from shift.store.tasks import TaskStore


@pytest.mark.parametrize(
    ("m", "n", "rounds", "budget", "per_round", "chunk"),
    [
        (8, 800, 3, 24, [1, 2, 4], 115),  # B = M·⌈log2 M⌉, C = ⌈N / Σ R_k⌉
        (4, 100, 2, 8, [1, 2], 34),
        (5, 300, 3, 15, [1, 1, 2], 75),
        (2, 50, 1, 2, [1], 50),
    ],
)
def test_schedule(
    m: int, n: int, rounds: int, budget: int, per_round: list[int], chunk: int
) -> None:
    assert schedule(m, n) == (rounds, budget, chunk, per_round)
    assert chunk * sum(per_round) >= n  # a model that survives every round sees all data


def test_schedule_explicit_budget_and_chunk() -> None:
    assert schedule(8, 800, budget=48, chunk=10) == (3, 48, 10, [2, 4, 8])


@pytest.fixture
def client(tmp_path: Path) -> Any:
    c = shift.connect(tmp_path / "home", executor="inprocess")
    for i in range(4):
        build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i)
        register_onnx(
            c.registry,
            tmp_path / f"m{i}.onnx",
            f"tiny{i}",
            imagenet_top1=50 + i,
            imagenet_source="test",
        )
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = (rng.random((400, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    TaskStore(c.registry).add(
        "toy", Samples(x, y, None, list("abcd"), []), kind="npz", source="gen"
    )
    yield c
    c.close()


def test_sh_ranks_reports_samples_and_reuses_batches(client: Any) -> None:
    res = client.query("SELECT top 4 FROM pool all WHERE task=toy RANK BY sh(knn)")
    rows = res.rows
    assert len({r["name"] for r in rows}) == 4
    info = res.plan["halving"]
    assert info["rounds"] == 2 and info["new_chunks_per_round"] == [1, 2]
    n_train = client.registry.get_task("toy").num_train
    # two survivors saw every training sample; the two dropped after round 1 saw one chunk
    assert [r["samples"] for r in rows] == [n_train, n_train, info["chunk"], info["chunk"]]
    assert rows[0]["why"] == "sh: survived every round"
    assert rows[3]["why"] == "sh: dropped after round 1"
    # within a round, ranks follow the scores of that round
    assert rows[0]["score"] >= rows[1]["score"] and rows[2]["score"] >= rows[3]["score"]
    calls = client.engine.executor.inference_calls
    full = 4 * math.ceil(400 / 64)
    assert calls < full  # the dropped models were not embedded in full
    # a full query afterwards embeds only the batches SH did not need
    client.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY knn")
    assert client.engine.executor.inference_calls == full


def test_sh_matches_full_knn_for_survivors(client: Any) -> None:
    sh = client.query("SELECT top 4 FROM pool all WHERE task=toy RANK BY sh(knn)")
    full = client.query("SELECT * FROM pool all WHERE task=toy RANK BY knn")
    survivors = [r for r in sh.rows if r["why"] == "sh: survived every round"]
    for r in survivors:  # the last round scored them on all the data: same as the full proxy
        assert r["score"] == pytest.approx(full.scores[r["name"]])


def test_random_is_seeded(client: Any) -> None:
    a = client.query("SELECT * FROM pool all RANK BY random(1)").names
    b = client.query("SELECT * FROM pool all RANK BY random(1)").names
    c = client.query("SELECT * FROM pool all RANK BY random(2)").names
    assert a == b and sorted(a) == sorted(c)
    assert any(
        client.query(f"SELECT * FROM pool all RANK BY random({s})").names != a for s in range(2, 8)
    )


@pytest.mark.parametrize(
    ("query", "column", "hint"),
    [
        ("SELECT top 2 FROM pool all RANK BY sh(knn)", 36, "task"),
        ("SELECT top 2 FROM pool all WHERE task=toy RANK BY sh(nope)", 51, "proxies"),
        ("SELECT top 2 FROM pool all WHERE task=toy RANK BY sh(knn, 0)", 51, "budget"),
        ("SELECT top 2 FROM pool all RANK BY random('x')", 36, "seed"),
        ("SELECT top 2 FROM pool all RANK BY meta(nope)", 36, "tables"),
    ],
)
def test_strategy_errors(client: Any, query: str, column: int, hint: str) -> None:
    with pytest.raises(QueryError) as e:
        client.query(query)
    assert e.value.column == column
    assert hint in (e.value.hint or "") or hint in e.value.message


def test_explain_estimates_embedding_and_scoring(client: Any) -> None:
    plan = client.explain("SELECT top 2 FROM pool all WHERE task=toy RANK BY hybrid(sfda)").plan
    work = plan["work"]
    assert work["images_to_embed"] == 4 * 400 and work["to_score"] == 4
    assert work["score_seconds"] > 0 and "scoring 4 models" in work["estimate"]
    client.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY hybrid(sfda)")
    again = client.explain("SELECT top 2 FROM pool all WHERE task=toy RANK BY sfda").plan["work"]
    assert again["images_to_embed"] == 0 and again["to_score"] == 0
    assert again["score_seconds"] == 0


def test_every_proxy_ranks_from_client_and_cli(client: Any) -> None:
    import json

    from typer.testing import CliRunner

    from shift.cli import app
    from shift.scoring.proxies import PROXIES

    for name in sorted(PROXIES):
        for ranker in (name, f"hybrid({name})"):
            res = client.query(f"SELECT top 2 FROM pool all WHERE task=toy RANK BY {ranker}")
            assert len(set(res.names)) == 2, ranker
            assert all(isinstance(s, float) and math.isfinite(s) for s in res.scores.values())
    for ranker in ("sh(logme)", "random(1)", "logme"):
        r = CliRunner().invoke(
            app,
            [
                "query",
                f"SELECT top 2 FROM pool all WHERE task=toy RANK BY {ranker}",
                "--json",
                "--home",
                str(client.registry.home.registry_dir),
                "--executor",
                "inprocess",
            ],
        )
        assert r.exit_code == 0, r.output
        assert len(json.loads(r.stdout)["rows"]) == 2


def test_sh_with_a_logit_proxy_refuses_models_without_a_head(client: Any, tmp_path: Path) -> None:
    build_tiny_cnn(tmp_path / "headless.onnx", seed=9, classes=None)
    register_onnx(client.registry, tmp_path / "headless.onnx", "headless")
    with pytest.raises(QueryError) as e:
        client.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY sh(leep)")
    assert "headless" in e.value.message and e.value.column == 51
    assert client.engine.executor.inference_calls == 0  # refused before any embedding
