"""The one look of shift's progress bars: description, bar, done/total, elapsed; on stderr so
``--json`` output on stdout stays clean."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool = True, *, transient: bool = False) -> Any:
    """A rich ``Progress`` (not started; use it as a context manager or call ``start()``);
    ``enabled=False`` gives one that draws nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=transient,
    )
