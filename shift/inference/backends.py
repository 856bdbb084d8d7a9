"""Finding a backend and building an embedder with it: ``make_embedder(name, model_path,
record, **opts)``. The built-in backends are imported on the first look-up, so importing this
module imports no runtime; each registers itself in :mod:`shift.inference.embedder`."""

from __future__ import annotations

import importlib
from typing import Any

from shift.errors import ShiftError
from shift.inference.embedder import BACKENDS, Embedder, EmbedderFactory
from shift.records import ModelRecord


def _load_builtins() -> None:
    """Import the built-in backend modules; each registers itself when imported."""
    from shift.inference import onnx_backend  # noqa: F401  (registers "onnxruntime")
    from shift.inference.torch import backend  # noqa: F401  (registers "torch")


def known_backends() -> list[str]:
    """The registered backend names, sorted (built-ins included)."""
    _load_builtins()
    return sorted(BACKENDS)


def backend_factory(name: str, module: str | None = None) -> EmbedderFactory:
    """The factory registered as ``name``. When this process has not imported the registering
    ``module`` yet (a Ray worker), it is imported first. Unknown name -> ``ShiftError`` naming
    the known backends."""
    if name not in BACKENDS:
        _load_builtins()
    if name not in BACKENDS and module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ShiftError(
                f"inference backend {name!r}: cannot import its module {module!r}: {e}",
                hint="the module that registers a backend must be importable here "
                "(on every Ray worker: put it on PYTHONPATH)",
            ) from e
    if name not in BACKENDS:
        raise ShiftError(
            f"unknown inference backend {name!r}",
            hint=f"known backends: {', '.join(sorted(BACKENDS))}",
        )
    return BACKENDS[name]


def backend_module(name: str) -> str:
    """The module that registered backend ``name`` (what another process must import)."""
    return backend_factory(name).__module__


def make_embedder(
    backend: str,
    model_path: str,
    record: ModelRecord,
    *,
    module: str | None = None,
    **opts: Any,
) -> Embedder:
    """Build and load ``record``'s model at ``model_path`` with ``backend``; ``opts`` (``device``,
    ``intra_op_threads``) go to the backend. See ``backend_factory`` for ``module``."""
    return backend_factory(backend, module)(model_path, record, **opts)
