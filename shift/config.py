"""Where shift keeps its state.

Resolution order for the home: an explicit ``home`` argument, then ``$SHIFT_HOME`` (registry in
``$SHIFT_HOME``, indexes in ``$SHIFT_HOME/indexes``), then a source checkout (``registry/`` and
``indexes/`` beside ``pyproject.toml``), else ``~/.shift``.

A home is marked as one by a ``.shift-home`` file in its registry folder, written when the home is
created. A home from before the marker gets it the first time it is opened, if its
``registry.db`` holds shift's tables. ``shift doctor --repair`` changes only marked homes.

Homes are created only on purpose (:meth:`Home.check`): reading a folder that is not a home
raises :class:`~shift.errors.NotAHomeError` and writes nothing; a write creates a home only in a
folder that does not exist yet, an empty one, or shift's own default folder (the checkout's
``registry/``, ``~/.shift``); ``shift-cli init PATH --force`` makes any other folder one (its
files stay where they are). A folder whose ``registry.db`` is another program's database never
becomes a home.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from shift.errors import InvalidNameError, NotAHomeError, ShiftError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")
_QUERY_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,127}")
CATALOG_FILE = "catalog.yaml"
HOME_MARKER = ".shift-home"
_SHIFT_TABLES = frozenset({"models", "tasks", "samples", "scores"})


def validate_name(name: str, kind: str = "name", *, queryable: bool = False) -> str:
    """Return ``name`` if it is a safe registry name: letters, digits, ``_`` and ``-``,
    starting with a letter or digit, at most 128 characters. Such a name can never escape a
    directory when used as a path component. ``queryable`` names (tasks, pools) must start with
    a letter so that the query language reads them as names, not numbers."""
    pattern, first = (_QUERY_NAME_RE, "a letter") if queryable else (_NAME_RE, "a letter or digit")
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise InvalidNameError(
            f"invalid {kind} {name!r}",
            hint=f"use letters, digits, '_' and '-', starting with {first} (max 128)",
        )
    return name


def is_shift_registry(db_path: Path) -> bool:
    """Whether ``db_path`` is an SQLite file holding shift's tables (read-only look: False when
    it is absent, unreadable or another program's database)."""
    if not db_path.is_file():
        return False
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return {r[0] for r in rows} >= _SHIFT_TABLES


def seconds_setting(value: float | None, env: str, default: float) -> float:
    """A duration in seconds: ``value`` when given, else ``$env`` when set, else ``default``.
    It must be a positive finite number (``ShiftError`` naming where it came from otherwise)."""
    raw: float | str | None = value if value is not None else os.environ.get(env, "").strip()
    if raw in (None, ""):
        return float(default)
    where = "the given value" if value is not None else f"${env}"
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise ShiftError(
            f"{where} {raw!r} is not a usable number of seconds",
            hint=f"give a positive number of seconds, e.g. {env}={default:g}",
        )
    return seconds


def _checkout_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "registry").is_dir():
        return root
    return None


