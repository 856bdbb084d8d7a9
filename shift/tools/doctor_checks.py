"""The checks behind ``shift doctor`` (see :mod:`shift.tools.doctor` for what each one covers):
one ``Doctor`` walks the registry, model files, cached scores and task chunks (here) and the
index folders (:class:`~shift.tools.doctor_index_checks.IndexChecks`), records findings, and
repairs what is safe when asked."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from shift.fsutil import sha256_file
from shift.store.tasks import chunk_name
from shift.tools.doctor_files import DEFAULT_GRACE_S, child_kind, is_temp_file
from shift.tools.doctor_index_checks import IndexChecks

__all__ = ["DEFAULT_GRACE_S", "is_temp_file"]


def _severity(e: sqlite3.Error) -> Any:
    """``unwritable`` for SQLite's full-disk and read-only failures, else ``corrupt``."""
    from shift.fsutil import write_error

    return "corrupt" if write_error(e, "") is None else "unwritable"


class Doctor(IndexChecks):
    # ---- registry ---------------------------------------------------------------------------
    def sqlite(self) -> bool:
        """integrity_check + foreign_key_check on a plain connection (a read-only one where the
        home cannot be written, or SQLite finds no room for its WAL: reported ``unwritable``,
        then checked read-only); False if unreadable."""
        from shift.store.registry import writable

        ro = not writable(self.home)  # read-only home: reported apart (doctor._permissions)
        ok = self._sqlite(ro, quiet=not ro)
        if ok is None:  # the disk is full: look again read-only
            ok = self._sqlite(True, quiet=False)
        return bool(ok)

    def _sqlite(self, ro: bool, quiet: bool) -> bool | None:
        """One look (``ro``: through a read-only connection). None, and nothing recorded, when
        ``quiet`` and the failure is a full disk (the caller looks again read-only)."""
        from shift.store.registry import connect_read_only

        db = self.home.db_path
        try:
            conn = connect_read_only(db) if ro else sqlite3.connect(str(db), timeout=30)
        except sqlite3.Error as e:
            self.find(_severity(e), "registry", db, f"cannot open the registry: {e}")
            return False
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                self.find(
                    "corrupt", "registry", db, "integrity_check: " + "; ".join(map(str, rows[:5]))
                )
                return False
            fks = conn.execute("PRAGMA foreign_key_check").fetchall()
            for table, rowid, parent, _ in fks[:20]:
                self.find(
                    "corrupt",
                    "registry",
                    db,
                    f"foreign key: {table} row {rowid} points at a missing {parent} row",
                )
            if len(fks) > 20:
                self.find("corrupt", "registry", db, f"{len(fks) - 20} more foreign key errors")
        except sqlite3.DatabaseError as e:
            severity = _severity(e)
            if quiet and severity == "unwritable":
                self.find(
                    severity,
                    "registry",
                    db,
                    f"SQLite cannot write beside the registry ({e}): the disk is full? "
                    "checked read-only",
                )
                return None
            self.find(severity, "registry", db, f"the registry cannot be read: {e}")
            return False
        finally:
            conn.close()
        self.checked["registry"] = 1
        return True

    # ---- models -----------------------------------------------------------------------------
    def models(self, reg: Any) -> None:
        hashes: dict[Path, str | None] = {}
        used: set[Path] = set()
        for m in reg.models():
            if not m.has_weights:  # metadata only: no file to check
                continue
            path = reg.model_file(m)
            used.add(path.resolve())
            if path not in hashes:
                try:
                    hashes[path] = sha256_file(path)
                except OSError:
                    hashes[path] = None
            sha = hashes[path]
            if sha is None:
                self.find("corrupt", "model_file", path, f"model {m.name!r}: its file is missing")
            elif sha != m.sha256:
                self.find(
                    "corrupt",
                    "model_file",
                    path,
                    f"model {m.name!r}: file fails its sha256 check (registered "
                    f"{m.sha256[:12]}..., found {sha[:12]}...): modified or damaged; "
                    "re-register it (`shift-cli models add --replace`)",
                )
            self.checked["models"] = self.checked.get("models", 0) + 1
        d = self.home.models_dir
        for f in sorted(d.iterdir()) if d.is_dir() else []:
            if child_kind("models", f) is None:
                self.alien(f, "model_file")
            elif f.resolve() not in used:
                what = "temp file of an interrupted copy" if is_temp_file(f.name) else None
                self.stray(f, "model_file", what or "model file no registered model uses")

    # ---- cached scores ----------------------------------------------------------------------
    def scores(self, reg: Any) -> None:
        """Cached score rows whose model key (``model_sha``: the weights' sha256 + a digest of
        the preprocessing and backend, ``shift.engine.engine.model_cache_key``) belongs to no
        registered model with its current preprocessing under any known backend: a model
        removed or re-registered, or a key from before preprocessing was part of it. No query
        reads them again; ``--repair`` deletes them (scores are a cache: nothing is lost)."""
        from shift.engine.engine import model_cache_key
        from shift.inference.backends import known_backends

        backends = known_backends()
        valid = {model_cache_key(m, b) for m in reg.models() for b in backends}
        counts = reg.db.execute("SELECT model_sha, count(*) FROM scores GROUP BY model_sha")
        stale = {k: n for k, n in counts if k not in valid}
        self.checked["score_keys"] = self.checked.get("score_keys", 0) + len(valid)
        if not stale:
            return

        def drop() -> None:
            with reg.transaction():
                reg.db.conn.executemany(
                    "DELETE FROM scores WHERE model_sha = ?", [[k] for k in stale]
                )

        self.find(
            "orphan",
            "scores",
            self.home.db_path,
            f"{sum(stale.values())} cached scores under {len(stale)} model keys that no "
            "registered model has (removed, re-registered, or preprocessing changed): never "
            "read again",
            drop,
            "delete them",
        )

    # ---- tasks ------------------------------------------------------------------------------
    def tasks(self, reg: Any) -> dict[str, Any]:
        from shift.store.tasks import TaskStore

        store = TaskStore(reg)
        known: dict[str, Any] = {}
        for rec in reg.tasks():
            rows = reg.samples(rec.name)
            known[rec.name] = (rec, rows)
            self.checked["tasks"] = self.checked.get("tasks", 0) + 1
            tdir = store.task_dir(rec.name)
            content, data = TaskStore.hashes(rows)
            if len(rows) != rec.num_samples or (content, data) != (
                rec.content_hash,
                rec.data_hash,
            ):
                self.find(
                    "corrupt",
                    "task_data",
                    tdir,
                    f"task {rec.name!r}: its {len(rows)} sample rows do not match its record "
                    f"({rec.num_samples} samples, hash {rec.content_hash[:12]})",
                )
            need: dict[str, int] = {}
            for r in rows:
                need[r["chunk"]] = max(need.get(r["chunk"], -1), int(r["offset"]))
            for chunk, last in sorted(need.items()):
                self.chunk(rec.name, tdir / chunk, last)
            for f in sorted(tdir.iterdir()) if tdir.is_dir() else []:
                if child_kind("task", f) is None:
                    self.alien(f, "task_data")
                elif f.name not in need:
                    what = "temp file of an interrupted write" if is_temp_file(f.name) else None
                    self.stray(f, "task_data", what or f"task {rec.name!r}: chunk no sample uses")
        d = self.home.tasks_dir
        for t in sorted(d.iterdir()) if d.is_dir() else []:
            if child_kind("tasks", t) is None:
                self.alien(t, "task_data")
            elif t.name not in known:
                self.stray(t, "task_data", "task data of no registered task", kind="task")
        return known

    def chunk(self, task: str, path: Path, last: int) -> None:
        self.checked["chunks"] = self.checked.get("chunks", 0) + 1
        if not path.is_file():
            self.find("corrupt", "task_data", path, f"task {task!r}: data file is missing")
            return
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            name = chunk_name(arr)
        except (OSError, ValueError, EOFError) as e:
            self.find("corrupt", "task_data", path, f"task {task!r}: data file unreadable: {e}")
            return
        if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) <= last:
            self.find(
                "corrupt",
                "task_data",
                path,
                f"task {task!r}: data file holds {arr.dtype}{list(arr.shape)}, expected uint8 "
                f"images with at least {last + 1} rows",
            )
        elif path.name != name:
            self.find(
                "corrupt",
                "task_data",
                path,
                f"task {task!r}: data file content does not match its name (modified)",
            )
