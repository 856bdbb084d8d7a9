"""How each kind of plan step runs: one :class:`~shift.engine.steps.base.Runner` per step type of
:mod:`shift.query.steps`, in :data:`RUNNERS` (the executor dispatches on the step's type, as
sqlglot's does). A runner gives the result (``run``) and EXPLAIN's rows (``explain``).

A new ranker is a step class in :mod:`shift.query.steps` (its label and columns), its
resolution in :mod:`shift.query.rankers`, a runner here and its line in :data:`RUNNERS`.
Runner modules import no numpy: what needs it is imported when a step runs."""

from __future__ import annotations

from typing import Any

from shift.engine.steps.base import Runner
from shift.engine.steps.metadata import AgnosticRunner, MetaRunner, OrderRunner, RandomRunner
from shift.engine.steps.multitask import MultiTaskRunner
from shift.engine.steps.proxy import HalvingRunner, HybridRunner, ProxyRunner
from shift.engine.steps.similar import SimilarRunner
from shift.engine.steps.table import TableRunner
from shift.query.steps import (
    Agnostic,
    Halving,
    Hybrid,
    Meta,
    MultiTask,
    Order,
    Random,
    RankByProxy,
    Similar,
    Step,
    Table,
)

#: the runner of each step type
RUNNERS: dict[type[Step], Runner[Any]] = {
    Order: OrderRunner(),
    Table: TableRunner(),
    Agnostic: AgnosticRunner(),
    Random: RandomRunner(),
    Meta: MetaRunner(),
    Similar: SimilarRunner(),
    RankByProxy: ProxyRunner(),
    Hybrid: HybridRunner(),
    Halving: HalvingRunner(),
    MultiTask: MultiTaskRunner(),
}


def runner_for(step: Step) -> Runner[Any]:
    """The runner of ``step``'s type."""
    return RUNNERS[type(step)]
