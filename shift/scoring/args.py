"""Declared proxy parameters: what a query may set in ``RANK BY knn(k=5, metric=cosine)``.

Each proxy declares its settable parameters as :class:`Arg` (type, range, allowed values, the
function keyword it sets). A query's values are checked and converted here, so the same setting
written differently (``lr=0.01`` / ``lr=1e-2``, ``k=5`` / ``k=5.0``, ``metric=cosine`` /
``metric='COSINE'``) gives the same keyword arguments, and so the same score-cache key (the
proxy's ``params`` as sorted JSON). Parameters not declared explicitly are inferred from the
function's keyword defaults (:func:`inferred`): an integer default ≥ 1 allows integers ≥ 1,
an integer default 0 (a seed) integers ≥ 0, a float default positive floats, a bool default
true/false; string and tuple defaults are settable only where declared.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Arg", "ArgError", "check_args", "inferred"]

#: the largest value of an inferred integer parameter (iterations, samples, dimensions)
MAX_INFERRED_INT = 1_000_000


class ArgError(ValueError):
    """A bad parameter value or name; ``arg`` names the parameter, ``hint`` says what is valid."""

    def __init__(self, arg: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.arg, self.message, self.hint = arg, message, hint


@dataclass(frozen=True)
class Arg:
    """A parameter a query may set. ``kind`` ∈ {int, float, str, bool}; numbers lie in
    ``[low, high]`` (``low`` excluded when ``low_open``); strings are one of ``choices``
    (case-insensitive). The checked value sets the function keyword ``kwarg`` (default: the
    name), through ``convert`` if given (``lr=0.01`` → ``lrs=(0.01,)``)."""

    name: str
    kind: type
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    kwarg: str | None = None
    convert: Callable[[Any], Any] | None = None

    def describe(self) -> str:
        """``k (int ≥ 1)``, ``metric (euclidean | cosine)``, ``lr (float > 0, ≤ 10)``."""
        if self.choices:
            return f"{self.name} ({' | '.join(self.choices)})"
        parts = [self.kind.__name__]
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"≤ {_num(self.high)}")
        return f"{self.name} ({' '.join(parts[:2])}{', ' + parts[2] if len(parts) > 2 else ''})"

    def check(self, value: Any) -> Any:
        """The value converted to ``kind``, or :class:`ArgError` saying what is allowed."""
        bad = ArgError(self.name, f"{self.name}={value!r} is not valid", self.describe())
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ArgError(self.name, f"{self.name} is true or false, got {value!r}", "")
            return value
        if self.kind is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise bad
            v = str(value).lower()
            if self.choices and v not in self.choices:
                raise ArgError(
                    self.name,
                    f"{self.name}={value!r} is not one of {', '.join(self.choices)}",
                    f"e.g. {self.name}={self.choices[0]}",
                )
            return v
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ArgError(self.name, f"{self.name} is a number, got {value!r}", self.describe())
        if not math.isfinite(value):
            raise bad
        if self.kind is int:
            if float(value) != int(value):
                raise ArgError(
                    self.name, f"{self.name} is a whole number, got {value!r}", self.describe()
                )
            value = int(value)
        else:
            value = float(value)
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        if not low_ok or (self.high is not None and value > self.high):
            raise ArgError(self.name, f"{self.name}={_num(value)} is out of range", self.describe())
        return value

    def apply(self, value: Any) -> dict[str, Any]:
        """The function keyword(s) a checked value sets."""
        return {self.kwarg or self.name: self.convert(value) if self.convert else value}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def inferred(kwargs: Mapping[str, Any]) -> tuple[Arg, ...]:
    """Args for keyword defaults without a declaration (see the module doc)."""
    out = []
    for name, default in kwargs.items():
        if isinstance(default, bool):
            out.append(Arg(name, bool))
        elif isinstance(default, int):
            out.append(Arg(name, int, low=1 if default >= 1 else 0, high=MAX_INFERRED_INT))
        elif isinstance(default, float):
            out.append(Arg(name, float, low=0.0, low_open=True))
    return tuple(out)


def check_args(proxy: str, declared: tuple[Arg, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """The function keywords set by ``values`` (checked against ``declared``), in name order;
    :class:`ArgError` for an unknown name (listing the valid ones) or a bad value."""
    by_name = {a.name: a for a in declared}
    out: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for name in sorted(values):
        a = by_name.get(name)
        if a is None:
            valid = ", ".join(x.describe() for x in declared)
            close = difflib.get_close_matches(name, list(by_name), n=1)
            raise ArgError(
                name,
                f"{proxy} has no parameter {name!r}",
                (f"did you mean {close[0]!r}? " if close else "")
                + (f"{proxy} takes {valid}" if declared else f"{proxy} takes no parameters"),
            )
        kw = a.kwarg or a.name
        if kw in set_by:  # an alias and its parameter, e.g. lr and learning_rate
            raise ArgError(
                name, f"{set_by[kw]} and {name} set the same parameter", "give one of them"
            )
        set_by[kw] = name
        out.update(a.apply(a.check(values[name])))
    return out
