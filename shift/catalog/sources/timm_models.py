"""timm's pre-trained models as a model source.

Metadata comes from timm's ``pretrained_cfg`` of ``architecture.tag`` (offline, in the package):
input size, mean/std, licence, the Hugging Face hub id and the weights' URL; the upstream dataset
is read from the tag (``in1k``, ``in21k``/``in22k``, ``laion2b``, ...). Parameters and the
embedding size come from building the model on the ``meta`` device. timm states no ImageNet
accuracy in its configs, so ``imagenet_top1`` stays empty (the agnostic ranking then uses the
upstream dataset's size).

Embedding = ``forward_head(forward_features(x), pre_logits=True)``, logits = ``forward_head``.
Weights load through timm's own loader: ``create_model(name, pretrained=True,
pretrained_cfg_overlay={'file': FILE})`` for a local file (``.safetensors``, ``.bin``, ``.pth``)
or a Hugging Face folder (``model.safetensors``/``pytorch_model.bin`` inside); with ``download``,
``create_model(name, pretrained=True)`` fetches from the hub when online.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    return tuple(_timm().list_pretrained())


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


class Embedder(nn.Module):
    """A timm classifier as ``forward(x) -> (embedding, logits)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.forward_features(x)
        return self.net.forward_head(feats, pre_logits=True), self.net.forward_head(feats)


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
        assert rec.source_id is not None
        model_id = rec.source_id.partition(":")[2].removeprefix("hf-hub:").removeprefix("timm/")
        timm = _timm()
        kw: dict[str, Any] = {"pretrained": True}
        if weights is not None:
            kw["pretrained_cfg_overlay"] = {"file": str(weight_file(Path(weights)))}
        elif not download:
            raise ShiftError(f"model {rec.name!r}: no weights given")
        with quiet_warnings():
            try:
                net = timm.create_model(model_id, **kw)
            except (RuntimeError, KeyError, ValueError) as e:
                raise ModelFileError(
                    f"model {rec.name!r}: the weights do not fit timm's {model_id} "
                    f"({str(e).splitlines()[0][:300]})"
                ) from None
            except OSError as e:
                raise ShiftError(f"model {rec.name!r}: cannot get its weights: {e}") from None
        return Embedder(net).eval()


def weight_file(path: Path) -> Path:
    """A weight file, or the weight file inside a Hugging Face folder."""
    if path.is_file():
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
