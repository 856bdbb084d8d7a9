"""torchvision's classification weights as a model source.

Metadata comes from the installed package, offline: each weight enum of
``torchvision.models.get_model_weights(builder)`` states ImageNet-1k acc@1/acc@5, the parameter
count, GFLOPS, the minimum input size, the recipe URL and the inference transforms (crop size,
mean, std). The embedding size comes from building the architecture on the ``meta`` device.

The embedding a torchvision model gives shift is the input of its last ``nn.Linear`` (the
ImageNet classifier, replaced by an identity): e.g. ResNet-50's 2048-d pooled features; the
logits are that linear layer's output. SqueezeNet has no linear head: its embedding is the
global average of ``features`` and its logits the classifier's.

Weights: the builder makes the architecture without weights (with the arguments it sets itself
for them), and the state dict is read by :mod:`shift.catalog.checkpoint` (safetensors or
``torch.load(weights_only=True)``, checked before reading) from a file given directly, a torch hub
cache folder (``<dir>/checkpoints/<file of the weights URL>``), or, with ``download``, the file
torch.hub downloads into its cache (sha256 prefix checked). torchvision's own loader is never
called: it unpickles with ``weights_only=False``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shift.catalog.checkpoint import StateDict, fetch_url, load_into
from shift.catalog.sources.base import (
    IMAGENET1K_TRAIN,
    LOGITS_OUTPUT,
    input_spec,
    metadata_record,
    on_meta,
    quiet_warnings,
    registry_name,
    unknown_ids,
)
from shift.errors import ModelFileError, ShiftError
from shift.records import ModelRecord

PREFIX = "tv"


def _tv() -> Any:
    with quiet_warnings():
        import torchvision.models as tvm
    return tvm


@functools.cache
def weight_ids() -> list[str]:
    """``builder.WEIGHTS`` for every classification weight of the installed torchvision: the
    weight enums of ``list_models(module=torchvision.models)`` that name their classes (this
    leaves out ``vgg16.IMAGENET1K_FEATURES``, whose classifier holds no values)."""
    from shift.catalog.sources.names import remember

    tvm = _tv()
    builders = tvm.list_models(module=tvm)
    ids = [
        f"{b}.{w.name}"
        for b in builders
        for w in tvm.get_model_weights(b)
        if w.meta.get("categories")
    ]
    remember("torchvision", ids, builders)  # typos are then answered without importing torch
    return ids


def _enum(source_id: str) -> tuple[str, Any]:
    tvm = _tv()
    builder, _, wname = source_id.partition(".")
    return builder, tvm.get_model_weights(builder)[wname]


def builder_kwargs(builder: str, weights: Any) -> dict[str, Any]:
    """The arguments torchvision's builder sets itself when given ``weights`` (its
    ``_ovewrite_named_param`` calls), so a weight-less build has the weighted architecture."""
    kw: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if builder in ("googlenet", "inception_v3"):
        kw.update(transform_input=True, aux_logits=True, init_weights=False)
    elif builder.startswith("vit_"):
        kw["image_size"] = weights.meta["min_size"][0]
    elif builder == "maxvit_t":
        kw["input_size"] = weights.meta["min_size"]
    return kw


class TorchvisionEmbedding(nn.Module):
    """Wraps a torchvision classifier: ``forward(x) -> (embedding, logits)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        self.head: nn.Module | None = None
        if linears:
            path, self.head = linears[-1]
            parent, _, attr = path.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, nn.Identity())

    def shapes(self) -> tuple[int, int]:
        """(embedding dim, classes), read from the head (no forward pass)."""
        if isinstance(self.head, nn.Linear):
            return self.head.in_features, self.head.out_features
        classifier = self.net.get_submodule("classifier")
        conv = next(m for m in classifier.modules() if isinstance(m, nn.Conv2d))
        return conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head is not None:
            emb = self.net(x)
            return emb, self.head(emb)
        feats = self.net.get_submodule("features")(x)  # SqueezeNet: a convolutional classifier
        return feats.mean(dim=(2, 3)), self.net.get_submodule("classifier")(feats).flatten(1)


