"""``RANK BY similar(k=3)``: rank models by their fine-tuning results on the registered tasks
most similar to the query's task (the user's own history in ``finetune_results``).

**Task embedding.** Every task is embedded with one fixed *probe* model (``probe=NAME``; by
default the registry's smallest model with weights, ties by name), from the probe's stored
embedding index of the task (indexed like any query's, so computed once), into the vector of
:mod:`shift.scoring.task_similarity` (class-mean distance quantiles and the mean feature); two
tasks are as far apart as the cosine distance of their vectors.

**Score.** The ``k`` nearest registered tasks other than the query's (among those with at least
one fine-tuning result for the current task and model content) are the neighbours, with weights
``w = max(1 − d, 10⁻⁶)``. A model's score is ``Σ w_t acc(m, t) / Σ w_t`` over the neighbours
where it has a result (its best accuracy over fine-tuning protocols); ``None`` (ranked last)
where it has none. Ties go to the task-agnostic order. The results are read from
:mod:`shift.store.finetunes`. The step runs in
:class:`shift.engine.steps.similar.SimilarRunner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shift.errors import QueryError, ShiftError
from shift.query.planner import Plan
from shift.query.steps import Similar
from shift.records import ModelRecord
from shift.scoring.task_similarity import task_distance, task_vector, weight, weighted_mean
from shift.store import finetunes

if TYPE_CHECKING:  # numpy loads when a task vector is computed, not with every query
    import numpy as np

    from shift.store.registry import Registry


@dataclass(frozen=True)
class Neighbour:
    task: str
    distance: float
    results: int  # models of the pool with a fine-tuning result on it

    @property
    def weight(self) -> float:
        return weight(self.distance)


def _error(plan: Plan, msg: str, hint: str, key: str | None = None) -> QueryError:
    r = plan.select.rank
    sp = (r.kwarg_span(key) if key else r.pos) if r is not None else None
    return QueryError(
        msg,
        text=plan.text,
        line=sp.line if sp else 1,
        column=sp.column if sp else 1,
        length=sp.length if sp else 1,
        hint=hint,
    )


def similar_step(plan: Plan) -> Similar:
    """The plan's ``similar`` step."""
    assert isinstance(plan.step, Similar)
    return plan.step


def probe_model(plan: Plan, registry: Registry) -> ModelRecord:
    """The probe: ``probe=NAME`` or the smallest registered model with weights (ties by name)."""
    name = similar_step(plan).probe
    usable = [m for m in registry.models() if getattr(m, "weights", "present") == "present"]
    if name:
        found = [m for m in usable if m.name == name]
        if not found:
            raise _error(
                plan,
                f"probe {name!r} is not a registered model with weights",
                "models: " + ", ".join(m.name for m in usable[:20]),
                "probe",
            )
        return found[0]
    if not usable:
        raise _error(plan, "similar needs a probe model, but no model has weights", "")
    return min(usable, key=lambda m: (m.params, m.name))


def _vector(eng: Any, task: str, probe: ModelRecord) -> np.ndarray:
    """The task's vector from the probe's index (memoised per task content and probe key)."""
    rec, rows = eng.registry.task_snapshot(task)
    cache: dict[tuple[str, str], np.ndarray] = eng.__dict__.setdefault("_task_vectors", {})
    key = (rec.content_hash, eng.score_key(probe))
    if key not in cache:
        idx = eng.index(task, [probe]).get(probe.name)
        if idx is None:
            raise ShiftError(f"the probe {probe.name} could not embed task {task!r}")
        x, y = idx.select([r["sample_id"] for r in rows])
        cache[key] = task_vector(x, y)
    return cache[key]


def probe_ready(eng: Any, tasks: list[str], probe: ModelRecord) -> list[str]:
    """The tasks on which the probe still has to embed samples (EXPLAIN)."""
    out = []
    for t in tasks:
        mode = eng.status(t, [probe], "knn")["per_model"].get(probe.name, {}).get("index")
        if mode not in ("ready", "relabel"):
            out.append(t)
    return out


def candidates(
    plan: Plan, registry: Registry, models: list[ModelRecord]
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Fine-tuning accuracies by task (of the pool's models) and the candidate tasks: every
    task other than the query's with a result for some model of the pool."""
    shas = {m.sha256 for m in models}
    acc = {
        t: {s: a for s, a in row.items() if s in shas}
        for t, row in finetunes.best_accuracies(registry).items()
        if t != plan.task
    }
    return acc, sorted(t for t, row in acc.items() if row)


def neighbours(
    plan: Plan, eng: Any, probe: ModelRecord, tasks: list[str], acc: dict[str, dict[str, float]]
) -> list[Neighbour]:
    """The ``k`` candidate tasks nearest to the query's task (ties by name)."""
    assert plan.task is not None
    target = _vector(eng, plan.task, probe)
    found = [
        Neighbour(t, task_distance(target, _vector(eng, t, probe)), len(acc[t])) for t in tasks
    ]
    found.sort(key=lambda n: (n.distance, n.task))
    return found[: similar_step(plan).k]


def similar_scores(
    near: list[Neighbour], acc: dict[str, dict[str, float]], models: list[ModelRecord]
) -> dict[str, float | None]:
    """Similarity-weighted mean fine-tuning accuracy per model (module doc)."""
    out: dict[str, float | None] = {}
    for m in models:
        pairs = [(n.weight, acc[n.task][m.sha256]) for n in near if m.sha256 in acc[n.task]]
        out[m.name] = weighted_mean(pairs)
    return out


def no_history(plan: Plan) -> QueryError:
    return _error(
        plan,
        "similar ranks by fine-tuning results on other tasks, but there are none for this pool",
        "fine-tune some models on other registered tasks first: `shift-cli finetune TASK --model M`"
        " (see SELECT * FROM finetunes)",
    )
