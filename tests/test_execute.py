"""engine.execute.run: one function tells a query's story (parse → plan → execute), logging each
step; the engine is a factory called only when a step needs it; an AST is never re-parsed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from records import fake_model, fake_task

import shift.engine.execute as ex
from shift.errors import QueryError
from shift.query.builder import select
from shift.records import ModelRecord
from shift.store.registry import Registry


class FakeEngine:
    """Scores by parameter count; counts what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def status(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, Any]:
        self.calls.append("status")
        return {
            "embed_summary": "nothing",
            "to_embed": 0,
            "score_summary": f"{len(models)} to score",
            "to_score": len(models),
        }

    def scores(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, float | None]:
        self.calls.append(f"scores {task} {proxy}")
        return {m.name: m.params / 1e8 for m in models}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(tmp_path)
    reg.add_model(fake_model("small", params=5_000_000))
    reg.add_model(fake_model("big", params=60_000_000))
    reg.add_model(fake_model("mid", params=20_000_000))
    reg.put_task(fake_task("toy"))
    yield reg
    reg.close()


def factory(made: list[FakeEngine]) -> ex.EngineFactory:
    def make() -> FakeEngine:
        made.append(FakeEngine())
        return made[-1]

    return make


def test_run_logs_each_step_and_times_it(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[FakeEngine] = []
    with caplog.at_level(logging.DEBUG, logger="shift.engine.execute"):
        res = ex.run(
            "SELECT top 2 FROM pool all WHERE task=toy RANK BY knn", registry, factory(made)
        )
    steps = [r.getMessage().split(" ")[0] for r in caplog.records]
    assert steps == ["parsed", "planned", "executed:"]
    assert "task toy, knn" in caplog.records[1].getMessage()
    assert res.names == ["big", "mid"]
    assert res.scores == {"big": 0.6, "mid": 0.2}
    assert len(made) == 1 and made[0].calls == ["scores toy knn"]
    t = res.timings
    assert t.parse_ms > 0 and t.plan_ms > 0 and t.score_ms > 0
    assert t.total_ms >= t.parse_ms + t.plan_ms + t.score_ms


@pytest.mark.parametrize(
    "text",
    [
        "SELECT top 2 FROM pool all",
        "SELECT * FROM models ORDER BY params DESC",
        "SELECT top 2 FROM pool all WHERE task=toy RANK BY random(3)",
        "EXPLAIN SELECT top 2 FROM pool all",
    ],
)
def test_engine_is_made_only_when_needed(registry: Registry, text: str) -> None:
    made: list[FakeEngine] = []
    assert ex.run(text, registry, factory(made)).rows
    assert made == []


def test_explain_asks_the_engine_for_its_status(registry: Registry) -> None:
    made: list[FakeEngine] = []
    q = "SELECT top 2 FROM pool all WHERE task=toy RANK BY knn"
    res = ex.run(q, registry, factory(made), explain=True)
    assert [s["step"] for s in res.rows] == ["all models", "embed", "score knn", "rank"]
    assert made[0].calls == ["status"]
    assert ex.run("EXPLAIN " + q, registry, factory(made)).rows == res.rows


def test_an_ast_is_planned_without_a_text_round_trip(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = select(2).where(task="toy").rank("knn").to_ast()
    want = ex.run(built, registry, factory([]))

    def no_parse(text: str) -> Any:
        raise AssertionError(f"re-parsed {text!r}")

    monkeypatch.setattr(ex, "parse", no_parse)
    res = ex.run(built, registry, factory([]))
    assert res.rows == want.rows and res.names == ["big", "mid"]
    assert res.query == "SELECT top 2 FROM pool all WHERE task = 'toy' RANK BY knn"
    with pytest.raises(AssertionError, match="re-parsed"):
        ex.run(res.query, registry, factory([]))


def test_errors_name_the_users_text(registry: Registry) -> None:
    with pytest.raises(QueryError) as e:
        ex.run("SELECT top 2 FROM pool nope", registry, factory([]))
    assert (e.value.line, e.value.column) == (1, 24)
    with pytest.raises(QueryError, match="unknown pool 'nope'"):
        ex.run(select(2).pool("nope").to_ast(), registry, factory([]))


def test_several_tasks_use_the_fake_engine_per_task_and_leave_weightless_models_out(
    registry: Registry,
) -> None:
    registry.put_task(fake_task("toy2"))
    made: list[FakeEngine] = []
    res = ex.run(
        "SELECT top 2 FROM models WHERE task IN (toy, toy2) RANK BY avg(knn)",
        registry,
        factory(made),
    )
    assert made[0].calls == ["scores toy knn", "scores toy2 knn"]
    assert res.names == ["big", "mid"] and res.rows[0]["score:toy2"] == 0.6
    registry.add_model(fake_model("meta-only", weights="missing", path="", sha256=""))
    res = ex.run("SELECT * FROM models WHERE task IN (toy, toy2)", registry, factory(made))
    assert "meta-only" not in res.names and list(res.skipped) == ["meta-only"]
    assert "meta-only" not in res.scores  # never handed to the engine (it would score it)
    registry.remove_task("toy2")


class FailingEngine(FakeEngine):
    """Scores like FakeEngine, but ``failing`` models fail as the engine reports a failure: no
    score, and the reason in ``last_report.failed`` (issue 20, item 5)."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.last_report: Any = None

    def scores(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, float | None]:
        from shift.engine.indexing import IndexReport

        out: dict[str, float | None] = dict(super().scores(task, models, proxy))
        failed = {
            m.name: f"model {m.name!r}: cannot load" for m in models if m.name in self.failing
        }
        out.update(dict.fromkeys(failed))
        self.last_report = IndexReport(failed=failed)
        return out


@pytest.mark.parametrize("ranker", ["knn", "hybrid(knn)", "avg(knn)", "avg_rank(knn)", "min(knn)"])
def test_failed_models_are_left_out_of_the_ranking_and_named(
    registry: Registry, ranker: str
) -> None:
    """'big' (the best score, and the task-agnostic pick of hybrid) fails: it is neither ranked
    nor given a row, and the result names it under ``failed`` with the engine's reason."""
    registry.put_task(fake_task("toy2"))
    tasks = (
        "task IN (toy, toy2)" if "(" in ranker and not ranker.startswith("hybrid") else "task=toy"
    )
    engine = FailingEngine({"big"})
    res = ex.run(
        f"SELECT top 3 FROM pool all WHERE {tasks} RANK BY {ranker}", registry, lambda: engine
    )
    assert res.names == ["mid", "small"]
    assert [r["rank"] for r in res.rows] == [1, 2]
    assert "big" not in res.scores
    assert res.failed == {"big": "model 'big': cannot load"}
    assert all("big" not in str(r["why"]) for r in res.rows)


def test_a_result_with_no_failure_says_so(registry: Registry) -> None:
    res = ex.run("SELECT top 3 FROM pool all WHERE task=toy RANK BY knn", registry, factory([]))
    assert res.failed == {} and res.names == ["big", "mid", "small"]
