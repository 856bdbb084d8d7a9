"""sqlite-utils, imported without pandas and numpy.

``sqlite_utils.db`` imports pandas and numpy when they are installed (``try: import pandas``)
only to map their scalar types to column types when a table is created from values. That import
cost half a second of every command's start-up (pandas alone 0.4-0.6 s) and shift never creates a
table from values: its tables are declared by :mod:`shift.store.migrations` with Python types.
So the two are kept out of sqlite-utils' import (a ``None`` entry in ``sys.modules`` makes its
``import`` raise ImportError, taken away at once; only for a module not imported already). numpy's
column types still work: they are looked up when first asked for (``_LazyNumpyTypes``), once
numpy is imported by whatever made the numpy values. pandas' ``Timestamp`` column type is the one
thing left out: shift stores times as ISO text. ``to_pandas()`` is not affected: it imports pandas
itself.

The registry's ``Database`` is opened with ``execute_plugins=False``: sqlite-utils plugins (found
by scanning every installed distribution's entry points, ~16 ms) have no business in shift's
registry connection.

Every module of shift imports sqlite-utils from here (``from shift.store.sqlite import
Database``), never directly.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

#: heavy optional imports of ``sqlite_utils.db`` that shift never needs
_KEEP_OUT = ("pandas", "numpy")


class _LazyNumpyTypes(dict):
    """sqlite-utils' ``COLUMN_TYPE_MAPPING`` (python type → SQLite type) that adds numpy's
    scalar types, the ones sqlite-utils adds where it imports numpy itself, when first asked for
    a type it does not hold while numpy is imported."""

    _NUMPY = {
        **dict.fromkeys(
            ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"), "INTEGER"
        ),
        **dict.fromkeys(("float16", "float32", "float64"), "REAL"),
    }

    def __missing__(self, key: Any) -> str:
        np = sys.modules.get("numpy")
        if np is not None and np.float64 not in self.keys():
            self.update({getattr(np, name): kind for name, kind in self._NUMPY.items()})
            if key in self.keys():
                return str(self[key])
        raise KeyError(key)


def _import_sqlite_utils() -> Any:
    if "sqlite_utils" in sys.modules:
        return sys.modules["sqlite_utils"]
    kept_out = [m for m in _KEEP_OUT if m not in sys.modules]
    for m in kept_out:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        import sqlite_utils
        import sqlite_utils.db as db
    finally:
        for m in kept_out:
            if sys.modules.get(m, False) is None:
                del sys.modules[m]
    if "numpy" in kept_out and not isinstance(db.COLUMN_TYPE_MAPPING, _LazyNumpyTypes):
        db.COLUMN_TYPE_MAPPING = _LazyNumpyTypes(db.COLUMN_TYPE_MAPPING)
    return sqlite_utils


if TYPE_CHECKING:
    from sqlite_utils import Database, Migrations
else:
    _sqlite_utils = _import_sqlite_utils()
    Database = _sqlite_utils.Database
    Migrations = _sqlite_utils.Migrations

__all__ = ["Database", "Migrations"]
