"""What every command module shares: the Typer apps, the consoles, the common options, the
``command`` decorator and how a command prints its answer.

``command`` gives every command ``--json`` and ``--format table|plain|csv|tsv|json|jsonl``
(default: ``table`` on a terminal, ``plain`` when stdout is not one), an example in its help,
and turns a :class:`~shift.errors.ShiftError` into a message and exit 1. A command prints its
answer with :func:`show`: the JSON data, the rows for csv/tsv/jsonl, and a function printing
it for a person."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from shift.cli.help import PlainCommand, PlainGroup
from shift.errors import NotFoundError, ShiftError

if TYPE_CHECKING:
    from shift.client import Client

app = typer.Typer(
    help="shift: which B models should I fine-tune?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=PlainGroup,
)
models_app = typer.Typer(help="Register and inspect models.", no_args_is_help=True, cls=PlainGroup)
pools_app = typer.Typer(help="Named model pools.", no_args_is_help=True, cls=PlainGroup)
tasks_app = typer.Typer(
    help="Labelled datasets to rank models for.", no_args_is_help=True, cls=PlainGroup
)
app.add_typer(models_app, name="models")
app.add_typer(pools_app, name="pools")
app.add_typer(tasks_app, name="tasks")

out = Console()
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from shift import __version__

        sys.stdout.write(f"shift-cli {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """shift: which B models should I fine-tune?"""


# ---- output formats --------------------------------------------------------------------------

#: ``--format`` values: a table fitted to the terminal, plain aligned text (the default when
#: stdout is not a terminal), and the data formats
FORMATS = ("table", "plain", "csv", "tsv", "json", "jsonl")
DATA_FORMATS = frozenset({"csv", "tsv", "json", "jsonl"})

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (same as --format json)")]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="FORMAT",
        help="table, plain, csv, tsv, json or jsonl (default: table on a terminal, plain text "
        "when piped)",
    ),
]

_format = "table"


def output_format() -> str:
    """The format the running command prints in."""
    return _format


def data_format() -> bool:
    """Whether the running command prints data (csv, tsv, json, jsonl): no progress bars and
    no notes, only the answer on stdout."""
    return _format in DATA_FORMATS


def _choose_format(given: str | None, as_json: bool) -> str:
    if as_json and given not in (None, "json"):
        raise ShiftError(f"--json and --format {given} disagree", hint="give one of them")
    if as_json:
        return "json"
    if given is None:
        return "table" if out.is_terminal else "plain"
    return choice(given.lower(), FORMATS, "format")


def choice(value: str, options: tuple[str, ...] | list[str], what: str) -> str:
    """``value`` if it is one of ``options``, else a ShiftError with a "did you mean"."""
    if value in options:
        return value
    from shift.query.syntax import did_you_mean

    raise ShiftError(
        f"unknown {what} {value!r}",
        hint=did_you_mean(value, list(options)) + f"{what}s: " + ", ".join(options),
    )


def show(
    data: Any,
    human: Callable[[], None],
    rows: list[dict[str, Any]] | None = None,
    columns: list[str] | None = None,
) -> None:
    """Print a command's answer: ``data`` as JSON (``json``, and ``jsonl`` when there are no
    ``rows``: one line), ``rows`` as csv, tsv or jsonl (``columns`` first, then every other
    field), else ``human()`` (a table, or plain text when piped)."""
    from shift.render import to_json, write_rows

    if _format == "json":
        sys.stdout.write(to_json(data))
    elif _format in DATA_FORMATS:
        if rows is None:
            rows = data if isinstance(data, list) else [data]
        if _format == "jsonl":
            sys.stdout.write(to_json(rows, lines=True))
        else:
            write_rows(sys.stdout, rows, columns or [], _format)
    else:
        human()


def print_rows(
    rows: list[dict[str, Any]], columns: list[str], title: str | None = None, **kw: Any
) -> None:
    """``rows`` for a person: a table that fits the terminal, or plain text when piped."""
    from shift.render import print_records

    print_records(out, rows, columns, title, plain=_format == "plain", **kw)


class _PlainTables:
    """``out`` for a printer made elsewhere (doctor's report): its tables come out as plain
    text."""

    def print(self, obj: Any = "", *args: Any, **kw: Any) -> None:
        from rich.table import Table

        from shift.render import plain_from_table

        if isinstance(obj, Table):
            obj, kw = plain_from_table(obj), {"markup": False, "highlight": False}
        out.print(obj, *args, **{"soft_wrap": True, **kw})


def console() -> Any:
    """The console a printer made elsewhere writes a person's answer to: ``out``, or (plain
    format) one that turns its tables into plain text."""
    return _PlainTables() if _format == "plain" else out


# ---- commands --------------------------------------------------------------------------------


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def command(typer_app: typer.Typer, name: str | None = None, *, example: str) -> Callable[..., Any]:
    """``typer_app.command`` that adds ``--json`` and ``--format`` (read with
    :func:`output_format`; print with :func:`show`), shows ``example`` in the help, and turns a
    ShiftError into a message and exit code 1."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, as_json: bool = False, format: str | None = None, **kw: Any) -> Any:
            global _format
            try:
                _format = _choose_format(format, as_json)
                out.soft_wrap = _format == "plain"  # piped: no line breaks added to long lines
                return fn(*args, **kw)
            except ShiftError as e:
                from shift.render import print_error

                print_error(e, err)
                raise typer.Exit(1) from None

        sig = inspect.signature(fn, eval_str=True)
        kw_only = inspect.Parameter.KEYWORD_ONLY
        params = [
            *sig.parameters.values(),
            inspect.Parameter("as_json", kw_only, default=False, annotation=JsonOpt),
            inspect.Parameter("format", kw_only, default=None, annotation=FormatOpt),
        ]
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return typer_app.command(
            name,
            cls=PlainCommand,
            short_help=_first_paragraph(fn.__doc__),
            epilog=f"Example: {example}",
        )(wrapper)

    return deco


