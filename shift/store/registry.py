"""The registry: models, pools, tasks, samples, cached scores and index entries in one SQLite file.

Opened in WAL mode with a busy timeout so concurrent readers and a writer coexist; the schema is
versioned by :mod:`shift.store.migrations`. All SQL is parameterised. The models' part is
:class:`~shift.store.registry_models.ModelRows`; fine-tuning results are
:mod:`shift.store.finetunes`.

A home whose registry folder or ``registry.db`` cannot be written (a read-only mount, no write
permission) is opened read-only (``mode=ro``, else ``immutable=1`` when SQLite cannot even read
the WAL there): everything can be read, cached query results included, and every write raises
:class:`~shift.errors.ReadOnlyHomeError` before it starts; where such a registry needs a
migration (it was written by an older shift), a migrated copy in memory is read and the file is
left as it is. A write that fails because the disk
is full raises :class:`~shift.errors.DiskFullError` after its transaction is rolled back; a home
whose disk is too full for SQLite to open its WAL is opened read-only too, every write raising
``DiskFullError``."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shift.config import Home, validate_name
from shift.errors import (
    AlreadyExistsError,
    DiskFullError,
    NotFoundError,
    ReadOnlyHomeError,
    ShiftError,
)
from shift.fsutil import named_write_errors, read_only
from shift.records import ModelRecord, PoolRecord, TaskRecord, utcnow
from shift.store.pools import BUILTIN_POOLS
from shift.store.registry_models import ModelRows
from shift.store.sqlite import Database

BUSY_TIMEOUT_MS = 30_000


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    for wait in range(BUSY_TIMEOUT_MS // 50):  # switching a fresh file to WAL ignores the timeout
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or wait == BUSY_TIMEOUT_MS // 50 - 1:
                raise
            time.sleep(0.05)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def writable(home: Home) -> bool:
    """Whether this process may write the home's registry folder and ``registry.db``
    (``os.access``: a read-only mount counts even for root)."""
    paths = [home.registry_dir, *([home.db_path] if home.db_path.exists() else [])]
    return all(os.access(p, os.W_OK) for p in paths)


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` reads the WAL when SQLite can use it there, else
    ``immutable=1`` reads the database file as it is — only when no WAL file holds commits it
    would miss (a cleanly closed home has none), so a read is never of an older state."""
    uri = path.resolve().as_uri()
    err: sqlite3.Error | None = None
    wal = path.with_name(path.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    for query in ("?mode=ro", *(() if pending else ("?mode=ro&immutable=1",))):
        conn = sqlite3.connect(
            uri + query,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except sqlite3.Error as e:
            err = e
            conn.close()
    assert err is not None
    raise err


def _no_registry_yet(home: Home) -> ReadOnlyHomeError:
    """A read-only folder where a home would be created: there is nothing to read either."""
    return ReadOnlyHomeError(
        f"home {home.registry_dir} is read-only and holds no registry yet: a home cannot be "
        "created there",
        hint="point --home / SHIFT_HOME at a writable folder",
    )


class Registry(ModelRows):
    """One shift home's registry. Cheap to open; use one per thread.

    ``create``: whether the home may be created here if it does not exist yet (in a missing or
    empty folder, or shift's default one; see :meth:`Home.check`). A command that only reads
    passes False: where there is no home it raises :class:`NotAHomeError` and writes nothing."""

    def __init__(self, home: Home, *, create: bool = True) -> None:
        home.check(create=create)  # before anything is written
        try:
            with named_write_errors(home.registry_dir):
                self.home = home.ensure()
        except ReadOnlyHomeError:
            if not home.db_path.is_file():
                raise _no_registry_yet(home) from None
            raise
        self.read_only = not writable(home)
        self._refusal: ShiftError | None = read_only(home.registry_dir) if self.read_only else None
        if self.read_only and not home.db_path.is_file():
            raise _no_registry_yet(home)
        try:
            with named_write_errors(home.registry_dir):
                conn = connect_read_only(home.db_path) if self.read_only else _connect(home.db_path)
        except DiskFullError as e:  # no room for SQLite's WAL files: read what is stored
            if not home.db_path.is_file():
                raise
            try:
                conn = connect_read_only(home.db_path)
            except sqlite3.Error:
                raise e from None
            self.read_only, self._refusal = True, e
        self.db = Database(conn, execute_plugins=False)  # no sqlite-utils plugins: see store.sqlite
        self._writes = 0  # commits through this connection (PRAGMA data_version sees the others)
        self._model_cache: dict[str, ModelRecord] = {}
        self._model_cache_version: tuple[int, int] | None = None
        from shift.store.migrations import migrations

        try:
            if not migrations.pending(self.db):
                return
            if self.read_only:  # cannot migrate on disk: read a migrated copy in memory
                self._migrate_in_memory()
                return
            # IMMEDIATE, then look again: processes opening a fresh home at once wait for the
            # first one's migrations instead of failing with "database is locked"
            with self.transaction():
                if migrations.pending(self.db):
                    migrations.apply(self.db)
        except BaseException:
            self.db.conn.close()
            raise

    def _migrate_in_memory(self) -> None:
        """A read-only home whose registry needs a migration (written by an older shift): copy
        the registry into memory and migrate the copy, so that every read (listing, cached
        query results) sees the current schema. Nothing on disk changes; writes stay refused."""
        from shift.store.migrations import migrations

        mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            self.db.conn.backup(mem)
        except sqlite3.Error:
            mem.close()
            raise
        self.db.conn.close()
        mem.execute("PRAGMA foreign_keys = ON")
        self.db = Database(mem, execute_plugins=False)
        mem.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(self.db)
            mem.execute("COMMIT")
        except BaseException:
            if mem.in_transaction:
                mem.execute("ROLLBACK")
            raise

    @classmethod
    def open(cls, home: str | Path | None = None, *, create: bool = True) -> Registry:
        return cls(Home.resolve(home), create=create)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_writable(self) -> None:
        """Raise :class:`ReadOnlyHomeError` on a read-only home, :class:`DiskFullError` on one
        opened read-only because its disk was full (before a write's slow part)."""
        if self._refusal is not None:
            raise self._refusal

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """An IMMEDIATE transaction: the write lock is taken up front (no upgrade deadlocks)."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        self.require_writable()
        with named_write_errors(self.home.registry_dir):  # a full disk: rolled back, named
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        self._writes += 1

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the registry at one moment (WAL), however
        other processes write meanwhile. Inside a transaction already, it is that transaction."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def schema_version(self) -> list[str]:
        from shift.store.migrations import migrations

        return [m.name for m in migrations.applied(self.db)]

    # ---- rows of models, pools, tasks ------------------------------------------------------
    def ensure_new(self, table: str, name: str) -> None:
        """Raise :class:`AlreadyExistsError` if ``table`` (models, pools, tasks) has ``name``."""
        if self.db.execute(f"SELECT 1 FROM {table} WHERE name = ?", [name]).fetchone():
            what = table[:-1]
            hint = {
                "models": "remove it first or pass --replace",
                "pools": "pass --replace to redefine it",
                "tasks": "use `shift-cli tasks append` to add samples, or --replace",
            }[table]
            raise AlreadyExistsError(f"{what} {name!r} already exists", hint=hint)

    def _write_row(self, table: str, row: dict[str, Any], replace: bool) -> None:
        """Upsert ``row`` (``replace``) or insert it, the primary key refusing a duplicate name
        that slipped past the check (:class:`AlreadyExistsError`)."""
        if replace:
            self.db.table(table).upsert(row, pk="name")
            return
        try:
            self.db.table(table).insert(row, pk="name")
        except sqlite3.IntegrityError:
            self.ensure_new(table, row["name"])
            raise

    # ---- pools --------------------------------------------------------------------------------
    def pools(self) -> list[PoolRecord]:
        user = [
            PoolRecord(name=r["name"], filter=r["filter"], description=r["description"] or "")
            for r in self.db.query("SELECT * FROM pools ORDER BY name")
        ]
        return [*BUILTIN_POOLS.values(), *user]

    def get_pool(self, name: str) -> PoolRecord | None:
        if name in BUILTIN_POOLS:
            return BUILTIN_POOLS[name]
        rows = list(self.db.query("SELECT * FROM pools WHERE name = ?", [name]))
        if not rows:
            return None
        r = rows[0]
        return PoolRecord(name=r["name"], filter=r["filter"], description=r["description"] or "")

    def check_new_pool(self, name: str, replace: bool = False) -> None:
        """Refuse a pool name that is invalid, built in or (unless ``replace``) taken."""
        validate_name(name, "pool name", queryable=True)
        if name in BUILTIN_POOLS:
            raise ShiftError(f"{name!r} is a built-in pool and cannot be redefined")
        if not replace:
            self.ensure_new("pools", name)

    def add_pool(
        self, name: str, condition: str, description: str = "", replace: bool = False
    ) -> PoolRecord:
        """Save a pool as a named condition, already checked and normalised by the caller
        (:func:`shift.query.planner.check_condition`: no leading WHERE); the name check and the
        insert are one write transaction (:class:`AlreadyExistsError`)."""
        self.check_new_pool(name, replace)
        row = {
            "name": name,
            "filter": condition,
            "description": description,
            "date_added": utcnow(),
        }
        with self.transaction():
            if not replace:
                self.ensure_new("pools", name)
            self._write_row("pools", row, replace)
        return PoolRecord(name=name, filter=condition, description=description)

    def remove_pool(self, name: str) -> None:
        if name in BUILTIN_POOLS:
            raise ShiftError(f"{name!r} is a built-in pool and cannot be removed")
        if self.get_pool(name) is None:
            raise NotFoundError(f"no pool named {name!r}")
        with self.transaction():
            self.db.execute("DELETE FROM pools WHERE name = ?", [name])

    # ---- tasks --------------------------------------------------------------------------------
    def tasks(self) -> list[TaskRecord]:
        return [
            TaskRecord.model_validate(r) for r in self.db.query("SELECT * FROM tasks ORDER BY name")
        ]

    def task_names(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM tasks ORDER BY name")]

    def get_task(self, name: str) -> TaskRecord:
        rows = list(self.db.query("SELECT * FROM tasks WHERE name = ?", [name]))
        if not rows:
            raise NotFoundError(f"no task named {name!r}", hint=self._names_hint("tasks"))
        return TaskRecord.model_validate(rows[0])

    def has_task(self, name: str) -> bool:
        return bool(list(self.db.query("SELECT 1 FROM tasks WHERE name = ?", [name])))

    def put_task(
        self,
        rec: TaskRecord,
        samples: list[dict[str, Any]] | None = None,
        replace_samples: bool = False,
        create: bool = False,
    ) -> None:
        """Insert or update a task and (some of) its samples in one transaction. ``create``: the
        task must be new (:class:`AlreadyExistsError` otherwise, checked in the transaction)."""
        with self.transaction():
            row = rec.model_dump()
            row["classes"] = json.dumps(rec.classes)
            if create:
                self.ensure_new("tasks", rec.name)
            self._write_row("tasks", row, replace=not create)
            if replace_samples:
                self.db.execute("DELETE FROM samples WHERE task = ?", [rec.name])
            if samples:
                self.db.table("samples").upsert_all(samples, pk=("task", "sample_id"))

    def samples(self, task: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM samples WHERE task = ? ORDER BY seq", [task]))

    def task_snapshot(self, name: str) -> tuple[TaskRecord, list[dict[str, Any]]]:
        """A task's record and its samples read at one moment (one read transaction), so the
        hashes always describe the rows, whatever is appended or relabelled meanwhile."""
        with self.snapshot():
            return self.get_task(name), self.samples(name)

    def remove_task(self, name: str) -> None:
        self.get_task(name)
        with self.transaction():
            self.db.execute("DELETE FROM samples WHERE task = ?", [name])
            self.db.execute("DELETE FROM index_entries WHERE task = ?", [name])
            self.db.execute("DELETE FROM tasks WHERE name = ?", [name])

    # ---- cached scores ------------------------------------------------------------------------
    def get_scores(
        self, task_hash: str, proxy: str, params: str, model_shas: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """Cached scores keyed by model sha256 for one (task hash, proxy, params)."""
        wanted = set(model_shas)
        cur = self.db.conn.execute(
            "SELECT model_sha, score, n_train, n_val FROM scores WHERE task_hash = ? AND "
            "proxy = ? AND params = ?",
            [task_hash, proxy, params],
        )
        return {
            sha: {"score": score, "n_train": n_train, "n_val": n_val}
            for sha, score, n_train, n_val in cur
            if sha in wanted
        }

    def put_scores(self, rows: list[dict[str, Any]]) -> None:
        with self.transaction():
            self.db.table("scores").upsert_all(
                [{**r, "computed_at": r.get("computed_at") or utcnow()} for r in rows],
                pk=("task_hash", "model_sha", "proxy", "params"),
            )

    # ---- index entries ------------------------------------------------------------------------
    def index_entries(self, task: str) -> dict[str, dict[str, Any]]:
        return {
            r["model"]: r
            for r in self.db.query("SELECT * FROM index_entries WHERE task = ?", [task])
        }

    def put_index_entry(self, row: dict[str, Any]) -> None:
        with self.transaction():
            self.db.table("index_entries").upsert(
                {**row, "updated": utcnow()}, pk=("task", "model")
            )

    # ---- helpers ------------------------------------------------------------------------------
    def _names_hint(self, table: str) -> str:
        names = [
            r["name"] for r in self.db.query(f"SELECT name FROM {table} ORDER BY name LIMIT 21")
        ]
        if not names:
            return f"no {table} are registered yet"
        more = ", ..." if len(names) > 20 else ""
        return f"registered {table}: " + ", ".join(names[:20]) + more