@dataclass(frozen=True)
class Home:
    """The directories of one shift installation."""

    registry_dir: Path
    index_dir: Path

    @property
    def db_path(self) -> Path:
        return self.registry_dir / "registry.db"

    @property
    def models_dir(self) -> Path:
        return self.registry_dir / "models"

    @property
    def tasks_dir(self) -> Path:
        return self.registry_dir / "tasks"

    @property
    def catalog_path(self) -> Path:
        return self.registry_dir / CATALOG_FILE

    def index_path(self, task: str, model: str) -> Path:
        """``indexes/<task>/<model>``; both names are validated so the path stays inside."""
        return (
            self.index_dir / validate_name(task, "task name") / validate_name(model, "model name")
        )

    @property
    def marker_path(self) -> Path:
        """The file that marks this folder as a shift home (see the module docstring)."""
        return self.registry_dir / HOME_MARKER

    def is_marked(self) -> bool:
        return self.marker_path.is_file()

    def mark(self) -> bool:
        """Write the home marker if it is absent; False where it cannot be written (read-only)."""
        try:
            with open(self.marker_path, "x") as f:
                f.write("This folder is a shift home (registry, models, task data).\n")
        except FileExistsError:
            pass
        except OSError:
            return False
        return True

    def is_home(self) -> bool:
        """Whether this is a shift home: marked, or its ``registry.db`` holds shift's tables (a
        home from before the marker). Looks only: writes nothing."""
        return self.is_marked() or is_shift_registry(self.db_path)

    def is_default(self) -> bool:
        """Whether the registry folder is shift's own default one (the checkout's ``registry/``,
        which holds the tracked catalog, or ``~/.shift``): a write may create a home there."""
        root = _checkout_root()
        own = [Path.home() / ".shift", *([root / "registry"] if root is not None else [])]
        return any(self.registry_dir == p.resolve() for p in own)

    def _empty(self) -> bool:
        try:
            return self.registry_dir.is_dir() and next(self.registry_dir.iterdir(), None) is None
        except OSError:
            return False

    def check(self, *, create: bool) -> None:
        """Raise :class:`NotAHomeError` where this folder may not be opened as a home, before
        anything is written. ``create=False`` (a command that reads): it must be a home with a
        registry. ``create=True`` (a command that writes): a home, or a folder shift may create
        one in: one that does not exist yet, an empty one, or shift's default folder. A folder
        whose ``registry.db`` is another program's database is refused either way."""
        if self.db_path.is_file() and not self.is_home():
            raise self._foreign_db()
        if not create:
            if not (self.db_path.is_file() and self.is_home()):
                raise self.no_home()
            return
        if self.is_home() or not self.registry_dir.exists() or self._empty():
            return
        if self.is_default() and self.registry_dir.is_dir():
            return
        raise NotAHomeError(
            f"{self.registry_dir} is not a shift home and is not empty: shift creates a home "
            "only in a new or empty folder, or when asked",
            hint=f"`shift-cli init {self.registry_dir} --force` makes it a home (its files stay "
            "where they are); or point --home / SHIFT_HOME at a new or empty folder",
        )

    def no_home(self) -> NotAHomeError:
        """The error of a command that reads where there is no home."""
        return NotAHomeError(
            f"no shift home at {self.registry_dir}: there is no shift registry "
            f"({self.db_path.name}) there",
            hint=f"create one with `shift-cli init {self.registry_dir}` (or by adding a model or "
            "a task there), or point --home / SHIFT_HOME at an existing home",
        )

    def _foreign_db(self) -> NotAHomeError:
        return NotAHomeError(
            f"{self.db_path} is not a shift registry (another program's database): "
            f"{self.registry_dir} is not a shift home and shift will not make it one",
            hint="point --home / SHIFT_HOME at a shift home, or at a new or empty folder",
        )

    def init(self, *, force: bool = False) -> bool:
        """Make this folder a home (``shift-cli init``): folders, marker. A non-empty folder that
        is not a home needs ``force``; another program's ``registry.db`` is always refused
        (:class:`NotAHomeError`). False if it was a home already."""
        if self.is_home() and self.db_path.is_file():
            return False
        if self.db_path.is_file():
            raise self._foreign_db()
        if not force:
            try:
                self.check(create=True)
            except NotAHomeError as e:
                raise NotAHomeError(
                    f"{self.registry_dir} is not empty and is not a shift home",
                    hint=f"`shift-cli init {self.registry_dir} --force` makes it one: shift adds "
                    f"{HOME_MARKER}, registry.db, models/, tasks/ and indexes/ and leaves the "
                    "folder's own files where they are",
                ) from e
        self.ensure(mark=True)
        return True

    def ensure(self, *, mark: bool = False) -> Home:
        """Create the home's folders; mark it as a home if it is new (no ``registry.db`` yet),
        its ``registry.db`` is a shift registry (a home from before the marker), or ``mark``.
        The marker is written right after the registry folder, before anything else, so that a
        process creating the same home at the same moment sees a home, never a foreign folder.
        Callers check first (:meth:`check`): this creates wherever it is asked to."""
        fresh = not self.db_path.exists()
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        if not self.is_marked() and (mark or fresh or is_shift_registry(self.db_path)):
            self.mark()
        for d in (self.index_dir, self.models_dir, self.tasks_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        if home is not None:
            base = Path(home).expanduser().resolve()
            return cls(base, base / "indexes")
        env = os.environ.get("SHIFT_HOME")
        if env:
            base = Path(env).expanduser().resolve()
            return cls(base, base / "indexes")
        root = _checkout_root()
        if root is not None:
            return cls(root / "registry", root / "indexes")
        base = Path.home() / ".shift"
        return cls(base, base / "indexes")
