"""What the executors consume and produce: embedding jobs, per-batch results and job failures.

``executor.run(jobs, on_result, on_failure)`` feeds every batch of every job through its model and
calls, in the driver process:

* ``on_result(BatchResult)`` once per batch as soon as that batch completes (completion order,
  not submission order), so the caller can persist results as they arrive;
* ``on_failure(JobFailure)`` once for a model that fails to load or run; that job's remaining
  batches are skipped (not even pulled from a lazy iterator) and the other jobs go on.

Exceptions raised by ``on_result``/``on_failure`` or by a job's batch iterator (bad task data)
propagate out of ``run``; only model errors (``ShiftError`` from the embedder) become failures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shift.inference.embedder import DEFAULT_BACKEND, Embedder
from shift.records import ModelRecord

Batch = tuple[str, np.ndarray]


@dataclass
class EmbedJob:
    """One model over a stream of ``(batch_id, images uint8 NHWC)`` batches, run by the
    inference ``backend`` (a name registered with ``register_backend``).

    ``batches`` may be a list or any (lazy) iterable; it is iterated once. ``total_batches`` is
    only used for progress bars when ``batches`` has no ``len()``.
    """

    model_name: str
    model_path: str
    record: ModelRecord
    batches: Iterable[Batch]
    total_batches: int | None = None
    backend: str = DEFAULT_BACKEND

    def num_batches(self) -> int | None:
        if isinstance(self.batches, Sized):
            return len(self.batches)
        return self.total_batches


@dataclass
class BatchResult:
    """Embeddings float32 (N, dim), logits float32 (N, classes) or None, and the runtime
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


def embed_batch(
    embedder: Embedder, model_name: str, batch_id: str, images: np.ndarray
) -> BatchResult:
    """Run one batch through ``embedder`` (the one step both executors share); raises the
    embedder's ``ShiftError``."""
    emb, logits = embedder.embed(images)
    return BatchResult(model_name, batch_id, emb, logits, list(embedder.providers))
