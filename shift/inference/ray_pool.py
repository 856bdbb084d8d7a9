"""The Ray side of inference: the worker that runs in each actor, the plan that sizes the pool,
and the process's shared pool of actors. ray is imported inside the functions, never at import
time (``shift.inference.ray_runtime.shutdown_ray`` finds ``_POOL`` here by module name)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from shift.errors import InferenceTimeoutError, ShiftError
from shift.inference.backends import backend_module, make_embedder
from shift.inference.embedder import Embedder
from shift.inference.jobs import BatchResult, EmbedJob, JobFailure, embed_batch
from shift.records import ModelRecord


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a job's model: the backend, the module that registers it (so
    a worker that never imported it can), the model file and the record as JSON."""

    backend: str
    module: str
    model_path: str
    record_json: str

    @classmethod
    def of(cls, job: EmbedJob) -> ModelSpec:
        """Raises ``ShiftError`` for a backend not registered in this process."""
        return cls(
            job.backend, backend_module(job.backend), job.model_path, job.record.model_dump_json()
        )


class EmbedWorker:
    """The body of a Ray actor: embedders cached by ``ModelSpec`` (backend, path and record incl.
    sha256), so a model is loaded once per actor; least recently used models are dropped beyond
    ``cache_size``."""

    def __init__(self, device: str, intra_op_threads: int | None, cache_size: int = 4) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[ModelSpec, Embedder] = OrderedDict()

    def _embedder(self, spec: ModelSpec) -> Embedder:
        if spec in self._cache:
            self._cache.move_to_end(spec)
            return self._cache[spec]
        embedder = make_embedder(
            spec.backend,
            spec.model_path,
            ModelRecord.model_validate_json(spec.record_json),
            module=spec.module,
            device=self.device,
            intra_op_threads=self.intra_op_threads,
        )
        self._cache[spec] = embedder
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embedder

    def embed(
        self,
        spec: ModelSpec,
        model_name: str,
        batch_id: str,
        images: np.ndarray,
        timeout_s: float | None = None,
    ) -> BatchResult | JobFailure:
        """The batch's result, or a ``JobFailure`` for a model (or backend) error or a batch
        that ran past ``timeout_s`` (its embedder is then dropped from the cache)."""
        try:
            return embed_batch(self._embedder(spec), model_name, batch_id, images, timeout_s)
        except InferenceTimeoutError as e:
            self._cache.pop(spec, None)
            return JobFailure(model_name, str(e))
        except ShiftError as e:
            return JobFailure(model_name, str(e))

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

    With GPUs: one actor per GPU (``num_gpus=1``), the backend on "auto". Without: one actor per
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
