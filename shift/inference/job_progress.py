"""Progress bars for a run of embedding jobs: one per job plus one overall, on stderr."""

from __future__ import annotations

from typing import Any

from shift.inference.jobs import EmbedJob


class ProgressView:
    """Rich progress bars on stderr: one per job plus one overall; a no-op when disabled.
    A job without a known batch count gets an open-ended bar, closed at its final count."""

    def __init__(self, jobs: list[EmbedJob], enabled: bool) -> None:
        self.jobs = jobs
        self.enabled = enabled and bool(jobs)
        self._p: Any = None
        self._tasks: list[Any] = []
        self._overall: Any = None

    def __enter__(self) -> ProgressView:
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
