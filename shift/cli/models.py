"""``models add | import-catalog | list | show | remove``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, command, models_app, open_client, show, suggest
from shift.errors import ShiftError


@command(
    models_app,
    "add",
    example="shift-cli models add model.onnx --name my-model --imagenet-top1 75.1 "
    '--imagenet-source "its paper, table 2" --tag generalist',
)
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
    upstream_dataset: Annotated[str | None, typer.Option(help="what it was pre-trained on")] = None,
    upstream_size: Annotated[
        int | None, typer.Option(help="pre-training images (or samples)")
    ] = None,
    source: Annotated[str | None, typer.Option(help="provider, e.g. torchvision")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)")] = None,
    license: Annotated[str | None, typer.Option("--license", help="the weights' licence")] = None,
    mean: Annotated[str | None, typer.Option(help="comma-separated, 0..1 scale")] = None,
    std: Annotated[str | None, typer.Option(help="comma-separated, 0..1 scale")] = None,
    color: Annotated[str | None, typer.Option(help="RGB or BGR")] = None,
    resize: Annotated[str | None, typer.Option(help="center_crop or squash")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="overwrite a model of that name")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Register an ONNX model; parameters and output sizes are read from the graph."""
    if color is not None:
        color = ui.choice(color.upper(), ("RGB", "BGR"), "colour order")
    if resize is not None:
        resize = ui.choice(resize, ("center_crop", "squash"), "resize mode")
    with open_client(home, create=True) as c:
        rec = c.add_model(
            file,
            name,
            output=output,
            head_output=head_output,
            input_size=input_size,
            mean=floats(mean, "mean"),
            std=floats(std, "std"),
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
    show(
        rec.model_dump(),
        lambda: ui.out.print(
            f"registered [bold]{rec.name}[/bold]: {rec.params:,} parameters, "
            f"{rec.dim}-d embedding from {rec.output!r}"
            + (
                f", head {rec.head_output!r} ({rec.head_classes} classes)"
                if rec.head_output
                else ""
            )
        ),
    )


@command(
    models_app, "import-catalog", example="shift-cli models import-catalog --name mobilenet-v2"
)
def models_import_catalog(
    name: Annotated[
        list[str] | None, typer.Option("--name", help="only this entry (repeatable)")
    ] = None,
    catalog: Annotated[Path | None, typer.Option(help="catalog YAML (default: shipped)")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-export registered entries")] = False,
    home: HomeOpt = None,
) -> None:
    """Export the shipped catalog's real models to ONNX and register them."""
    with open_client(home, create=True) as c:
        results = c.import_catalog(name, catalog=catalog, force=force)
    rows = [r.__dict__ for r in results]
    cols = ["name", "status", "seconds", "max_abs_diff", "detail"]
    show(rows, lambda: ui.print_rows(rows, cols, "catalog"), rows, cols)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


#: what ``models list`` shows (csv, tsv, jsonl and json have every field)
LIST_COLUMNS = [
    "name",
    "family",
    "params",
    "dim",
    "imagenet_top1",
    "upstream_dataset",
    "source",
    "tags",
]


@command(models_app, "list", example="shift-cli models list --format csv > models.csv")
def models_list(home: HomeOpt = None) -> None:
    """List registered models."""
    with open_client(home) as c:
        rows = [m.model_dump() for m in c.models()]
    show(
        rows,
        lambda: ui.print_rows(rows, LIST_COLUMNS, f"{len(rows)} models"),
        rows,
        LIST_COLUMNS,
    )


@command(models_app, "show", example="shift-cli models show mobilenet-v2")
def models_show(
    name: Annotated[str, typer.Argument(help="a registered model")], home: HomeOpt = None
) -> None:
    """Show every field of one model."""
    import json

    with open_client(home) as c, suggest(name, c.registry.model_names):
        rec = c.model(name).model_dump()

    def value(v: object) -> object:
        return v if v is None or isinstance(v, str) else json.dumps(v)

    fields = [{"field": k, "value": value(v)} for k, v in rec.items()]
    show(rec, lambda: ui.print_rows(fields, ["field", "value"], name))


@command(models_app, "remove", example="shift-cli models remove my-model")
def models_remove(
    name: Annotated[str, typer.Argument(help="a registered model")], home: HomeOpt = None
) -> None:
    """Remove a model (its file too, unless another entry uses the same weights)."""
    with open_client(home) as c, suggest(name, c.registry.model_names):
        c.drop_model(name)
    show({"removed": name}, lambda: ui.out.print(f"removed {name}", highlight=False))


def floats(s: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → a tuple of floats (``--mean``/``--std``)."""
    if s is None:
        return None
    try:
        return tuple(float(x) for x in s.split(","))
    except ValueError:
        raise ShiftError(f"--{what} must be comma-separated numbers, got {s!r}") from None
