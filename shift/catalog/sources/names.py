"""The ids a model source knows, remembered per installed library, so that a name can be checked
without importing the library.

torchvision and timm import torch: listing their ids costs seconds before the first answer, also
for a typo. Each time a source lists its ids (:func:`remember`, called by the sources), they are
written to ``$SHIFT_CACHE_DIR/source-ids/<library>-<version>-<mtime>.json`` (default cache dir
``$XDG_CACHE_HOME/shift``, else ``~/.cache/shift``); another install of the library (version, or
its package file's time) has another file. :func:`check_ids` then refuses an id that the source
surely does not know, with a "did you mean", in milliseconds. It accepts whatever the source might
resolve (a torchvision builder for its default weights, any case of an id, a timm architecture
for its default tag, a renamed timm model) and leaves ids it cannot judge (Hugging Face ids and
folders, a library whose ids were never listed) to the source, which checks them as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import metadata, util
from pathlib import Path

#: the library that lists each source's ids (hf's ``timm/...`` ids are timm's)
LIBRARIES = {"torchvision": "torchvision", "timm": "timm"}

#: hf ids that name a timm model (as :mod:`shift.catalog.sources.hf_models` reads them)
TIMM_PREFIXES = ("hf-hub:timm/", "timm/")


def cache_dir() -> Path:
    """``$SHIFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/shift``, else ``~/.cache/shift``."""
    if os.environ.get("SHIFT_CACHE_DIR"):
        return Path(os.environ["SHIFT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shift"


def _file(library: str) -> Path | None:
    """Where the ids of the installed ``library`` are remembered (None: not installed)."""
    try:
        version = metadata.version(library)
        spec = util.find_spec(library)  # finds the package without importing it
    except (metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    try:
        stamp = int(os.stat(spec.origin).st_mtime) if spec and spec.origin else 0
    except OSError:
        stamp = 0
    return cache_dir() / "source-ids" / f"{library}-{version}-{stamp}.json"


def remember(source: str, ids: Iterable[str], aliases: Iterable[str] = ()) -> None:
    """Remember the ids ``source`` lists, and ``aliases``: other names it resolves (builders,
    renamed models). Best effort: a cache that cannot be written is skipped."""
    path = _file(LIBRARIES[source])
    if path is None:
        return
    data = {"source": source, "ids": sorted(set(ids)), "aliases": sorted(set(aliases))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def remembered(source: str) -> tuple[list[str], set[str]] | None:
    """The ids and aliases remembered for the installed library of ``source``, or None."""
    library = LIBRARIES.get(source)
    path = _file(library) if library else None
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        return list(data["ids"]), set(data["aliases"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_ids(source: str, ids: list[str]) -> None:
    """Raise :class:`~shift.errors.NotFoundError` (the source's own, with a "did you mean") for
    the ``ids`` that ``source`` surely does not know, from its remembered ids; do nothing when
    it has none remembered or cannot judge an id (the source checks it)."""
    if source == "hf":
        timm_ids = [i.removeprefix(p) for i in ids for p in TIMM_PREFIXES if i.startswith(p)]
        source, ids = "timm", timm_ids
    known = remembered(source) if ids else None
    if known is None:
        return
    listed, aliases = known
    accepted = {*listed, *aliases, *(i.split(".", 1)[0] for i in listed)}
    lower = {i.lower() for i in listed}
    unknown = [i for i in ids if i not in accepted and i.lower() not in lower]
    if unknown:
        from shift.catalog.sources.base import unknown_ids

        raise unknown_ids(source, unknown, listed)
