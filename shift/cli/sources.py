"""``models import torchvision | timm | hf | vtab1k`` and ``models weights``: the zoo users have,
registered from its libraries' metadata without weights, and weights given later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, JsonOpt, _client, _print_json, command, models_app

import_app = typer.Typer(
    help="Register models of a source from its metadata (no weights needed).",
    no_args_is_help=True,
)
models_app.add_typer(import_app, name="import")

ReplaceOpt = Annotated[
    bool, typer.Option("--replace", help="overwrite rows that already have weights")
]


def _import(
    home: Path | None, source: str, names: list[str] | None, all: bool, replace: bool, js: bool
) -> None:
    from shift.render import records_table

    t0 = time.perf_counter()
    with _client(home, create=True) as c:
        results = c.import_models(source, names, all=all, replace=replace)
    seconds = time.perf_counter() - t0
    rows = [r.__dict__ for r in results]
    if js:
        _print_json({"seconds": round(seconds, 2), "models": rows})
    else:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        shown = rows if len(rows) <= 30 else rows[:25]
        ui.out.print(
            records_table(shown, ["name", "status", "weights", "source_id", "detail"], source)
        )
        if len(rows) > len(shown):
            ui.out.print(f"... and {len(rows) - len(shown)} more (--json lists all)")
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        ui.out.print(f"{source}: {len(results)} models ({summary}) in {seconds:.1f} s")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@command(import_app, "torchvision")
def import_torchvision(
    names: Annotated[
        list[str] | None, typer.Argument(help="builder[.WEIGHTS], e.g. resnet50.IMAGENET1K_V2")
    ] = None,
    all: Annotated[bool, typer.Option("--all", help="every classification weight")] = False,
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """torchvision's weights: ImageNet acc@1/acc@5, parameters, GFLOPS, transforms, recipe."""
    _import(home, "torchvision", names, all, replace, as_json)


@command(import_app, "timm")
def import_timm(
    names: Annotated[list[str], typer.Argument(help="arch[.tag], e.g. resnet50.a1_in1k")],
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """timm's pretrained configs: input size, mean/std, licence, hub id, upstream data."""
    _import(home, "timm", names, False, replace, as_json)


@command(import_app, "hf")
def import_hf(
    ids: Annotated[
        list[str], typer.Argument(help="owner/name, timm/arch.tag, or a local HF folder")
    ],
    replace: ReplaceOpt = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hugging Face checkpoints (a local folder written by timm gets its weights at once)."""
    _import(home, "hf", ids, False, replace, as_json)


@command(import_app, "vtab1k")
def import_vtab1k(
    replace: ReplaceOpt = False, home: HomeOpt = None, as_json: JsonOpt = False
) -> None:
    """The VTAB-1k table's 291 Hugging Face models, as metadata rows for meta(vtab1k)."""
    _import(home, "vtab1k", None, True, replace, as_json)


@command(models_app, "weights")
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
    with _client(home) as c:
        rec = c.add_weights(name, weights, download=download)
    ui.out.print(
        f"[bold]{rec.name}[/bold]: weights present, {rec.params:,} parameters, {rec.dim}-d "
        f"embedding, ONNX {rec.sha256[:12]}... ({time.perf_counter() - t0:.1f} s)"
    )
