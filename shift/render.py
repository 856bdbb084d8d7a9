"""How results and records look: tables that fit the terminal they are printed on, plain text for
a pipe, and the data formats (csv, tsv, json, jsonl) the CLI's ``--format`` prints.

* **table** (a terminal): a rich table as wide as the terminal. Cells wrap rather than being cut:
  names fold, free text wraps at spaces, numbers are never cut. When even that does not fit, the
  least important columns are left out, the least important first (``why`` and free text, then
  hashes, dates and metadata), with a note naming them; rank, the model's name, the column that
  orders the rows and the scores are always shown.
* **plain** (stdout is not a terminal): the same output with each table as aligned columns under
  its title and a header line, one line per row, nothing wrapped or cut, no box: for ``less`` and
  ``grep`` (``--format tsv`` is for programs).
* **csv / tsv / jsonl**: every field of every row (the displayed columns first), raw values
  (``params`` 25557032, not 25.56M); ``json``: the whole answer, as the Python client returns it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from shift.errors import QueryError, ShiftError
from shift.records import Result


def fmt(col: str, v: Any) -> str:
    """A cell for a person (table and plain text)."""
    if v is None:
        return "—"
    if col == "params" and isinstance(v, int):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"
    if col == "imagenet_top1" and isinstance(v, float):
        return f"{v:.1f}%"
    if col in HASH_COLUMNS and isinstance(v, str):
        return v[:12]
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    return " ".join(str(v).split("\n"))


#: headers a newcomer can read (the data formats keep the field names)
HEADERS = {
    "imagenet_top1": "ImageNet top-1",
    "agnostic_rank": "agnostic rank",
    "mean_rank": "mean rank",
    "upstream_dataset": "upstream data",
    "num_samples": "samples",
    "num_train": "train",
    "num_val": "val",
    "num_classes": "classes",
    "content_hash": "content hash",
    "max_abs_diff": "max abs diff",
    "source_id": "source id",
    "computed_at": "computed at",
    "n_train": "train",
    "n_val": "val",
}

#: hashes are shown by their first 12 characters (--format csv/json has them whole)
HASH_COLUMNS = frozenset({"content_hash", "data_hash", "sha256", "task_hash", "model_sha"})

#: free text: wraps at spaces, and this is its widest (the rest goes on the next lines)
TEXT_WIDTH = {
    "why": 30,
    "detail": 40,
    "filter": 26,
    "description": 30,
    "upstream_dataset": 16,
    "source": 16,
    "tags": 24,
    "params": 34,  # the scores table's proxy arguments (JSON); models' params are short
}

#: one line, cut with … (long JSON that --format json has whole)
CUT_COLUMNS = {"protocol": 24}

#: names fold (across lines) rather than being cut
NAME_COLUMNS = frozenset({"name", "model", "task", "step"})

#: never left out of a table
ESSENTIAL = frozenset(
    {"rank", "name", "model", "task", "step", "proxy", "score", "mean_rank", "accuracy", "status"}
    | {"models"}
)

#: left out first when a table cannot fit (earliest first); columns not named here go after
#: these, and per-task scores (``score:TASK``) last
DROP_ORDER = (
    "why",
    "description",
    "detail",
    "content_hash",
    "data_hash",
    "computed_at",
    "protocol",
    "source_id",
    "tags",
    "source",
    "upstream_dataset",
    "family",
    "seconds",
    "max_abs_diff",
    "builtin",
    "weights",
    "epochs",
    "n_val",
    "n_train",
    "kind",
    "num_val",
    "num_train",
    "filter",
    "agnostic_rank",
    "dim",
    "params",
    "imagenet_top1",
)


def header(col: str, *, wrap: bool = True) -> str:
    """A column's header: readable names (``ImageNet top-1``); ``score:TASK`` may wrap after
    its colon in a table."""
    if col.startswith("score:"):
        return f"score: {col[6:]}" if wrap else col
    return HEADERS.get(col, col)


# ---- tables that fit -------------------------------------------------------------------------


#: how far each kind of column narrows, in stages: free text to 20 then 10 characters, cut text
#: to 12 then 8, names to 24 then 16; numbers, ids and dates keep their longest cell (only their
#: header wraps, at spaces)
_FLOORS = {"text": (20, 10), "cut": (12, 8), "name": (24, 16)}
#: the order of the stages: what costs one header line first, what costs lines per row last
_STAGES = (("token", 0), ("text", 0), ("cut", 0), ("name", 0), ("text", 1), ("cut", 1), ("name", 1))


def _kind(col: str, cells: list[str]) -> str:
    if col in CUT_COLUMNS:
        return "cut"
    if col in NAME_COLUMNS:
        return "name"
    if col in TEXT_WIDTH or any(" " in c for c in cells):
        return "text"
    return "token"


def _drop_rank(col: str) -> tuple[int, int]:
    if col in DROP_ORDER:
        return 0, DROP_ORDER.index(col)
    return (2, 0) if col.startswith("score:") else (1, 0)


def fit_columns(
    columns: list[str], cells: list[list[str]], width: int, keep: Iterable[str] = ()
) -> tuple[list[str], dict[str, int], list[str]]:
    """The columns a boxed table ``width`` characters wide shows, their content widths, and the
    columns left out. Columns start at their natural width and narrow in stages (``_STAGES``:
    headers wrap first, then free text, then names fold), the one with the most room first. When
    the table cannot fit even so (names kept to 24 characters), columns are left out in
    ``DROP_ORDER``, never ``ESSENTIAL`` ones or ``keep``; a table of only those may still be
    wider than ``width`` (the terminal then wraps its lines)."""
    from rich.cells import cell_len

    kind, natural, token_floor = {}, {}, {}
    for i, col in enumerate(columns):
        col_cells = [row[i] for row in cells]
        head = header(col)
        longest = max((cell_len(c) for c in col_cells), default=0)
        head_word = max((cell_len(w) for w in head.split()), default=0)
        kind[col] = _kind(col, col_cells)
        natural[col] = max(longest, cell_len(head))
        if kind[col] == "text":
            natural[col] = max(min(natural[col], TEXT_WIDTH.get(col, 40)), head_word)
        elif kind[col] == "cut":
            natural[col] = min(natural[col], CUT_COLUMNS[col])
        token_floor[col] = max(longest, head_word)

    def floor(col: str, stage: int) -> int:
        if kind[col] == "token":
            return token_floor[col]
        return min(natural[col], _FLOORS[kind[col]][stage])

    def overhead(n: int) -> int:  # "│ " before each column, " " after, and the last "│"
        return 3 * n + 1

    shown = list(columns)
    keep = {*ESSENTIAL, *keep}
    droppable = sorted((c for c in columns if c not in keep), key=_drop_rank)
    dropped: list[str] = []

    def narrowest(col: str) -> int:  # names count at 24 here: a column goes before they fold
        return floor(col, 0 if kind[col] == "name" else 1)

    while droppable and sum(narrowest(c) for c in shown) + overhead(len(shown)) > width:
        col = droppable.pop(0)
        shown.remove(col)
        dropped.append(col)
    widths = {c: natural[c] for c in shown}
    excess = sum(widths.values()) + overhead(len(shown)) - width
    for stage_kind, stage in _STAGES:
        cols = [c for c in shown if kind[c] == stage_kind]
        while excess > 0 and cols:
            col = max(cols, key=lambda c: widths[c] - floor(c, stage))
            if widths[col] <= floor(col, stage):
                break
            widths[col] -= 1
            excess -= 1
    return shown, widths, dropped


class FittedTable:
    """A rich renderable: the table of ``rows`` laid out for the console it is printed on (see
    :func:`fit_columns`), then a line naming the columns left out, if any."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        columns: list[str],
        title: str | None = None,
        keep: Iterable[str] = (),
    ) -> None:
        self.columns, self.title, self.keep = list(columns), title, tuple(keep)
        self.cells = [[fmt(c, r.get(c)) for c in self.columns] for r in rows]

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Any]:
        from rich.text import Text

        shown, widths, dropped = fit_columns(self.columns, self.cells, options.max_width, self.keep)
        t = Table(title=self.title, title_justify="left", expand=False)
        for col in shown:
            cut = col in CUT_COLUMNS
            t.add_column(
                header(col),
                width=widths[col],
                no_wrap=cut,
                overflow="ellipsis" if cut else "fold",
            )
        index = [self.columns.index(c) for c in shown]
        for row in self.cells:
            t.add_row(*(Text(row[i]) for i in index))
        yield t
        if dropped:
            yield Text(
                f"not shown at {options.max_width} columns: "
                + ", ".join(header(c, wrap=False) for c in dropped)
                + " (--format plain or --json shows every column)",
                style="dim",
            )


