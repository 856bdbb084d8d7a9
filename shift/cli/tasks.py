"""``tasks list | add | append | relabel | remove``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shift.cli import base as ui
from shift.cli.base import (
    HomeOpt,
    JsonOpt,
    _client,
    _print_json,
    command,
    tasks_app,
)
from shift.errors import ShiftError


@command(tasks_app, "list")
def tasks_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List registered tasks."""
    from shift.render import records_table

    with _client(home) as c:
        rows = [t.model_dump() for t in c.tasks()]
    if as_json:
        _print_json(rows)
        return
    cols = ["name", "kind", "num_samples", "num_train", "num_val", "num_classes", "content_hash"]
    ui.out.print(records_table(rows, cols, f"{len(rows)} tasks"))


def _data(images: Path | None, npz: Path | None) -> tuple[Path, Any]:
    """The one data source given on the command line, and its kind."""
    if images is not None and npz is None:
        return images, "images"
    if npz is not None and images is None:
        return npz, "npz"
    raise ShiftError("give exactly one of --images DIR or --npz FILE")


ImagesOpt = Annotated[
    Path | None,
    typer.Option("--images", help="folder: <class>/* or train/<class>/* + val/<class>/*"),
]
NpzOpt = Annotated[Path | None, typer.Option("--npz", help="arrays x, y and optional split")]
ValOpt = Annotated[
    float, typer.Option("--val-fraction", help="validation share when no split is given")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the deterministic split")]


@command(tasks_app, "add")
def tasks_add(
    name: str,
    images: ImagesOpt = None,
    npz: NpzOpt = None,
    val_fraction: ValOpt = 0.2,
    seed: SeedOpt = 0,
    store_size: Annotated[
        int | None, typer.Option(help="resize images to this square size when stored")
    ] = None,
    replace: bool = False,
    home: HomeOpt = None,
) -> None:
    """Register a labelled dataset as a task."""
    data, kind = _data(images, npz)
    with _client(home, create=True) as c:
        rec = c.add_task(
            name,
            data,
            kind=kind,
            val_fraction=val_fraction,
            seed=seed,
            store_size=store_size,
            replace=replace,
        )
    ui.out.print(
        f"task [bold]{rec.name}[/bold]: {rec.num_samples} samples ({rec.num_train} train, "
        f"{rec.num_val} val), {rec.num_classes} classes, hash {rec.content_hash[:12]}"
    )


@command(tasks_app, "append")
def tasks_append(
    name: str,
    images: ImagesOpt = None,
    npz: NpzOpt = None,
    val_fraction: ValOpt = 0.2,
    seed: SeedOpt = 0,
    home: HomeOpt = None,
) -> None:
    """Add samples to a task; the next query embeds only them."""
    data, kind = _data(images, npz)
    with _client(home) as c:
        res = c.append(name, data, kind=kind, val_fraction=val_fraction, seed=seed)
    rec, n = res
    skipped = getattr(res, "skipped", 0)  # samples already in the task (an append re-run)
    note = f" ({skipped} already there, skipped)" if skipped else ""
    ui.out.print(f"task [bold]{name}[/bold]: +{n} samples, now {rec.num_samples}{note}")


@command(tasks_app, "relabel")
def tasks_relabel(
    name: str,
    npz: Annotated[Path, typer.Option("--npz", help="array y: one label per sample, task order")],
    home: HomeOpt = None,
) -> None:
    """Replace a task's labels; indexes are reused, only scores are recomputed."""
    with _client(home) as c:
        rec = c.relabel(name, npz)
    ui.out.print(f"task [bold]{name}[/bold] relabelled: hash {rec.content_hash[:12]}")


@command(tasks_app, "remove")
def tasks_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a task and its stored data."""
    with _client(home) as c:
        c.drop_task(name)
    ui.out.print(f"removed task {name}")
