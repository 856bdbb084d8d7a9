"""The ``shift`` command line (also ``shift-cli``, which no shell builtin shadows, and
``python -m shift``). Each command parses its options, makes one :class:`~shift.client.Client`
call and renders the answer; one module per command group. Importing this package stays light:
ray, torch and onnxruntime load only inside the commands that need them."""

from __future__ import annotations

from shift.cli import (  # noqa: F401  (they register commands)
    homes,
    models,
    pools,
    queries,
    sources,
    tasks,
    work,
)
from shift.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point (``shift``, ``shift-cli``, ``python -m shift``): runs one command and ends
    the process."""
    try:
        app()
    finally:
        # The process exits next. Freezing what is alive spares the interpreter's shutdown its
        # collections over every object the imports made (~60 ms of a listing's ~300 ms of CPU);
        # atexit handlers, flushes and closes happen as before.
        import gc

        gc.freeze()
