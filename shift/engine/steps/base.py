"""What every runner shares: the :class:`Context` of one execution, the :class:`Runner` base (its
EXPLAIN frame), :class:`RankedRunner` (filter, check, score, rank, rows), the checks made before
any work (weights, heads) and the engine calls with a proxy's settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from shift.query.planner import Plan
from shift.query.steps import ProxyCall, ProxyStep, Step
from shift.records import ModelRecord, Result, Timings
from shift.scoring.strategies import Pick, rank

if TYPE_CHECKING:
    import numpy as np

    from shift.engine.indexing import IndexReport
    from shift.store.registry import Registry

#: the query's story is told by one logger, whichever runner tells it
log = logging.getLogger("shift.engine.execute")


class ScoreSource(Protocol):
    """What the executor needs from the engine. After ``scores``, an engine may say which models
    failed (no score) and why in ``last_report.failed`` (``{name: reason}``): those are left out
    of the ranking and named in the result's ``failed``. ``args``: the proxy's settings."""

    @property
    def registry(self) -> Registry:
        """The registry the engine reads tasks and samples from."""
        ...

    @property
    def last_report(self) -> IndexReport | None:
        """What the last call indexed, reused and which models failed (``failed``)."""
        ...

    def status(
        self,
        task: str,
        models: list[ModelRecord],
        proxy: str,
        args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Which embeddings and scores exist and what must be computed (for EXPLAIN)."""
        ...

    def scores(
        self,
        task: str,
        models: list[ModelRecord],
        proxy: str,
        args: Mapping[str, Any] | None = None,
    ) -> dict[str, float | None]:
        """Proxy score per model name, computing (and caching) whatever is missing."""
        ...

    def index_prefix(
        self, task: str, models: list[ModelRecord], n: int
    ) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]:
        """``(sample ids, embeddings, logits)`` of the first ``n`` samples of the embedding
        order per model (successive halving's rounds)."""
        ...


#: supplies the engine on first need (``lambda: engine`` for one already built)
EngineFactory = Callable[[], ScoreSource]


@dataclass
class Context:
    """One execution of a plan: the registry, the engine on first need, the timings and the
    result's ``plan`` entry (``info``), which runners add to."""

    plan: Plan
    registry: Registry
    engine_factory: EngineFactory
    timings: Timings
    info: dict[str, Any] = field(default_factory=dict)

    def models(self, order: str = "m.name") -> list[ModelRecord]:
        """The pool's models after the plan's filters, in ``order`` (SQL)."""
        where, binds = self.plan.where_sql
        return self.registry.models(where, binds, order=order)

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """Counts the time inside into ``timings.score_ms``."""
        ts = time.perf_counter()
        try:
            yield
        finally:
            self.timings.score_ms += (time.perf_counter() - ts) * 1000


S = TypeVar("S", bound=Step)


class Runner(Generic[S]):
    """How a step of type ``S`` runs. ``run`` gives the result; ``explain`` EXPLAIN's rows: the
    pool after each filter, the ranker's own rows (:meth:`explain_work`), then the rank."""

    def run(self, step: S, cx: Context) -> Result:
        """The step's result over the plan's pool."""
        raise NotImplementedError

    def explain(self, step: S, cx: Context) -> Result:
        """EXPLAIN's rows (step, detail, models) and its ``plan`` (``info``)."""
        plan = cx.plan
        rows = filter_counts(plan, cx.registry)
        info: dict[str, Any] = {
            "pool": plan.pool,
            "ranker": plan.ranker,
            "budget": plan.budget,
            "task": plan.task,
            "steps": rows,
        }
        self.explain_work(step, cx, rows, info)
        keep = f", keep {plan.budget}" if plan.budget else ""
        rows.append({"step": "rank", "detail": plan.ranker + keep, "models": None})
        return Result(query=plan.text, columns=["step", "detail", "models"], rows=rows, plan=info)

    def explain_work(
        self, step: S, cx: Context, rows: list[dict[str, Any]], info: dict[str, Any]
    ) -> None:
        """EXPLAIN's rows between the filters and the rank, and its ``info``: none by default
        (a ranker that reads metadata only)."""


