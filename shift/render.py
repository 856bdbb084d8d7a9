"""Rich tables for results and records (the CLI's output; ``--json`` bypasses this)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from shift.errors import QueryError, ShiftError
from shift.records import Result


def fmt(col: str, v: Any) -> str:
    if v is None:
        return "—"
    if col == "params" and isinstance(v, int):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"
    if col == "imagenet_top1" and isinstance(v, float):
        return f"{v:.1f}%"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    return str(v)


HEADERS = {
    "imagenet_top1": "IN top-1",
    "agnostic_rank": "agn #",
    "upstream_dataset": "upstream",
}


#: free-text columns are cut to this width (with …) so tables fit a terminal; --json has all
TEXT_WIDTH = {
    "upstream_dataset": 16,
    "source": 16,
    "why": 30,
    "detail": 40,
    "filter": 26,
    "description": 30,
    "protocol": 24,
    "params": 34,
}


def _add_column(t: Table, c: str) -> None:
    """Free text is cut with …; names and numbers keep their width (never folded per letter)."""
    header = HEADERS.get(c, c)
    width = TEXT_WIDTH.get(c)
    if width:
        # JSON keys of a cached result: one line each, cut (--json has all)
        one_line = c in ("protocol", "params")
        t.add_column(header, overflow="ellipsis", max_width=width, min_width=8, no_wrap=one_line)
    else:
        widths = {"name": 22, "task": 12, "score": 7}
        t.add_column(header, no_wrap=True, min_width=widths.get(c, len(header)))


def result_table(res: Result, title: str | None = None) -> Table:
    t = Table(title=title or res.query, title_justify="left", expand=False)
    for c in res.columns:
        _add_column(t, c)
    for row in res.rows:
        t.add_row(*(fmt(c, row.get(c)) for c in res.columns))
    return t


def print_result(
    res: Result, console: Console | None = None, errors: Console | None = None
) -> None:
    """The ranking as a table, then one line per model that failed (not ranked) on ``errors``
    (default: ``console``), then the row count and timings."""
    console = console or Console()
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
    console.print(
        f"[dim]{len(res.rows)} rows{failed} · {tm.total_ms:.1f} ms "
        f"(score {tm.score_ms:.1f} ms)[/dim]"
    )


def print_failed(res: Result, errors: Console) -> None:
    """One line per model of ``res`` that failed, with the reason (as ``index`` prints them)."""
    for name, why in res.failed.items():
        errors.print(f"[red]failed:[/red] {name}: {why}", highlight=False)


def records_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        _add_column(t, c)
    for r in rows:
        t.add_row(*(fmt(c, r.get(c)) for c in columns))
    return t


def print_plan(res: Result, text: str, console: Console) -> None:
    """EXPLAIN's steps as a table, then the estimated work when the query has a task."""
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
