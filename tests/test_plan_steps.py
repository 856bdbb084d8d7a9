"""Typed plan steps (issue 22, item 1): the planner turns each ranker into one step class with its
label and columns; the executor runs a step by its type's runner (``shift.engine.steps``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from records import fake_model, fake_task

import shift.engine.execute as ex
import shift.query.steps as qs
from shift.engine.steps import RUNNERS
from shift.engine.steps.base import Context, Runner
from shift.query.planner import plan_text
from shift.records import ModelRecord, Result
from shift.store.registry import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(tmp_path)
    reg.add_model(fake_model("small", params=5_000_000))
    reg.add_model(fake_model("big", params=60_000_000))
    reg.add_model(fake_model("ghost", path="", sha256="", weights="missing", params=None, dim=None))
    reg.put_task(fake_task("toy"))
    reg.put_task(fake_task("pets"))
    yield reg
    reg.close()


SCORED = ["rank", "name", "imagenet_top1", "agnostic_rank", "score", "why"]
MODELS = ["rank", "name", "params", "dim", "imagenet_top1", "upstream_dataset"]


@pytest.mark.parametrize(
    ("query", "kind", "label", "columns"),
    [
        ("SELECT * FROM models ORDER BY params DESC", qs.Order, "ORDER BY params DESC", MODELS),
        ("SELECT * FROM finetunes", qs.Table, "table", None),
        ("SELECT top 2 FROM pool all", qs.Agnostic, "agnostic", MODELS),
        ("SELECT * FROM models WHERE task=toy RANK BY agnostic", qs.Agnostic, "agnostic", SCORED),
        ("SELECT * FROM models RANK BY random(3)", qs.Random, "random(3)", SCORED),
        ("SELECT * FROM models WHERE task=toy RANK BY meta", qs.Meta, "meta(vtab1k)", SCORED),
        (
            "SELECT * FROM models WHERE task=toy RANK BY similar(k=2)",
            qs.Similar,
            "similar(k=2)",
            SCORED,
        ),
        (
            "SELECT * FROM models WHERE task=toy RANK BY knn(k=3)",
            qs.RankByProxy,
            "knn(k=3)",
            SCORED,
        ),
        ("SELECT * FROM models WHERE task=toy", qs.Hybrid, "hybrid(linear)", SCORED),
        (
            "SELECT * FROM models WHERE task=toy RANK BY sh(knn, 8)",
            qs.Halving,
            "sh(knn, 8, auto)",
            [*SCORED[:5], "samples", "why"],
        ),
        (
            "SELECT * FROM models WHERE task IN (toy, pets) RANK BY max(knn)",
            qs.MultiTask,
            "max(knn)",
            [*SCORED[:4], "score:toy", "score:pets", "score", "why"],
        ),
        (
            "SELECT * FROM models WHERE task IN (toy, pets)",
            qs.MultiTask,
            "avg_rank(linear)",
            [*SCORED[:4], "score:toy", "score:pets", "mean_rank", "why"],
        ),
    ],
)
def test_each_ranker_plans_to_its_step(
    registry: Registry, query: str, kind: type, label: str, columns: list[str] | None
) -> None:
    p = plan_text(query, registry)
    assert type(p.step) is kind and p.ranker == p.step.label == label
    if columns is not None:
        assert p.step.columns() == columns
    assert isinstance(p.step, qs.ProxyStep) == (
        kind in (qs.RankByProxy, qs.Hybrid, qs.Halving, qs.MultiTask)
    )


def test_every_step_type_has_a_runner() -> None:
    def concrete(cls: type) -> set[type]:
        return {c for s in cls.__subclasses__() for c in concrete(s) | {s}}

    abstract = {qs.ProxyStep, qs.TaskProxyStep}
    assert set(RUNNERS) == concrete(qs.Step) - abstract


def test_execute_dispatches_on_the_step_type(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stub(Runner[qs.Agnostic]):
        def run(self, step: qs.Agnostic, cx: Context) -> Result:
            return Result(query=cx.plan.text, columns=["x"], rows=[{"x": step.label}])

    monkeypatch.setitem(RUNNERS, qs.Agnostic, Stub())
    assert ex.run("SELECT * FROM models", registry, WeightsOnly).rows == [{"x": "agnostic"}]


class WeightsOnly:
    """An engine that, like the real one, cannot estimate the work of a model without weights."""

    def status(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, Any]:
        assert all(m.has_weights for m in models), [m.name for m in models]
        n = len(models)
        return {
            "embed_summary": "-",
            "to_embed": n,
            "score_summary": "-",
            "to_score": n,
            "estimate": f"{n} models",
        }


def test_explain_of_several_tasks_leaves_weightless_models_out(registry: Registry) -> None:
    q = "SELECT * FROM models WHERE task IN (toy, pets) RANK BY avg(knn)"
    res = ex.run(q, registry, WeightsOnly, explain=True)
    weights = next(s for s in res.rows if s["step"] == "weights")
    assert weights["models"] == 1 and "ghost" in weights["detail"]
    assert res.plan["weights_missing"] == ["ghost"] and res.plan["work"]["to_score"] == 4
    assert [s["step"] for s in res.rows][-5:] == [
        "embed toy",
        "score knn on toy",
        "embed pets",
        "score knn on pets",
        "rank",
    ]
