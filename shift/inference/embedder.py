"""The inference seam: the ``Embedder`` protocol and the registry of backends that implement it.

A backend is one module that defines an embedder class and registers it where it is defined::

    @register_backend("my-backend")
    class MyEmbedder:
        def __init__(self, model_path, record, *, device="auto", intra_op_threads=None): ...

``make_embedder(name, model_path, record, **opts)`` builds (and loads) one. The built-in backends
are imported lazily, on the first look-up, so importing this module imports no runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from shift.errors import ShiftError
from shift.records import ModelRecord

DEFAULT_BACKEND = "onnxruntime"


@runtime_checkable
class Embedder(Protocol):
    """One model, loaded and ready: construction loads it (raising ``ShiftError`` naming the
    model when it cannot), ``embed`` runs it.

    ``providers`` and ``device`` say what it actually runs on, read back from the runtime (e.g.
    ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` and ``"cuda"``), never the request.
    An embedder may also offer ``cancel()``: called from another thread when a batch runs past
    the inference timeout, it should make the running ``embed`` stop (raising).
    """

    name: str
    providers: list[str]

    @property
    def device(self) -> str: ...

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 NHWC batch -> (embeddings float32 (N, record.dim), logits float32
        (N, record.head_classes) or None when the record has no head). Raises ``ShiftError``
        naming the model on a failure."""
        ...


EmbedderFactory = Callable[..., Embedder]
"""``factory(model_path, record, *, device="auto", intra_op_threads=None) -> Embedder``; a
backend may ignore the options it has no use for."""

F = TypeVar("F", bound=EmbedderFactory)

_BACKENDS: dict[str, EmbedderFactory] = {}


def _load_builtins() -> None:
    """Import the built-in backend modules; each registers itself when imported."""
    from shift.inference import (
        onnx_backend,  # noqa: F401  (registers "onnxruntime")
        torch_backend,  # noqa: F401  (registers "torch")
    )


def register_backend(name: str) -> Callable[[F], F]:
    """Class (or function) decorator: make ``factory`` the backend called ``name``. Registering
    a second, different factory under a taken name raises ``ShiftError``."""

    def decorate(factory: F) -> F:
        old = _BACKENDS.get(name)
        if old is not None and _origin(old) != _origin(factory):
            raise ShiftError(
                f"inference backend {name!r} is already registered by {_origin(old)}",
                hint="choose another name for the new backend",
            )
        _BACKENDS[name] = factory
        return factory

    return decorate


def _origin(factory: EmbedderFactory) -> str:
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"


def known_backends() -> list[str]:
    """The registered backend names, sorted (built-ins included)."""
    _load_builtins()
    return sorted(_BACKENDS)


def backend_factory(name: str, module: str | None = None) -> EmbedderFactory:
    """The factory registered as ``name``. When this process has not imported the registering
    ``module`` yet (a Ray worker), it is imported first. Unknown name -> ``ShiftError`` naming
    the known backends."""
    if name not in _BACKENDS:
        _load_builtins()
    if name not in _BACKENDS and module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ShiftError(
                f"inference backend {name!r}: cannot import its module {module!r}: {e}",
                hint="the module that registers a backend must be importable here "
                "(on every Ray worker: put it on PYTHONPATH)",
            ) from e
    if name not in _BACKENDS:
        raise ShiftError(
            f"unknown inference backend {name!r}",
            hint=f"known backends: {', '.join(sorted(_BACKENDS))}",
        )
    return _BACKENDS[name]


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
