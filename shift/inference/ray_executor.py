"""The Ray executor: batches of every job spread over the process's shared pool of actors
(``shift.inference.ray_pool``), with backpressure. ray is imported inside ``run`` only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from shift.errors import ShiftError
from shift.inference.job_progress import ProgressView
from shift.inference.jobs import (
    Batch,
    BatchResult,
    EmbedJob,
    FailureFn,
    JobFailure,
    ResultFn,
    batch_timeout,
)
from shift.inference.ray_pool import _POOL, ModelSpec, _PoolPlan, plan_pool

log = logging.getLogger(__name__)

MAX_IN_FLIGHT_PER_ACTOR = 2


class RayExecutor:
    """Runs the jobs on the process's shared pool of Ray actors (see ``ray_pool._SharedPool``).

    Joins ``address`` (or ``$SHIFT_RAY_ADDRESS``) or starts a local Ray via ``ensure_ray``.
    At most ``MAX_IN_FLIGHT_PER_ACTOR`` batches per actor and about half the object store are in
    flight at once, so a big dataset is never shipped in one go. Images travel as numpy arrays.
    A job's backend must be registered in this process; workers import its module themselves.
    A batch that runs past ``batch_timeout_s`` (see ``jobs.batch_timeout``) fails its model.
    ``inference_calls`` counts batches submitted to actors.
    """

    def __init__(
        self,
        num_actors: int | None = None,
        address: str | None = None,
        batch_timeout_s: float | None = None,
    ) -> None:
        self.num_actors = num_actors
        self.address = address
        self.batch_timeout_s = batch_timeout(batch_timeout_s)
        self.inference_calls = 0
        self.last_plan: _PoolPlan | None = None

    def _batches(self, jobs: list[EmbedJob], failed: set[int]) -> Iterator[tuple[int, Batch]]:
        for j, job in enumerate(jobs):
            if j in failed:
                continue
            for batch in job.batches:
                if j in failed:
                    break
                yield j, batch

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        if not jobs:
            return
        from shift.inference.ray_runtime import ensure_ray

        ensure_ray(self.address)
        import ray
        from ray.exceptions import RayActorError

        totals = [job.num_batches() for job in jobs]
        known = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        if known == 0:
            return
        plan = plan_pool(ray.cluster_resources(), self.num_actors)
        self.last_plan = plan

        store = float(ray.cluster_resources().get("object_store_memory", 100 * 2**20))
        byte_budget = max(16 * 2**20, int(store // 2))

        actors: list[Any] = []
        failed: set[int] = set()
        specs: list[ModelSpec | None] = []
        load = [0] * plan.num_actors
        # ref -> (job index, actor index, actor handle, bytes)
        inflight: dict[Any, tuple[int, int, Any, int]] = {}
        inflight_bytes = 0
        source = self._batches(jobs, failed)
        pending: tuple[int, Batch] | None = None
        exhausted = False

        def fail(j: int, message: str) -> None:
            if j not in failed:
                failed.add(j)
                on_failure(JobFailure(jobs[j].model_name, message))
                view.fail(j)

        with ProgressView(jobs, progress) as view:
            for j, job in enumerate(jobs):  # an unknown backend fails its job before any batch
                try:
                    specs.append(ModelSpec.of(job))
                except ShiftError as e:
                    specs.append(None)
                    fail(j, str(e))
            ok = False
            try:
                actors.extend(_POOL.acquire(ray, plan))
                while True:
                    # fill free slots (per-actor and byte backpressure)
                    while not exhausted:
                        a = min(range(len(actors)), key=load.__getitem__)
                        if load[a] >= MAX_IN_FLIGHT_PER_ACTOR:
                            break
                        if pending is None:
                            pending = next(source, None)
                            if pending is None:
                                exhausted = True
                                break
                        j, (batch_id, images) = pending
                        if j in failed:
                            pending = None
                            continue
                        images = np.ascontiguousarray(images)
                        if inflight and inflight_bytes + images.nbytes > byte_budget:
                            break
                        pending = None
                        name = jobs[j].model_name
                        ref = actors[a].embed.remote(
                            specs[j], name, batch_id, images, self.batch_timeout_s
                        )
                        inflight[ref] = (j, a, actors[a], images.nbytes)
                        inflight_bytes += images.nbytes
                        load[a] += 1
                        self.inference_calls += 1
                    if not inflight:
                        break
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    for ref in ready:
                        j, a, actor, nbytes = inflight.pop(ref)
                        load[a] -= 1
                        inflight_bytes -= nbytes
                        try:
                            out = ray.get(ref)
                        except RayActorError as e:
                            log.warning("worker died running %r: %s", jobs[j].model_name, e)
                            out = JobFailure(
                                jobs[j].model_name,
                                f"model {jobs[j].model_name!r}: worker process died "
                                f"while running it: {e}",
                            )
                            if actors[a] is actor:  # replace a dead actor once
                                actors[a] = _POOL.replace(ray, a)
                        if j in failed:
                            continue
                        if isinstance(out, JobFailure):
                            fail(j, out.error)
                            continue
                        on_result(_owned(out))
                        view.advance(j)
                ok = True
            finally:
                if not ok:  # an error mid-run: do not leave half-busy actors behind
                    _POOL.close(ray)


def _owned(result: BatchResult) -> BatchResult:
    """A copy of ``result`` whose arrays are writable float32 arrays of this process, not
    read-only views into Ray's object store."""
    lg = result.logits
    return replace(
        result,
        embeddings=np.array(result.embeddings, dtype=np.float32),
        logits=None if lg is None else np.array(lg, dtype=np.float32),
        providers=list(result.providers),
    )
