"""What ``shift doctor`` found: findings with a severity, the report, and its rich rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

Severity = Literal["corrupt", "unwritable", "orphan", "leftover", "resumable", "foreign"]
#: ``unwritable``: the home cannot be written (read-only, no permission, disk full): the data
#: may be intact, but every command that writes will fail until it is fixed. ``foreign``: a file
#: or folder shift never writes where it lies (someone else's): listed, never moved or deleted,
#: not a problem
PROBLEMS: frozenset[str] = frozenset({"corrupt", "unwritable", "orphan", "leftover"})


class Finding(BaseModel):
    """One thing doctor found."""

    severity: Severity
    check: str = Field(
        description="registry | permissions | model_file | task_data | index | index_entry | "
        "files | scores"
    )
    path: str | None = None
    message: str
    repairable: bool = False
    repaired: bool = False
    action: str = ""


class DoctorReport(BaseModel):
    """Everything doctor checked and found; ``problems`` are the findings that remain."""

    home: str
    repair: bool = False
    checked: dict[str, int] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in PROBLEMS and not f.repaired]

    @property
    def corrupt(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "corrupt" and not f.repaired]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        out = {
            s: 0 for s in ("corrupt", "unwritable", "orphan", "leftover", "resumable", "foreign")
        }
        for f in self.findings:
            out[f.severity] += 1
        out["repaired"] = sum(f.repaired for f in self.findings)
        return out


def _short(path: str | None, rep: DoctorReport) -> str:
    """``path`` relative to the home (registry and indexes share a parent), for display."""
    if not path:
        return ""
    base = Path(rep.home)
    base = base.parent if base.name == "registry" else base
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


_STYLE = {
    "corrupt": "red",
    "unwritable": "magenta",
    "orphan": "yellow",
    "leftover": "yellow",
    "resumable": "cyan",
    "foreign": "blue",
}


def print_report(rep: DoctorReport, console: Any) -> None:
    """A rich table of the findings and a one-line summary."""
    from rich.table import Table

    if rep.findings:
        t = Table(title=f"shift doctor: {rep.home}", title_justify="left")
        for col in ("severity", "check", "path", "finding", "action"):
            t.add_column(col, overflow="fold")
        for f in rep.findings:
            action = ("done: " if f.repaired else "") + f.action if f.action else ""
            if f.repairable and not f.repaired and not rep.repair:
                action = "--repair: " + f.action
            t.add_row(
                f"[{_STYLE[f.severity]}]{f.severity}[/]",
                f.check,
                _short(f.path, rep),
                f.message,
                action,
            )
        console.print(t)
    c = rep.counts()
    checked = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in rep.checked.items())
    status = "[green]ok[/green]" if rep.ok else f"[red]{len(rep.problems)} problem(s) remain[/red]"
    console.print(
        f"checked {checked or 'nothing'} in {rep.seconds:.2f} s: {c['corrupt']} corrupt, "
        + (f"{c['unwritable']} unwritable, " if c["unwritable"] else "")
        + f"{c['orphan']} orphan, {c['leftover']} leftover, {c['resumable']} resumable, "
        + (f"{c['foreign']} not shift's (left alone), " if c["foreign"] else "")
        + f"{c['repaired']} repaired — {status}",
        highlight=False,
    )
    if not rep.ok and not rep.repair and any(f.repairable for f in rep.problems):
        console.print("run [bold]shift doctor --repair[/bold] to remove what is safe to remove")
