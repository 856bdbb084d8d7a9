"""The commands that compute: ``index``, ``finetune`` and ``doctor``."""

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


@command(app, "index")
def index_cmd(
    task: str,
    pool: Annotated[str, typer.Option(help="pool to index")] = "all",
    home: HomeOpt = None,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
    backend: BackendOpt = "onnxruntime",
) -> None:
    """Precompute the embedding indexes of TASK for every model in a pool; exit 1 if any model
    failed (each is named on stderr)."""
    from shift.render import print_index_report

    with _client(home, executor, ray_address, backend=backend) as c:
        rep = c.index(task, pool=pool)
    print_index_report(task, rep, ui.out, ui.err)
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
    """Fine-tune registered models on TASK (ground truth; cached) and print best val accuracy:
    catalog models from their torch definition, any other ONNX model converted by onnx2torch;
    on CUDA when torch sees a GPU."""
    from shift.tools.finetune import results_table

    with _client(home, progress=not as_json) as c:
        results = c.finetune(
            task, model, pool=pool, epochs=epochs, max_train=max_train, force=force
        )
    if as_json:
        _print_json([r.to_dict() for r in results])
    else:
        ui.out.print(results_table(results, f"fine-tuning on {task} ({epochs} epoch(s) per lr)"))


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
        print_report(rep, ui.out)
    if rep.problems:
        raise typer.Exit(1)
