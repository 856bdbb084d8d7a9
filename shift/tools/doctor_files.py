"""What ``shift doctor`` may delete: the names shift itself writes in each folder of a home.

Every removal of doctor goes through :func:`remove_known`, which deletes only entries shift
writes there (``models/<sha256>…``, ``tasks/<task>/chunk-<sha16>.npy``, an index folder's files
and ``parts-*``, temp files of atomic writes). Anything else is *foreign*: :func:`foreign` lists
it, doctor reports it (severity ``foreign``, not a problem) and leaves it where it is — never
moved, never deleted, also by ``--repair``; a folder of shift's that holds such a file keeps it
(and stays) when shift's own files in it are removed.

Folder kinds: ``models``, ``tasks`` (the root), ``task``, ``indexes`` (the root), ``index_task``
(``indexes/<task>``), ``index`` (``indexes/<task>/<model>``) and ``parts``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shift.config import Home
from shift.errors import ShiftError
from shift.store.index.meta import META_FILE, data_files
from shift.tools.doctor_report import DoctorReport, Finding, Severity

DEFAULT_GRACE_S = 300.0
LOCK_FILES = frozenset({".lock", ".build.lock"})
INDEX_FILES = frozenset({META_FILE, *LOCK_FILES, *data_files()})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")  # config.validate_name's names
_MODEL = re.compile(r"[0-9a-f]{64}(\.[A-Za-z0-9_.\-]+)?")  # content-addressed model files
_CHUNK = re.compile(r"chunk-[0-9a-f]{16}\.npy")
_PARTS = re.compile(r"parts-[0-9a-f]{16}")
_PART = re.compile(r"writer\.json|b-[\w\-]+\.(json|npy|emb\.npy|logits\.npy)")


def is_temp_file(name: str) -> bool:
    """Temp files of shift's atomic writes: ``.<name>.tmp-<random>`` (``fsutil.temp_path``) and
    ``.<name>.<random>.tmp`` (left by versions before fsutil had one naming scheme)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def child_kind(kind: str, path: Path) -> str | None:
    """What ``path``, inside a folder of ``kind``, is to shift: ``"file"`` (a file shift writes
    there), the kind of a sub-folder shift makes there, or None (foreign)."""
    name = path.name
    is_dir = path.is_dir() and not path.is_symlink()
    if not is_dir and is_temp_file(name):
        return "file"
    sub = {"tasks": "task", "indexes": "index_task", "index_task": "index"}.get(kind)
    if sub is not None:
        return sub if is_dir and _NAME.fullmatch(name) else None
    if is_dir:
        return "parts" if kind == "index" and _PARTS.fullmatch(name) else None
    pattern = {"models": _MODEL, "task": _CHUNK, "parts": _PART}.get(kind)
    known = name in INDEX_FILES if kind == "index" else bool(pattern and pattern.fullmatch(name))
    return "file" if known else None


def foreign(path: Path, kind: str) -> list[Path]:
    """The topmost entries under the ``kind`` folder ``path`` that shift never writes there."""
    out: list[Path] = []
    stack = [(path, kind)]
    while stack:
        folder, k = stack.pop()
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            sub = child_kind(k, p)
            if sub is None:
                out.append(p)
            elif sub != "file":
                stack.append((p, sub))
    return sorted(out)


def owned(path: Path, kind: str) -> bool:
    """Whether the ``kind`` folder ``path`` holds anything :func:`remove_known` would remove: a
    file shift writes there, or a folder of shift's that is empty or holds such a file."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    for p in entries:
        sub = child_kind(kind, p)
        if sub == "file":
            return True
        if sub is not None and (not foreign(p, sub) or owned(p, sub)):
            return True
    return False


def remove_known(path: Path, kind: str | None = None, keep: frozenset[str] = frozenset()) -> None:
    """Delete ``path`` (a file, or a folder of ``kind``) except what is foreign in it: foreign
    entries stay where they are, and so do the folders holding them. ``keep``: names of
    ``path``'s own entries to leave (an index's lock files)."""
    if kind is None or not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    for p in path.iterdir():
        sub = child_kind(kind, p)
        if sub is None or p.name in keep:
            continue
        remove_known(p, None if sub == "file" else sub)
    if not keep:
        with contextlib.suppress(OSError):  # not empty: it holds something foreign
            path.rmdir()


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


class Recorder:
    """Records doctor's findings and, with ``repair``, applies their fixes; removes files only
    through :func:`remove_known`, and never touches what :func:`foreign` lists."""

    def __init__(self, home: Home, repair: bool, grace_s: float) -> None:
        self.home = home
        self.repair = repair
        self.grace_s = grace_s
        self.report = DoctorReport(home=str(home.registry_dir), repair=repair)
        self.checked = self.report.checked

    # ---- recording ------------------------------------------------------------------------
    def find(
        self,
        severity: Severity,
        check: str,
        path: Path | str | None,
        message: str,
        fix: Callable[[], Any] | None = None,
        action: str = "",
    ) -> Finding:
        f = Finding(
            severity=severity,
            check=check,
            path=None if path is None else str(path),
            message=message,
            repairable=fix is not None,
            action=action if fix is not None else "",
        )
        if fix is not None and self.repair:
            try:
                fix()
                f.repaired = True
            except (OSError, ShiftError, sqlite3.Error) as e:
                f.action = f"repair failed: {e}"
        self.report.findings.append(f)
        return f

    def old_enough(self, path: Path) -> bool:
        return _age_s(path) >= self.grace_s

    def stray(self, path: Path, check: str, what: str, kind: str | None = None) -> None:
        """A file or folder (of ``kind``) nothing uses: removable once older than the grace
        period; what shift never writes in it is listed and stays."""
        severity: Severity = "leftover" if is_temp_file(path.name) else "orphan"
        self.dispose(severity, check, path, what, kind, young=not self.old_enough(path))

    def dispose(
        self,
        severity: Severity,
        check: str,
        path: Path,
        what: str,
        kind: str | None,
        young: bool = False,
    ) -> None:
        """Record ``path`` (a file or a folder of ``kind``) as removable, unless ``young``. The
        entries in it that shift never writes are listed apart and stay where they are (so does
        the folder holding them); a folder that holds nothing of shift's is only listed."""
        alien = foreign(path, kind) if kind is not None and path.is_dir() else []
        if alien and kind is not None and not owned(path, kind):
            self.alien(path, check, f"{what}; it holds only entries shift never writes")
            return
        for a in alien:
            self.alien(a, check)
        if alien:
            what += (
                f" (the {len(alien)} entr{'y' if len(alien) == 1 else 'ies'} in it that shift "
                "never writes stay where they are)"
            )
        if young:
            what += f" (younger than {self.grace_s:.0f} s: left alone)"
        fix = None if young else (lambda: remove_known(path, kind))
        self.find(severity, check, path, what, fix, "remove")

    def alien(self, path: Path, check: str, what: str = "") -> None:
        """``path`` is not something shift writes where it lies: listed, never moved or deleted
        (a user's own file in a home, or a folder made a home with ``shift-cli init --force``)."""
        what = what or "not a file shift writes here"
        self.find("foreign", check, path, f"{what}: left where it is (shift never moves it)")
