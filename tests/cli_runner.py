"""Driving the CLI in process for tests: ``cli(home, *args)`` through typer's CliRunner, and the
``wide_consoles`` fixture (import it into a test module, where it is autouse)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import shift.cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 250 columns wide so cells are not wrapped; output still goes to the runner."""
    monkeypatch.setattr(shift.cli.base, "out", Console(width=250))
    monkeypatch.setattr(shift.cli.base, "err", Console(width=250, stderr=True))
    monkeypatch.delenv("SHIFT_HOME", raising=False)


def cli(home: Path, *args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    """Run ``shift-cli ARGS --home HOME``; a ShiftError must end in a clean exit, never in an
    escaped exception or a traceback."""
    result = runner.invoke(shift.cli.app, [*args, "--home", str(home)], env=env)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result
