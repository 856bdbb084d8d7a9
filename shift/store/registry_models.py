"""The models of the registry: :class:`ModelRows`, the part of
:class:`~shift.store.registry.Registry` that adds, reads, selects and removes models (model files
are content-addressed copies in the home, ``models/<sha256>.onnx``), and the row conversions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shift.errors import AlreadyExistsError, NotFoundError, ShiftError
from shift.fsutil import atomic_copy, sha256_file
from shift.records import InputSpec, ModelRecord

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from shift.config import Home
    from shift.store.sqlite import Database

__all__ = ["ModelRows", "model_to_row", "row_to_model"]


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


class ModelRows:
    """The models' part of the registry (mixed into :class:`~shift.store.registry.Registry`,
    which provides the connection, the transactions and the row helpers)."""

    if TYPE_CHECKING:
        db: Database
        home: Home
        _writes: int
        _model_cache: dict[str, ModelRecord]
        _model_cache_version: tuple[int, int] | None

        def transaction(self) -> AbstractContextManager[None]: ...
        def require_writable(self) -> None: ...
        def ensure_new(self, table: str, name: str) -> None: ...
        def _write_row(self, table: str, row: dict[str, Any], replace: bool) -> None: ...
        def _names_hint(self, table: str) -> str: ...

    def model_file(self, rec: ModelRecord) -> Path:
        p = Path(rec.path)
        return p if p.is_absolute() else self.home.registry_dir / p

    def add_model(
        self, rec: ModelRecord, src_file: str | Path | None = None, replace: bool = False
    ) -> ModelRecord:
        """Register ``rec``. With ``src_file`` the ONNX file is copied (atomically) into the home,
        content-addressed as ``models/<sha256>.onnx``, and ``rec.path`` points there. The name
        check and the insert are one write transaction: of writers racing for one name, exactly
        one wins and the others get :class:`AlreadyExistsError`. ``replace`` deletes the file
        of the weights it replaces unless another entry uses them."""
        self.require_writable()
        if not replace:
            self.ensure_new("models", rec.name)  # early, before copying a file
        created = False
        if src_file is not None:
            dst = self.home.models_dir / f"{rec.sha256}.onnx"
            created = self._copy_model_file(rec, src_file, dst)
            rec = rec.model_copy(update={"path": str(dst.relative_to(self.home.registry_dir))})
        old = None
        try:
            with self.transaction():
                if not replace:
                    self.ensure_new("models", rec.name)
                if src_file is not None and not dst.exists():  # removed meanwhile by a remove
                    self._copy_model_file(rec, src_file, dst)
                old = self.get_model(rec.name) if replace and self.has_model(rec.name) else None
                self._write_row("models", model_to_row(rec), replace)
        except AlreadyExistsError:
            if created:
                self._drop_unused_model_file(dst, rec.sha256)
            raise
        if old is not None and old.has_weights and old.sha256 != rec.sha256:
            # the replaced weights' file, once committed, unless another entry uses it
            self._drop_unused_model_file(self.model_file(old), old.sha256)
        return rec

    def _copy_model_file(self, rec: ModelRecord, src_file: str | Path, dst: Path) -> bool:
        """Copy ``src_file`` to ``dst`` unless there; check its sha256. True if it was copied."""
        created = not dst.exists()
        if created:
            atomic_copy(src_file, dst)
        if sha256_file(dst) != rec.sha256:
            dst.unlink()
            raise ShiftError(f"model {rec.name!r}: file changed while it was being copied")
        return created

    def _drop_unused_model_file(self, path: Path, sha: str) -> None:
        """Delete a model file no registered model uses, inside a write transaction (a writer
        that still wants it re-copies it inside its own)."""
        with self.transaction():
            used = self.db.execute("SELECT 1 FROM models WHERE sha256 = ?", [sha]).fetchone()
            if not used and path.parent == self.home.models_dir:
                path.unlink(missing_ok=True)

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
            if rec.has_weights:  # a metadata-only row has no file
                self._drop_unused_model_file(self.model_file(rec), rec.sha256)
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
