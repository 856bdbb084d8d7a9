"""The whole story of a query, in :func:`run`: text (or an AST) → parse → plan → execute →
:class:`~shift.records.Result`. Model filtering runs as parameterised SQL; task-aware rankers get
their scores from a :class:`ScoreSource` (the engine), which indexes and scores only what is
missing. The caller supplies the engine as a zero-argument factory, called only when a step
needs it, so a query without a task never loads inference."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from shift.engine.multitask import (
    engine_failures,
    engine_scores,
    engine_status,
    explain_multi,
    run_multi,
)
from shift.engine.similarity import explain_similar, run_similar
from shift.engine.tables import explain_table, run_table
from shift.query import ast
from shift.query.columns import COLUMNS, DISPLAY_COLUMNS
from shift.query.format import to_text
from shift.query.parser import parse
from shift.query.planner import Plan, plan
from shift.records import ModelRecord, Result, Timings
from shift.scoring.strategies import rank

if TYPE_CHECKING:
    from shift.store.registry import Registry

log = logging.getLogger(__name__)


class ScoreSource(Protocol):
    """What the executor needs from the engine. After ``scores``, an engine may say which models
    failed (no score) and why in ``last_report.failed`` (``{name: reason}``): those are left out
    of the ranking and named in the result's ``failed``."""

    def status(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, Any]:
        """Which embeddings and scores exist and what must be computed (for EXPLAIN)."""
        ...

    def scores(self, task: str, models: list[ModelRecord], proxy: str) -> dict[str, float | None]:
        """Proxy score per model name, computing (and caching) whatever is missing."""
        ...


#: supplies the engine on first need (``lambda: engine`` for one already built)
EngineFactory = Callable[[], ScoreSource]


