"""The in-process executor: jobs run one after the other in this process (tests, debugging,
tiny workloads, one GPU). Neither ray nor any runtime is imported when this module is imported.

While model m runs on an accelerator, model m+1 is loaded on a background thread (its session
created, or its graph converted and checked): a model's fixed cost hides behind the previous
model's batches. At most one model is loaded ahead, so at most two are in memory; the one
before is closed before the next load begins. Results and failures are still reported on the
calling thread, in job order, and a model that fails to load fails its own job only.

On a CPU the load would compete with the running model for the same cores (on the 2-core
development machine it measured no gain, within noise: ``benchmarks/bench_model_overhead.py``),
so by default (``auto``) a model is loaded ahead only while the one before runs on another
device; ``$SHIFT_LOAD_AHEAD=1`` looks ahead on a CPU too, ``0`` never.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from shift.errors import ShiftError
from shift.inference.backends import make_embedder
from shift.inference.embedder import Embedder
from shift.inference.job_progress import ProgressView
from shift.inference.jobs import (
    EmbedJob,
    FailureFn,
    JobFailure,
    ResultFn,
    batch_timeout,
    embed_batch,
)

log = logging.getLogger(__name__)

#: "1": load the next model while one runs, "0": never, "auto" (default): while one runs on an
#: accelerator (its embedder's ``device`` is not "cpu")
LOAD_AHEAD_ENV = "SHIFT_LOAD_AHEAD"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def load_ahead_setting(value: bool | str | None = None) -> str:
    """ "on", "off" or "auto": ``value`` if given (True/False or one of those), else
    ``$SHIFT_LOAD_AHEAD``, else "auto". ``ShiftError`` for anything else."""
    if isinstance(value, bool):
        return "on" if value else "off"
    raw = (value if value is not None else os.environ.get(LOAD_AHEAD_ENV, "")).strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw in _ON or raw in _OFF:
        return "on" if raw in _ON else "off"
    raise ShiftError(
        f"load-ahead setting {raw!r} is not one of on, off, auto",
        hint=f"set ${LOAD_AHEAD_ENV} to 1, 0 or auto",
    )


def release(embedder: Any) -> None:
    """Let go of a loaded model: its ``close()`` when it has one (the torch backend's thread)."""
    close = getattr(embedder, "close", None)
    if callable(close):
        try:
            close()
        except Exception as e:  # a model that cannot close must not fail the run
            log.warning("closing %r failed: %s", embedder, e)


class _Load:
    """One model being loaded: on a daemon thread (``ahead``), or right here. ``result()``
    waits for it and returns the embedder or raises what loading raised; ``abandon()`` hands
    the embedder, once loaded, to ``release`` instead (a run that ended early)."""

    def __init__(self, job: EmbedJob, opts: dict[str, Any], ahead: bool) -> None:
        self.job = job
        self._opts = opts
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self.embedder: Embedder | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0  # how long loading took
        self.waited = 0.0  # how long the caller waited for it
        if ahead:
            name = f"shift-load-{job.model_name}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        else:  # the caller waits for all of it
            self._work()
            self.waited = self.seconds

    def _work(self) -> None:
        t0 = time.perf_counter()
        try:
            job = self.job
            self.embedder = make_embedder(job.backend, job.model_path, job.record, **self._opts)
        except BaseException as e:  # handed to the caller by result()
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0
            with self._lock:
                self._done.set()
                drop = self._abandoned
            if drop:
                self._drop()

    def result(self) -> Embedder:
        t0 = time.perf_counter()
        self._done.wait()
        self.waited += time.perf_counter() - t0
        if self.error is not None:
            raise self.error
        assert self.embedder is not None
        embedder, self.embedder = self.embedder, None  # the caller owns it now
        return embedder

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            done = self._done.is_set()
        if done:
            self._drop()

    def _drop(self) -> None:
        embedder, self.embedder = self.embedder, None
        if embedder is not None:
            release(embedder)


class InProcessExecutor:
    """Runs the jobs one after the other in this process, each through its job's backend.

    A model that fails to load fails its job before any batch is pulled; so does a batch that
    runs past ``batch_timeout_s`` (see ``jobs.batch_timeout``). ``inference_calls`` counts
    batches handed to a model (including one that failed). ``load_ahead``: load the next job's
    model on a background thread while this one runs -- True, False, or "auto" (default, or
    ``$SHIFT_LOAD_AHEAD``): while this one runs on an accelerator (see the module doc). After a
    run, ``load_seconds`` holds each model's load time and ``load_waited`` how long the run
    waited for it (what the look-ahead did not hide).
    """

    def __init__(
        self,
        device: str = "auto",
        intra_op_threads: int | None = None,
        batch_timeout_s: float | None = None,
        load_ahead: bool | str | None = None,
    ) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.batch_timeout_s = batch_timeout(batch_timeout_s)
        self.load_ahead = load_ahead_setting(load_ahead)
        self.inference_calls = 0
        self.load_seconds: dict[str, float] = {}
        self.load_waited: dict[str, float] = {}

    def _looks_ahead(self, running: Embedder | None) -> bool:
        """Whether to load the next model now, while ``running`` (None: nothing) runs."""
        if self.load_ahead != "auto":
            return self.load_ahead == "on"
        return running is not None and getattr(running, "device", "cpu") != "cpu"

    def _load(self, job: EmbedJob, ahead: bool) -> _Load:
        opts = {"device": self.device, "intra_op_threads": self.intra_op_threads}
        return _Load(job, opts, ahead)

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        self.load_seconds, self.load_waited = {}, {}
        ahead: _Load | None = None  # the next job's model, loading
        try:
            with ProgressView(jobs, progress) as view:
                for j, job in enumerate(jobs):
                    loading, ahead = ahead or self._load(job, False), None
                    try:
                        embedder: Embedder | None = loading.result()
                        error = ""
                    except ShiftError as e:
                        embedder, error = None, str(e)
                    finally:
                        self.load_seconds[job.model_name] = loading.seconds
                        self.load_waited[job.model_name] = loading.waited
                    if j + 1 < len(jobs) and self._looks_ahead(embedder):
                        ahead = self._load(jobs[j + 1], True)  # while this one runs
                    if embedder is None:
                        on_failure(JobFailure(job.model_name, error))
                        view.fail(j)
                        continue
                    try:
                        self._run_job(j, job, embedder, on_result, on_failure, view)
                    finally:
                        release(embedder)
                        del embedder
        finally:
            if ahead is not None:  # the run ended early: the model loaded ahead is let go
                ahead.abandon()

    def _run_job(
        self,
        j: int,
        job: EmbedJob,
        embedder: Embedder,
        on_result: ResultFn,
        on_failure: FailureFn,
        view: ProgressView,
    ) -> None:
        for batch_id, images in job.batches:
            self.inference_calls += 1
            try:
                result = embed_batch(
                    embedder, job.model_name, batch_id, images, self.batch_timeout_s
                )
            except ShiftError as e:
                on_failure(JobFailure(job.model_name, str(e)))
                view.fail(j)
                return
            on_result(result)
            view.advance(j)
