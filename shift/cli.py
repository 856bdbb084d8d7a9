"""The ``shift`` command line (also ``shift-cli``, which no shell builtin shadows, and
``python -m shift``). Each command parses its options, makes one :class:`~shift.client.Client`
call and renders the answer. Importing this module stays light: ray, torch and onnxruntime load
only inside the commands that need them."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from shift.errors import ShiftError

if TYPE_CHECKING:
    from shift.client import Client

app = typer.Typer(
    help="shift: which B models should I fine-tune?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Register and inspect models.", no_args_is_help=True)
pools_app = typer.Typer(help="Named model pools.", no_args_is_help=True)
tasks_app = typer.Typer(help="Labelled datasets to rank models for.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(pools_app, name="pools")
app.add_typer(tasks_app, name="tasks")

out = Console()
err = Console(stderr=True)


def _errors_to_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShiftError as e:
            from shift.render import print_error

            print_error(e, err)
            raise typer.Exit(1) from None

    return wrapper


def command(typer_app: typer.Typer, name: str | None = None) -> Callable[..., Any]:
    """``typer_app.command`` that turns a ShiftError into a message and exit code 1."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        return typer_app.command(name)(_errors_to_exit(fn))

    return deco


HomeOpt = Annotated[
    Path | None, typer.Option("--home", envvar="SHIFT_HOME", help="shift home (registry + indexes)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
ExecOpt = Annotated[str, typer.Option("--executor", help="ray | inprocess")]
RayOpt = Annotated[
    str | None,
    typer.Option("--ray-address", envvar="SHIFT_RAY_ADDRESS", help="join an existing Ray cluster"),
]


def _client(
    home: Path | None, executor: str = "ray", ray_address: str | None = None, progress: bool = True
) -> Client:
    from shift.client import Client

    return Client(home, executor=executor, ray_address=ray_address, progress=progress)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@command(app)
def query(
    text: Annotated[
        str, typer.Argument(help='a query, e.g. "SELECT top 2 FROM pool all WHERE task=digits"')
    ],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
) -> None:
    """Run a query and print the ranked models."""
    from shift.render import print_result

    with _client(home, executor, ray_address, progress=not as_json) as c:
        res = c.query(text)
    if as_json:
        sys.stdout.write(res.model_dump_json(indent=2) + "\n")
    else:
        print_result(res, out)


@command(app)
def explain(text: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Show the plan of a query: pool size after each filter, cached vs to-compute work."""
    from shift.render import print_plan

    with _client(home) as c:
        res = c.explain(text)
    if as_json:
        _print_json(res.plan)
    else:
        print_plan(res, text, out)


# ---- models ---------------------------------------------------------------------------------
def _floats(s: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → a tuple of floats (``--mean``/``--std``)."""
    if s is None:
        return None
    try:
        return tuple(float(x) for x in s.split(","))
    except ValueError:
        raise ShiftError(f"--{what} must be comma-separated numbers, got {s!r}") from None


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
    with _client(home) as c:
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
    out.print(
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

    with _client(home) as c:
        results = c.import_catalog(name, catalog=catalog, force=force)
    rows = [r.__dict__ for r in results]
    out.print(
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
        out.print(records_table(rows, [*cols, "tags"], f"{len(rows)} models"))


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
    out.print(f"removed {name}")


# ---- pools ----------------------------------------------------------------------------------
@command(pools_app, "list")
def pools_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List built-in and saved pools with their sizes."""
    from shift.render import records_table

    with _client(home) as c:
        rows = [{**p.model_dump(), "models": c.pool_size(p.name)} for p in c.pools()]
    if as_json:
        _print_json(rows)
        return
    out.print(records_table(rows, ["name", "filter", "models", "builtin", "description"], "pools"))


@command(pools_app, "add")
def pools_add(
    name: str,
    condition: Annotated[str, typer.Argument(help='e.g. "WHERE dim <= 1024"')],
    description: str = "",
    replace: bool = False,
    home: HomeOpt = None,
) -> None:
    """Save a pool as a named condition."""
    with _client(home) as c:
        p = c.add_pool(name, condition, description, replace=replace)
    out.print(f"pool [bold]{p.name}[/bold]: {p.filter}")


@command(pools_app, "remove")
def pools_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a saved pool."""
    with _client(home) as c:
        c.drop_pool(name)
    out.print(f"removed pool {name}")


# ---- tasks ----------------------------------------------------------------------------------
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
    out.print(records_table(rows, cols, f"{len(rows)} tasks"))


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
    with _client(home) as c:
        rec = c.add_task(
            name,
            data,
            kind=kind,
            val_fraction=val_fraction,
            seed=seed,
            store_size=store_size,
            replace=replace,
        )
    out.print(
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
    out.print(f"task [bold]{name}[/bold]: +{n} samples, now {rec.num_samples}{note}")


@command(tasks_app, "relabel")
def tasks_relabel(
    name: str,
    npz: Annotated[Path, typer.Option("--npz", help="array y: one label per sample, task order")],
    home: HomeOpt = None,
) -> None:
    """Replace a task's labels; indexes are reused, only scores are recomputed."""
    with _client(home) as c:
        rec = c.relabel(name, npz)
    out.print(f"task [bold]{name}[/bold] relabelled: hash {rec.content_hash[:12]}")


@command(tasks_app, "remove")
def tasks_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a task and its stored data."""
    with _client(home) as c:
        c.drop_task(name)
    out.print(f"removed task {name}")


# ---- work -----------------------------------------------------------------------------------
@command(app, "index")
def index_cmd(
    task: str,
    pool: Annotated[str, typer.Option(help="pool to index")] = "all",
    home: HomeOpt = None,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
) -> None:
    """Precompute the embedding indexes of TASK for every model in a pool; exit 1 if any model
    failed (each is named on stderr)."""
    from shift.render import print_index_report

    with _client(home, executor, ray_address) as c:
        rep = c.index(task, pool=pool)
    print_index_report(task, rep, out, err)
    if rep.failed:
        raise typer.Exit(1)


@command(app, "finetune")
def finetune_cmd(
    task: str,
    model: Annotated[list[str] | None, typer.Option("--model", help="model (repeatable)")] = None,
    pool: Annotated[str, typer.Option(help="pool, when no --model is given")] = "all",
    epochs: Annotated[int, typer.Option(help="full fine-tuning epochs per lr")] = 2,
    max_train: Annotated[
        int | None,
        typer.Option(help="fine-tune on a seeded random subset of this many training samples"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute cached results")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune catalog models on TASK (ground truth; cached) and print best val accuracy."""
    from shift.tools.finetune import results_table

    with _client(home, progress=not as_json) as c:
        results = c.finetune(
            task, model, pool=pool, epochs=epochs, max_train=max_train, force=force
        )
    if as_json:
        _print_json([r.to_dict() for r in results])
    else:
        out.print(results_table(results, f"fine-tuning on {task} ({epochs} epoch(s) per lr)"))


@command(app, "doctor")
def doctor_cmd(
    repair: Annotated[bool, typer.Option("--repair", help="remove what is safe to remove")] = False,
    grace: Annotated[
        float, typer.Option(help="only remove stray registry files older than this (seconds)")
    ] = 300.0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a home: registry integrity, model and task files, indexes, leftovers; exit 1 if
    problems remain."""
    from shift.tools.doctor import print_report

    with _client(home) as c:
        rep = c.doctor(repair=repair, grace_s=grace)
    if as_json:
        sys.stdout.write(rep.model_dump_json(indent=2) + "\n")
    else:
        print_report(rep, out)
    if rep.problems:
        raise typer.Exit(1)


def main() -> None:
    """Entry point (``shift``, ``shift-cli``, ``python -m shift``)."""
    app()


if __name__ == "__main__":
    main()
