"""The locks of one index folder: the store's commit/open lock and the build lock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
    root: Path,
    *,
    blocking: bool = True,
    timeout_s: float | None = None,
    tidy_on_release: bool = True,
) -> Iterator[bool]:
    """Exclusive ``flock`` on ``root/.build.lock`` while the index under ``root`` is built, so
    two processes never build one index at once. (Not the store's ``.lock``: a second flock on
    that file from this process would wait for ourselves.) Yields False if not ``blocking`` and
    another process holds it. A blocking wait gives up after ``timeout_s`` (default
    ``$SHIFT_LOCK_TIMEOUT_S``, else 1800 s) with ``LockTimeoutError`` naming the holder, whose
    pid, host and command are written into the lock file while it is held.

    ``tidy_on_release``: before the lock is released, remove what a build that stored nothing
    left (:func:`tidy`), so a failed build leaves no folder behind; a checker (doctor, which
    changes a home only when asked to repair it) passes False. A lock file removed by its holder
    is noticed by a process that was waiting for it, which then locks the new one."""
    path = root / BUILD_LOCK_FILE
    wait = seconds_setting(timeout_s, LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S) if blocking else 0
    deadline = time.monotonic() + wait
    while True:
        f = _open_lock_file(path)
        with f:
            if fcntl is None:  # pragma: no cover
                yield True
                return
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
                            f"index {root} is being built by {lock_holder(path)}; gave up "
                            f"waiting after {wait:g} s",
                            hint="let that run finish, or stop it if it is stuck; "
                            f"${LOCK_TIMEOUT_ENV} sets how long to wait",
                        ) from None
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, 0.5)
            if not _still_at(f, path):  # its holder removed it (drop_if_unused): lock anew
                continue
            _write_holder(f)
            try:
                yield True
            finally:
                if tidy_on_release:
                    with contextlib.suppress(OSError):  # best effort
                        tidy(root)
                f.seek(0)
                f.truncate()  # released with the close below: no stale holder left behind
            return


def _open_lock_file(path: Path) -> IO[bytes]:
    """Open (create) the lock file, creating its folders; again if a holder that removed the
    folder (``drop_if_unused``) did so between the two."""
    for _ in range(99):
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            return open(path, "a+b")  # noqa: SIM115 - the caller closes it
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+b")  # noqa: SIM115 - the caller closes it


def _still_at(f: IO[bytes], path: Path) -> bool:
    """Whether the locked file ``f`` is still the one at ``path`` (not removed meanwhile)."""
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _unstarted(parts: Path) -> bool:
    """Whether a ``parts-*`` folder holds no stored batch: only the writer's manifest
    (``writer.json``) and temp files, nothing a rerun could resume and nothing foreign."""
    try:
        names = [p.name for p in parts.iterdir()]
    except OSError:
        return False
    return all(n == "writer.json" or (n.startswith(".") and ".tmp" in n) for n in names)


def tidy(root: Path) -> None:
    """What a build that stored nothing leaves behind, removed as its build lock is released
    (a failed model, a refused model file): ``parts-*`` folders without a stored batch, then
    the index folder itself when only the lock file is left (``drop_if_unused``). Runs while the
    lock is held: every writer of an index folder holds its build lock, so no build is under
    way there; parts holding batches (resumable) and anything shift does not write stay."""
    for parts in root.glob("parts-*"):
        if parts.is_dir() and not parts.is_symlink() and _unstarted(parts):
            shutil.rmtree(parts, ignore_errors=True)
    drop_if_unused(root)


def drop_if_unused(root: Path) -> bool:
    """Remove the index folder ``root`` when its build lock, held by this process, is all it
    holds (a build that failed before storing anything), and its task folder when that is then
    empty. Only while holding the build lock: a process waiting for it sees that the file was
    removed and locks a new one (``build_lock``), so no two builders ever hold it at once.
    True if removed."""
    try:
        if {p.name for p in root.iterdir()} != {BUILD_LOCK_FILE}:
            return False
        (root / BUILD_LOCK_FILE).unlink()
        root.rmdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):  # holds other models' indexes
        root.parent.rmdir()
    return True


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
        f: IO[bytes]
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
