"""The commands that compute: ``index``, ``finetune`` and ``doctor``."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

from shift.cli import base as ui
from shift.cli.base import (
    BackendOpt,
    ExecOpt,
    HomeOpt,
    RayOpt,
    app,
    command,
    open_client,
    show,
    suggest,
)

TaskArg = Annotated[str, typer.Argument(help="a registered task")]


def _index_rows(rep: Any) -> list[dict[str, Any]]:
    """One row per model of an index report: embedded (with its samples), reused,
    relabelled or failed (with the reason)."""
    rows: list[dict[str, Any]] = [
        {"model": m, "status": "embedded", "samples": n, "detail": ""}
        for m, n in rep.embedded.items()
    ]
    rows += [{"model": m, "status": "reused", "samples": 0, "detail": ""} for m in rep.reused]
    rows += [
        {"model": m, "status": "relabelled", "samples": 0, "detail": ""} for m in rep.relabelled
    ]
    rows += [
        {"model": m, "status": "failed", "samples": 0, "detail": str(e)}
        for m, e in rep.failed.items()
    ]
    return rows


@command(app, "index", example="shift-cli index flowers --pool all")
def index_cmd(
    task: TaskArg,
    pool: Annotated[str, typer.Option(help="pool to index")] = "all",
    home: HomeOpt = None,
    executor: ExecOpt = "ray",
    ray_address: RayOpt = None,
    backend: BackendOpt = "onnxruntime",
) -> None:
    """Precompute the embedding indexes of TASK for every model in a pool.

    Exit 1 if any model failed (each is named on stderr)."""
    from shift.render import print_index_report

    with (
        open_client(home, executor, ray_address, backend=backend) as c,
        suggest(task, c.registry.task_names),
    ):
        rep = c.index(task, pool=pool)
    data = {"task": task, **json.loads(json.dumps(dataclasses.asdict(rep), default=str))}
    show(
        data,
        lambda: print_index_report(task, rep, ui.out, ui.err),
        _index_rows(rep),
        ["model", "status", "samples", "detail"],
    )
    if ui.data_format():
        for name, e in rep.failed.items():
            ui.err.print(f"[red]failed:[/red] {name}: {e}", highlight=False)
    if rep.failed:
        raise typer.Exit(1)


FINETUNE_COLUMNS = ["model", "accuracy", "best_lr", "best_epoch", "seconds", "cached"]


@command(app, "finetune", example="shift-cli finetune digits --model cnn-digits-expert --epochs 1")
def finetune_cmd(
    task: TaskArg,
    model: Annotated[list[str] | None, typer.Option("--model", help="model (repeatable)")] = None,
    pool: Annotated[str, typer.Option(help="pool, when no --model is given")] = "all",
    epochs: Annotated[int, typer.Option(help="full fine-tuning epochs per lr")] = 2,
    max_train: Annotated[
        int | None,
        typer.Option(help="fine-tune on a seeded random subset of this many training samples"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute cached results")] = False,
    home: HomeOpt = None,
) -> None:
    """Fine-tune registered models on TASK (ground truth; cached) and print best val accuracy.

    Catalog models train from their torch definition, any other ONNX model converted by
    onnx2torch; on CUDA when torch sees a GPU."""
    with open_client(home) as c, suggest(task, c.registry.task_names):
        results = c.finetune(
            task, model, pool=pool, epochs=epochs, max_train=max_train, force=force
        )
    data = [r.to_dict() for r in results]
    best_first = sorted(results, key=lambda r: -r.accuracy)
    rows = [
        {
            "model": r.model,
            "accuracy": r.accuracy,
            "best_lr": r.details.get("best_lr"),
            "best_epoch": r.details.get("best_epoch"),
            "seconds": r.seconds,
            "cached": r.cached,
        }
        for r in best_first
    ]
    title = f"fine-tuning on {task} ({epochs} epoch(s) per lr)"
    show(data, lambda: ui.print_rows(rows, FINETUNE_COLUMNS, title), data, FINETUNE_COLUMNS[:1])


@command(app, "doctor", example="shift-cli doctor --repair")
def doctor_cmd(
    repair: Annotated[bool, typer.Option("--repair", help="remove what is safe to remove")] = False,
    grace: Annotated[
        float, typer.Option(help="only remove stray registry files older than this (seconds)")
    ] = 300.0,
    home: HomeOpt = None,
) -> None:
    """Check a home: registry integrity, model and task files, indexes, leftovers.

    Exit 1 if problems remain."""
    from shift.tools.doctor import print_report

    with open_client(home) as c:
        rep = c.doctor(repair=repair, grace_s=grace)
    findings = [f.model_dump() for f in rep.findings]
    show(json.loads(rep.model_dump_json()), lambda: print_report(rep, ui.console()), findings)
    if rep.problems:
        raise typer.Exit(1)
