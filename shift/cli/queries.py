"""``query`` and ``explain``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import (
    BackendOpt,
    ExecOpt,
    HomeOpt,
    JsonOpt,
    RayOpt,
    _client,
    _print_json,
    app,
    command,
)


@command(app)
def query(
    text: Annotated[
        str, typer.Argument(help='a query, e.g. "SELECT top 2 FROM pool all WHERE task=digits"')
    ],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
    backend: BackendOpt = "onnxruntime",
) -> None:
    """Run a query and print the ranked models; exit 1 if any model failed (each is named under
    "failed", on stderr and in --json, and left out of the ranking)."""
    from shift.render import print_failed, print_result

    with _client(home, executor, ray_address, progress=not as_json, backend=backend) as c:
        res = c.query(text)
    if as_json:
        sys.stdout.write(res.model_dump_json(indent=2) + "\n")
        print_failed(res, ui.err)
    else:
        print_result(res, ui.out, ui.err)
    if res.failed:
        raise typer.Exit(1)


@command(app)
def explain(
    text: str, home: HomeOpt = None, as_json: JsonOpt = False, backend: BackendOpt = "onnxruntime"
) -> None:
    """Show the plan of a query: pool size after each filter, cached vs to-compute work, and
    the inference backend that would embed."""
    from shift.render import print_plan

    with _client(home, backend=backend) as c:
        res = c.explain(text)
    if as_json:
        _print_json(res.plan)
    else:
        print_plan(res, text, ui.out)
