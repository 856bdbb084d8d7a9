"""``models import torchvision | timm | hf | vtab1k`` and ``models weights``: the zoo users have,
registered from its libraries' metadata without weights, and weights given later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, command, models_app, open_client, show, suggest
from shift.cli.help import PlainGroup

import_app = typer.Typer(
    help="Register models of a source from its metadata (no weights needed).",
    no_args_is_help=True,
    cls=PlainGroup,
)
models_app.add_typer(import_app, name="import")

ReplaceOpt = Annotated[
    bool, typer.Option("--replace", help="overwrite rows that already have weights")
]
IMPORT_COLUMNS = ["name", "status", "weights", "source_id", "detail"]


def _import(
    home: Path | None, source: str, names: list[str] | None, all: bool, replace: bool
) -> None:
    if names and not all:  # a typo is answered from the names the source told before
        from shift.catalog.sources.names import check_ids

        check_ids(source, names)
    t0 = time.perf_counter()
    with open_client(home, create=True) as c:
        results = c.import_models(source, names, all=all, replace=replace)
    seconds = time.perf_counter() - t0
    rows = [r.__dict__ for r in results]

    def human() -> None:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        every = ui.output_format() == "plain" or len(rows) <= 30  # piped: every row
        shown = rows if every else rows[:25]
        ui.print_rows(shown, IMPORT_COLUMNS, source)
        if len(rows) > len(shown):
            ui.out.print(f"... and {len(rows) - len(shown)} more (--format plain lists all)")
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        ui.out.print(f"{source}: {len(results)} models ({summary}) in {seconds:.1f} s")

    show({"seconds": round(seconds, 2), "models": rows}, human, rows, IMPORT_COLUMNS)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@command(import_app, "torchvision", example="shift-cli models import torchvision resnet50")
def import_torchvision(
    names: Annotated[
        list[str] | None, typer.Argument(help="builder[.WEIGHTS], e.g. resnet50.IMAGENET1K_V2")
    ] = None,
    all: Annotated[bool, typer.Option("--all", help="every classification weight")] = False,
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
) -> None:
    """torchvision's weights: ImageNet acc@1/acc@5, parameters, GFLOPS, transforms, recipe."""
    _import(home, "torchvision", names, all, replace)


@command(import_app, "timm", example="shift-cli models import timm resnet50.a1_in1k convnext_tiny")
def import_timm(
    names: Annotated[list[str], typer.Argument(help="arch[.tag], e.g. resnet50.a1_in1k")],
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
) -> None:
    """timm's pretrained configs: input size, mean/std, licence, hub id, upstream data."""
    _import(home, "timm", names, False, replace)


@command(import_app, "hf", example="shift-cli models import hf google/vit-base-patch16-224")
def import_hf(
    ids: Annotated[
        list[str], typer.Argument(help="owner/name, timm/arch.tag, or a local HF folder")
    ],
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
) -> None:
    """Hugging Face checkpoints (a local folder written by timm gets its weights at once)."""
    _import(home, "hf", ids, False, replace)


@command(import_app, "vtab1k", example="shift-cli models import vtab1k")
def import_vtab1k(replace: ReplaceOpt = False, home: HomeOpt = None) -> None:
    """The VTAB-1k table's 291 Hugging Face models, as metadata rows for meta(vtab1k)."""
    _import(home, "vtab1k", None, True, replace)


@command(
    models_app,
    "weights",
    example="shift-cli models weights tv-resnet50-imagenet1k_v2 --weights resnet50-11ad3fa6.pth",
)
def models_weights(
    name: Annotated[str, typer.Argument(help="a model registered from a source")],
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="weight file, or folder (torch hub cache, HF folder)"),
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="fetch with the source's loader (online)")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Give a model its weights: exported to ONNX (opset 17), checked, sha256-recorded."""
    t0 = time.perf_counter()
    with open_client(home) as c, suggest(name, c.registry.model_names):
        rec = c.add_weights(name, weights, download=download)
    seconds = time.perf_counter() - t0
    show(
        rec.model_dump(),
        lambda: ui.out.print(
            f"[bold]{rec.name}[/bold]: weights present, {rec.params:,} parameters, {rec.dim}-d "
            f"embedding, ONNX {rec.sha256[:12]}... ({seconds:.1f} s)"
        ),
    )