def filter_counts(plan: Plan, registry: Registry) -> list[dict[str, Any]]:
    """EXPLAIN's first rows: every model, then the pool's size after each filter."""
    rows: list[dict[str, Any]] = [
        {"step": "all models", "detail": "", "models": registry.count_models()}
    ]
    for i, f in enumerate(plan.filters):
        part = plan.filters[: i + 1]
        sql = " AND ".join(x.sql for x in part)
        binds = [b for x in part for b in x.binds]
        rows.append(
            {"step": "filter", "detail": f.label, "models": registry.count_models(sql, binds)}
        )
    return rows


@dataclass
class Scored:
    """A ranker's scores per model name and the models that failed (not ranked), with why."""

    scores: dict[str, float | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class RankedRunner(Runner[S]):
    """A step that ranks the pool: the models that can run (:func:`check_weights`,
    :func:`check_heads`), scored by :meth:`score`, ranked by :func:`~shift.scoring.strategies.rank`
    with rule ``rule`` (failed models left out), one row per pick (:meth:`row`)."""

    #: ``rank``'s rule: agnostic | proxy | hybrid
    rule: ClassVar[str] = "proxy"

    def score(self, step: S, cx: Context, models: list[ModelRecord]) -> Scored:
        """Each model's score (none by default: the task-agnostic order decides)."""
        return Scored()

    def reason(self, step: S) -> str | None:
        """How a pick's reason names the ranker (``task-aware: #1 by <this>``)."""
        return step.label

    def run(self, step: S, cx: Context) -> Result:
        """Check, score, rank; rows and scores as the step's columns say."""
        models, skipped = check_weights(cx.plan, step, cx.models())
        check_heads(cx.plan, step, models)  # before any work
        scored = self.score(step, cx, models)
        if scored.failed:  # never ranked (hybrid's task-agnostic pick included)
            log.warning("not ranked, failed: %s", ", ".join(sorted(scored.failed)))
            models = [m for m in models if m.name not in scored.failed]
        picks = rank(models, cx.plan.budget, self.rule, self.reason(step), scored.scores)
        cols = step.columns()
        rows = [self.row(step, i, p, scored) for i, p in enumerate(picks)]
        return Result(
            query=cx.plan.text,
            columns=cols,
            rows=rows,
            scores={r["name"]: r.get("score") for r in rows} if "score" in cols else {},
            failed=scored.failed,
            skipped=skipped,
            plan=cx.info,
            timings=cx.timings,
        )

    def row(self, step: S, i: int, p: Pick, scored: Scored) -> dict[str, Any]:
        """The ``i``-th pick's row: its rank, the model, its task-agnostic rank, its score (when
        the columns show one) and why it was picked."""
        row = {"rank": i + 1, **model_row(p.model), "agnostic_rank": p.agnostic_rank}
        if "score" in step.columns():
            row["score"] = p.score
        row["why"] = p.reason
        return row


def model_row(m: ModelRecord) -> dict[str, Any]:
    """A model's columns in a result row."""
    return {
        "name": m.name,
        "family": m.family,
        "params": m.params,
        "dim": m.dim,
        "imagenet_top1": m.imagenet_top1,
        "upstream_dataset": m.upstream_dataset,
        "source": m.source,
    }


def rank_error_at(plan: Plan) -> dict[str, int]:
    """Where errors about the ranker point: ``RANK BY``'s ranker, else the query's start."""
    pos = plan.select.rank.pos if plan.select.rank else None
    return {
        "line": pos.line if pos else 1,
        "column": pos.column if pos else 1,
        "length": pos.length if pos else 1,
    }


def check_heads(plan: Plan, step: Step, models: list[ModelRecord]) -> None:
    """Proxies over source-classifier logits (LEEP, NCE, ...) need every model to have a head."""
    from shift.errors import QueryError

    if not isinstance(step, ProxyStep):  # agnostic, meta, random: no proxy (and no numpy)
        return
    from shift.scoring.proxies import get_proxy

    if not get_proxy(step.proxy.name).needs_logits:
        return
    no_head = [m.name for m in models if not m.head_output]
    if no_head:
        more = ", ..." if len(no_head) > 5 else ""
        raise QueryError(
            f"{step.proxy.name} scores a model's source-classifier logits, but "
            f"{len(no_head)} model(s) in the pool have no head: {', '.join(no_head[:5])}{more}",
            text=plan.text,
            **rank_error_at(plan),
            hint="add has_head = true to the WHERE clause, or rank by a feature proxy",
        )


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
    plan: Plan, step: Step, models: list[ModelRecord]
) -> tuple[list[ModelRecord], dict[str, str]]:
    """A step that embeds the task with each model (a :class:`ProxyStep`; ORDER BY, agnostic,
    meta, random and similar read metadata and fine-tuning results only) leaves out the models
    registered without weights (metadata only), returned by name with why (``Result.skipped``),
    before any work. Only when no model of the pool has weights is it an error, listing them."""
    from shift.errors import WeightsMissingError

    if not isinstance(step, ProxyStep):
        return models, {}
    missing = [m for m in models if not m.has_weights]
    if not missing:
        return models, {}
    if len(missing) < len(models):
        skipped = {m.name: "no weights (registered from metadata only)" for m in missing}
        log.info("left out, no weights: %s", ", ".join(skipped))
        return [m for m in models if m.has_weights], skipped
    names = [m.name for m in missing]
    raise WeightsMissingError(
        f"RANK BY {plan.ranker} embeds the task with each model, but none of the {len(names)} "
        f"model(s) in the pool has weights: {', '.join(names[:10])}"
        f"{', ...' if len(names) > 10 else ''}",
        models=names,
        text=plan.text,
        **rank_error_at(plan),
        hint=weights_hint(missing),
    )


