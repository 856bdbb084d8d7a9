"""Choosing an executor by name. Both run ``EmbedJob``s (``shift.inference.jobs``) behind one
interface: ``InProcessExecutor`` (``local``) and ``RayExecutor`` (``ray.executor``); "auto"
(:class:`AutoExecutor`) picks one of them for each run. Neither ray nor any inference runtime is
imported when this module is imported."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from shift.errors import ShiftError
from shift.inference.jobs import EmbedJob, FailureFn, ResultFn
from shift.inference.local import InProcessExecutor
from shift.inference.ray.executor import RayExecutor
from shift.inference.ray.runtime import ADDRESS_ENV

log = logging.getLogger(__name__)

EXECUTORS = ("auto", "ray", "inprocess")

#: "auto" runs a single model of at most this many batches in this process: starting Ray (a few
#: seconds) would cost more than the work
AUTO_INPROCESS_MAX_BATCHES = 4


def ray_installed() -> bool:
    """Whether ``ray`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("ray") is not None


class AutoExecutor:
    """``executor="auto"``: for each run, in this process when ray is not installed or the run
    is one model of at most :data:`AUTO_INPROCESS_MAX_BATCHES` batches (a known count); on Ray
    otherwise, and always when an ``address`` (or ``$SHIFT_RAY_ADDRESS``) joins a cluster.
    ``last`` is the executor of the last run ("inprocess" or "ray"); other attributes are read
    from it."""

    def __init__(
        self,
        address: str | None = None,
        num_actors: int | None = None,
        batch_timeout_s: float | None = None,
    ) -> None:
        self.address = address
        self._num_actors = num_actors
        self._batch_timeout_s = batch_timeout_s
        self.inprocess = InProcessExecutor(batch_timeout_s=batch_timeout_s)
        self._ray: RayExecutor | None = None
        self.last = "inprocess"

    @property
    def ray(self) -> RayExecutor:
        if self._ray is None:
            self._ray = RayExecutor(
                num_actors=self._num_actors,
                address=self.address,
                batch_timeout_s=self._batch_timeout_s,
            )
        return self._ray

    @property
    def inference_calls(self) -> int:
        return self.inprocess.inference_calls + (self._ray.inference_calls if self._ray else 0)

    def choose(self, jobs: list[EmbedJob]) -> str:
        """ "ray" or "inprocess": where ``jobs`` run (see the class)."""
        if self.address is not None or os.environ.get(ADDRESS_ENV):
            return "ray"
        if not ray_installed():
            return "inprocess"
        if len(jobs) == 1:
            n = jobs[0].num_batches()
            if n is not None and n <= AUTO_INPROCESS_MAX_BATCHES:
                return "inprocess"
        return "ray"

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        jobs = list(jobs)
        self.last = self.choose(jobs)
        log.debug("executor auto: %s for %d job(s)", self.last, len(jobs))
        chosen = self.ray if self.last == "ray" else self.inprocess
        chosen.run(jobs, on_result, on_failure, progress=progress)

    def __getattr__(self, name: str) -> Any:
        # what the last run's executor reports (e.g. load_seconds, last_plan, batches_by_node)
        if name.startswith("__") or name in (
            "inprocess",
            "_ray",
            "last",
            "_num_actors",
            "_batch_timeout_s",
        ):
            raise AttributeError(name)
        return getattr(self.ray if self.last == "ray" else self.inprocess, name)


def make_executor(
    kind: str = "auto",
    address: str | None = None,
    num_actors: int | None = None,
    batch_timeout_s: float | None = None,
) -> InProcessExecutor | RayExecutor | AutoExecutor:
    """ "inprocess" -> ``InProcessExecutor``; "ray" -> ``RayExecutor``; "auto" ->
    ``AutoExecutor`` (in process for a single small model or without ray, else Ray). A batch
    that runs past ``batch_timeout_s`` (default: ``jobs.batch_timeout()``) fails its model."""
    if kind == "inprocess":
        return InProcessExecutor(batch_timeout_s=batch_timeout_s)
    if kind == "ray":
        return RayExecutor(num_actors=num_actors, address=address, batch_timeout_s=batch_timeout_s)
    if kind == "auto":
        return AutoExecutor(address=address, num_actors=num_actors, batch_timeout_s=batch_timeout_s)
    raise ShiftError(f"unknown executor {kind!r}", hint="use 'auto', 'ray' or 'inprocess'")
