"""The locks of one index folder: the store's commit/open lock and the build lock."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from shift.config import seconds_setting
from shift.errors import LockTimeoutError
from shift.store.index.meta import LOCK_FILE

try:  # POSIX only; elsewhere commits are simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

BUILD_LOCK_FILE = ".build.lock"
LOCK_TIMEOUT_ENV = "SHIFT_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 1800.0


@contextmanager
def build_lock(
    root: Path, *, blocking: bool = True, timeout_s: float | None = None
) -> Iterator[bool]:
    """Exclusive ``flock`` on ``root/.build.lock`` while the index under ``root`` is built, so
    two processes never build one index at once. (Not the store's ``.lock``: a second flock on
    that file from this process would wait for ourselves.) Yields False if not ``blocking`` and
    another process holds it. A blocking wait gives up after ``timeout_s`` (default
    ``$SHIFT_LOCK_TIMEOUT_S``, else 1800 s) with ``LockTimeoutError`` naming the holder, whose
    pid, host and command are written into the lock file while it is held."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / BUILD_LOCK_FILE
    wait = seconds_setting(timeout_s, LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S) if blocking else 0
    with open(path, "a+b") as f:
        if fcntl is None:  # pragma: no cover
            yield True
            return
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not blocking:
                    yield False
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeoutError(
                        f"index {root} is being built by {lock_holder(path)}; gave up waiting "
                        f"after {wait:g} s",
                        hint="let that run finish, or stop it if it is stuck; "
                        f"${LOCK_TIMEOUT_ENV} sets how long to wait",
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.5)
        _write_holder(f)
        try:
            yield True
        finally:
            f.seek(0)
            f.truncate()  # released with the close below: no stale holder left behind


def _write_holder(f: IO[bytes]) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    f.seek(0)
    f.truncate()
    f.write(json.dumps(holder).encode())
    f.flush()


def lock_holder(path: Path) -> str:
    """Who holds the lock file ``path``, as its holder wrote it: "process 123 on host h
    (command ...) since ...", or "another process" when it wrote nothing readable."""
    try:
        info = json.loads(path.read_bytes() or b"null")
        return (
            f"process {int(info['pid'])} on host {info['host']} (command: {info['command']!r}) "
            f"since {info['since']}"
        )
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


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
