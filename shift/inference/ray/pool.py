"""The Ray side of inference: the worker that runs in each actor and the process's shared pool
of actors (sized by ``shift.inference.ray.plan.plan_pool``). ray is imported inside the
functions, never at import time (``shift.inference.ray.runtime.shutdown_ray`` finds ``ACTOR_POOL``
here by module name).

Actors are restarted when their process dies (``MAX_RESTARTS``) and the calls they held are run
again (``MAX_TASK_RETRIES``); an embed call has no side effect, so a retry is safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from shift.errors import InferenceTimeoutError, ShiftError
from shift.inference.backends import backend_module, make_embedder
from shift.inference.embedder import Embedder
from shift.inference.jobs import Batch, BatchResult, EmbedJob, JobFailure, embed_batch
from shift.inference.ray.models import ModelBlob, materialize
from shift.inference.ray.plan import (
    CPU_IN_FLIGHT,
    GPU_IN_FLIGHT,
    PoolPlan,
    cpu_images_per_run,
    device_batch_size,
    env_float,
    plan_pool,
)
from shift.records import ModelRecord

__all__ = [
    "CPU_IN_FLIGHT",
    "GPU_IN_FLIGHT",
    "EmbedWorker",
    "ModelSpec",
    "PoolPlan",
    "close_actor_pool",
    "device_batch_size",
    "plan_pool",
]

MAX_RESTARTS = 3  # a dead actor process is started again this many times
MAX_TASK_RETRIES = 2  # ... and each batch it held is retried this many times
CACHE_ENV = "SHIFT_WORKER_CACHE_MB"
DEFAULT_CACHE_MB = 512
# A loaded ONNX Runtime session (no arena) peaks at ~4x its file's size while loading and keeps
# 2.5-4x (MobileNetV2 13 MB file: 60 MB, EfficientNet-Lite2 23 MB: 94 MB; measured November 26)
SESSION_FACTOR = 4


def worker_cache_bytes() -> int:
    """An actor's session-cache budget: ``$SHIFT_WORKER_CACHE_MB`` MiB (default 512)."""
    return int(env_float(CACHE_ENV, DEFAULT_CACHE_MB) * 2**20)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a job's model: the backend, the module that registers it (so
    a worker that never imported it can), the model's bytes in the object store and the record
    as JSON. No path: a worker on another node has no access to the home."""

    backend: str
    module: str
    blob: ModelBlob
    record_json: str

    @staticmethod
    def module_of(job: EmbedJob) -> str:
        """The module that registers the job's backend; ``ShiftError`` for a backend not
        registered in this process."""
        return backend_module(job.backend)


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so a dropped session's
    memory leaves the process's RSS; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class EmbedWorker:
    """The body of a Ray actor: embedders cached by ``ModelSpec`` (backend, model sha256 and
    record), so a model is loaded once per actor. The cache is bounded by bytes: a session is
    counted as ``SESSION_FACTOR`` x its file size, and least recently used sessions are dropped
    while the total exceeds ``cache_bytes`` (one model is always kept). On CPU a batch runs in
    slices of ``cpu_images_per_run`` images, so its activations stay bounded; freed memory is
    handed back to the OS after every call."""

    def __init__(
        self, device: str, intra_op_threads: int | None, cache_bytes: int | None = None
    ) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.cache_bytes = cache_bytes or worker_cache_bytes()
        self._cache: OrderedDict[ModelSpec, tuple[Embedder, int]] = OrderedDict()
        self._node: str | None = None

    def _cost(self, spec: ModelSpec) -> int:
        return SESSION_FACTOR * spec.blob.size

    def cached_bytes(self) -> int:
        """What the cached sessions count for against ``cache_bytes``."""
        return sum(self._cost(s) for s in self._cache)

    def cached(self) -> list[str]:
        """sha256 of the cached models, least recently used first."""
        return [s.blob.sha256 for s in self._cache]

    def _embedder(self, spec: ModelSpec) -> tuple[Embedder, int]:
        """The loaded model and the most images one run of it may take (0: no limit)."""
        if spec in self._cache:
            self._cache.move_to_end(spec)
            return self._cache[spec]
        record = ModelRecord.model_validate_json(spec.record_json)
        while self._cache and self.cached_bytes() + self._cost(spec) > self.cache_bytes:
            self._cache.popitem(last=False)
            _trim_heap()
        embedder = make_embedder(
            spec.backend,
            str(materialize(spec.blob, record.name)),
            record,
            module=spec.module,
            device=self.device,
            intra_op_threads=self.intra_op_threads,
        )
        limit = cpu_images_per_run(record.input) if embedder.device == "cpu" else 0
        self._cache[spec] = (embedder, limit)
        return embedder, limit

    def embed(
        self,
        spec: ModelSpec,
        model_name: str,
        batches: list[Batch],
        timeout_s: float | None = None,
    ) -> list[BatchResult] | JobFailure:
        """The results of ``batches`` (run as one inference call when their images have the
        same shape), or a ``JobFailure`` for a model (or backend) error or a call that ran past
        ``timeout_s`` per batch (its embedder is then dropped from the cache)."""
        try:
            embedder, limit = self._embedder(spec)
            if len(batches) == 1 or len({b[1].shape[1:] for b in batches}) > 1:
                out = [_run(embedder, limit, model_name, b, x, timeout_s) for b, x in batches]
            else:
                whole = _run(
                    embedder,
                    limit,
                    model_name,
                    "+".join(b for b, _ in batches),
                    np.concatenate([x for _, x in batches]),
                    None if timeout_s is None else timeout_s * len(batches),
                )
                out = _split(whole, batches)
        except InferenceTimeoutError as e:
            self._cache.pop(spec, None)
            return JobFailure(model_name, str(e))
        except ShiftError as e:
            return JobFailure(model_name, str(e))
        finally:
            _trim_heap()  # the batch's activations were freed: hand them back to the OS
        node = self.node()
        for r in out:
            r.node = node
        return out

    def node(self) -> str:
        """The Ray node this actor runs on (its node id)."""
        if self._node is None:
            import ray

            self._node = ray.get_runtime_context().get_node_id()
        return self._node

    def info(self) -> dict[str, Any]:
        """pid, node id and GPU ids of this actor (placement checks, tests, benchmarks)."""
        import ray

        return {"pid": os.getpid(), "node": self.node(), "gpus": list(ray.get_gpu_ids())}


def _run(
    embedder: Embedder,
    limit: int,
    model_name: str,
    batch_id: str,
    images: np.ndarray,
    timeout_s: float | None,
) -> BatchResult:
    """``embed_batch`` in runs of at most ``limit`` images (0: one run), each within
    ``timeout_s``; the results concatenated."""
    if not limit or len(images) <= limit:
        return embed_batch(embedder, model_name, batch_id, images, timeout_s)
    parts = [
        embed_batch(embedder, model_name, batch_id, images[i : i + limit], timeout_s)
        for i in range(0, len(images), limit)
    ]
    logits = None if parts[0].logits is None else np.concatenate([p.logits for p in parts])
    emb = np.concatenate([p.embeddings for p in parts])
    return BatchResult(model_name, batch_id, emb, logits, list(parts[0].providers))


def _split(result: BatchResult, batches: list[Batch]) -> list[BatchResult]:
    """One ``BatchResult`` per batch out of the result of their concatenation."""
    out, start = [], 0
    for batch_id, images in batches:
        end = start + len(images)
        lg = result.logits
        out.append(
            BatchResult(
                result.model_name,
                batch_id,
                result.embeddings[start:end],
                None if lg is None else lg[start:end],
                list(result.providers),
            )
        )
        start = end
    return out


class _SharedPool:
    """The Ray actors of this process, shared by every ``RayExecutor``: created on first use,
    sized to the cluster (not to what happens to be free), and kept between runs so that actors
    start and models load once, not once per query. A run that fails tears the pool down; a
    different pool plan (e.g. another ``num_actors``) replaces it; ``close_actor_pool()`` and
    ``shutdown_ray()`` release it. Actors restart on their own when their process dies."""

    def __init__(self) -> None:
        self.actors: list[Any] = []
        self.plan: PoolPlan | None = None
        self.session: str | None = None

    def _new(self, ray: Any) -> Any:
        assert self.plan is not None
        cls = _remote_worker_class(ray).options(
            **self.plan.options, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES
        )
        return cls.remote(self.plan.device, self.plan.intra_op_threads)

    def acquire(self, ray: Any, plan: PoolPlan) -> list[Any]:
        session = ray.get_runtime_context().get_job_id()
        if self.actors and (self.plan != plan or self.session != session):
            self.close(ray if self.session == session else None)
        if not self.actors:
            self.plan, self.session = plan, session
            self.actors = [self._new(ray) for _ in range(plan.num_actors)]
        return self.actors

    def replace(self, ray: Any, i: int) -> Any:
        """A fresh actor in slot ``i`` (the old one died for good)."""
        self.actors[i] = self._new(ray)
        return self.actors[i]

    def close(self, ray: Any | None) -> None:
        """Kill the actors (``ray=None``: Ray is gone already, just forget them)."""
        if ray is not None and self.actors:
            total = ray.cluster_resources()
            for actor in self.actors:
                ray.kill(actor)
            _wait_for_release(ray, {k: float(total.get(k, 0.0)) for k in ("CPU", "GPU")})
        self.actors, self.plan, self.session = [], None, None


ACTOR_POOL = _SharedPool()


def close_actor_pool() -> None:
    """Release the shared actors (a no-op when Ray is not running)."""
    from shift.inference.ray.runtime import ray_is_running

    if ray_is_running():
        import ray

        ACTOR_POOL.close(ray)
    else:
        ACTOR_POOL.close(None)


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
