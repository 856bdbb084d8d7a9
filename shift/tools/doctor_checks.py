"""The checks behind ``shift doctor`` (see :mod:`shift.tools.doctor` for what each one covers):
one ``_Doctor`` walks the registry, model files, task chunks and index folders, records
findings, and repairs what is safe when asked."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shift.fsutil import sha256_file
from shift.store.tasks import chunk_name
from shift.tools.doctor_files import (
    DEFAULT_GRACE_S,
    LOCK_FILES,
    Recorder,
    child_kind,
    foreign,
    is_temp_file,
    owned,
    remove_known,
)

__all__ = ["DEFAULT_GRACE_S", "is_temp_file"]


def _clear_dir(root: Path) -> None:
    """Delete the files of an index directory except its lock files (which a waiting builder
    may hold open: deleting them would let a second builder in) and anything foreign."""
    remove_known(root, "index", keep=LOCK_FILES)


def _severity(e: sqlite3.Error) -> Any:
    """``unwritable`` for SQLite's full-disk and read-only failures, else ``corrupt``."""
    from shift.fsutil import write_error

    return "corrupt" if write_error(e, "") is None else "unwritable"


class _Doctor(Recorder):
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
        from shift.store.registry import _connect_read_only

        db = self.home.db_path
        try:
            conn = _connect_read_only(db) if ro else sqlite3.connect(str(db), timeout=30)
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

    # ---- indexes ----------------------------------------------------------------------------
    def indexes(self, reg: Any, tasks: dict[str, Any]) -> None:

        models = {m.name: m for m in reg.models()}
        entries: dict[tuple[str, str], dict[str, Any]] = {
            (r["task"], r["model"]): r for r in reg.db.query("SELECT * FROM index_entries")
        }
        for task, model in sorted(entries):
            if task not in tasks or model not in models:
                self.find(
                    "orphan",
                    "index_entry",
                    None,
                    f"index entry ({task}, {model}) names an unknown "
                    + ("task" if task not in tasks else "model"),
                )
        root = self.home.index_dir
        seen: set[tuple[str, str]] = set()
        for tdir in sorted(root.iterdir()) if root.is_dir() else []:
            kind = child_kind("indexes", tdir)
            if kind == "file":
                self.stray(tdir, "files", "temp file")
                continue
            if kind is None:
                if not tdir.name.startswith("."):  # e.g. a checkout's indexes/.gitkeep
                    self.alien(tdir, "files")
                continue
            if tdir.name not in tasks:
                what = f"indexes of task {tdir.name!r}, which is not registered"
                self.unknown_dir(tdir, what, "index_task")
                continue
            for mdir in sorted(tdir.iterdir()):
                kind = child_kind("index_task", mdir)
                if kind != "index":
                    if kind == "file":
                        self.stray(mdir, "files", "temp file")
                    else:
                        self.alien(mdir, "files")
                    continue
                if mdir.name not in models:
                    what = f"index of model {mdir.name!r}, which is not registered"
                    self.unknown_dir(mdir, what, "index")
                    continue
                seen.add((tdir.name, mdir.name))
                with self.lock(mdir) as mine:
                    if not mine:
                        self.find(
                            "resumable",
                            "index",
                            mdir,
                            "being built by another process right now: skipped",
                        )
                        continue
                    self.index(reg, tasks[tdir.name], models[mdir.name], mdir, entries)
        for task, model in sorted(set(entries) - seen):
            if task in tasks and model in models:
                self.find(
                    "resumable",
                    "index_entry",
                    entries[task, model]["path"],
                    f"index entry ({task}, {model}) but no index directory: rebuilt on the next "
                    "query",
                )

    @contextlib.contextmanager
    def lock(self, d: Path) -> Iterator[bool]:
        """``build_lock(d, blocking=False)``; where the lock file cannot be opened for writing
        (a read-only home, a full disk: nobody can be building there) a lock that is ours."""
        from shift.fsutil import write_error
        from shift.store.index.lock import build_lock
        from shift.store.registry import writable

        if not writable(self.home):
            yield True
            return
        try:
            cm = build_lock(d, blocking=False, tidy_on_release=False)
            mine = cm.__enter__()
        except OSError as e:
            if write_error(e, d) is None:
                raise
            yield True
            return
        try:
            yield mine
        finally:
            cm.__exit__(None, None, None)

    def unknown_dir(self, path: Path, what: str, kind: str) -> None:
        """An index folder (``kind``: index_task or index) of an unknown task or model."""

        for d in [path, *path.glob("*")]:
            if not (d / ".build.lock").is_file():  # the engine creates it before building
                continue
            with self.lock(d) as mine:
                if not mine:
                    self.find("orphan", "index", path, what + " (in use: left alone)")
                    return
        self.dispose("orphan", "index", path, what, kind)

    def index(
        self,
        reg: Any,
        task: tuple[Any, list[dict[str, Any]]],
        model: Any,
        mdir: Path,
        entries: dict[tuple[str, str], dict[str, Any]],
    ) -> None:
        from shift.store.index.meta import (
            DEFAULT_BACKEND,
            FORMAT_VERSION,
            IndexCorruptError,
            IndexKey,
        )
        from shift.store.index.store import IndexStore

        rec, rows = task
        self.checked["index_dirs"] = self.checked.get("index_dirs", 0) + 1
        store = IndexStore(mdir)
        label = f"index ({rec.name}, {model.name})"
        for alien in foreign(mdir, "index"):  # first: what follows removes only shift's files
            self.alien(alien, "index", f"{label}: not a file shift writes in an index")
        drop = (lambda: _clear_dir(mdir)), "delete it (rebuilt on the next query)"
        meta = None
        try:
            meta = store.read_meta()
        except IndexCorruptError as e:
            self.find("corrupt", "index", e.path or mdir, f"{label}: {e.message}", *drop)
        backend = meta.key.backend if meta is not None else DEFAULT_BACKEND  # whichever built it
        want = IndexKey.of(rec.data_hash, model, backend)
        idx = None
        if meta is not None and meta.complete:
            try:
                idx = store.open(meta.key, verify=True)
                if idx is None and meta.format != FORMAT_VERSION:
                    self.find(
                        "resumable",
                        "index",
                        mdir,
                        f"{label}: format {meta.format}, rebuilt on the next query",
                    )
            except IndexCorruptError as e:
                self.find("corrupt", "index", e.path or mdir, f"{label}: {e.message}", *drop)
        elif meta is not None:
            self.find(
                "resumable",
                "index",
                mdir,
                f"{label}: incomplete (a commit was interrupted): rebuilt on the next query",
            )
        if idx is not None:
            self.checked["indexes"] = self.checked.get("indexes", 0) + 1
            ids = [r["sample_id"] for r in rows]
            if idx.key == want and (len(idx) != len(ids) or set(idx.sample_ids) != set(ids)):
                self.find(
                    "corrupt",
                    "index",
                    mdir,
                    f"{label}: holds {len(idx)} samples, the task has {len(ids)}",
                    *drop,
                )
            elif idx.key != want:
                self.find(
                    "resumable",
                    "index",
                    mdir,
                    f"{label}: built for an older version of the task or model: updated on the "
                    "next query",
                )
            else:
                entry = entries.get((rec.name, model.name))
                got = None if entry is None else (entry["key_digest"], entry["count"], entry["dim"])
                if got != (idx.key.digest(), len(idx), idx.dim):
                    self.find(
                        "resumable",
                        "index_entry",
                        mdir,
                        f"{label}: "
                        + ("no registry entry" if entry is None else "registry entry out of date")
                        + " (a run was killed before recording it): rewritten by the next index",
                        lambda idx=idx: _put_entry(reg, rec.name, model.name, idx),
                        "rewrite the entry from the verified index",
                    )
        self.parts(mdir, meta if idx is not None else None, want, label)
        for f in sorted(mdir.iterdir()):
            if is_temp_file(f.name):
                self.find(
                    "leftover",
                    "index",
                    f,
                    f"{label}: temp file of an interrupted write",
                    lambda f=f: f.unlink(missing_ok=True),
                    "remove",
                )

    def parts(self, mdir: Path, meta: Any, want: Any, label: str) -> None:
        """``parts-<digest>/`` folders: the current unfinished build is resumable; parts of a
        finished build or of a key that is no longer wanted are leftovers."""
        current_done = meta is not None and meta.key == want
        for p in sorted(mdir.glob("parts-*")):
            digest = p.name[len("parts-") :]
            batches = len(list(p.glob("b-*.json")))
            temps = [f for f in p.iterdir() if is_temp_file(f.name)] if p.is_dir() else []
            if digest == want.digest() and not current_done:
                self.find(
                    "resumable",
                    "index",
                    p,
                    f"{label}: unfinished build, {batches} batches stored: the next query "
                    "resumes it",
                )
                for f in temps:
                    self.find(
                        "leftover",
                        "index",
                        f,
                        f"{label}: temp file of an interrupted batch write",
                        lambda f=f: f.unlink(missing_ok=True),
                        "remove",
                    )
                continue
            if foreign(p, "parts") and not owned(p, "parts"):
                continue  # only files shift never writes there: listed by index(), left alone
            why = (
                "of a finished build"
                if meta is not None and digest == meta.key.digest()
                else "of an abandoned build (task or model changed)"
            )
            self.find(
                "leftover",
                "index",
                p,
                f"{label}: {batches} stored batches {why}",
                lambda p=p: remove_known(p, "parts"),
                "remove",
            )


def _put_entry(reg: Any, task: str, model: str, idx: Any) -> None:
    from shift.store.index.reader import index_entry

    reg.put_index_entry(index_entry(task, model, idx))
