"""``pools list | add | remove``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shift.cli import base as ui
from shift.cli.base import (
    HomeOpt,
    JsonOpt,
    _client,
    _print_json,
    command,
    pools_app,
)
from shift.errors import ShiftError


@command(pools_app, "list")
def pools_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List built-in and saved pools with their sizes."""
    from shift.render import records_table

    with _client(home) as c:
        rows = [{**p.model_dump(), "models": _size(c, p.name)} for p in c.pools()]
    if as_json:
        _print_json(rows)
        return
    ui.out.print(
        records_table(rows, ["name", "filter", "models", "builtin", "description"], "pools")
    )


def _size(c: Any, name: str) -> int | str:
    """The pool's model count, or ``invalid: <why>`` for a condition saved by an older version
    that no longer compiles (e.g. an integer beyond 64 bits): listed, refused only when used."""
    try:
        return c.pool_size(name)
    except ShiftError as e:
        return f"invalid: {e.message}"


@command(pools_app, "add")
def pools_add(
    name: str,
    condition: Annotated[str, typer.Argument(help='e.g. "WHERE dim <= 1024"')],
    description: str = "",
    replace: bool = False,
    home: HomeOpt = None,
) -> None:
    """Save a pool as a named condition."""
    with _client(home, create=True) as c:
        p = c.add_pool(name, condition, description, replace=replace)
    ui.out.print(f"pool [bold]{p.name}[/bold]: {p.filter}")


@command(pools_app, "remove")
def pools_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a saved pool."""
    with _client(home) as c:
        c.drop_pool(name)
    ui.out.print(f"removed pool {name}")
