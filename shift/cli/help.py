"""Help texts that show types plainly: ``TEXT``, ``INTEGER``, ``NUMBER``, ``PATH`` (not typer's
``<str>``, ``<list[str]>``, ``<path>``), no type for a flag, and arguments in capitals in the
usage line (``Usage: shift-cli models add [OPTIONS] FILE``, not ``{file}``)."""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

#: typer's type labels → the words the help shows ("" for a flag: no type)
_TYPES = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "NUMBER",
    "path": "PATH",
    "file": "FILE",
    "directory": "FOLDER",
    "bool": "",
}


def plain_type(label: str | None) -> str | None:
    """``<str>`` → ``TEXT``, ``<list[str]>`` → ``TEXT``, ``<int>...`` → ``INTEGER...``,
    ``<a|b>`` → ``a|b``; anything else (a metavar) as it is."""
    m = re.fullmatch(r"<(.*)>(\.\.\.)?", label or "")
    if not m:
        return label
    inner, dots = m.group(1), m.group(2) or ""
    listed = re.fullmatch(r"list\[(.*)\]", inner)
    if listed:
        inner = listed.group(1)
    word = inner if "|" in inner else _TYPES.get(inner, inner.upper())
    return word + dots if word else None


def _plain(param: Any) -> Any:
    """``param`` with its help type plain (once per parameter object)."""
    if getattr(param, "_plain_help", False):
        return param
    shown = param.display_type_rich
    flag = bool(getattr(param, "is_flag", False))

    def display_type_rich(ctx: Any) -> str | None:
        return None if flag else plain_type(shown(ctx))

    param.display_type_rich = display_type_rich
    if param.param_type_name == "argument" and param.metavar is None:
        param.metavar = param.name.upper()
    param._plain_help = True
    return param


class PlainCommand(TyperCommand):
    """A command whose help shows plain types and capitalised arguments."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain(p) for p in super().get_params(ctx)]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or p.name.upper()
                name = name if p.required else f"[{name}]"
                pieces.append(name + ("..." if p.nargs != 1 else ""))
        return pieces


class PlainGroup(TyperGroup):
    """A command group whose help shows plain types."""

    def get_params(self, ctx: Any) -> list[Any]:
        return [_plain(p) for p in super().get_params(ctx)]
