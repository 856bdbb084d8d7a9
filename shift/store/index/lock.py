"""The build lock of one index folder: one process builds an index at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def build_lock(root: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive ``flock`` on ``root/.build.lock`` while the index under ``root`` is built, so
    two processes never build one index at once. (Not the store's ``.lock``: a second flock on
    that file from this process would wait for ourselves.) Yields False if not ``blocking`` and
    another process holds it."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # released when the file is closed
