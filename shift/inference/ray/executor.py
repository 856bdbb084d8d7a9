"""The Ray executor: batches of every job spread over the process's shared pool of actors
(``shift.inference.ray.pool``), with backpressure. ray is imported inside ``run`` only."""

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
from shift.inference.ray.pool import _POOL, ModelSpec, _PoolPlan, plan_pool

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
        self.last_plan: _PoolPlan | None = None
        self.batches_by_node: Counter[str] = Counter()

    def _groups(
        self, jobs: list[EmbedJob], failed: set[int], plan: _PoolPlan
    ) -> Iterator[tuple[int, list[Batch]]]:
        """``(job index, batches)``: one batch per call, or on a GPU plan as many consecutive
        batches as fit in ``plan.images_per_call`` images (at least one)."""
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
        from ray.exceptions import RayActorError

        totals = [job.num_batches() for job in jobs]
        known = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        if known == 0:
            return
        plan = plan_pool(ray.cluster_resources(), self.num_actors)
        self.last_plan = plan
        self.batches_by_node = Counter()

        store = float(ray.cluster_resources().get("object_store_memory", 100 * 2**20))
        byte_budget = max(16 * 2**20, int(store // 2))

        actors: list[Any] = []
        failed: set[int] = set()
        modules: list[str | None] = []
        blobs: dict[int, ModelBlob] = {}  # the models of jobs with calls to come or in flight
        job_inflight: Counter[int] = Counter()
        load = [0] * plan.num_actors
        # ref -> (job index, actor index, actor handle, bytes, batches)
        inflight: dict[Any, tuple[int, int, Any, int, int]] = {}
        inflight_bytes = 0
        source = self._groups(jobs, failed, plan)
        pending: tuple[int, list[Batch]] | None = None
        current = 0  # the job the source is on: earlier jobs have nothing more to submit
        exhausted = False

        def fail(j: int, message: str) -> None:
            if j not in failed:
                failed.add(j)
                on_failure(JobFailure(jobs[j].model_name, message))
                view.fail(j)

        def spec(j: int) -> ModelSpec | None:
            """The job's model spec, putting its bytes in the object store on first use."""
            module = modules[j]
            if module is None:
                return None
            if j not in blobs:
                try:
                    blobs[j] = publish(ray, jobs[j].model_path)
                except ShiftError as e:
                    fail(j, f"model {jobs[j].model_name!r}: {e}")
                    return None
            job = jobs[j]
            return ModelSpec(job.backend, module, blobs[j], job.record.model_dump_json())

        def release_done_models() -> None:
            for j in [j for j in blobs if (exhausted or j < current) and not job_inflight[j]]:
                del blobs[j]

        with ProgressView(jobs, progress) as view:
            for j, job in enumerate(jobs):  # an unknown backend fails its job before any batch
                try:
                    modules.append(ModelSpec.module_of(job))
                except ShiftError as e:
                    modules.append(None)
                    fail(j, str(e))
            ok = False
            try:
                actors.extend(_POOL.acquire(ray, plan))
                while True:
                    # fill free slots (per-actor and byte backpressure)
                    while not exhausted:
                        a = min(range(len(actors)), key=load.__getitem__)
                        if load[a] >= plan.in_flight:
                            break
                        if pending is None:
                            pending = next(source, None)
                            if pending is None:
                                exhausted = True
                                break
                            current = pending[0]
                        j, group = pending
                        if j in failed:
                            pending = None
                            continue
                        group = [(b, np.ascontiguousarray(x)) for b, x in group]
                        nbytes = sum(x.nbytes for _, x in group)
                        if inflight and inflight_bytes + nbytes > byte_budget:
                            break
                        pending = None
                        s = spec(j)
                        if s is None:
                            continue
                        name = jobs[j].model_name
                        ref = actors[a].embed.remote(s, name, group, self.batch_timeout_s)
                        inflight[ref] = (j, a, actors[a], nbytes, len(group))
                        inflight_bytes += nbytes
                        load[a] += 1
                        job_inflight[j] += 1
                        self.inference_calls += 1
                    release_done_models()
                    if not inflight:
                        break
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    for ref in ready:
                        j, a, actor, nbytes, _n = inflight.pop(ref)
                        load[a] -= 1
                        job_inflight[j] -= 1
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
                            if actors[a] is actor:  # restarts used up: a fresh actor
                                actors[a] = _POOL.replace(ray, a)
                        if j in failed:
                            continue
                        if isinstance(out, JobFailure):
                            fail(j, out.error)
                            continue
                        for r in out:
                            self.batches_by_node[r.node] += 1
                            on_result(_owned(r))
                            view.advance(j)
                ok = True
            finally:
                blobs.clear()
                if not ok:  # an error mid-run: do not leave half-busy actors behind
                    _POOL.close(ray)
        if len(self.batches_by_node) > 1 or log.isEnabledFor(logging.DEBUG):
            log.info("batches per node: %s", dict(self.batches_by_node))


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
