"""timm's pre-trained models as a model source.

Metadata comes from timm's ``pretrained_cfg`` of ``architecture.tag`` (offline, in the package):
input size, mean/std, licence, the Hugging Face hub id and the weights' URL; the upstream dataset
is read from the tag (``in1k``, ``in21k``/``in22k``, ``laion2b``, ...). Parameters and the
embedding size come from building the model on the ``meta`` device. timm states no ImageNet
accuracy in its configs, so ``imagenet_top1`` stays empty (the agnostic ranking then uses the
upstream dataset's size).

Embedding = ``forward_head(forward_features(x), pre_logits=True)``, logits = ``forward_head``.
Weights: ``create_model(name, pretrained=False)`` builds the architecture, and the state dict of a
local file (``.safetensors``, ``.bin``, ``.pth``) or Hugging Face folder
(``model.safetensors``/``pytorch_model.bin`` inside) is read by :mod:`shift.catalog.checkpoint`
(safetensors or ``torch.load(weights_only=True)``, checked first) and passed through the
architecture's ``checkpoint_filter_fn`` as timm's own pretrained loading does; timm's loader is
never called. With ``download``, the file is fetched from the hub (or the config's URL) first.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shift.catalog.checkpoint import fetch_url, load_into
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

PREFIX = "timm"

#: file names timm's Hugging Face repositories hold, in the order they are tried
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _timm() -> Any:
    with quiet_warnings():
        import timm
    return timm


@functools.cache
def pretrained_ids() -> tuple[str, ...]:
    from shift.catalog.sources.names import remember

    ids = tuple(_timm().list_pretrained())
    from timm.models import _registry  # its table of renamed models (no public accessor)

    # typos are then answered without importing torch; renamed models resolve (``resolve``)
    remember("timm", ids, getattr(_registry, "_deprecated_models", {}))
    return ids


def upstream(tag: str) -> tuple[str | None, int | None]:
    """Upstream dataset (and its size where it is unambiguous) named by a timm tag."""
    t = tag.lower()
    for token, name in (
        ("laion2b", "LAION-2B"),
        ("laion400m", "LAION-400M"),
        ("openai", "WIT-400M (OpenAI CLIP)"),
        ("ig1b", "IG-1B"),
        ("yfcc100m", "YFCC100M"),
        ("jft", "JFT-300M"),
        ("in21k", "ImageNet-21k"),
        ("in22k", "ImageNet-21k"),
        ("in12k", "ImageNet-12k"),
    ):
        if token in t:
            return name, None
    if "in1k" in t:
        return "ImageNet-1k", IMAGENET1K_TRAIN
    return None, None


class TimmEmbedding(nn.Module):
    """A timm classifier as ``forward(x) -> (embedding, logits)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's model methods: torch types a module's attributes as ``Tensor | Module``
        feats = self.net.forward_features(x)  # type: ignore[operator]
        head = self.net.forward_head
        return head(feats, pre_logits=True), head(feats)  # type: ignore[operator]


