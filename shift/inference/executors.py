"""Run embedding jobs in-process or on a pool of Ray actors, behind one interface.

``executor.run(jobs, on_result, on_failure)`` feeds every batch of every job through its model and
calls, in the driver process:

* ``on_result(BatchResult)`` once per batch as soon as that batch completes (completion order,
  not submission order), so the caller can persist results as they arrive;
* ``on_failure(JobFailure)`` once for a model that fails to load or run; that job's remaining
  batches are skipped (not even pulled from a lazy iterator) and the other jobs go on.

Exceptions raised by ``on_result``/``on_failure`` or by a job's batch iterator (bad task data)
propagate out of ``run``; only model errors (``ShiftError`` from the embedder) become failures.
Neither ray nor onnxruntime is imported when this module is imported.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from shift.errors import ShiftError
from shift.records import ModelRecord

log = logging.getLogger(__name__)

Batch = tuple[str, np.ndarray]
MAX_IN_FLIGHT_PER_ACTOR = 2


@dataclass
class EmbedJob:
    """One model over a stream of ``(batch_id, images uint8 NHWC)`` batches.

    ``batches`` may be a list or any (lazy) iterable; it is iterated once. ``total_batches`` is
    only used for progress bars when ``batches`` has no ``len()``.
    """

    model_name: str
    model_path: str
    record: ModelRecord
    batches: Iterable[Batch]
    total_batches: int | None = None

    def num_batches(self) -> int | None:
        if isinstance(self.batches, Sized):
            return len(self.batches)
        return self.total_batches


@dataclass
class BatchResult:
    """Embeddings float32 (N, dim), logits float32 (N, classes) or None, and the ONNX Runtime
    providers actually used (e.g. ``["CPUExecutionProvider"]``)."""

    model_name: str
    batch_id: str
    embeddings: np.ndarray
    logits: np.ndarray | None
    providers: list[str]


@dataclass
class JobFailure:
    model_name: str
    error: str


ResultFn = Callable[[BatchResult], None]
FailureFn = Callable[[JobFailure], None]


class Executor(Protocol):
    inference_calls: int

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None: ...


# --------------------------------------------------------------------------- progress bars


class _ProgressView:
    """Rich progress bars on stderr: one per job plus one overall; a no-op when disabled."""

    def __init__(self, jobs: list[EmbedJob], enabled: bool) -> None:
        self.jobs = jobs
        self.enabled = enabled and bool(jobs)
        self._p: Any = None
        self._tasks: list[Any] = []
        self._overall: Any = None

    def __enter__(self) -> _ProgressView:
        if not self.enabled:
            return self
        from shift.progress import progress_bar

        self._p = progress_bar()
        self._p.start()
        totals = [job.num_batches() for job in self.jobs]
        overall = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        self._overall = self._p.add_task("[bold]all models", total=overall)
        self._tasks = [
            self._p.add_task(job.model_name, total=t)
            for job, t in zip(self.jobs, totals, strict=True)
        ]
        return self

    def advance(self, j: int) -> None:
        if self._p is not None:
            self._p.advance(self._tasks[j])
            self._p.advance(self._overall)

    def fail(self, j: int) -> None:
        if self._p is not None:
            self._p.update(self._tasks[j], description=f"[red]{self.jobs[j].model_name} (failed)")

    def __exit__(self, *exc: object) -> None:
        if self._p is None:
            return
        for task in [*self._tasks, self._overall]:
            t = self._p.tasks[task]
            if t.total is None:
                self._p.update(task, total=t.completed)
        self._p.stop()


# --------------------------------------------------------------------------- in-process


class InProcessExecutor:
    """Runs the jobs one after the other in this process (tests, debugging, tiny workloads).

    ``inference_calls`` counts batches handed to a model (including one that failed).
    """

    def __init__(self, device: str = "auto", intra_op_threads: int | None = None) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.inference_calls = 0

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        from shift.inference.onnx_backend import OnnxEmbedder

        with _ProgressView(jobs, progress) as view:
            for j, job in enumerate(jobs):
                try:
                    embedder = OnnxEmbedder(
                        job.model_path,
                        job.record,
                        device=self.device,
                        intra_op_threads=self.intra_op_threads,
                    )
                except ShiftError as e:
                    on_failure(JobFailure(job.model_name, str(e)))
                    view.fail(j)
                    continue
                for batch_id, images in job.batches:
                    self.inference_calls += 1
                    try:
                        emb, logits = embedder.embed(images)
                    except ShiftError as e:
                        on_failure(JobFailure(job.model_name, str(e)))
                        view.fail(j)
                        break
                    on_result(
                        BatchResult(job.model_name, batch_id, emb, logits, list(embedder.providers))
                    )
                    view.advance(j)
                del embedder


# --------------------------------------------------------------------------- Ray


class EmbedWorker:
    """The body of a Ray actor: OnnxEmbedders cached by model path + record (incl. sha256), so a
    model is loaded once per actor; least recently used models are dropped beyond
    ``cache_size``."""

    def __init__(self, device: str, intra_op_threads: int | None, cache_size: int = 4) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def _embedder(self, model_path: str, record_json: str) -> Any:
        from shift.inference.onnx_backend import OnnxEmbedder

        key = (model_path, record_json)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        record = ModelRecord.model_validate_json(record_json)
        embedder = OnnxEmbedder(
            model_path, record, device=self.device, intra_op_threads=self.intra_op_threads
        )
        self._cache[key] = embedder
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embedder

    def embed(self, model_path: str, record_json: str, images: np.ndarray) -> dict[str, Any]:
        """``{"embeddings", "logits", "providers"}`` or ``{"error": message}`` for a model error."""
        try:
            embedder = self._embedder(model_path, record_json)
            emb, logits = embedder.embed(images)
        except ShiftError as e:
            return {"error": str(e)}
        return {"embeddings": emb, "logits": logits, "providers": list(embedder.providers)}

    def ping(self) -> bool:
        return True


@dataclass
class _PoolPlan:
    num_actors: int
    options: dict[str, float]
    device: str
    intra_op_threads: int | None


def plan_pool(
    resources: dict[str, float], num_actors: int | None = None, max_useful: int | None = None
) -> _PoolPlan:
    """Size the actor pool from ``ray.available_resources()``.

    With GPUs: one actor per GPU (``num_gpus=1``), ONNX Runtime on "auto". Without: one actor per
    available CPU, ``num_cpus`` fractional when there are more actors than CPUs (a ``num_cpus=1``
    actor beyond capacity stays pending forever), ``intra_op_threads=1``. ``max_useful`` (number
    of batches, when known) caps the pool.
    """

    def _floor(x: float) -> float:
        return math.floor(x * 100) / 100

    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if gpus >= 1:
        n = num_actors or int(gpus)
        if max_useful:
            n = min(n, max_useful)
        n = max(1, n)
        threads = max(1, int(cpus // n)) if cpus >= n else 1
        return _PoolPlan(
            n,
            {"num_gpus": min(1.0, _floor(gpus / n)), "num_cpus": min(1.0, _floor(cpus / n))},
            "auto",
            threads,
        )
    n = num_actors or max(1, int(cpus))
    if max_useful:
        n = min(n, max_useful)
    n = max(1, n)
    return _PoolPlan(n, {"num_cpus": min(1.0, _floor(cpus / n))}, "cpu", 1)


class _SharedPool:
    """The Ray actors of this process, shared by every ``RayExecutor``: created on first use,
    sized to the cluster (not to what happens to be free), and kept between runs so that actors
    start and models load once, not once per query. A run that fails tears the pool down; a
    different pool plan (e.g. another ``num_actors``) replaces it; ``close_actor_pool()`` and
    ``shutdown_ray()`` release it."""

    def __init__(self) -> None:
        self.actors: list[Any] = []
        self.plan: _PoolPlan | None = None
        self.session: str | None = None

    def acquire(self, ray: Any, plan: _PoolPlan) -> list[Any]:
        session = ray.get_runtime_context().get_job_id()
        if self.actors and (self.plan != plan or self.session != session):
            self.close(ray if self.session == session else None)
        if not self.actors:
            cls = _remote_worker_class(ray).options(**plan.options)
            self.actors = [
                cls.remote(plan.device, plan.intra_op_threads) for _ in range(plan.num_actors)
            ]
            self.plan, self.session = plan, session
        return self.actors

    def replace(self, ray: Any, i: int) -> Any:
        assert self.plan is not None
        cls = _remote_worker_class(ray).options(**self.plan.options)
        self.actors[i] = cls.remote(self.plan.device, self.plan.intra_op_threads)
        return self.actors[i]

    def close(self, ray: Any | None) -> None:
        """Kill the actors (``ray=None``: Ray is gone already, just forget them)."""
        if ray is not None and self.actors:
            total = ray.cluster_resources()
            for actor in self.actors:
                ray.kill(actor)
            _wait_for_release(ray, {k: float(total.get(k, 0.0)) for k in ("CPU", "GPU")})
        self.actors, self.plan, self.session = [], None, None


_POOL = _SharedPool()


def close_actor_pool() -> None:
    """Release the shared actors (a no-op when Ray is not running)."""
    from shift.inference.ray_runtime import ray_is_running

    if ray_is_running():
        import ray

        _POOL.close(ray)
    else:
        _POOL.close(None)


class RayExecutor:
    """Runs the jobs on the process's shared pool of Ray actors (see ``_SharedPool``).

    Joins ``address`` (or ``$SHIFT_RAY_ADDRESS``) or starts a local Ray via ``ensure_ray``.
    At most ``MAX_IN_FLIGHT_PER_ACTOR`` batches per actor and about half the object store are in
    flight at once, so a big dataset is never shipped in one go. Images travel as numpy arrays.
    ``inference_calls`` counts batches submitted to actors.
    """

    def __init__(self, num_actors: int | None = None, address: str | None = None) -> None:
        self.num_actors = num_actors
        self.address = address
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
        record_json = [job.record.model_dump_json() for job in jobs]

        actors: list[Any] = []
        failed: set[int] = set()
        load = [0] * plan.num_actors
        # ref -> (job index, batch id, actor index, actor handle, bytes)
        inflight: dict[Any, tuple[int, str, int, Any, int]] = {}
        inflight_bytes = 0
        source = self._batches(jobs, failed)
        pending: tuple[int, Batch] | None = None
        exhausted = False

        def fail(j: int, message: str) -> None:
            if j not in failed:
                failed.add(j)
                on_failure(JobFailure(jobs[j].model_name, message))
                view.fail(j)

        with _ProgressView(jobs, progress) as view:
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
                        ref = actors[a].embed.remote(jobs[j].model_path, record_json[j], images)
                        inflight[ref] = (j, batch_id, a, actors[a], images.nbytes)
                        inflight_bytes += images.nbytes
                        load[a] += 1
                        self.inference_calls += 1
                    if not inflight:
                        break
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    for ref in ready:
                        j, batch_id, a, actor, nbytes = inflight.pop(ref)
                        load[a] -= 1
                        inflight_bytes -= nbytes
                        try:
                            out = ray.get(ref)
                        except RayActorError as e:
                            log.warning("worker died running %r: %s", jobs[j].model_name, e)
                            out = {
                                "error": f"model {jobs[j].model_name!r}: worker process died "
                                f"while running it: {e}"
                            }
                            if actors[a] is actor:  # replace a dead actor once
                                actors[a] = _POOL.replace(ray, a)
                        if j in failed:
                            continue
                        if "error" in out:
                            fail(j, out["error"])
                            continue
                        logits = out["logits"]
                        on_result(
                            BatchResult(
                                jobs[j].model_name,
                                batch_id,
                                np.array(out["embeddings"], dtype=np.float32),
                                None if logits is None else np.array(logits, dtype=np.float32),
                                list(out["providers"]),
                            )
                        )
                        view.advance(j)
                ok = True
            finally:
                if not ok:  # an error mid-run: do not leave half-busy actors behind
                    _POOL.close(ray)


_REMOTE_WORKER: Any = None


def _remote_worker_class(ray: Any) -> Any:
    global _REMOTE_WORKER
    if _REMOTE_WORKER is None:
        _REMOTE_WORKER = ray.remote(EmbedWorker)
    return _REMOTE_WORKER


def _wait_for_release(ray: Any, before: dict[str, float], timeout: float = 2.0) -> None:
    """ray.kill is asynchronous: wait (briefly) until the pool's CPUs/GPUs are available again,
    so a following pool is sized from the real capacity."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = ray.available_resources()
        if all(now.get(k, 0.0) >= before.get(k, 0.0) - 1e-6 for k in ("CPU", "GPU")):
            return
        time.sleep(0.02)


def make_executor(
    kind: str = "auto", address: str | None = None, num_actors: int | None = None
) -> InProcessExecutor | RayExecutor:
    """ "inprocess" -> ``InProcessExecutor``; "ray" or "auto" -> ``RayExecutor``."""
    if kind == "inprocess":
        return InProcessExecutor()
    if kind in ("ray", "auto"):
        return RayExecutor(num_actors=num_actors, address=address)
    raise ShiftError(f"unknown executor {kind!r}", hint="use 'auto', 'ray' or 'inprocess'")
