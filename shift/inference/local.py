"""The in-process executor: jobs run one after the other in this process (tests, debugging,
tiny workloads). Neither ray nor any runtime is imported when this module is imported."""

from __future__ import annotations

from shift.errors import ShiftError
from shift.inference.backends import make_embedder
from shift.inference.job_progress import ProgressView
from shift.inference.jobs import (
    EmbedJob,
    FailureFn,
    JobFailure,
    ResultFn,
    batch_timeout,
    embed_batch,
)


class InProcessExecutor:
    """Runs the jobs one after the other in this process, each through its job's backend.

    A model that fails to load fails its job before any batch is pulled; so does a batch that
    runs past ``batch_timeout_s`` (see ``jobs.batch_timeout``). ``inference_calls`` counts
    batches handed to a model (including one that failed).
    """

    def __init__(
        self,
        device: str = "auto",
        intra_op_threads: int | None = None,
        batch_timeout_s: float | None = None,
    ) -> None:
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.batch_timeout_s = batch_timeout(batch_timeout_s)
        self.inference_calls = 0

    def run(
        self,
        jobs: list[EmbedJob],
        on_result: ResultFn,
        on_failure: FailureFn,
        progress: bool = True,
    ) -> None:
        with ProgressView(jobs, progress) as view:
            for j, job in enumerate(jobs):
                try:
                    embedder = make_embedder(
                        job.backend,
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
                        result = embed_batch(
                            embedder, job.model_name, batch_id, images, self.batch_timeout_s
                        )
                    except ShiftError as e:
                        on_failure(JobFailure(job.model_name, str(e)))
                        view.fail(j)
                        break
                    on_result(result)
                    view.advance(j)
                del embedder
