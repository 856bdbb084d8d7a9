"""Small filesystem helpers: hashing, and the one atomic-write mechanism of shift.

Every durable write is *staged* then *put*: the bytes go to a fresh temp file beside the target
(``.<name>.tmp-<12 hex>``), hashed with sha256 as they are written, flushed and fsynced; then
``os.replace`` renames it over the target and the directory is fsynced. A crash at any point
leaves either the old file or the new one (plus, at worst, a temp file), never a partial one.
Callers that swap several files at once (the index store) stage them all first, then put them.

A write that fails because the disk is full (``ENOSPC``, ``EDQUOT``, ``EFBIG``: a quota or a
file-size limit) raises :class:`~shift.errors.DiskFullError`, and one refused by a read-only
file system or missing permission (``EROFS``, ``EACCES``, ``EPERM``) raises
:class:`~shift.errors.ReadOnlyHomeError`; the temp file is removed, the target is untouched.
``write_error`` maps SQLite's messages for the same faults the same way.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from shift.errors import DiskFullError, ReadOnlyHomeError, ShiftError

TMP_MARK = ".tmp-"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_SQLITE_FULL = ("database or disk is full", "disk i/o error")
_SQLITE_READ_ONLY = ("readonly database", "read-only", "unable to open database file")


def write_error(e: BaseException, where: str | os.PathLike[str]) -> ShiftError | None:
    """The named error for a write to ``where`` that failed with ``e``, or None when ``e`` is
    not a full disk or a read-only home (an ``OSError`` by errno; an SQLite error by its
    message: "database or disk is full" and "disk I/O error" → full, "attempt to write a
    readonly database" / "unable to open database file" → read-only)."""
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        return disk_full(where, os.strerror(e.errno))
    if isinstance(e, OSError) and e.errno in READ_ONLY_ERRNOS:
        return read_only(where)
    if isinstance(e, sqlite3.Error):
        text = str(e).lower()
        if any(m in text for m in _SQLITE_FULL):
            return disk_full(where, str(e))
        if any(m in text for m in _SQLITE_READ_ONLY):
            return read_only(where)
    return None


def disk_full(where: str | os.PathLike[str], why: str) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {os.fspath(where)} is full ({why}); nothing stored was lost",
        hint="free some space (or raise the quota) and run the command again",
    )


def read_only(where: str | os.PathLike[str]) -> ReadOnlyHomeError:
    return ReadOnlyHomeError(
        f"home {os.fspath(where)} is read-only: this command needs to write to it",
        hint="queries over cached results still work; point --home / SHIFT_HOME at a "
        "writable copy to change it",
    )


@contextmanager
def named_write_errors(where: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a full-disk or read-only failure inside the block as its named error."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        err = write_error(e, where)
        if err is None:
            raise
        raise err from e


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- staging -----------------------------------------------------------------------------------


class Staged(NamedTuple):
    """A written and fsynced temp file, not yet renamed over its target, and its sha256."""

    tmp: Path
    sha256: str


def temp_path(target: Path) -> Path:
    """A fresh temp name beside ``target``: ``.<name>.tmp-<12 random hex>``."""
    return target.parent / f".{target.name}{TMP_MARK}{uuid.uuid4().hex[:12]}"


class HashingWriter(io.RawIOBase):
    """A write-only binary file that feeds every byte written into a sha256."""

    def __init__(self, f: Any, tmp: Path, *, hashed: bool = True) -> None:
        self._f = f
        self.tmp = tmp
        self._sha = hashlib.sha256() if hashed else None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        if self._sha is not None:
            self._sha.update(mv)
        self._f.write(mv)
        return mv.nbytes

    def hexdigest(self) -> str:
        """sha256 of everything written so far ("" for an unhashed writer)."""
        return self._sha.hexdigest() if self._sha is not None else ""


@contextmanager
def staging(target: Path, *, hashed: bool = True) -> Iterator[HashingWriter]:
    """Yield a hashing writer on a new temp file beside ``target``; on a clean exit the file is
    flushed and fsynced (``Staged(writer.tmp, writer.hexdigest())``); on any error it is removed.
    ``hashed=False`` skips the sha256 (a cache file nobody checks it against).
    """
    tmp = temp_path(target)
    try:
        with named_write_errors(target.parent), open(tmp, "xb") as f:
            w = HashingWriter(f, tmp, hashed=hashed)
            yield w
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage(target: Path, write: Callable[[HashingWriter], object]) -> Staged:
    """Stage what ``write(f)`` writes for ``target`` (see ``staging``)."""
    with staging(target) as f:
        write(f)
    return Staged(f.tmp, f.hexdigest())


def stage_bytes(target: Path, data: bytes) -> Staged:
    """Stage ``data`` for ``target``."""
    return stage(target, lambda f: f.write(data))


def stage_file(target: Path, src: Path) -> Staged:
    """Stage a file already written by someone else (e.g. a library's ``save``): rename ``src``
    to a temp name beside ``target``, then hash and fsync it."""
    tmp = temp_path(target)
    os.replace(src, tmp)
    try:
        with open(tmp, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, sha)


def put_staged(target: Path, staged: Staged) -> str:
    """Rename a staged temp file over ``target``, fsync the directory, and return the sha256; the
    temp file is removed if the rename fails."""
    try:
        with named_write_errors(target.parent):
            os.replace(staged.tmp, target)
    except BaseException:
        staged.tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return staged.sha256


def discard(staged: Iterable[Staged]) -> None:
    """Remove the temp files of ``staged`` entries that were never put (already-put ones are
    gone, so this is safe to call in a ``finally``)."""
    for s in staged:
        s.tmp.unlink(missing_ok=True)


# ---- one-file atomic writes --------------------------------------------------------------------


@contextmanager
def atomic_open(path: str | os.PathLike[str], *, hashed: bool = True) -> Iterator[HashingWriter]:
    """A binary file whose content replaces ``path`` atomically when the block ends without
    error (``staging`` + ``put_staged``); the parent directory is created if needed."""
    target = Path(path)
    with named_write_errors(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
    with staging(target, hashed=hashed) as f:
        yield f
    put_staged(target, Staged(f.tmp, f.hexdigest()))


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[HashingWriter], object],
    *,
    hashed: bool = True,
) -> str:
    """Atomically replace ``path`` with what ``write(f)`` writes; returns its sha256 (""
    with ``hashed=False``)."""
    with atomic_open(path, hashed=hashed) as f:
        write(f)
    return f.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> str:
    """Atomically replace ``path`` with ``data``; returns ``sha256(data)``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Atomically replace ``dst`` with a copy of ``src``; returns the copy's sha256."""
    with open(src, "rb") as fin:
        return atomic_write(dst, lambda f: shutil.copyfileobj(fin, f, 1 << 20))