def plain_table(rows: list[dict[str, Any]], columns: list[str], *, headers: bool = True) -> str:
    """Aligned columns under a header line, one line per row, nothing wrapped or cut
    (``headers=False``: the column names and cells as they are, already formatted)."""
    from rich.cells import cell_len

    if headers:
        lines = [[header(c, wrap=False) for c in columns]]
        lines += [[fmt(c, r.get(c)) for c in columns] for r in rows]
    else:
        lines = [columns, *([str(r.get(c, "")) for c in columns] for r in rows)]
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(
            cell + " " * (w - cell_len(cell)) for cell, w in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def print_records(
    console: Console,
    rows: list[dict[str, Any]],
    columns: list[str],
    title: str | None = None,
    *,
    plain: bool = False,
    keep: Iterable[str] = (),
) -> None:
    """``rows`` as a table that fits ``console``, or as plain text; under ``title``, if any."""
    if plain:
        text = plain_table(rows, columns)
        text = f"{title}\n{text}" if title else text
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(FittedTable(rows, columns, title, keep))


def records_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> FittedTable:
    return FittedTable(rows, columns, title or None)


def ordering_column(res: Result) -> str | None:
    """The column that orders a result's rows: ``ORDER BY``'s, else ``mean_rank`` or ``score``."""
    order = res.plan.get("order") or res.plan.get("ranker") or ""
    m = re.match(r"(?:ORDER BY\s+)?(\w+)\s+(?:ASC|DESC)$", str(order), re.IGNORECASE)
    if m and m.group(1) in res.columns:
        return m.group(1)
    return next((c for c in ("mean_rank", "score") if c in res.columns), None)


def result_table(res: Result, title: str | None = None) -> FittedTable:
    keep = [c for c in [ordering_column(res)] if c]
    return FittedTable(res.rows, res.columns, title or res.query, keep)


def print_result(
    res: Result,
    console: Console | None = None,
    errors: Console | None = None,
    *,
    plain: bool = False,
) -> None:
    """The ranking as a table (``plain``: as plain text), then one line per model that failed
    (not ranked) on ``errors`` (default: ``console``), then the row count and timings."""
    console = console or Console()
    if plain:
        print_records(console, res.rows, res.columns, res.query, plain=True)
    else:
        console.print(result_table(res))
    near = res.plan.get("neighbours")
    if near:  # RANK BY similar: which tasks the scores come from
        console.print(
            f"similar tasks (probe {res.plan.get('probe')}): "
            + ", ".join(f"{n['task']} (distance {n['distance']:.4f})" for n in near),
            highlight=False,
        )
    print_failed(res, errors or console)
    tm = res.timings
    failed = f", {len(res.failed)} failed (not ranked)" if res.failed else ""
    failed += f", {len(res.skipped)} left out (no weights)" if res.skipped else ""
    console.print(
        f"[dim]{len(res.rows)} rows{failed} · {tm.total_ms:.1f} ms "
        f"(score {tm.score_ms:.1f} ms)[/dim]"
    )


def print_failed(res: Result, errors: Console) -> None:
    """One line per model of ``res`` that failed, with the reason (as ``index`` prints them),
    then one line naming the models left out before any work (no weights)."""
    for name, why in res.failed.items():
        errors.print(f"[red]failed:[/red] {name}: {why}", highlight=False)
    if res.skipped:
        names = list(res.skipped)
        errors.print(
            f"[yellow]left out[/yellow] ({len(names)}, no weights: `shift-cli models weights "
            f"NAME --weights FILE` gives them): {', '.join(names[:8])}"
            + (f", ... ({len(names) - 8} more)" if len(names) > 8 else ""),
            highlight=False,
        )


def print_plan(res: Result, text: str, console: Console, *, plain: bool = False) -> None:
    """EXPLAIN's steps as a table, then the estimated work when the query has a task."""
    if plain:
        print_records(console, res.rows, res.columns, f"plan: {text}", plain=True)
    else:
        console.print(result_table(res, title=f"plan: {text}"))
    work = res.plan.get("work")
    if work:
        console.print(f"estimated work: {work['estimate']}")
        if work.get("backend"):
            console.print(f"inference backend: {work['backend']}", highlight=False)


def print_index_report(task: str, rep: Any, console: Console, errors: Console) -> None:
    """One line of what ``index`` did (an :class:`~shift.engine.indexing.IndexReport`), then
    one line per failed model on ``errors``."""
    console.print(
        f"indexed {task}: {len(rep.embedded)} models embedded "
        f"({sum(rep.embedded.values()):,} samples), {len(rep.reused)} reused, "
        f"{len(rep.relabelled)} relabelled, {len(rep.failed)} failed in {rep.seconds:.1f} s"
        + (f" (backend {rep.backend})" if getattr(rep, "backend", "") else "")
    )
    nodes = getattr(rep, "nodes", {})
    if len(nodes) > 1:  # a cluster: how the batches spread over its nodes
        spread = ", ".join(f"{node[:8]} {n}" for node, n in sorted(nodes.items()))
        console.print(f"batches per Ray node: {spread}", highlight=False)
    for name, e in rep.failed.items():
        errors.print(f"[red]failed:[/red] {name}: {e}", highlight=False)
    kept = getattr(rep, "kept", {})
    if kept:
        console.print(
            f"kept from existing indexes: {sum(kept.values()):,} samples over {len(kept)} "
            "models (only the rest was embedded)"
        )
    skipped = getattr(rep, "skipped", {})
    if skipped:
        console.print(
            f"left out, no weights: {len(skipped)} models ({', '.join(list(skipped)[:5])}"
            + (", ..." if len(skipped) > 5 else "")
            + ")",
            highlight=False,
        )
    if getattr(rep, "prepared", 0):
        console.print(f"images prepared (resized once per geometry): {rep.prepared:,}")


def print_error(e: ShiftError, console: Console) -> None:
    """A ShiftError for a person: the message (for a query, its position and the line with a
    caret under the offending text), then the hint."""
    if isinstance(e, QueryError):
        console.print(
            f"[red]query error:[/red] {e.message} (line {e.line}, column {e.column})",
            highlight=False,
        )
        console.print(e.snippet, markup=False, highlight=False)
    else:
        console.print(f"[red]error:[/red] {e.message}", highlight=False)
    if e.hint:
        console.print(f"[yellow]hint:[/yellow] {e.hint}", highlight=False)


# ---- the data formats ------------------------------------------------------------------------


def all_columns(rows: list[dict[str, Any]], columns: Iterable[str] = ()) -> list[str]:
    """``columns`` first, then every other field of ``rows`` in the order they appear."""
    return list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))