def run(
    query: str | ast.Select,
    registry: Registry,
    engine: EngineFactory,
    *,
    explain: bool = False,
) -> Result:
    """Parse ``query`` (or take its AST, rendered to text only for messages), plan it against
    ``registry`` and execute it; ``explain=True`` returns the plan instead of the ranking.
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
    result = execute(p, registry, engine, timings)
    result.timings.total_ms = (time.perf_counter() - t0) * 1000
    log.debug(
        "executed: %d rows in %.1f ms (score %.1f ms)",
        len(result.rows),
        result.timings.total_ms,
        result.timings.score_ms,
    )
    return result


def _row(m: ModelRecord) -> dict[str, Any]:
    return {
        "name": m.name,
        "family": m.family,
        "params": m.params,
        "dim": m.dim,
        "imagenet_top1": m.imagenet_top1,
        "upstream_dataset": m.upstream_dataset,
        "source": m.source,
    }


def _sort_sql(plan: Plan) -> str:
    assert plan.order is not None
    col = COLUMNS[plan.order.column]
    direction = "DESC" if plan.order.descending else "ASC"
    # NULLs last either way, then name for a total order
    return f"({col.sql} IS NULL), {col.sql} {direction}, m.name"


def random_scores(models: list[ModelRecord], seed: int) -> dict[str, float | None]:
    """A seeded, reproducible uniform draw in [0, 1) per model (by name)."""
    import hashlib

    return {
        m.name: int(hashlib.sha256(f"{seed}:{m.name}".encode()).hexdigest()[:13], 16) / 16**13
        for m in models
    }


def meta_model_scores(
    models: list[ModelRecord], table: str, task: str | None
) -> dict[str, float | None]:
    """Mean fine-tuning accuracy on the table's other tasks (leave the query's task out when the
    table has it). A model imported from Hugging Face is its ``source_id`` (``hf:ID``); other
    registry names map to table ids with ``__`` for ``/``
    (``google__vit-base-patch16-224`` ↔ ``google/vit-base-patch16-224``)."""
    from shift.scoring.meta import cached_meta_scores, cached_table

    gt = cached_table(table)
    ids = {
        m.name: m.source_id[3:]
        if m.source_id and m.source_id.startswith("hf:")
        else m.name.replace("__", "/")
        for m in models
    }
    found = cached_meta_scores(table, task if task in gt.tasks else None)  # read-only
    return {name: found.get(tid) for name, tid in ids.items()}


def check_heads(plan: Plan, models: list[ModelRecord]) -> None:
    """Proxies over source-classifier logits (LEEP, NCE, ...) need every model to have a head."""
    from shift.errors import QueryError

    if not plan.proxy:  # agnostic, meta, random: no proxy (and no numpy) to load
        return
    from shift.scoring.proxies import get_proxy

    if not get_proxy(plan.proxy).needs_logits:
        return
    no_head = [m.name for m in models if not m.head_output]
    if no_head:
        pos = plan.select.rank.pos if plan.select.rank else None
        more = ", ..." if len(no_head) > 5 else ""
        raise QueryError(
            f"{plan.proxy} scores a model's source-classifier logits, but "
            f"{len(no_head)} model(s) in the pool have no head: {', '.join(no_head[:5])}{more}",
            text=plan.text,
            line=pos.line if pos else 1,
            column=pos.column if pos else 1,
            length=pos.length if pos else 1,
            hint="add has_head = true to the WHERE clause, or rank by a feature proxy",
        )


def needs_weights(plan: Plan) -> bool:
    """Whether the plan embeds the task with each model (every task-aware ranker does;
    ORDER BY, agnostic, meta(...), random(...) and similar(...) read metadata and fine-tuning
    results only; similar's probe is chosen among the models with weights)."""
    return bool(plan.tasks and plan.proxy)


def weights_hint(missing: list[ModelRecord]) -> str:
    """How to give the models in ``missing`` their weights."""
    urls = [m.weights_url for m in missing[:3] if m.weights_url]
    return (
        "give each its weights: `shift-cli models weights NAME --weights FILE|DIR` (a local file "
        "or a torch hub cache folder), or `--download` where the machine is online"
        + (
            f" (the source's files: {', '.join(urls)}{', ...' if len(missing) > 3 else ''})"
            if urls
            else ""
        )
        + "; or rank only models with weights: add weights = 'present' to the WHERE clause"
    )


def check_weights(
    plan: Plan, models: list[ModelRecord]
) -> tuple[list[ModelRecord], dict[str, str]]:
    """A task-aware ranking embeds with each model: those registered without weights (metadata
    only) are left out, returned by name with why (``Result.skipped``), before any work. Only
    when no model of the pool has weights is it an error, listing them."""
    from shift.errors import WeightsMissingError

    if not needs_weights(plan):
        return models, {}
    missing = [m for m in models if not m.has_weights]
    if not missing:
        return models, {}
    if len(missing) < len(models):
        skipped = {m.name: "no weights (registered from metadata only)" for m in missing}
        log.info("left out, no weights: %s", ", ".join(skipped))
        return [m for m in models if m.has_weights], skipped
    names = [m.name for m in missing]
    pos = plan.select.rank.pos if plan.select.rank else None
    raise WeightsMissingError(
        f"RANK BY {plan.ranker} embeds the task with each model, but none of the {len(names)} "
        f"model(s) in the pool has weights: {', '.join(names[:10])}"
        f"{', ...' if len(names) > 10 else ''}",
        models=names,
        text=plan.text,
        line=pos.line if pos else 1,
        column=pos.column if pos else 1,
        length=pos.length if pos else 1,
        hint=weights_hint(missing),
    )


def explain(plan: Plan, registry: Registry, engine: EngineFactory) -> Result:
    """Pool size after each filter, what is cached and what must be computed."""
    if plan.strategy == "table":
        return explain_table(plan, registry)
    steps: list[dict[str, Any]] = [
        {"step": "all models", "detail": "", "models": registry.count_models()}
    ]
    for i, _f in enumerate(plan.filters):
        part = plan.filters[: i + 1]
        sql = " AND ".join(x.sql for x in part)
        params = [p for x in part for p in x.params]
        steps.append(
            {
                "step": "filter",
                "detail": plan.filters[i].label,
                "models": registry.count_models(sql, params),
            }
        )
    info: dict[str, Any] = {
        "pool": plan.pool,
        "ranker": plan.ranker,
        "budget": plan.budget,
        "task": plan.task,
        "steps": steps,
    }
    if plan.strategy == "multi":
        info["tasks"] = plan.tasks
        where, params = plan.where_sql
        info["work"] = explain_multi(plan, registry.models(where, params), engine, steps)
    elif plan.strategy == "similar":
        where, params = plan.where_sql
        explain_similar(plan, registry, registry.models(where, params), engine, steps, info)
    elif plan.task and plan.proxy:
        where, params = plan.where_sql
        models = registry.models(where, params)
        missing = [m.name for m in models if not m.has_weights]
        if missing:  # the query would fail before any work: say so, and why
            info["weights_missing"] = missing
            steps.append(
                {
                    "step": "weights",
                    "detail": "missing (the query fails before any work): "
                    + ", ".join(missing[:5])
                    + (", ..." if len(missing) > 5 else ""),
                    "models": len(missing),
                }
            )
            models = [m for m in models if m.has_weights]
        status = engine_status(engine(), plan.task, models, plan)
        info["work"] = status
        steps.append(
            {"step": "embed", "detail": status["embed_summary"], "models": status["to_embed"]}
        )
        steps.append(
            {
                "step": f"score {plan.proxy_label}",
                "detail": status["score_summary"],
                "models": status["to_score"],
            }
        )
    steps.append(
        {
            "step": "rank",
            "detail": plan.ranker + (f", keep {plan.budget}" if plan.budget else ""),
            "models": None,
        }
    )
    return Result(query=plan.text, columns=["step", "detail", "models"], rows=steps, plan=info)


def execute(
    plan: Plan,
    registry: Registry,
    engine: EngineFactory,
    timings: Timings | None = None,
) -> Result:
    """Run a checked plan: SQL filters, then the plan's strategy (ORDER BY, agnostic, a proxy,
    hybrid, successive halving, meta or random); the engine is made only for task-aware ones.
    Models the engine reports failed are not ranked: ``Result.failed`` names them, with why."""
    timings = timings or Timings()
    t0 = time.perf_counter()
    if plan.select.explain:
        res = explain(plan, registry, engine)
        res.timings = timings
        return res
    if plan.strategy == "table":
        return run_table(plan, registry, timings)
    where, params = plan.where_sql
    plan_info = {
        "pool": plan.pool,
        "ranker": plan.ranker,
        "budget": plan.budget,
        "task": plan.task,
        "filters": [f.label for f in plan.filters],
    }
    if plan.strategy == "order":
        models = registry.models(where, params, order=_sort_sql(plan))
        if plan.budget is not None:
            models = models[: plan.budget]
        rows = [{"rank": i + 1, **_row(m)} for i, m in enumerate(models)]
        timings.total_ms += (time.perf_counter() - t0) * 1000
        return Result(
            query=plan.text,
            columns=["rank", *DISPLAY_COLUMNS],
            rows=rows,
            plan=plan_info,
            timings=timings,
        )

    models = registry.models(where, params)
    scores: dict[str, float | None] = {}
    failed: dict[str, str] = {}  # models that failed (not ranked), with the reason
    strategy, label = plan.strategy, (plan.proxy_label if plan.proxy else None)
    models, skipped = check_weights(plan, models)
    check_heads(plan, models)  # before any work: sh and plain proxies alike
    if plan.strategy == "multi":
        res = run_multi(plan, models, engine, timings, plan_info)
        res.timings.total_ms += (time.perf_counter() - t0) * 1000
        res.skipped = skipped
        return res
    if plan.strategy == "similar":
        ts = time.perf_counter()
        scores = run_similar(plan, registry, models, engine, plan_info)
        timings.score_ms += (time.perf_counter() - ts) * 1000
        strategy, label = "proxy", plan.ranker
    elif plan.strategy in ("random", "meta"):
        scores = (
            random_scores(models, plan.proxy_args[0])
            if plan.strategy == "random"
            else meta_model_scores(models, plan.proxy_args[0], plan.task)
        )
        strategy, label = "proxy", plan.ranker
    elif plan.strategy == "sh":
        from shift.engine.halving import successive_halving

        eng = engine()
        ts = time.perf_counter()
        assert plan.task is not None and plan.proxy is not None
        res = successive_halving(eng, plan.task, models, plan.proxy, *plan.proxy_args)
        timings.score_ms += (time.perf_counter() - ts) * 1000
        plan_info["halving"] = {
            "rounds": res.rounds,
            "budget": res.budget,
            "chunk": res.chunk,
            "new_chunks_per_round": res.per_round,
            "embedded": res.embedded,
        }
        # the race's outcome is the order: rank by position (scores of different rounds, on
        # different amounts of data, are never compared); rows show each model's last score
        failed = {
            n: a.error or f"model {n!r} failed while embedding"
            for n, a in res.arms.items()
            if a.eliminated_in == -1
        }
        ranked = [a for a in res.ranking() if a.model.name not in failed]
        scores = {a.model.name: float(len(ranked) - i) for i, a in enumerate(ranked)}
        strategy, label = "proxy", plan.ranker
        race_scores = {n: (a.scores[-1] if a.scores else None) for n, a in res.arms.items()}
        race = res
    elif plan.task and plan.proxy:
        eng = engine()
        ts = time.perf_counter()
        scores = engine_scores(eng, plan.task, models, plan)
        timings.score_ms += (time.perf_counter() - ts) * 1000
        failed = engine_failures(eng, models, scores)
    if failed:  # never ranked (hybrid's task-agnostic pick included): named in the result
        log.warning("not ranked, failed: %s", ", ".join(sorted(failed)))
        models = [m for m in models if m.name not in failed]
    picks = rank(models, plan.budget, strategy, label, scores)
    rows = []
    for i, p in enumerate(picks):
        row = {"rank": i + 1, **_row(p.model), "agnostic_rank": p.agnostic_rank}
        if plan.task or plan.strategy in ("random", "meta"):
            row["score"] = p.score
        row["why"] = p.reason
        if plan.strategy in ("random", "meta"):
            row["why"] = f"#{i + 1} by {plan.ranker}" + (" (no results)" if p.score is None else "")
        if plan.strategy == "sh":
            arm = race.arms[p.model.name]
            row["score"] = race_scores[p.model.name]
            row["samples"] = arm.train_seen
            row["why"] = (  # failed arms (eliminated_in -1) are not ranked
                "sh: survived every round"
                if arm.eliminated_in is None
                else f"sh: dropped after round {arm.eliminated_in + 1}"
            )
        rows.append(row)
    if plan.strategy == "sh":
        cols = ["rank", "name", "imagenet_top1", "agnostic_rank", "score", "samples", "why"]
    elif plan.task or plan.strategy in ("random", "meta"):
        # rows hold every column; the table shows what explains the pick
        cols = ["rank", "name", "imagenet_top1", "agnostic_rank", "score", "why"]
    else:
        cols = ["rank", *DISPLAY_COLUMNS]
    timings.total_ms += (time.perf_counter() - t0) * 1000
    return Result(
        query=plan.text,
        columns=cols,
        rows=rows,
        scores={r["name"]: r.get("score") for r in rows} if "score" in cols else {},
        failed=failed,
        skipped=skipped,
        plan=plan_info,
        timings=timings,
    )
