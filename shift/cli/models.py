"""``models add | import-catalog | list | show | remove``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import (
    HomeOpt,
    JsonOpt,
    _client,
    _floats,
    _print_json,
    command,
    models_app,
)


@command(models_app, "add")
def models_add(
    file: Annotated[Path, typer.Argument(help="ONNX file")],
    name: Annotated[str, typer.Option("--name", help="registry name")],
    output: Annotated[str | None, typer.Option(help="graph output holding the embedding")] = None,
    head_output: Annotated[str | None, typer.Option(help="output with classifier logits")] = None,
    input_size: Annotated[int | None, typer.Option(help="input pixels if dynamic")] = None,
    imagenet_top1: Annotated[float | None, typer.Option(help="ImageNet top-1, percent")] = None,
    imagenet_source: Annotated[
        str | None, typer.Option(help="where that number comes from")
    ] = None,
    family: Annotated[str | None, typer.Option(help="architecture family")] = None,
    upstream_dataset: Annotated[str | None, typer.Option()] = None,
    upstream_size: Annotated[int | None, typer.Option()] = None,
    source: Annotated[str | None, typer.Option(help="provider, e.g. torchvision")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="repeatable")] = None,
    license: Annotated[str | None, typer.Option("--license")] = None,
    mean: Annotated[str | None, typer.Option(help="comma-separated, 0..1 scale")] = None,
    std: Annotated[str | None, typer.Option(help="comma-separated, 0..1 scale")] = None,
    color: Annotated[str | None, typer.Option(help="RGB or BGR")] = None,
    resize: Annotated[str | None, typer.Option(help="center_crop or squash")] = None,
    replace: Annotated[bool, typer.Option("--replace")] = False,
    home: HomeOpt = None,
) -> None:
    """Register an ONNX model; parameters and output sizes are read from the graph."""
    with _client(home, create=True) as c:
        rec = c.add_model(
            file,
            name,
            output=output,
            head_output=head_output,
            input_size=input_size,
            mean=_floats(mean, "mean"),
            std=_floats(std, "std"),
            color=color,
            resize=resize,
            replace=replace,
            imagenet_top1=imagenet_top1,
            imagenet_source=imagenet_source,
            family=family,
            upstream_dataset=upstream_dataset,
            upstream_size=upstream_size,
            source=source,
            tags=tag or None,
            license=license,
        )
    ui.out.print(
        f"registered [bold]{rec.name}[/bold]: {rec.params:,} parameters, "
        f"{rec.dim}-d embedding from {rec.output!r}"
        + (f", head {rec.head_output!r} ({rec.head_classes} classes)" if rec.head_output else "")
    )


@command(models_app, "import-catalog")
def models_import_catalog(
    name: Annotated[list[str] | None, typer.Option("--name", help="only these entries")] = None,
    catalog: Annotated[Path | None, typer.Option(help="catalog YAML (default: shipped)")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-export registered entries")] = False,
    home: HomeOpt = None,
) -> None:
    """Export the shipped catalog's real models to ONNX and register them."""
    from shift.render import records_table

    with _client(home, create=True) as c:
        results = c.import_catalog(name, catalog=catalog, force=force)
    rows = [r.__dict__ for r in results]
    ui.out.print(
        records_table(rows, ["name", "status", "seconds", "max_abs_diff", "detail"], "catalog")
    )
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@command(models_app, "list")
def models_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models."""
    from shift.render import records_table

    with _client(home) as c:
        rows = [m.model_dump() for m in c.models()]
    if as_json:
        _print_json(rows)
    else:
        cols = ["name", "family", "params", "dim", "imagenet_top1", "upstream_dataset", "source"]
        ui.out.print(records_table(rows, [*cols, "tags"], f"{len(rows)} models"))


@command(models_app, "show")
def models_show(name: str, home: HomeOpt = None) -> None:
    """Show every field of one model."""
    with _client(home) as c:
        _print_json(c.model(name).model_dump())


@command(models_app, "remove")
def models_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a model (its file too, unless another entry uses the same weights)."""
    with _client(home) as c:
        c.drop_model(name)
    ui.out.print(f"removed {name}")