class TorchvisionSource:
    name = "torchvision"

    def available(self) -> list[str]:
        return weight_ids()

    def describe(self, ids: list[str]) -> list[ModelRecord]:
        known = weight_ids()
        wanted = [self._resolve(i, known) for i in ids]
        missing = [i for i, w in zip(ids, wanted, strict=True) if w is None]
        if missing:
            raise unknown_ids(self.name, missing, known)
        return [self._record(w) for w in dict.fromkeys(w for w in wanted if w)]

    @staticmethod
    @functools.cache
    def _shapes(builder: str, kwargs: tuple[tuple[str, Any], ...]) -> tuple[int, int]:
        """(embedding dim, classes) of ``builder`` built with ``kwargs`` on the meta device
        (once per process and configuration: weights of one builder share it)."""
        tvm = _tv()
        with quiet_warnings():
            net = on_meta(lambda: tvm.get_model(builder, weights=None, **dict(kwargs)))
            return TorchvisionEmbedding(net).shapes()

    @staticmethod
    def _resolve(given: str, known: list[str]) -> str | None:
        """``resnet50.IMAGENET1K_V2``, ``resnet50.imagenet1k_v2``, or ``resnet50`` (its
        DEFAULT weights) → the exact id."""
        if given in known:
            return given
        lower = {k.lower(): k for k in known}
        if given.lower() in lower:
            return lower[given.lower()]
        tvm = _tv()
        if given in tvm.list_models(module=tvm):
            return f"{given}.{tvm.get_model_weights(given).DEFAULT.name}"
        return None

    def _record(self, source_id: str) -> ModelRecord:
        builder, w = _enum(source_id)
        meta = w.meta
        t = w.transforms()
        crop = t.crop_size[0]
        spec = input_spec((crop, crop), t.mean, t.std)
        kw = builder_kwargs(builder, w)
        dim, classes = self._shapes(builder, tuple(sorted(kw.items())))
        metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
        return metadata_record(
            name=registry_name(PREFIX, source_id),
            family=_family(builder),
            architecture=builder,
            params=int(meta["num_params"]),
            dim=dim,
            head_output=LOGITS_OUTPUT,
            head_classes=classes,
            input=spec,
            upstream_dataset=_upstream(source_id),
            upstream_size=IMAGENET1K_TRAIN if _upstream(source_id) == "ImageNet-1k" else None,
            imagenet_top1=metrics.get("acc@1"),
            imagenet_top5=metrics.get("acc@5"),
            imagenet_source=f"torchvision {_version()} weights metadata" if metrics else None,
            gflops=meta.get("_ops"),
            source="torchvision",
            source_id=f"torchvision:{source_id}",
            provenance=meta.get("recipe"),
            weights_url=w.url,
            license="BSD-3-Clause (torchvision); check the weights' dataset terms",
            tags=["torchvision"],
        )

    def load(self, rec: ModelRecord, weights: Path | None, download: bool) -> Any:
        """torchvision's architecture built without weights (the builder's own arguments for
        them), then the state dict read by :func:`shift.catalog.checkpoint.load_into`: never
        through ``torch.hub``'s loader, which unpickles with ``weights_only=False``."""
        tvm = _tv()
        assert rec.source_id is not None
        builder, w = _enum(rec.source_id.partition(":")[2])
        if weights is None and not download:
            raise ShiftError(f"model {rec.name!r}: no weights given")
        path = fetch_url(w.url) if weights is None else Path(weights)
        if path.is_dir():
            path = find_in_hub_dir(path, w.url)
        with quiet_warnings():
            net = tvm.get_model(builder, weights=None, **builder_kwargs(builder, w))
        adapt = _densenet_keys if builder.startswith("densenet") else None
        load_into(net, path, params=rec.params, adapt=adapt, what=f"torchvision's {builder}")
        return TorchvisionEmbedding(net).eval()


def _densenet_keys(state: StateDict, _: nn.Module) -> StateDict:
    """DenseNet's published files name ``norm.1`` what the module calls ``norm1``: the renaming
    torchvision's own ``densenet._load_state_dict`` does."""
    layer = r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    pattern = re.compile(layer + r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out: StateDict = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def find_in_hub_dir(folder: Path, url: str) -> Path:
    """The weight file of ``url`` inside a torch hub cache folder: ``<folder>/<file>``,
    ``<folder>/checkpoints/<file>`` or ``<folder>/hub/checkpoints/<file>``."""
    name = os.path.basename(url)
    tried = [folder / name, folder / "checkpoints" / name, folder / "hub" / "checkpoints" / name]
    for p in tried:
        if p.is_file():
            return p
    raise ModelFileError(
        f"{folder}: no {name} in it (looked in {', '.join(str(t.parent) for t in tried)})",
        hint="give the folder torch.hub uses (~/.cache/torch/hub) or the weight file itself",
    )


def _version() -> str:
    from importlib.metadata import version

    return version("torchvision").split("+")[0]


def _upstream(source_id: str) -> str:
    """SWAG weights were pre-trained on Instagram's 3.6B weakly labelled images (then given an
    ImageNet-1k head, end to end or linear); every other weight is ImageNet-1k's."""
    return "IG-3.6B" if "SWAG" in source_id else "ImageNet-1k"


def _family(builder: str) -> str:
    for fam in (
        "resnext",
        "wide_resnet",
        "resnet",
        "regnet",
        "efficientnet",
        "mobilenet",
        "convnext",
        "densenet",
        "vit",
        "swin",
        "maxvit",
        "vgg",
        "mnasnet",
        "shufflenet",
        "squeezenet",
        "inception",
        "googlenet",
        "alexnet",
    ):
        if builder.startswith(fam):
            return fam
    return builder