def explain_weights(
    models: list[ModelRecord], rows: list[dict[str, Any]], info: dict[str, Any]
) -> list[ModelRecord]:
    """EXPLAIN of a step that embeds: the models without weights get a ``weights`` row and
    ``info["weights_missing"]``; returns the others (the ones the engine's status is for)."""
    missing = [m.name for m in models if not m.has_weights]
    if not missing:
        return models
    info["weights_missing"] = missing
    rows.append(
        {
            "step": "weights",
            "detail": (
                "missing, left out of the ranking: "
                if len(missing) < len(models)
                else "missing for every model (the query fails before any work): "
            )
            + ", ".join(missing[:5])
            + (", ..." if len(missing) > 5 else ""),
            "models": len(missing),
        }
    )
    return [m for m in models if m.has_weights]


def engine_scores(
    eng: ScoreSource, task: str, models: list[ModelRecord], proxy: ProxyCall
) -> dict[str, float | None]:
    """``eng.scores`` with the proxy's settings (passed only when there are any)."""
    extra = {"args": proxy.settings} if proxy.settings else {}
    return eng.scores(task, models, proxy.name, **extra)


def engine_status(eng: ScoreSource, task: str, models: list[ModelRecord], proxy: ProxyCall) -> dict:
    """``eng.status`` with the proxy's settings (passed only when there are any)."""
    extra = {"args": proxy.settings} if proxy.settings else {}
    return eng.status(task, models, proxy.name, **extra)


def engine_failures(
    eng: ScoreSource, models: list[ModelRecord], scores: dict[str, float | None]
) -> dict[str, str]:
    """The models of ``models`` that failed in the engine's last call (its
    ``last_report.failed``, e.g. a file that does not load) and got no score, with the reason."""
    failed = getattr(getattr(eng, "last_report", None), "failed", None) or {}
    return {
        m.name: str(failed[m.name])
        for m in models
        if m.name in failed and scores.get(m.name) is None
    }
