"""``init``: create a shift home on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, app, command, show


@command(app, "init", example="shift-cli init ~/my-shift-home")
def init_cmd(
    path: Annotated[
        Path | None,
        typer.Argument(help="the folder to make a home (default: --home / SHIFT_HOME / default)"),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="make a folder that already holds other files a home: shift adds .shift-home, "
            "registry.db, models/, tasks/ and indexes/ and never moves the folder's own files",
        ),
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Create a shift home (registry + indexes) at PATH.

    A folder that does not exist or is empty needs nothing more; one that already holds other
    files is refused unless --force. A home already there is left as it is. (Commands that only
    read never create a home; adding a model or a task creates one in a new or empty folder.)"""
    from shift.client import init

    with init(path if path is not None else home, force=force) as c:
        where = c.home.registry_dir
        created = c.created
    show(
        {"home": str(where), "created": created},
        lambda: ui.out.print(
            f"created a shift home at {where}"
            if created
            else f"{where} is already a shift home: nothing to do",
            highlight=False,
        ),
    )
