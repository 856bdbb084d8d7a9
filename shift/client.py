"""The Python client: the same queries as the CLI, in-process.

>>> import shift
>>> c = shift.connect()
>>> c.query("SELECT top 2 FROM pool all WHERE task=digits").names
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shift.engine.execute import ScoreSource, execute
from shift.query.ast import Select
from shift.query.builder import QueryBuilder
from shift.query.builder import select as _select
from shift.query.format import to_text
from shift.query.parser import parse
from shift.query.planner import plan
from shift.records import ModelRecord, PoolRecord, Result, TaskRecord, Timings
from shift.store.registry import Registry


class Client:
    def __init__(
        self,
        home: str | Path | None = None,
        *,
        executor: str = "auto",
        ray_address: str | None = None,
        progress: bool = False,
    ) -> None:
        self.registry = Registry.open(home)
        self._engine_opts: dict[str, Any] = {
            "executor": executor,
            "ray_address": ray_address,
            "progress": progress,
        }
        self._engine: ScoreSource | None = None

    @property
    def engine(self) -> Any:
        """The embedding/scoring engine, created on first use (imports the heavy parts then)."""
        if self._engine is None:
            from shift.engine.scoring import Engine

            self._engine = Engine(self.registry, **self._engine_opts)
        return self._engine

    def query(self, text: str, *, explain: bool = False) -> Result:
        """Parse, plan and run one query (``explain=True``: its plan). Raises ``QueryError`` on a
        malformed query."""
        t0 = time.perf_counter()
        return self._run(parse(text), text, t0, explain=explain)

    def run_select(self, select: Select) -> Result:
        """Plan and run a query given as its AST (the fluent builder's output); the text shown
        in errors and results is the AST rendered."""
        t0 = time.perf_counter()
        return self._run(select, to_text(select), t0)

    def _run(self, select: Select, text: str, t0: float, *, explain: bool = False) -> Result:
        """Plan and execute ``select``; ``t0`` is when parsing (or rendering) began."""
        timings = Timings()
        if explain:
            select = replace(select, explain=True)
        t1 = time.perf_counter()
        p = plan(select, text, self.registry)
        t2 = time.perf_counter()
        timings.parse_ms, timings.plan_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        needs_engine = p.task is not None and p.proxy is not None
        result = execute(p, self.registry, self.engine if needs_engine else None, timings)
        result.timings.total_ms = (time.perf_counter() - t0) * 1000
        return result

    def explain(self, text: str) -> Result:
        return self.query(text, explain=True)

    def select(self, top: int | str | None = None) -> QueryBuilder:
        return _select(top, client=self)

    def models(self) -> list[ModelRecord]:
        return self.registry.models()

    def tasks(self) -> list[TaskRecord]:
        return self.registry.tasks()

    def pools(self) -> list[PoolRecord]:
        return self.registry.pools()

    def close(self) -> None:
        if self._engine is not None and hasattr(self._engine, "close"):
            self._engine.close()
        self.registry.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(home: str | Path | None = None, **options: Any) -> Client:
    """Open the shift home at ``home`` (default: ``$SHIFT_HOME``, the checkout, or ``~/.shift``)."""
    return Client(home, **options)
