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

import logging
import threading
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np

from shift.config import seconds_setting
from shift.errors import InferenceTimeoutError
from shift.inference.embedder import DEFAULT_BACKEND, Embedder
from shift.records import ModelRecord

log = logging.getLogger(__name__)

Batch = tuple[str, np.ndarray]

BATCH_TIMEOUT_ENV = "SHIFT_BATCH_TIMEOUT_S"
DEFAULT_BATCH_TIMEOUT_S = 600.0
CANCEL_GRACE_S = 5.0  # how long a cancelled batch gets to stop before it is abandoned


def batch_timeout(seconds: float | None = None) -> float:
    """The inference timeout per batch: ``seconds`` if given, else ``$SHIFT_BATCH_TIMEOUT_S``,
    else ``DEFAULT_BATCH_TIMEOUT_S`` (600 s). ``ShiftError`` for a value that is not a positive
    number."""
    return seconds_setting(seconds, BATCH_TIMEOUT_ENV, DEFAULT_BATCH_TIMEOUT_S)


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
    """Embeddings float32 (N, dim), logits float32 (N, classes) or None, the runtime
    providers actually used (e.g. ``["CPUExecutionProvider"]``) and, from a Ray actor, the id
    of the node that ran it ("" in process)."""

    model_name: str
    batch_id: str
    embeddings: np.ndarray
    logits: np.ndarray | None
    providers: list[str]
    node: str = ""


@dataclass
class JobFailure:
    model_name: str
    error: str


ResultFn = Callable[[BatchResult], None]
FailureFn = Callable[[JobFailure], None]


def embed_batch(
    embedder: Embedder,
    model_name: str,
    batch_id: str,
    images: np.ndarray,
    timeout_s: float | None = None,
) -> BatchResult:
    """Run one batch through ``embedder`` (the one step both executors share); raises the
    embedder's ``ShiftError``, or ``InferenceTimeoutError`` when ``timeout_s`` passes first."""
    if timeout_s is None:
        emb, logits = embedder.embed(images)
    else:
        emb, logits = _embed_within(embedder, model_name, batch_id, images, timeout_s)
    return BatchResult(model_name, batch_id, emb, logits, list(embedder.providers))


def _embed_within(
    embedder: Embedder, model_name: str, batch_id: str, images: np.ndarray, timeout_s: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """``embedder.embed(images)`` on a helper thread, waited for at most ``timeout_s``. On
    timeout the embedder's optional ``cancel()`` is called (ONNX Runtime stops the run) and the
    thread gets ``CANCEL_GRACE_S`` to end; one that does not is abandoned (logged)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["out"] = embedder.embed(images)
        except BaseException as e:  # handed to the caller below
            box["err"] = e
        finally:
            done.set()

    threading.Thread(target=work, name=f"shift-embed-{model_name}", daemon=True).start()
    if not done.wait(timeout_s):
        cancel = getattr(embedder, "cancel", None)
        if callable(cancel):
            cancel()
        stopped = done.wait(CANCEL_GRACE_S)
        if not stopped:
            log.warning("model %r: its timed-out batch could not be stopped", model_name)
        raise InferenceTimeoutError(
            f"model {model_name!r}: batch {batch_id} of {len(images)} images did not finish "
            f"within {timeout_s:g} s" + ("" if stopped else " (and could not be stopped)"),
            hint=f"a model that loops forever cannot be indexed; for a slow one raise "
            f"${BATCH_TIMEOUT_ENV} (or the engine's batch_timeout_s)",
        )
    if "err" in box:
        raise box["err"]
    return box["out"]
