"""Trained experts, cached on disk by content and shared by every home on the machine.

Training an expert is deterministic (two runs give bit-identical weights, ``experts.py``), so its
weights are a function of the recipe, the code that trains it and the torch that runs it. The
cache key is the sha256 of exactly those: the :class:`~shift.catalog.experts.ExpertSpec`'s
fields, the epochs/sample overrides, the source of ``experts.py`` and ``datasets.py``, and torch's
version. A hit loads the weights from ``<key>.safetensors`` through
:mod:`shift.catalog.checkpoint` (never unpickled) and the training facts from ``<key>.json``; a
miss trains and stores both atomically. A damaged or unreadable entry is trained again.

Where: ``$SHIFT_CACHE_DIR/experts`` if set, else ``$XDG_CACHE_HOME/shift/experts``, else
``~/.cache/shift/experts``. Deleting it loses nothing but time (62-83 s per expert on the 2-core
box).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from shift.errors import ShiftError
from shift.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_ENV = "SHIFT_CACHE_DIR"


def cache_dir() -> Path:
    """The folder of cached experts (see the module docstring)."""
    root = os.environ.get(CACHE_ENV) or ""
    if root:
        return Path(root) / "experts"
    xdg = os.environ.get("XDG_CACHE_HOME") or ""
    return (Path(xdg) if xdg else Path.home() / ".cache") / "shift" / "experts"


def expert_key(spec: Any, epochs: int | None = None, n: int | None = None) -> str:
    """sha256 of what decides an expert's weights: recipe, overrides, training code, torch."""
    import torch

    from shift import datasets
    from shift.catalog import experts

    parts = {
        "spec": dataclasses.asdict(spec),
        "epochs": epochs,
        "n": n,
        "code": hashlib.sha256(
            (inspect.getsource(experts) + inspect.getsource(datasets)).encode()
        ).hexdigest(),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_expert(
    spec: Any, *, epochs: int | None = None, n: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """``experts.train_expert(spec, epochs=, n=)``'s result, from the cache when it holds it.
    ``info["cached"]`` says which; ``info["seconds"]`` is this call's wall time and
    ``info["trained_seconds"]`` what training took when it ran."""
    from shift.catalog.experts import SmallCNN, train_expert

    t0 = time.perf_counter()
    key = expert_key(spec, epochs, n)
    weights, facts = cache_dir() / f"{key}.safetensors", cache_dir() / f"{key}.json"
    if weights.is_file() and facts.is_file():
        try:
            from shift.catalog.checkpoint import load_into

            info = json.loads(facts.read_text())
            model = load_into(SmallCNN(len(spec.classes)), weights).eval()
            return model, {**info, "cached": True, "seconds": time.perf_counter() - t0}
        except (ShiftError, OSError, ValueError, KeyError) as e:
            log.warning("expert %s: cached weights unusable (%s); training again", spec.name, e)
    model, info = train_expert(spec, epochs=epochs, n=n)
    _store(model, info, weights, facts)
    return model, {**info, "cached": False, "trained_seconds": info["seconds"]}


def warm(specs: list[Any], workers: int | None = None) -> int:
    """Train the experts of ``specs`` missing from the cache in parallel processes (training is
    single-threaded and deterministic, so the weights are those of a sequential run); returns
    how many were trained here. With one missing expert, or one worker, nothing is trained here:
    the caller's own build does it."""
    todo = [s for s in specs if not _cached(s)]
    workers = min(len(todo), workers or os.cpu_count() or 1)
    if workers < 2:
        return 0
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(cached_expert, todo))
    return len(todo)


def _cached(spec: Any) -> bool:
    key = expert_key(spec)
    return all((cache_dir() / f"{key}{ext}").is_file() for ext in (".safetensors", ".json"))


def _store(model: Any, info: dict[str, Any], weights: Path, facts: Path) -> None:
    """Write the weights (safetensors) then the facts; a failure to cache is only logged."""
    from safetensors.torch import save

    try:
        data = save({k: v.contiguous() for k, v in model.state_dict().items()})
        atomic_write_bytes(weights, data)
        record = {**info, "trained_seconds": info["seconds"]}
        atomic_write_bytes(facts, json.dumps(record).encode())
    except (OSError, ShiftError) as e:  # a read-only or full cache folder: just not cached
        log.warning("expert cache %s not written: %s", weights.parent, e)