class TimmSource:
    name = "timm"
    prefix = PREFIX

    def available(self) -> list[str]:
        return list(pretrained_ids())

    def resolve(self, given: str) -> str | None:
        """``arch.tag`` as given, ``arch`` → its default pretrained tag, or a name timm has
        renamed (``vit_huge_patch14_224_in21k`` → ``vit_huge_patch14_224.orig_in21k``)."""
        known = pretrained_ids()
        if given in known:
            return given
        from timm.models import _registry  # its table of renamed models (no public accessor)

        renamed = getattr(_registry, "_deprecated_models", {}).get(given)
        if renamed:
            return self.resolve(renamed)
        try:
            cfg = _timm().models.get_pretrained_cfg(given, allow_unregistered=True)
        except RuntimeError:  # an architecture with no such tag
            return None
        default = f"{given}.{cfg.tag}" if cfg is not None and cfg.tag else None
        return default if default in known else None

    def describe(self, ids: list[str]) -> list[ModelRecord]:
        wanted = [self.resolve(i) for i in ids]
        missing = [i for i, w in zip(ids, wanted, strict=True) if w is None]
        if missing:
            raise unknown_ids(self.name, missing, list(pretrained_ids()))
        return [self.record(w) for w in dict.fromkeys(w for w in wanted if w)]

    def record(self, model_id: str, **override: Any) -> ModelRecord:
        cfg = _timm().models.get_pretrained_cfg(model_id).to_dict()
        arch, tag = cfg["architecture"], cfg.get("tag") or ""
        _, h, w = cfg["input_size"]
        params, dim, classes = self.shapes(model_id)
        dataset, size = upstream(tag)
        fields: dict[str, Any] = {
            "name": registry_name(self.prefix, model_id),
            "family": re.match(r"[a-z]*", arch).group(0) or arch,  # type: ignore[union-attr]
            "architecture": arch,
            "params": params,
            "dim": dim,
            "head_output": LOGITS_OUTPUT if classes else None,
            "head_classes": classes or None,
            "input": input_spec((h, w), cfg["mean"], cfg["std"]),
            "upstream_dataset": dataset,
            "upstream_size": size,
            "source": "timm",
            "source_id": f"timm:{model_id}",
            "provenance": cfg.get("hf_hub_id")
            and f"hf-hub:{cfg['hf_hub_id']}"
            or cfg.get("origin_url"),
            "weights_url": cfg.get("url") or None,
            "license": cfg.get("license"),
            "tags": ["timm"],
        }
        fields.update(override)
        return metadata_record(**fields)

    @staticmethod
    @functools.cache
    def shapes(model_id: str, num_classes: int | None = None) -> tuple[int, int, int]:
        """(parameters, embedding dim, classes) of ``model_id`` (with ``num_classes`` when
        given) built on the meta device."""
        timm = _timm()
        kw = {} if num_classes is None else {"num_classes": num_classes}
        with quiet_warnings():
            net = on_meta(lambda: timm.create_model(model_id, pretrained=False, **kw))
        params = sum(p.numel() for p in net.parameters())
        dim = getattr(net, "head_hidden_size", None) or net.num_features
        return params, int(dim), int(net.num_classes)

    def load(self, rec: ModelRecord, weights: Path | None, download: bool) -> Any:
        """timm's architecture built without weights, then the state dict read by
        :func:`shift.catalog.checkpoint.load_into` (never timm's own loader) and put through the
        architecture's ``checkpoint_filter_fn``, as timm's pretrained loading does."""
        assert rec.source_id is not None
        model_id = rec.source_id.partition(":")[2].removeprefix("hf-hub:").removeprefix("timm/")
        if weights is None and not download:
            raise ShiftError(f"model {rec.name!r}: no weights given")
        path = weight_file(Path(weights)) if weights is not None else _fetch(model_id)
        return TimmEmbedding(build_and_load(model_id, path, params=rec.params)).eval()


def build_and_load(
    architecture: str, path: Path, *, params: int | None = None, num_classes: int | None = None
) -> nn.Module:
    """timm's ``architecture`` (with ``num_classes`` when given) holding the weights of ``path``."""
    kw = {} if num_classes is None else {"num_classes": num_classes}
    with quiet_warnings():
        try:
            net = _timm().create_model(architecture, pretrained=False, **kw)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ModelFileError(f"timm cannot build {architecture!r} ({e})") from None
        return load_into(
            net, path, params=params, adapt=_filter_of(net), what=f"timm's {architecture}"
        )


def _filter_of(net: nn.Module) -> Any:
    """The ``checkpoint_filter_fn(state_dict, model)`` of ``net``'s timm module, if it has one
    (it maps original checkpoints' keys to timm's; timm-format keys pass through)."""
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _fetch(model_id: str) -> Path:
    """The weight file of ``model_id`` fetched into a local cache: its Hugging Face hub file,
    else its URL (online only)."""
    cfg = _timm().models.get_pretrained_cfg(model_id)
    cfg = cfg.to_dict() if cfg is not None else {}
    if cfg.get("hf_hub_id"):
        from huggingface_hub import hf_hub_download

        errors = []
        for name in HF_WEIGHT_FILES:
            try:
                return Path(hf_hub_download(cfg["hf_hub_id"], name))
            except Exception as e:  # noqa: BLE001 - the hub's errors have no common base
                errors.append(f"{name}: {type(e).__name__}")
        raise ShiftError(f"cannot download {cfg['hf_hub_id']} ({'; '.join(errors)})")
    if cfg.get("url"):
        return fetch_url(cfg["url"])
    raise ShiftError(f"timm states no weight file to download for {model_id!r}")


def weight_file(path: Path) -> Path:
    """A weight file (anything but a folder: :mod:`shift.catalog.checkpoint` checks it is a
    regular file), or the weight file inside a Hugging Face folder."""
    if path.exists() and not path.is_dir():
        return path
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelFileError(
            f"{path}: no weight file in it (looked for {', '.join(HF_WEIGHT_FILES)})",
            hint="give the Hugging Face folder of the model, or the weight file itself",
        )
    raise ModelFileError(f"{path}: no such file or folder")
