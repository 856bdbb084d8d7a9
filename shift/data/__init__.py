"""Data shipped inside the package, so that an installed copy (a wheel, ``pip install .``) has it
as well as a checkout: the model catalog (``catalog.yaml``) and the ground-truth fine-tuning
tables (``benchmarks/``, with their provenance in ``benchmarks/README.md``). Read through
:func:`path`, never from the source tree."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["path"]


def path(*parts: str) -> Path:
    """The file ``parts`` (e.g. ``"benchmarks", "vtab1k_finetune.csv"``) of the installed
    package's data (a real file: shift is installed as files, never run from a zip)."""
    return Path(str(files(__name__).joinpath(*parts)))
