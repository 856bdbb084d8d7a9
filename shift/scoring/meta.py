"""Ground-truth fine-tuning tables shipped in ``shift/data/benchmarks/`` (offline oracles).

A table gives, for each (model, task), the test accuracy reached after full fine-tuning, so a
model-search strategy can be scored with :mod:`shift.tools.evaluation` (regret, budget to zero
regret, weighted τ) without fine-tuning anything. The tables are sparse: not every model has
every task.

``vtab1k`` (``shift/data/benchmarks/vtab1k_finetune.csv``): 4,997 cells, 291 Hugging Face vision
models × 19 VTAB-1k tasks, derived from the DS3Lab SHiFT maintainers' ``data/ftrecords.csv``
(``DS3Lab/shift`` commit a0885e0; no licence there: attributed, not our data). See
``shift/data/benchmarks/README.md`` for the derivation and caveats.

**Diverged cells** (data README §2.2): a cell is diverged when its accuracy equals the task's
most frequent value, i.e. a constant-prediction or majority-class run. Values are compared
rounded to 6 decimals (float32 summation makes the same constant prediction differ in the 7th
digit: this reproduces the README's per-task counts, 477 cells in all); the value must occur at
least twice, and tied most-frequent values are all flagged. They are real outcomes, not missing
data, but they dominate regret: report results with and without them (:meth:`without_diverged`).
"""

from __future__ import annotations

import csv
import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shift.data import path as data_path

__all__ = [
    "DIVERGED_DECIMALS",
    "TABLES",
    "VTAB_GROUPS",
    "GroundTruth",
    "available_tables",
    "load_table",
    "meta_scores",
    "table_path",
]

#: the shipped tables (package data: ``shift/data/benchmarks/``)
TABLES_DIR = data_path("benchmarks")
TABLES: dict[str, str] = {"vtab1k": "vtab1k_finetune.csv"}
DIVERGED_DECIMALS = 6

# VTAB-1k groups, in the order of Zhai et al. / the data README.
VTAB_GROUPS: dict[str, tuple[str, ...]] = {
    "natural": ("Caltech101", "CIFAR-100", "DTD", "Flowers102", "Pets", "Sun397", "SVHN"),
    "specialized": ("Camelyon", "EuroSAT", "Resisc45", "Retinopathy"),
    "structured": (
        "Clevr-Count",
        "Clevr-Dist",
        "DMLab",
        "dSpr-Loc",
        "dSpr-Orient",
        "KITTI-Dist",
        "sNORB-Azim",
        "sNORB-Elev",
    ),
}


@dataclass(frozen=True)
class Cell:
    """One (model, task) ground-truth row."""

    model: str
    task: str
    acc: float
    elapsed: float = math.nan
    lr: str = ""
    n_runs: int = 1
    overlaps_train: bool = False


@dataclass(frozen=True)
class GroundTruth:
    """A sparse model × task table of fine-tune accuracies (fractions in [0, 1]).

    ``acc[model][task]`` and ``elapsed[model][task]`` (seconds) hold only the cells that exist;
    ``diverged`` is the set of ``(model, task)`` cells flagged as diverged; ``groups`` maps a
    task to its benchmark group (VTAB: natural / specialized / structured) where known."""

    name: str
    acc: dict[str, dict[str, float]]
    elapsed: dict[str, dict[str, float]]
    diverged: frozenset[tuple[str, str]]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)
    overlaps_train: frozenset[str] = frozenset()
    source: str = ""

    @classmethod
    def from_cells(
        cls,
        cells: Iterable[Cell | tuple],
        *,
        name: str = "custom",
        groups: dict[str, str] | None = None,
        source: str = "",
    ) -> GroundTruth:
        """Build a table from cells (``Cell`` or ``(model, task, acc[, elapsed])`` tuples);
        diverged cells are flagged from the accuracies. A duplicate (model, task) is an error."""
        acc: dict[str, dict[str, float]] = {}
        elapsed: dict[str, dict[str, float]] = {}
        overlaps: set[str] = set()
        for c in cells:
            if not isinstance(c, Cell):
                c = Cell(*c)
            a = float(c.acc)
            if not (0.0 <= a <= 1.0):
                raise ValueError(f"accuracy of ({c.model}, {c.task}) not in [0, 1]: {a}")
            row = acc.setdefault(c.model, {})
            if c.task in row:
                raise ValueError(f"duplicate cell ({c.model}, {c.task})")
            row[c.task] = a
            elapsed.setdefault(c.model, {})[c.task] = float(c.elapsed)
            if c.overlaps_train:
                overlaps.add(c.task)
        tasks = sorted({t for row in acc.values() for t in row})
        order = {t: i for i, t in enumerate(_group_order(groups or {}))}
        tasks.sort(key=lambda t: (order.get(t, len(order)), t))
        return cls(
            name=name,
            acc=acc,
            elapsed=elapsed,
            diverged=frozenset(_diverged(acc)),
            tasks=tuple(tasks),
            models=tuple(sorted(acc)),
            groups=dict(groups or {}),
            overlaps_train=frozenset(overlaps),
            source=source,
        )

    @property
    def n_cells(self) -> int:
        return sum(len(row) for row in self.acc.values())

    def has(self, model: str, task: str) -> bool:
        return task in self.acc.get(model, {})

    def is_diverged(self, model: str, task: str) -> bool:
        return (model, task) in self.diverged

    def models_with(self, task: str) -> list[str]:
        """Models with a cell on ``task`` (sorted)."""
        return [m for m in self.models if task in self.acc[m]]

    def full_coverage_models(self) -> list[str]:
        """Models with a cell on every task of the table (sorted)."""
        return [m for m in self.models if len(self.acc[m]) == len(self.tasks)]

    def task_accuracies(self, task: str, models: Iterable[str] | None = None) -> dict[str, float]:
        """``{model: acc}`` on ``task`` for ``models`` (default: all) that have a cell there."""
        pool = self.models if models is None else models
        return {m: self.acc[m][task] for m in pool if task in self.acc.get(m, {})}

    def tasks_in_group(self, group: str) -> list[str]:
        return [t for t in self.tasks if self.groups.get(t) == group]

    def without_diverged(self) -> GroundTruth:
        """The same table with the diverged cells removed (as if those runs did not exist);
        nothing is re-flagged. Models left with no cell are dropped."""
        acc = {
            m: {t: a for t, a in row.items() if (m, t) not in self.diverged}
            for m, row in self.acc.items()
        }
        acc = {m: row for m, row in acc.items() if row}
        elapsed = {m: {t: self.elapsed[m][t] for t in row} for m, row in acc.items()}
        return GroundTruth(
            name=f"{self.name}-no-diverged",
            acc=acc,
            elapsed=elapsed,
            diverged=frozenset(),
            tasks=tuple(t for t in self.tasks if any(t in row for row in acc.values())),
            models=tuple(sorted(acc)),
            groups=dict(self.groups),
            overlaps_train=self.overlaps_train,
            source=self.source,
        )


