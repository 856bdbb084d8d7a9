"""What every command module shares: the Typer apps, the consoles, the common options and the
``command`` decorator that turns a :class:`~shift.errors.ShiftError` into a message and exit 1."""

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
#: onnxruntime stays the default: on CPU it measured ~3x the torch backend (README, GPU section)
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        envvar="SHIFT_BACKEND",
        help="inference backend: onnxruntime | torch | auto (ONNX Runtime on CUDA, else torch on "
        "CUDA, else the faster on this CPU, measured once per home and machine)",
    ),
]


def _client(
    home: Path | None,
    executor: str = "ray",
    ray_address: str | None = None,
    progress: bool = True,
    backend: str = "onnxruntime",
    *,
    create: bool = False,
) -> Client:
    """The client of the home a command works on. ``create``: only for the commands that add
    something (models add / import, tasks add, pools add): they may create the home in a folder
    that does not exist yet or is empty. Every other command needs an existing home and says
    there is none (``NotAHomeError``) without writing anything."""
    from shift.client import Client

    return Client(
        home,
        executor=executor,
        ray_address=ray_address,
        progress=progress,
        backend=backend,
        create=create,
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _floats(s: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → a tuple of floats (``--mean``/``--std``)."""
    if s is None:
        return None
    try:
        return tuple(float(x) for x in s.split(","))
    except ValueError:
        raise ShiftError(f"--{what} must be comma-separated numbers, got {s!r}") from None
