"""Hugging Face checkpoints as a model source.

Three kinds of id:

* ``timm/<name>`` (or ``hf-hub:timm/<name>``): a timm model on the hub; its metadata is timm's
  ``pretrained_cfg`` (offline) and its weights load as timm's do (:mod:`.timm_models`).
* a local folder in the Hugging Face layout written by timm (``config.json`` naming an
  ``architecture``, plus ``model.safetensors`` or ``pytorch_model.bin``): registered from its
  config and given its weights at once by :func:`shift.catalog.sources.import_models`.
* a local folder written by ``transformers`` (``config.json`` naming a ``model_type``): its
  metadata is read from the folder without loading weights (:mod:`.hf_transformers`: architecture
  = ``model_type``, params/dim from a ``meta``-device build, input from
  ``preprocessor_config.json``) and it gets its weights at once.
* any other id (``google/vit-base-patch16-224``): a ``transformers`` model. Offline, without the
  hub's ``config.json``, only the id is known: the row holds the architecture and upstream data
  the id names (``vit-base-patch16-224-in21k`` → ``vit-base-patch16``, ImageNet-21k; inferred, and
  said so in ``provenance``), and params/dim stay unknown until its weights are given
  (``models weights NAME --weights FOLDER``, or ``--download`` when online): then
  :meth:`HFSource.refine` reads the folder's metadata and ``transformers``' own
  ``AutoModelForImageClassification`` builds it from the config and
  :mod:`shift.catalog.checkpoint` reads its weights; the embedding is the input of the classifier's
  last linear layer (ViT/DeiT: the final layer-normed ``[CLS]`` token).

Registry names: ``/`` becomes ``__`` (what ``meta(vtab1k)`` maps back), other characters a name
cannot hold become ``-``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shift.catalog.sources import hf_transformers
from shift.catalog.sources.base import input_spec, metadata_record
from shift.catalog.sources.timm_models import TimmSource, weight_file
from shift.errors import ModelFileError, ShiftError
from shift.records import ModelRecord

TIMM_PREFIXES = ("hf-hub:timm/", "timm/")

#: architecture words an id may contain, most specific first (matched on word boundaries)
_ARCHS = (
    "vit-huge",
    "vit-large",
    "vit-base",
    "vit-small",
    "vit-tiny",
    "vit",
    "deit",
    "beit",
    "dit",
    "data2vec-vision",
    "swin",
    "convnext",
    "convit",
    "van",
    "mit",
    "perceiver",
    "resnet",
)


def hf_name(model_id: str) -> str:
    """``google/vit-base-patch16-224`` → ``google__vit-base-patch16-224``."""
    return "__".join(re.sub(r"[^A-Za-z0-9_-]+", "-", p).strip("-") for p in model_id.split("/"))


def infer_architecture(model_id: str) -> str | None:
    """The architecture a (``transformers``) id names, e.g. ``vit-base-patch16``."""
    tail = model_id.split("/")[-1].lower().replace("_", "-")
    for arch in _ARCHS:
        m = re.search(rf"(?:^|-){re.escape(arch)}(?:-(patch\d+))?(?:-|$|\d)", tail)
        if m:
            return arch + (f"-{m.group(1)}" if m.group(1) else "")
    return None


def infer_upstream(model_id: str) -> str | None:
    t = model_id.lower()
    if re.search(r"in21k|in22k|22k|pt22k", t):
        return "ImageNet-21k"
    return None


def _input_size(model_id: str) -> int:
    m = re.search(r"-(224|256|288|384|512)(?:-|$)", model_id.lower())
    return int(m.group(1)) if m else 224


class HFSource:
    name = "hf"

    def __init__(self) -> None:
        self.timm = TimmSource()

    def available(self) -> list[str]:
        return [f"timm/{i}" for i in self.timm.available()]

    def describe(self, ids: list[str]) -> list[ModelRecord]:
        return [self.record(i) for i in dict.fromkeys(ids)]

    def record(self, model_id: str) -> ModelRecord:
        folder = Path(model_id)
        if folder.is_dir() and hf_transformers.is_transformers_folder(folder):
            return self._transformers_local(folder)
        if folder.is_dir():
            return self._local(folder)
        for prefix in TIMM_PREFIXES:
            if model_id.startswith(prefix):
                timm_id = model_id.removeprefix(prefix)
                if self.timm.resolve(timm_id) is None:
                    self.timm.describe([timm_id])  # raises NotFoundError with suggestions
                return self.timm.record(
                    self.timm.resolve(timm_id) or timm_id,
                    name=hf_name(model_id.removeprefix("hf-hub:")),
                    source="hf",
                    source_id=f"hf:{model_id.removeprefix('hf-hub:')}",
                    tags=["hf", "timm"],
                )
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", model_id):
            raise ShiftError(
                f"{model_id!r} is neither a Hugging Face id (owner/name) nor a folder",
                hint="e.g. google/vit-base-patch16-224, timm/resnet50.a1_in1k, ./my-model/",
            )
        size = _input_size(model_id)
        return metadata_record(
            name=hf_name(model_id),
            family=(infer_architecture(model_id) or "unknown").split("-")[0],
            architecture=infer_architecture(model_id),
            input=input_spec((size, size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            upstream_dataset=infer_upstream(model_id),
            source="hf",
            source_id=f"hf:{model_id}",
            provenance=f"https://huggingface.co/{model_id} (architecture and upstream data "
            "inferred from the id; input size and normalisation assumed until its config is read)",
            weights_url=f"https://huggingface.co/{model_id}",
            tags=["hf"],
        )

    def _transformers_local(self, folder: Path) -> ModelRecord:
        where = folder.resolve()
        return metadata_record(
            name=hf_name(where.name),
            **hf_transformers.folder_metadata(where),
            source="hf",
            source_id=f"hf:{where}",
            provenance=f"local transformers folder {where}",
            tags=["hf", "transformers"],
        )

    def refine(self, rec: ModelRecord, weights: Path) -> ModelRecord:
        """``rec`` with what a transformers folder given as its weights states (architecture,
        params, dim, head, input size and normalisation); other rows as they are."""
        if not (weights.is_dir() and hf_transformers.is_transformers_folder(weights)):
            return rec
        found = hf_transformers.folder_metadata(weights.resolve())
        found["family"] = rec.family or found["family"]
        return rec.model_copy(update=found)

    def _local(self, folder: Path) -> ModelRecord:
        cfg = read_config(folder)
        if "architecture" not in cfg:
            raise ModelFileError(
                f"{folder}/config.json names neither a timm 'architecture' nor a transformers "
                "'model_type'",
                hint="give a folder written by timm or transformers (save_pretrained)",
            )
        arch = cfg["architecture"]
        pcfg = cfg.get("pretrained_cfg") or {}
        base = self.timm.record(arch) if self.timm.resolve(arch) else None
        if base is None:
            raise ModelFileError(f"{folder}: timm does not know the architecture {arch!r}")
        size = pcfg.get("input_size") or (3, base.input.height, base.input.width)
        params, dim, classes = self.timm.shapes(arch, cfg.get("num_classes"))
        return base.model_copy(
            update={
                "name": hf_name(folder.resolve().name),
                "params": params,
                "dim": dim,
                "head_classes": classes or None,
                "input": input_spec(
                    (size[1], size[2]),
                    pcfg.get("mean", base.input.mean),
                    pcfg.get("std", base.input.std),
                ),
                "source": "hf",
                "source_id": f"hf:{arch}",
                "provenance": f"local Hugging Face folder {folder.resolve()}",
                "weights_url": None,
                "upstream_dataset": None,
                "upstream_size": None,
                "tags": ["hf", "timm"],
            }
        )

    def load(self, rec: ModelRecord, weights: Path | None, download: bool) -> Any:
        assert rec.source_id is not None
        hub_id = rec.source_id.removeprefix("hf:")
        timm_row = hub_id.startswith("timm/") or "/" not in hub_id  # timm: hub or local
        if weights is not None and (Path(weights) / "config.json").is_file():
            cfg = read_config(Path(weights))
            if "architecture" not in cfg:
                return _transformers(rec, hub_id, weights, download)
            if not timm_row or cfg["architecture"] != rec.architecture:
                raise ModelFileError(
                    f"{weights}: a timm folder of {cfg['architecture']!r}, but {rec.name!r} is "
                    + (f"a timm {rec.architecture!r}" if timm_row else "a transformers model")
                )
            return _timm_from_folder(rec, Path(weights), cfg)
        if timm_row:
            timm_id = hub_id.removeprefix("timm/")
            return self.timm.load(
                rec.model_copy(update={"source_id": f"timm:{timm_id}"}), weights, download
            )
        return _transformers(rec, hub_id, weights, download)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{folder}: no readable config.json ({e})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{folder}/config.json: not a JSON object")
    return data


def _timm_from_folder(rec: ModelRecord, folder: Path, cfg: dict[str, Any]) -> Any:
    """A local Hugging Face folder written by timm: its architecture, its weight file read by
    :mod:`shift.catalog.checkpoint`."""
    from shift.catalog.sources.timm_models import TimmEmbedding, build_and_load

    net = build_and_load(
        cfg["architecture"],
        weight_file(folder),
        params=rec.params,
        num_classes=cfg.get("num_classes") or None,
    )
    return TimmEmbedding(net).eval()


def _transformers(rec: ModelRecord, hub_id: str, weights: Path | None, download: bool) -> Any:
    """A ``transformers`` image classifier from a local folder (or the hub with ``download``)."""
    if weights is None and not download:
        raise ShiftError(f"model {rec.name!r}: no weights given")
    return hf_transformers.load(rec.name, weights if weights is not None else hub_id, download)
