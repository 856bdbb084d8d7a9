"""``shift doctor``: check a home for corruption and leftovers; ``--repair`` removes what is safe.

What is checked:

* the registry: SQLite ``PRAGMA integrity_check`` and ``foreign_key_check``; every task's
  sample rows agree with its record (count and hashes); no index entry names an unknown task
  or model;
* every registered model's file exists and matches its sha256; every cached score's model key
  belongs to a registered model with its current preprocessing (stale rows: ``orphan``);
* every task's chunk files exist, load (never unpickled), hold every row the samples point at,
  and still hash to their content-addressed name;
* every index directory ``indexes/<task>/<model>/`` loads (``IndexStore.open`` with the key in
  its own ``meta.json``, every file sha256-verified), holds the task's samples when it is
  current, and agrees with its ``index_entries`` row;
* orphans and leftovers: model files no entry uses, task folders and chunks nothing uses, index
  directories of unknown tasks or models, temp files (``.*.tmp``, ``.*.tmp-*``) and the
  ``parts-*`` of finished or abandoned builds.

Permissions are checked apart from integrity: a registry folder, ``registry.db``, or model,
task or index folder that cannot be written (read-only mount, no permission), or a disk with no
space left, is reported ``unwritable`` — never ``corrupt`` — and the registry is then read
through a read-only connection; ``--repair`` refuses such a home (``ReadOnlyHomeError``).

Each finding has a severity: ``corrupt`` (damaged data), ``unwritable`` (see above),
``orphan`` (unused files),
``leftover`` (temp files and parts a killed run left behind) — these are *problems* —,
``resumable`` (a half-built index the next query resumes, an entry the next index run rewrites):
expected after a crash, not a problem, and ``foreign`` (files shift never writes: listed only).

``repair=True`` removes only what is safe: temp files, orphaned parts, index directories of
removed tasks or models, corrupt indexes (rebuilt on the next query), orphaned model files and
task chunks; it rewrites an ``index_entries`` row from a verified index. It never deletes a
registry row or a model file in use, and skips an index directory another process is building
(its build lock is held). Files outside index directories are only removed when older than
``grace_s`` seconds, so that a model or task being added at this moment is not mistaken for an
orphan.

It deletes only files whose names shift writes where they lie (:mod:`shift.tools.doctor_files`):
anything else is listed (severity ``foreign``: not a problem) and left where it is — never
moved, never deleted — and so is a folder of shift's that holds such a file. It repairs only a
marked home (``.shift-home``, see :mod:`shift.config`): a home from before the marker is marked
when its ``registry.db`` holds shift's tables; any other folder is refused (``NotAHomeError``).
Where there is no registry it raises ``NotAHomeError`` and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from shift.config import Home, is_shift_registry
from shift.errors import DiskFullError, NotAHomeError, ReadOnlyHomeError, ShiftError
from shift.fsutil import read_only
from shift.tools.doctor_checks import DEFAULT_GRACE_S, Doctor
from shift.tools.doctor_report import DoctorReport, Finding, print_report

__all__ = ["DEFAULT_GRACE_S", "DoctorReport", "Finding", "doctor", "print_report"]


def doctor(
    home: str | Path | Home | None = None,
    *,
    repair: bool = False,
    grace_s: float = DEFAULT_GRACE_S,
) -> DoctorReport:
    """Check the shift home ``home`` (default: as ``shift`` resolves it); ``repair`` removes
    what is safe to remove (on a marked home only: ``NotAHomeError`` otherwise). Raises
    ``NotAHomeError`` if there is no registry there."""
    t0 = time.perf_counter()
    h = home if isinstance(home, Home) else Home.resolve(home)
    if not h.db_path.is_file():
        raise h.no_home()  # and nothing is written: a mistyped home is not created
    ours = h.is_marked() or is_shift_registry(h.db_path)
    if ours:
        h.mark()  # a home from before the marker (best effort: a read-only home stays unmarked)
    if repair and not h.is_marked():
        raise NotAHomeError(
            f"{h.registry_dir} is not marked as a shift home ({h.marker_path.name} is missing)"
            + ("" if ours else f" and {h.db_path.name} is not a shift registry")
            + ": refusing to repair it",
            hint="point --home / SHIFT_HOME at a shift home; if this folder is one, create the "
            f"marker (touch {h.marker_path}) and run doctor again",
        )
    d = Doctor(h, repair, grace_s)
    if not _permissions(d, h) and repair:
        raise read_only(h.registry_dir)
    if d.sqlite() and not ours:  # opening it as a Registry would add shift's tables to it
        d.find("corrupt", "registry", h.db_path, "not a shift registry (it has no shift tables)")
    elif d.checked.get("registry"):  # readable
        _check_registry(d, h)
    d.report.seconds = time.perf_counter() - t0
    return d.report


#: free bytes under which the disk holding a home counts as full
MIN_FREE_BYTES = 1 << 20


def _permissions(d: Doctor, h: Home) -> bool:
    """Report the home's folders and registry this process cannot write, and a full disk,
    as ``unwritable``; True when everything can be written."""
    paths = [h.registry_dir, h.db_path, h.models_dir, h.tasks_dir, h.index_dir]
    ok = True
    for p in paths:
        if p.exists() and not os.access(p, os.W_OK):
            ok = False
            d.find(
                "unwritable",
                "permissions",
                p,
                "cannot be written (a read-only file system or no write permission): commands "
                "that write fail naming it; reading and cached queries still work",
            )
    d.checked["permissions"] = 1
    try:
        free = shutil.disk_usage(h.registry_dir).free
    except OSError:
        return ok
    if free < MIN_FREE_BYTES:
        d.find(
            "unwritable",
            "permissions",
            h.registry_dir,
            f"the disk holding the home is full ({free:,} bytes free): commands that write "
            "fail until space is freed; nothing stored is lost",
        )
    return ok


def _check_registry(d: Doctor, h: Home) -> None:
    """Open the registry of ``h`` and check its models, tasks and indexes."""
    from shift.store.registry import Registry

    try:
        reg = Registry(h)
    except (ReadOnlyHomeError, DiskFullError) as e:
        d.find("unwritable", "registry", h.db_path, f"the registry cannot be opened: {e}")
        return
    except (sqlite3.Error, ShiftError) as e:
        d.find("corrupt", "registry", h.db_path, f"the registry cannot be opened: {e}")
        return
    try:
        d.models(reg)
        d.scores(reg)
        tasks = d.tasks(reg)
        d.indexes(reg, tasks)
    finally:
        reg.close()