@contextmanager
def suggest(name: str, names: Callable[[], list[str]]) -> Iterator[None]:
    """A NotFoundError about ``name`` inside gets a "did you mean" among ``names()``."""
    try:
        yield
    except NotFoundError as e:
        if repr(name) in e.message and "did you mean" not in (e.hint or ""):
            from shift.query.syntax import did_you_mean

            e.hint = did_you_mean(name, names()) + (e.hint or "")
        raise


# ---- options ---------------------------------------------------------------------------------

HomeOpt = Annotated[
    Path | None, typer.Option("--home", envvar="SHIFT_HOME", help="shift home (registry + indexes)")
]
EXECUTORS = ("ray", "inprocess", "auto")
ExecOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        metavar="EXECUTOR",
        help="ray, inprocess or auto (in process for one small model, else ray)",
    ),
]
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
        metavar="BACKEND",
        help="inference backend: onnxruntime, torch or auto (ONNX Runtime on CUDA, else torch on "
        "CUDA, else the faster on this CPU, measured once per home and machine)",
    ),
]
#: the inference backends shift ships; another registered one is looked up when named
BUILTIN_BACKENDS = ("onnxruntime", "torch", "auto")


def check_executor(executor: str) -> str:
    return choice(executor, EXECUTORS, "executor")


def check_backend(backend: str) -> str:
    """A built-in backend, or one registered in this process; else a ShiftError with a "did you
    mean" (the check an index or a query would make later, after opening the home)."""
    if backend in BUILTIN_BACKENDS:
        return backend
    from shift.inference.backends import known_backends
    from shift.query.syntax import did_you_mean

    known = known_backends()
    if backend in known:
        return backend
    raise ShiftError(
        f"unknown inference backend {backend!r}",
        hint=did_you_mean(backend, [*known, "auto"]) + "use auto or one of: " + ", ".join(known),
    )


def open_client(
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
    there is none (``NotAHomeError``) without writing anything. The executor and backend are
    checked first: a wrong value is refused before the home is opened."""
    from shift.client import Client

    return Client(
        home,
        executor=check_executor(executor),
        ray_address=ray_address,
        progress=progress and not data_format(),
        backend=check_backend(backend),
        create=create,
    )


def _print_json(data: Any) -> None:
    from shift.render import to_json

    sys.stdout.write(to_json(data))
