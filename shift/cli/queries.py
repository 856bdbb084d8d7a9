"""``query`` and ``explain``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import BackendOpt, ExecOpt, HomeOpt, RayOpt, app, command, open_client, show

QueryArg = Annotated[
    str,
    typer.Argument(
        metavar="QUERY", help='a query, e.g. "SELECT top 2 FROM pool all WHERE task=digits"'
    ),
]


@command(
    app,
    example='shift-cli query "SELECT top 3 FROM pool all WHERE task=flowers AND params < 30M"',
)
def query(
    text: QueryArg,
    home: HomeOpt = None,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
    backend: BackendOpt = "onnxruntime",
) -> None:
    """Run a query and print the ranked models.

    Exit 1 if any model failed: each is named under "failed" (on stderr, and in --json) and
    left out of the ranking. --format csv, tsv and jsonl print every field of the rows."""
    from shift.render import all_columns, print_failed, print_result

    with open_client(home, executor, ray_address, backend=backend) as c:
        res = c.query(text)
    rows = res.rows
    show(
        json.loads(res.model_dump_json()),
        lambda: print_result(res, ui.out, ui.err, plain=ui.output_format() == "plain"),
        rows,
        all_columns(rows, res.columns),
    )
    if ui.data_format():
        print_failed(res, ui.err)
    if res.failed:
        raise typer.Exit(1)


@command(app, example='shift-cli explain "SELECT top 2 FROM pool resnet50 WHERE task=flowers"')
def explain(text: QueryArg, home: HomeOpt = None, backend: BackendOpt = "onnxruntime") -> None:
    """Show the plan of a query: pool size after each filter, cached vs to-compute work, and
    the inference backend that would embed."""
    from shift.render import print_plan

    with open_client(home, backend=backend) as c:
        res = c.explain(text)
    show(
        res.plan,
        lambda: print_plan(res, text, ui.out, plain=ui.output_format() == "plain"),
        res.rows,
        res.columns,
    )
