"""The whole story of a query, in :func:`run`: text (or an AST) → parse → plan → execute →
:class:`~shift.records.Result`. Model filtering runs as parameterised SQL; task-aware rankers get
their scores from a :class:`ScoreSource` (the engine), which indexes and scores only what is
missing. The caller supplies the engine as a zero-argument factory, called only when a step
needs it, so a query without a task never loads inference. The plan's step is typed
(:mod:`shift.query.steps`); :func:`execute` hands it to its runner (:mod:`shift.engine.steps`)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shift.engine.steps import runner_for
from shift.engine.steps.base import Context, EngineFactory, ScoreSource
from shift.query import ast
from shift.query.format import to_text
from shift.query.parser import parse
from shift.query.planner import Plan, plan
from shift.records import Result, Timings

if TYPE_CHECKING:
    from shift.store.registry import Registry

__all__ = ["EngineFactory", "ScoreSource", "execute", "run"]

log = logging.getLogger(__name__)


def run(
    query: str | ast.Select,
    registry: Registry,
    engine_factory: EngineFactory,
    *,
    explain: bool = False,
) -> Result:
    """Parse ``query`` (or take its AST, rendered to text only for messages), plan it against
    ``registry`` and execute it, making the engine with ``engine_factory`` only if a step needs
    it; ``explain=True`` returns the plan instead of the ranking.
    ``result.timings``: parse (or render), plan, score and total milliseconds."""
    t0 = time.perf_counter()
    if isinstance(query, str):
        text, select = query, parse(query)
    else:
        text, select = to_text(query), query
    if explain:
        select = replace(select, explain=True)
    t1 = time.perf_counter()
    log.debug("parsed in %.1f ms: %s", (t1 - t0) * 1000, select)
    p = plan(select, text, registry)
    t2 = time.perf_counter()
    log.debug(
        "planned in %.1f ms: pool %s, task %s, %s, filters %s",
        (t2 - t1) * 1000,
        p.pool,
        p.task,
        p.ranker,
        [f.label for f in p.filters],
    )
    timings = Timings(parse_ms=(t1 - t0) * 1000, plan_ms=(t2 - t1) * 1000)
    result = execute(p, registry, engine_factory, timings)
    result.timings.total_ms = (time.perf_counter() - t0) * 1000
    log.debug(
        "executed: %d rows in %.1f ms (score %.1f ms)",
        len(result.rows),
        result.timings.total_ms,
        result.timings.score_ms,
    )
    return result


def execute(
    plan: Plan,
    registry: Registry,
    engine_factory: EngineFactory,
    timings: Timings | None = None,
) -> Result:
    """Run a checked plan: its step's runner ranks the filtered pool (EXPLAIN: says how it
    would); the engine is made only for a step that needs it. ``Result.failed`` names the
    models that failed (not ranked), ``Result.skipped`` those left out for want of weights."""
    timings = timings or Timings()
    t0 = time.perf_counter()
    runner = runner_for(plan.step)
    cx = Context(plan, registry, engine_factory, timings, info=_info(plan))
    if plan.select.explain:
        res = runner.explain(plan.step, cx)
        res.timings = timings
        return res
    res = runner.run(plan.step, cx)
    res.timings.total_ms += (time.perf_counter() - t0) * 1000
    return res


def _info(plan: Plan) -> dict[str, Any]:
    """The result's ``plan`` as every ranking starts it (runners add to it)."""
    return {
        "pool": plan.pool,
        "ranker": plan.ranker,
        "budget": plan.budget,
        "task": plan.task,
        "filters": [f.label for f in plan.filters],
    }
