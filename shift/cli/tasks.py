"""``tasks list | add | append | relabel | remove``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shift.cli import base as ui
from shift.cli.base import HomeOpt, command, open_client, show, suggest, tasks_app
from shift.errors import ShiftError

TASK_COLUMNS = [
    "name",
    "kind",
    "num_samples",
    "num_train",
    "num_val",
    "num_classes",
    "content_hash",
]


@command(tasks_app, "list", example="shift-cli tasks list")
def tasks_list(home: HomeOpt = None) -> None:
    """List registered tasks."""
    with open_client(home) as c:
        rows = [t.model_dump() for t in c.tasks()]
    show(rows, lambda: ui.print_rows(rows, TASK_COLUMNS, f"{len(rows)} tasks"), rows, TASK_COLUMNS)


def _data(images: Path | None, npz: Path | None) -> tuple[Path, Any]:
    """The one data source given on the command line, and its kind."""
    if images is not None and npz is None:
        return images, "images"
    if npz is not None and images is None:
        return npz, "npz"
    raise ShiftError("give exactly one of --images DIR or --npz FILE")


TaskArg = Annotated[str, typer.Argument(help="the task's name")]
ImagesOpt = Annotated[
    Path | None,
    typer.Option("--images", help="folder: <class>/* or train/<class>/* + val/<class>/*"),
]
NpzOpt = Annotated[Path | None, typer.Option("--npz", help="arrays x, y and optional split")]
ValOpt = Annotated[
    float, typer.Option("--val-fraction", help="validation share when no split is given")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the deterministic split")]


@command(tasks_app, "add", example="shift-cli tasks add flowers --images ./flowers")
def tasks_add(
    name: TaskArg,
    images: ImagesOpt = None,
    npz: NpzOpt = None,
    val_fraction: ValOpt = 0.2,
    seed: SeedOpt = 0,
    store_size: Annotated[
        int | None, typer.Option(help="resize images to this square size when stored")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="overwrite a task of that name")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Register a labelled dataset as a task."""
    data, kind = _data(images, npz)
    with open_client(home, create=True) as c:
        rec = c.add_task(
            name,
            data,
            kind=kind,
            val_fraction=val_fraction,
            seed=seed,
            store_size=store_size,
            replace=replace,
        )
    show(
        rec.model_dump(),
        lambda: ui.out.print(
            f"task [bold]{rec.name}[/bold]: {rec.num_samples} samples ({rec.num_train} train, "
            f"{rec.num_val} val), {rec.num_classes} classes, hash {rec.content_hash[:12]}"
        ),
    )


@command(tasks_app, "append", example="shift-cli tasks append flowers --images ./more-flowers")
def tasks_append(
    name: TaskArg,
    images: ImagesOpt = None,
    npz: NpzOpt = None,
    val_fraction: ValOpt = 0.2,
    seed: SeedOpt = 0,
    home: HomeOpt = None,
) -> None:
    """Add samples to a task; the next query embeds only them."""
    data, kind = _data(images, npz)
    with open_client(home) as c, suggest(name, c.registry.task_names):
        res = c.append(name, data, kind=kind, val_fraction=val_fraction, seed=seed)
    rec, n = res
    skipped = getattr(res, "skipped", 0)  # samples already in the task (an append re-run)
    note = f" ({skipped} already there, skipped)" if skipped else ""
    show(
        {**rec.model_dump(), "added": n, "skipped": skipped},
        lambda: ui.out.print(
            f"task [bold]{name}[/bold]: +{n} samples, now {rec.num_samples}{note}"
        ),
    )


@command(tasks_app, "relabel", example="shift-cli tasks relabel flowers --npz new_labels.npz")
def tasks_relabel(
    name: TaskArg,
    npz: Annotated[Path, typer.Option("--npz", help="array y: one label per sample, task order")],
    home: HomeOpt = None,
) -> None:
    """Replace a task's labels; indexes are reused, only scores are recomputed."""
    with open_client(home) as c, suggest(name, c.registry.task_names):
        rec = c.relabel(name, npz)
    show(
        rec.model_dump(),
        lambda: ui.out.print(f"task [bold]{name}[/bold] relabelled: hash {rec.content_hash[:12]}"),
    )


@command(tasks_app, "remove", example="shift-cli tasks remove flowers")
def tasks_remove(name: TaskArg, home: HomeOpt = None) -> None:
    """Remove a task and its stored data."""
    with open_client(home) as c, suggest(name, c.registry.task_names):
        c.drop_task(name)
    show({"removed": name}, lambda: ui.out.print(f"removed task {name}", highlight=False))
