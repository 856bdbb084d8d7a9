"""The registry: models, pools, tasks, samples, cached scores and index entries in one SQLite file.

Opened in WAL mode with a busy timeout so concurrent readers and a writer coexist; the schema is
versioned by :mod:`shift.store.migrations`. All SQL is parameterised."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from shift.config import Home, validate_name
from shift.errors import NotFoundError, ShiftError
from shift.fsutil import atomic_copy, sha256_file
from shift.records import InputSpec, ModelRecord, PoolRecord, TaskRecord, utcnow
from shift.store.pools import BUILTIN_POOLS

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


def model_to_row(rec: ModelRecord) -> dict[str, Any]:
    row = rec.model_dump(exclude={"input"})
    row["input_json"] = rec.input.model_dump_json()
    row["input_height"] = rec.input.height
    row["tags"] = json.dumps(rec.tags)
    return row


def row_to_model(row: dict[str, Any]) -> ModelRecord:
    data = {k: v for k, v in row.items() if k not in ("input_json", "input_height")}
    data["input"] = InputSpec.model_validate_json(row["input_json"])
    data["tags"] = json.loads(row["tags"] or "[]")
    return ModelRecord.model_validate(data)


class Registry:
    """One shift home's registry. Cheap to open; use one per thread."""

    def __init__(self, home: Home) -> None:
        self.home = home.ensure()
        self.db = Database(_connect(home.db_path))
        self._writes = 0  # commits through this connection (PRAGMA data_version sees the others)
        self._model_cache: dict[str, ModelRecord] = {}
        self._model_cache_version: tuple[int, int] | None = None
        from shift.store.migrations import migrations

        if migrations.pending(self.db):
            # IMMEDIATE, then look again: processes opening a fresh home at once wait for the
            # first one's migrations instead of failing with "database is locked"
            with self.transaction():
                if migrations.pending(self.db):
                    migrations.apply(self.db)

    @classmethod
    def open(cls, home: str | Path | None = None) -> Registry:
        return cls(Home.resolve(home))

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """An IMMEDIATE transaction: the write lock is taken up front (no upgrade deadlocks)."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._writes += 1

    def schema_version(self) -> list[str]:
        from shift.store.migrations import migrations

        return [m.name for m in migrations.applied(self.db)]

    # ---- models -------------------------------------------------------------------------------
    def model_file(self, rec: ModelRecord) -> Path:
        p = Path(rec.path)
        return p if p.is_absolute() else self.home.registry_dir / p

    def add_model(
        self, rec: ModelRecord, src_file: str | Path | None = None, replace: bool = False
    ) -> ModelRecord:
        """Register ``rec``. With ``src_file`` the ONNX file is copied (atomically) into the home,
        content-addressed as ``models/<sha256>.onnx``, and ``rec.path`` points there."""
        if not replace and self.has_model(rec.name):
            raise ShiftError(
                f"model {rec.name!r} already exists", hint="remove it first or pass --replace"
            )
        if src_file is not None:
            dst = self.home.models_dir / f"{rec.sha256}.onnx"
            if not dst.exists():
                atomic_copy(src_file, dst)
            if sha256_file(dst) != rec.sha256:
                dst.unlink()
                raise ShiftError(f"model {rec.name!r}: file changed while it was being copied")
            rec = rec.model_copy(update={"path": str(dst.relative_to(self.home.registry_dir))})
        with self.transaction():
            self.db["models"].upsert(model_to_row(rec), pk="name")
        return rec

    def has_model(self, name: str) -> bool:
        return bool(list(self.db.query("SELECT 1 FROM models WHERE name = ?", [name])))

    def get_model(self, name: str) -> ModelRecord:
        rows = list(self.db.query("SELECT * FROM models WHERE name = ?", [name]))
        if not rows:
            raise NotFoundError(f"no model named {name!r}", hint=self._names_hint("models"))
        return row_to_model(rows[0])

    def remove_model(self, name: str) -> ModelRecord:
        rec = self.get_model(name)
        with self.transaction():
            self.db.execute("DELETE FROM models WHERE name = ?", [name])
            self.db.execute("DELETE FROM index_entries WHERE model = ?", [name])
        still_used = list(self.db.query("SELECT 1 FROM models WHERE sha256 = ?", [rec.sha256]))
        path = self.model_file(rec)
        if not still_used and path.parent == self.home.models_dir:
            path.unlink(missing_ok=True)
        return rec

    def _records(self) -> dict[str, ModelRecord]:
        """Every model record, validated once and cached until this or another connection
        commits a change (``PRAGMA data_version`` + our own commit count)."""
        version = (self.db.conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if version != self._model_cache_version:
            self._model_cache = {
                r["name"]: row_to_model(r) for r in self.db.query("SELECT * FROM models")
            }
            self._model_cache_version = version
        return self._model_cache

    def models(
        self, where: str = "", params: Iterable[Any] = (), order: str = "m.name"
    ) -> list[ModelRecord]:
        """Models matching a compiled condition (see :mod:`shift.query.compile`), in ``order``.
        SQL selects the names; the records come from the cache."""
        sql = "SELECT m.name FROM models m" + (f" WHERE {where}" if where else "")
        sql += f" ORDER BY {order}"
        names = [r[0] for r in self._select(sql, params)]
        records = self._records()
        return [records[n] for n in names]

    def count_models(self, where: str = "", params: Iterable[Any] = ()) -> int:
        sql = "SELECT count(*) AS n FROM models m" + (f" WHERE {where}" if where else "")
        return self._select(sql, params)[0][0]

    def _select(self, sql: str, params: Iterable[Any]) -> list[Any]:
        try:
            return self.db.conn.execute(sql, list(params)).fetchall()
        except sqlite3.OperationalError as e:  # e.g. "parser stack overflow" (deep NOT nesting)
            raise ShiftError(
                f"the condition is too complex for SQLite ({e})",
                hint="use fewer nested NOT and parentheses",
            ) from None

    def model_names(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM models ORDER BY name")]

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

    def add_pool(
        self, name: str, condition: str, description: str = "", replace: bool = False
    ) -> PoolRecord:
        """Save a pool as a named condition. The condition is parsed and checked first."""
        from shift.query.planner import check_condition

        validate_name(name, "pool name", queryable=True)
        if name in BUILTIN_POOLS:
            raise ShiftError(f"{name!r} is a built-in pool and cannot be redefined")
        if not replace and self.get_pool(name) is not None:
            raise ShiftError(f"pool {name!r} already exists", hint="pass --replace to redefine it")
        text = check_condition(condition)
        with self.transaction():
            self.db["pools"].upsert(
                {"name": name, "filter": text, "description": description, "date_added": utcnow()},
                pk="name",
            )
        return PoolRecord(name=name, filter=text, description=description)

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
    ) -> None:
        """Insert or update a task and (some of) its samples in one transaction."""
        with self.transaction():
            row = rec.model_dump()
            row["classes"] = json.dumps(rec.classes)
            self.db["tasks"].upsert(row, pk="name")
            if replace_samples:
                self.db.execute("DELETE FROM samples WHERE task = ?", [rec.name])
            if samples:
                self.db["samples"].upsert_all(samples, pk=("task", "sample_id"))

    def samples(self, task: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM samples WHERE task = ? ORDER BY seq", [task]))

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
            self.db["scores"].upsert_all(
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
            self.db["index_entries"].upsert({**row, "updated": utcnow()}, pk=("task", "model"))

    # ---- helpers ------------------------------------------------------------------------------
    def _names_hint(self, table: str) -> str:
        names = [
            r["name"] for r in self.db.query(f"SELECT name FROM {table} ORDER BY name LIMIT 21")
        ]
        if not names:
            return f"no {table} are registered yet"
        more = ", ..." if len(names) > 20 else ""
        return f"registered {table}: " + ", ".join(names[:20]) + more
