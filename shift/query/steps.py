"""A plan's ranking step, typed: one class per ranker, as sqlglot's planner builds typed steps
that its executor dispatches on. A step holds what its ranker needs (checked by the planner),
says its label (the result's and EXPLAIN's ``ranker``) and the result's columns; the engine runs
it (:mod:`shift.engine.steps`, one runner per step type). Steps are plain data: building one
loads no numpy, no proxy and no engine.

* :class:`Order`, :class:`Table`: sort by a column; read a table of measurements.
* :class:`Agnostic`, :class:`Random`, :class:`Meta`, :class:`Similar`: metadata, a seeded draw,
  a fine-tuning table, the user's fine-tuning history: no model embeds the task.
* :class:`ProxyStep`: every model embeds the query's task(s) and a proxy scores it; on one task
  (:class:`TaskProxyStep`) :class:`RankByProxy`, :class:`Hybrid` and :class:`Halving`, on
  several :class:`MultiTask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shift.query.ast import OrderBy
from shift.query.columns import DISPLAY_COLUMNS, TABLES

#: a ranking with a score per model: the table shows what explains the pick (rows hold every
#: column of the model)
SCORED_COLUMNS = ["rank", "name", "imagenet_top1", "agnostic_rank", "score", "why"]
#: a ranking of the models' metadata: the display columns
MODEL_COLUMNS = ["rank", *DISPLAY_COLUMNS]


@dataclass(frozen=True)
class ProxyCall:
    """A proxy as the query names it: its name and its settings as written, checked against its
    declared parameters ({} for its defaults)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``knn`` or ``knn(k=5, metric=cosine)``: the proxy with its settings, sorted."""
        if not self.settings:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in sorted(self.settings.items()))})"


@dataclass(frozen=True)
class Step:
    """What ranks (or lists) the plan's rows. Subclasses say their label and columns."""

    @property
    def label(self) -> str:
        """The ranker as the result's plan and EXPLAIN name it."""
        raise NotImplementedError

    def columns(self) -> list[str]:
        """The result's columns (rows may hold more)."""
        return SCORED_COLUMNS


@dataclass(frozen=True)
class Order(Step):
    """``ORDER BY column [ASC|DESC]``: the pool's models sorted by a column, NULLs last."""

    order: OrderBy

    @property
    def label(self) -> str:
        return f"ORDER BY {self.order.column} {'DESC' if self.order.descending else 'ASC'}"

    def columns(self) -> list[str]:
        return MODEL_COLUMNS


@dataclass(frozen=True)
class Table(Step):
    """``SELECT * FROM finetunes|scores``: a table of measurements, in ``order`` or the table's
    own order."""

    table: str
    order: OrderBy | None = None

    @property
    def label(self) -> str:
        return "table"

    def columns(self) -> list[str]:
        return list(TABLES[self.table].columns)


@dataclass(frozen=True)
class Agnostic(Step):
    """``RANK BY agnostic``: ImageNet top-1, else the upstream dataset size (no task needed; with
    one ``task`` the rows get an empty score column)."""

    task: str | None = None

    @property
    def label(self) -> str:
        return "agnostic"

    def columns(self) -> list[str]:
        return SCORED_COLUMNS if self.task else MODEL_COLUMNS


@dataclass(frozen=True)
class Random(Step):
    """``RANK BY random(seed)``: a seeded, reproducible draw per model."""

    seed: int = 0

    @property
    def label(self) -> str:
        return f"random({self.seed})"


@dataclass(frozen=True)
class Meta(Step):
    """``RANK BY meta(table)``: mean fine-tuning accuracy in a shipped table, on its tasks other
    than the query's ``task``."""

    table: str = "vtab1k"
    task: str | None = None

    @property
    def label(self) -> str:
        return f"meta({self.table})"


@dataclass(frozen=True)
class Similar(Step):
    """``RANK BY similar(k, probe)``: fine-tuning results on the ``k`` registered tasks nearest
    to ``task`` as the ``probe`` model sees them (None: the smallest model with weights)."""

    task: str
    k: int = 3
    probe: str | None = None

    @property
    def label(self) -> str:
        probe = f", probe={self.probe}" if self.probe else ""
        return f"similar(k={self.k}{probe})"


@dataclass(frozen=True)
class ProxyStep(Step):
    """A ranker that embeds the task(s) with every model and scores ``proxy`` on them: each model
    needs weights (and a head, for a proxy of the logits)."""

    proxy: ProxyCall


@dataclass(frozen=True)
class TaskProxyStep(ProxyStep):
    """A :class:`ProxyStep` on one ``task``."""

    task: str


@dataclass(frozen=True)
class RankByProxy(TaskProxyStep):
    """``RANK BY PROXY``: the highest proxy score on ``task`` first."""

    @property
    def label(self) -> str:
        return self.proxy.label


@dataclass(frozen=True)
class Hybrid(TaskProxyStep):
    """``RANK BY hybrid(PROXY)``: the top task-agnostic model, then the best by proxy score."""

    @property
    def label(self) -> str:
        return f"hybrid({self.proxy.label})"


@dataclass(frozen=True)
class Halving(TaskProxyStep):
    """``RANK BY sh(PROXY, budget, chunk)``: successive halving over chunks of the training
    data (None: the automatic budget or chunk); the race's outcome is the order."""

    budget: int | None = None
    chunk: int | None = None

    @property
    def label(self) -> str:
        b, c = (x if x is not None else "auto" for x in (self.budget, self.chunk))
        return f"sh({self.proxy.name}, {b}, {c})"

    def columns(self) -> list[str]:
        return ["rank", "name", "imagenet_top1", "agnostic_rank", "score", "samples", "why"]


@dataclass(frozen=True)
class MultiTask(ProxyStep):
    """``WHERE task IN (a, b) RANK BY avg|min|max|avg_rank(PROXY)``: an aggregate of the proxy's
    scores (or of the per-task ranks) over ``tasks``."""

    tasks: tuple[str, ...]
    aggregate: str = "avg_rank"

    @property
    def label(self) -> str:
        return f"{self.aggregate}({self.proxy.label})"

    @property
    def aggregate_column(self) -> str:
        """``mean_rank`` for ``avg_rank`` (lower is better), else ``score``."""
        return "mean_rank" if self.aggregate == "avg_rank" else "score"

    @property
    def task_columns(self) -> list[str]:
        return [f"score:{t}" for t in self.tasks]

    def columns(self) -> list[str]:
        head = ["rank", "name", "imagenet_top1", "agnostic_rank"]
        return [*head, *self.task_columns, self.aggregate_column, "why"]
