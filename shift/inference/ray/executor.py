"""The Ray executor: batches of every job spread over the process's shared pool of actors
(``shift.inference.ray.pool``), with backpressure. :class:`RayExecutor` starts or joins Ray and
plans the pool; one run's scheduling is a :class:`Schedule`. ray is imported inside ``run``
only."""

from __future__ import annotations

import logging
from collections import Counter
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
from shift.inference.ray.models import ModelBlob, publish
from shift.inference.ray.pool import ACTOR_POOL, ModelSpec, PoolPlan, plan_pool

log = logging.getLogger(__name__)


class RayExecutor:
    """Runs the jobs on the process's shared pool of Ray actors (see ``pool._SharedPool``).

    Joins ``address`` (or ``$SHIFT_RAY_ADDRESS``) or starts a local Ray via ``ensure_ray``.
    At most ``plan.in_flight`` calls per actor and about half the object store are in flight at
    once, so a big dataset is never shipped in one go. Images travel as numpy arrays; a model
    travels as bytes, put in the object store once per run (``models.publish``) and cached
    by each node, so workers need no shared disk. On a GPU plan, consecutive batches of a job
    are grouped into one call of up to ``plan.images_per_call`` images.
    A job's backend must be registered in this process; workers import its module themselves.
    A batch that runs past ``batch_timeout_s`` (see ``jobs.batch_timeout``) fails its model.
    A worker process that dies is restarted by Ray and its calls retried; only a worker that
    keeps dying fails the model it was running. ``inference_calls`` counts calls submitted to
    actors, ``batches_by_node`` the batches each node ran (last run).
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
        self.last_plan: PoolPlan | None = None
        self.batches_by_node: Counter[str] = Counter()

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        if not jobs:
            return
        from shift.inference.ray.runtime import ensure_ray

        ensure_ray(self.address)
        import ray

        totals = [job.num_batches() for job in jobs]
        known = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        if known == 0:
            return
        plan = plan_pool(ray.cluster_resources(), self.num_actors)
        self.last_plan = plan
        self.batches_by_node = Counter()
        schedule = Schedule(ray, self, jobs, plan, on_result, on_failure)
        with ProgressView(jobs, progress) as view:
            schedule.run(view)
        if len(self.batches_by_node) > 1 or log.isEnabledFor(logging.DEBUG):
            log.info("batches per node: %s", dict(self.batches_by_node))


def call_groups(
    jobs: list[EmbedJob], failed: set[int], plan: PoolPlan
) -> Iterator[tuple[int, list[Batch]]]:
    """``(job index, batches)``: one batch per call, or on a GPU plan as many consecutive
    batches as fit in ``plan.images_per_call`` images (at least one); a job in ``failed`` (read
    as it grows) yields nothing more."""
    for j, job in enumerate(jobs):
        if j in failed:
            continue
        limit = plan.images_per_call(job.record.input)
        group: list[Batch] = []
        size = 0
        for batch in job.batches:
            if j in failed:
                break
            n = len(batch[1])
            if group and size + n > limit:
                yield j, group
                group, size = [], 0
            group.append(batch)
            size += n
        if group and j not in failed:
            yield j, group


class Schedule:
    """The state of one run: the actors, the calls in flight (per actor, per job, in bytes),
    the model bytes in the object store (``blobs``, released once a job has no call to come or
    in flight) and the failed jobs. ``owner`` (the executor) counts ``inference_calls`` and
    ``batches_by_node``; ``on_result`` gets each batch's result, ``on_failure`` each failed
    job once."""

    def __init__(
        self,
        ray: Any,
        owner: RayExecutor,
        jobs: list[EmbedJob],
        plan: PoolPlan,
        on_result: ResultFn,
        on_failure: FailureFn,
    ) -> None:
        self.ray, self.owner, self.jobs, self.plan = ray, owner, jobs, plan
        self.on_result, self.on_failure = on_result, on_failure
        store = float(ray.cluster_resources().get("object_store_memory", 100 * 2**20))
        self.byte_budget = max(16 * 2**20, int(store // 2))
        self.actors: list[Any] = []
        self.failed: set[int] = set()
        self.modules: list[str | None] = []
        self.blobs: dict[int, ModelBlob] = {}  # the models of jobs with calls to come or in flight
        self.job_inflight: Counter[int] = Counter()
        self.load = [0] * plan.num_actors
        # ref -> (job index, actor index, actor handle, bytes, batches)
        self.inflight: dict[Any, tuple[int, int, Any, int, int]] = {}
        self.inflight_bytes = 0
        self.source = call_groups(jobs, self.failed, plan)
        self.pending: tuple[int, list[Batch]] | None = None
        self.current = 0  # the job the source is on: earlier jobs have nothing more to submit
        self.exhausted = False
        self.view: ProgressView | None = None

    def run(self, view: ProgressView) -> None:
        """Every job's batches through the pool's actors; the pool is closed on an error
        mid-run (no half-busy actors left behind)."""
        self.view = view
        for j, job in enumerate(self.jobs):  # an unknown backend fails its job before any batch
            try:
                self.modules.append(ModelSpec.module_of(job))
            except ShiftError as e:
                self.modules.append(None)
                self.fail(j, str(e))
        ok = False
        try:
            self.actors.extend(ACTOR_POOL.acquire(self.ray, self.plan))
            while True:
                self.submit()
                self.release_done_models()
                if not self.inflight:
                    break
                self.collect()
            ok = True
        finally:
            self.blobs.clear()
            if not ok:
                ACTOR_POOL.close(self.ray)

    def fail(self, j: int, message: str) -> None:
        if j not in self.failed:
            self.failed.add(j)
            self.on_failure(JobFailure(self.jobs[j].model_name, message))
            assert self.view is not None
            self.view.fail(j)

    def spec(self, j: int) -> ModelSpec | None:
        """The job's model spec, putting its bytes in the object store on first use."""
        module = self.modules[j]
        if module is None:
            return None
        job = self.jobs[j]
        if j not in self.blobs:
            try:
                self.blobs[j] = publish(self.ray, job.model_path)
            except ShiftError as e:
                self.fail(j, f"model {job.model_name!r}: {e}")
                return None
        return ModelSpec(job.backend, module, self.blobs[j], job.record.model_dump_json())

    def release_done_models(self) -> None:
        done = [
            j
            for j in self.blobs
            if (self.exhausted or j < self.current) and not self.job_inflight[j]
        ]
        for j in done:
            del self.blobs[j]

    def submit(self) -> None:
        """Fill free slots: calls to the least loaded actor while it has one (``in_flight``
        per actor) and the bytes in flight stay under the budget (at least one call)."""
        while not self.exhausted:
            a = min(range(len(self.actors)), key=self.load.__getitem__)
            if self.load[a] >= self.plan.in_flight:
                break
            if self.pending is None:
                self.pending = next(self.source, None)
                if self.pending is None:
                    self.exhausted = True
                    break
                self.current = self.pending[0]
            j, group = self.pending
            if j in self.failed:
                self.pending = None
                continue
            group = [(b, np.ascontiguousarray(x)) for b, x in group]
            nbytes = sum(x.nbytes for _, x in group)
            if self.inflight and self.inflight_bytes + nbytes > self.byte_budget:
                break
            self.pending = None
            s = self.spec(j)
            if s is None:
                continue
            name = self.jobs[j].model_name
            actor = self.actors[a]
            ref = actor.embed.remote(s, name, group, self.owner.batch_timeout_s)
            self.inflight[ref] = (j, a, actor, nbytes, len(group))
            self.inflight_bytes += nbytes
            self.load[a] += 1
            self.job_inflight[j] += 1
            self.owner.inference_calls += 1

    def collect(self) -> None:
        """Wait for a call to finish and hand on its results (or fail its job; a dead actor
        whose restarts are used up is replaced)."""
        from ray.exceptions import RayActorError

        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        for ref in ready:
            j, a, actor, nbytes, _n = self.inflight.pop(ref)
            self.load[a] -= 1
            self.job_inflight[j] -= 1
            self.inflight_bytes -= nbytes
            name = self.jobs[j].model_name
            try:
                out = self.ray.get(ref)
            except RayActorError as e:
                log.warning("worker died running %r: %s", name, e)
                out = JobFailure(name, f"model {name!r}: worker process died while running it: {e}")
                if self.actors[a] is actor:  # restarts used up: a fresh actor
                    self.actors[a] = ACTOR_POOL.replace(self.ray, a)
            if j in self.failed:
                continue
            if isinstance(out, JobFailure):
                self.fail(j, out.error)
                continue
            assert self.view is not None
            for r in out:
                self.owner.batches_by_node[r.node] += 1
                self.on_result(_owned(r))
                self.view.advance(j)


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
