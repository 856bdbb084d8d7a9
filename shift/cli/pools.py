"""``pools list | add | remove``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, command, open_client, pools_app, show, suggest
from shift.errors import ShiftError

POOL_COLUMNS = ["name", "filter", "models", "builtin", "description"]


@command(pools_app, "list", example="shift-cli pools list")
def pools_list(home: HomeOpt = None) -> None:
    """List built-in and saved pools with their sizes."""
    with open_client(home) as c:
        rows = [{**p.model_dump(), "models": _size(c, p.name)} for p in c.pools()]
    show(rows, lambda: ui.print_rows(rows, POOL_COLUMNS, "pools"), rows, POOL_COLUMNS)


def _size(c: Any, name: str) -> int | str:
    """The pool's model count, or ``invalid: <why>`` for a condition saved by an older version
    that no longer compiles (e.g. an integer beyond 64 bits): listed, refused only when used."""
    try:
        return c.pool_size(name)
    except ShiftError as e:
        return f"invalid: {e.message}"


@command(pools_app, "add", example='shift-cli pools add small "WHERE params < 10M AND dim <= 1024"')
def pools_add(
    name: Annotated[str, typer.Argument(help="the pool's name")],
    condition: Annotated[str, typer.Argument(help='e.g. "WHERE dim <= 1024"')],
    description: Annotated[str, typer.Option(help="what the pool is for")] = "",
    replace: Annotated[
        bool, typer.Option("--replace", help="overwrite a saved pool of that name")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Save a pool as a named condition."""
    with open_client(home, create=True) as c:
        p = c.add_pool(name, condition, description, replace=replace)
    show(p.model_dump(), lambda: ui.out.print(f"pool [bold]{p.name}[/bold]: {p.filter}"))


@command(pools_app, "remove", example="shift-cli pools remove small")
def pools_remove(
    name: Annotated[str, typer.Argument(help="a saved pool")], home: HomeOpt = None
) -> None:
    """Remove a saved pool."""
    with open_client(home) as c, suggest(name, lambda: [p.name for p in c.pools()]):
        c.drop_pool(name)
    show({"removed": name}, lambda: ui.out.print(f"removed pool {name}", highlight=False))