def _cell(v: Any) -> str:
    """A raw value for csv/tsv: empty for None, JSON for lists, dicts and booleans."""
    if v is None:
        return ""
    if isinstance(v, bool | list | tuple | dict):
        return json.dumps(v, default=str)
    return str(v)


def to_json(data: Any, *, lines: bool = False) -> str:
    """``data`` as indented JSON, or (``lines``) one compact JSON value per line: each item of a
    list, or the one value."""
    if not lines:
        return json.dumps(data, indent=2, default=str) + "\n"
    items = data if isinstance(data, list) else [data]
    return "".join(json.dumps(x, default=str) + "\n" for x in items)


#: what a tsv value cannot hold as it is, and how it is written (the escapes of PostgreSQL's
#: and MySQL's text format: no quoting, so JSON values stay readable)
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def write_rows(
    file: IO[str], rows: list[dict[str, Any]], columns: Iterable[str], fmt_name: str
) -> None:
    """``rows`` as ``csv`` (RFC 4180: quoted where needed), ``tsv`` (a header line, one line
    per row, tab-separated; a backslash, tab or newline in a value written ``\\``, ``\t``,
    ``\n``) or ``jsonl``, every field (``columns`` first)."""
    if fmt_name == "jsonl":
        file.write(to_json(rows, lines=True))
        return
    cols = all_columns(rows, columns)
    if fmt_name == "tsv":
        for line in [cols, *([_cell(r.get(c)) for c in cols] for r in rows)]:
            file.write("\t".join(v.translate(_TSV_ESCAPES) for v in line) + "\n")
        return
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in cols])


def plain_from_table(table: Table) -> str:
    """A rich ``Table`` as :func:`plain_table` text (its markup dropped, its title left out)."""
    from rich.text import Text

    def text(cell: Any) -> str:
        if isinstance(cell, str):
            cell = Text.from_markup(cell)
        return " ".join((cell.plain if isinstance(cell, Text) else str(cell)).split("\n"))

    columns = [text(c.header) for c in table.columns]
    cells = [[text(x) for x in c.cells] for c in table.columns]
    rows = [{col: cells[i][r] for i, col in enumerate(columns)} for r in range(table.row_count)]
    return plain_table(rows, columns, headers=False)
