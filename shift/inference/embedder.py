"""The inference seam: the ``Embedder`` protocol and the registry of backends that implement it.

A backend is one module that defines an embedder class and registers it where it is defined::

    @register_backend("my-backend")
    class MyEmbedder:
        def __init__(self, model_path, record, *, device="auto", intra_op_threads=None): ...

Looking a backend up and building an embedder is :mod:`shift.inference.backends`' job, which
imports the built-in backends lazily; this module imports no backend and no runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from shift.errors import ShiftError

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

#: every registered backend by name (filled by :func:`register_backend`; looked up in
#: :mod:`shift.inference.backends`)
BACKENDS: dict[str, EmbedderFactory] = {}


def register_backend(name: str) -> Callable[[F], F]:
    """Class (or function) decorator: make ``factory`` the backend called ``name``. Registering
    a second, different factory under a taken name raises ``ShiftError``."""

    def decorate(factory: F) -> F:
        old = BACKENDS.get(name)
        if old is not None and _origin(old) != _origin(factory):
            raise ShiftError(
                f"inference backend {name!r} is already registered by {_origin(old)}",
                hint="choose another name for the new backend",
            )
        BACKENDS[name] = factory
        return factory

    return decorate


def _origin(factory: EmbedderFactory) -> str:
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"