def _group_order(groups: dict[str, str]) -> list[str]:
    known = [t for g in VTAB_GROUPS.values() for t in g]
    return [t for t in known if t in groups] + sorted(t for t in groups if t not in known)


def _diverged(acc: dict[str, dict[str, float]]) -> set[tuple[str, str]]:
    """Cells equal (to ``DIVERGED_DECIMALS``) to their task's most frequent value (≥ 2 cells)."""
    by_task: dict[str, list[tuple[str, float]]] = {}
    for m, row in acc.items():
        for t, a in row.items():
            by_task.setdefault(t, []).append((m, round(a, DIVERGED_DECIMALS)))
    out: set[tuple[str, str]] = set()
    for t, cells in by_task.items():
        counts = Counter(v for _, v in cells)
        top = max(counts.values())
        if top < 2:
            continue
        modes = {v for v, n in counts.items() if n == top}
        out.update((m, t) for m, v in cells if v in modes)
    return out


def available_tables() -> list[str]:
    """Names of the shipped tables whose file is present."""
    return [name for name, fn in TABLES.items() if (TABLES_DIR / fn).is_file()]


def table_path(name: str = "vtab1k") -> Path:
    if name not in TABLES:
        raise KeyError(f"unknown benchmark table {name!r}; known: {', '.join(TABLES)}")
    return TABLES_DIR / TABLES[name]


def load_table(name: str = "vtab1k", path: str | Path | None = None) -> GroundTruth:
    """Load a shipped ground-truth table (``vtab1k``), or the CSV at ``path`` with the same
    columns (``model, task, test_accuracy[, lr, n_runs_collapsed, test_overlaps_train,
    elapsed_time_s]``)."""
    file = Path(path) if path is not None else table_path(name)
    if not file.is_file():
        raise FileNotFoundError(f"benchmark table not found: {file}")
    cells = []
    with file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            el = row.get("elapsed_time_s")
            cells.append(
                Cell(
                    model=row["model"],
                    task=row["task"],
                    acc=float(row["test_accuracy"]),
                    elapsed=float(el) if el not in (None, "") else math.nan,
                    lr=row.get("lr", "") or "",
                    n_runs=int(row.get("n_runs_collapsed") or 1),
                    overlaps_train=(row.get("test_overlaps_train") or "0") == "1",
                )
            )
    groups = {t: g for g, ts in VTAB_GROUPS.items() for t in ts} if name == "vtab1k" else {}
    return GroundTruth.from_cells(cells, name=name, groups=groups, source=str(file))


def cached_table(name: str = "vtab1k") -> GroundTruth:
    """:func:`load_table` of a shipped table, read once per process while its file is unchanged
    (size and mtime): ``RANK BY meta(...)`` runs per query, and parsing the CSV costs ~100 ms."""
    st = table_path(name).stat()
    return _cached_table(name, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _cached_table(name: str, mtime_ns: int, size: int) -> GroundTruth:
    return load_table(name)


def cached_meta_scores(name: str, exclude_task: str | None) -> dict[str, float | None]:
    """:func:`meta_scores` of every model of the shipped table ``name`` (cached like
    :func:`cached_table`): a meta query looks its models up instead of averaging again."""
    st = table_path(name).stat()
    return _cached_meta_scores(name, exclude_task, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _cached_meta_scores(
    name: str, exclude_task: str | None, mtime_ns: int, size: int
) -> dict[str, float | None]:
    gt = _cached_table(name, mtime_ns, size)
    return meta_scores(gt, gt.models, exclude_task)


def meta_scores(
    table: GroundTruth,
    models: Iterable[str],
    exclude_task: str | None,
    tasks: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """Leave-one-task-out meta score of each model: its mean fine-tune accuracy over the tasks
    (``tasks``, default all of the table) other than ``exclude_task``, using only the tasks where
    it has a cell; ``None`` when it has no such cell. This is Renggli et al.'s "task-agnostic
    oracle" made honest: the target task's own results are never used."""
    use = table.tasks if tasks is None else tuple(tasks)
    out: dict[str, float | None] = {}
    for m in models:
        row = table.acc.get(m, {})
        vals = [row[t] for t in use if t != exclude_task and t in row]
        out[m] = sum(vals) / len(vals) if vals else None
    return out
