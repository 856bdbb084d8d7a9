"""The locks of one index folder: the store's commit/open lock and the build lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shift.store.index.meta import LOCK_FILE

try:  # POSIX only; elsewhere commits are simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


@contextmanager
def build_lock(root: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive ``flock`` on ``root/.build.lock`` while the index under ``root`` is built, so
    two processes never build one index at once. (Not the store's ``.lock``: a second flock on
    that file from this process would wait for ourselves.) Yields False if not ``blocking`` and
    another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # released when the file is closed


@contextmanager
def store_lock(root: Path, *, shared: bool = False) -> Iterator[None]:
    """Advisory ``flock`` on ``root/.lock``: exclusive for a commit, shared for an ``open``.
    A reader that cannot open the lock file (nothing committed yet, read-only) goes on
    unlocked; so does every caller where ``fcntl`` is missing (non-POSIX)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = root / LOCK_FILE
    if shared:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            yield
            return
    else:
        root.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+b")  # noqa: SIM115 - closed below
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
