"""What every model source shares: the :class:`Source` protocol, building an architecture on the
``meta`` device (no memory, no weights) to learn its embedding size, and the metadata record of a
model registered without weights.

A source turns its own ids (``resnet50.IMAGENET1K_V2``, ``resnet50.a1_in1k``,
``google/vit-base-patch16-224``) into registry names (:func:`registry_name`) and
:class:`~shift.records.ModelRecord` rows with ``weights='missing'``; given a local weight file (or,
when asked and online, its library's own download) it builds the eval-mode torch module that
returns ``(embedding, logits)``, which :mod:`shift.catalog.sources.weights` exports to ONNX.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from shift.errors import ShiftError
from shift.records import InputSpec, ModelRecord

#: ImageNet-1k's training set (ILSVRC-2012), the upstream size of ImageNet-1k weights
IMAGENET1K_TRAIN = 1_281_167

#: the graph names every source's export uses (``shift.catalog.importer.export``)
EMBEDDING_OUTPUT, LOGITS_OUTPUT, INPUT_NAME = "embedding", "logits", "input"


class Source(Protocol):
    """A provider of pre-trained models (torchvision, timm, Hugging Face, a benchmark table)."""

    name: str

    def available(self) -> list[str]:
        """Every id this source can describe offline (``--all``)."""
        ...

    def describe(self, ids: list[str]) -> list[ModelRecord]:
        """Metadata records (``weights='missing'``) for ``ids``; unknown ids raise
        :class:`~shift.errors.NotFoundError` naming them, before anything is registered."""
        ...

    def load(self, rec: ModelRecord, weights: Path | None, download: bool) -> Any:
        """The eval-mode torch module of ``rec`` returning ``(embedding, logits)``, its weights
        read from ``weights`` (a file, or a folder in the source's cache layout) or, with
        ``download``, fetched by the source library's own loader."""
        ...


def registry_name(prefix: str, source_id: str) -> str:
    """A registry name for a source's id: ``prefix-`` + the id with every character a name
    cannot hold (``.``, ``/``, ...) turned into ``-`` (``resnet50.IMAGENET1K_V2`` →
    ``tv-resnet50-imagenet1k_v2``), lower-cased."""
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", source_id).strip("-").lower()


def metadata_record(**fields: Any) -> ModelRecord:
    """A ``weights='missing'`` record: no file, no sha256; the graph names are those the export
    will give (``input`` → ``embedding``, ``logits``)."""
    fields.setdefault("output", EMBEDDING_OUTPUT)
    fields.setdefault("input_name", INPUT_NAME)
    return ModelRecord(path="", sha256="", weights="missing", **fields)


def input_spec(size: tuple[int, int], mean: Any, std: Any) -> InputSpec:
    """``InputSpec`` for an RGB NCHW model: centre crop to ``size`` (h, w), 0..1 mean/std."""
    return InputSpec(
        height=int(size[0]),
        width=int(size[1]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer a module registers moves to the ``meta`` device at once, so
    initialisers run on meta tensors (for builders that compute with tensors while building,
    which ``torch.device('meta')`` refuses)."""
    import torch
    from torch import nn

    reg_param, reg_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def param(self: nn.Module, name: str, param: Any) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        reg_param(self, name, param)

    def buffer(self: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            tensor = tensor.to("meta")
        reg_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter = param  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = reg_param  # type: ignore[method-assign]
        nn.Module.register_buffer = reg_buffer  # type: ignore[method-assign]


#: initialisers skipped while building on meta (on meta tensors they only cost time: RNG
#: decompositions dominate a meta build otherwise)
_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


@contextmanager
def _no_init() -> Iterator[None]:
    from torch.nn import init

    def skip(*args: Any, **kwargs: Any) -> Any:  # the tensor, untouched
        return args[0] if args else kwargs.get("tensor")

    saved = {n: getattr(init, n) for n in _INITS if hasattr(init, n)}
    for n in saved:
        setattr(init, n, skip)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def on_meta(build: Callable[[], Any]) -> Any:
    """``build()`` with its tensors on the ``meta`` device: shapes without memory or weights
    (``torch.nn.init`` initialisers are skipped meanwhile: there is nothing to initialise)."""
    import torch

    with _no_init():
        try:
            with torch.device("meta"):
                return build()
        except (NotImplementedError, RuntimeError):  # e.g. RegNet computes widths with tensors
            with _parameters_on_meta():
                return build()


def meta_shapes(module: Any, spec: InputSpec) -> tuple[int, int, int]:
    """``(parameters, embedding dim, head classes)`` of a meta-device ``(emb, logits)`` module,
    from one forward pass on a meta input of ``spec``'s size."""
    import torch

    params = sum(p.numel() for p in module.parameters())
    x = torch.empty(1, spec.channels, spec.height, spec.width, device="meta")
    with torch.no_grad():
        emb, logits = module(x)
    return params, int(emb.shape[-1]), int(logits.shape[-1])


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence library warnings (deprecations, init notices) while building."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def unknown_ids(source: str, unknown: list[str], known: list[str]) -> ShiftError:
    """The error for ids a source does not know, with the closest known id or architecture
    for each (``shift.catalog.sources.names`` raises it too, from the remembered ids)."""
    from shift.errors import NotFoundError
    from shift.query.syntax import did_you_mean

    options = sorted({*known, *(k.split(".", 1)[0] for k in known)})  # ids and architectures
    near = [did_you_mean(u, options) for u in unknown]
    if len(unknown) > 1:
        near = [f"{u}: {n}" for u, n in zip(unknown, near, strict=True) if n]
    return NotFoundError(
        f"{source} has no model {', '.join(map(repr, unknown))}",
        hint="".join(near) + f"the installed {source} knows {len(known)} models",
    )
