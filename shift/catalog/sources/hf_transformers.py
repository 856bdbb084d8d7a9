"""Hugging Face ``transformers`` image classifiers (ViT, DeiT, BEiT, Swin, ConvNeXt, ...) as
models of the ``hf`` source.

Metadata of a local folder (``config.json``, ``model.safetensors``/``pytorch_model.bin``,
optionally ``preprocessor_config.json``), read without loading any weight:

* ``architecture`` = ``config.model_type`` (``vit``), ``family`` the same;
* ``params``, ``dim``, ``head_classes``: the model of ``config.json`` built on the ``meta``
  device (:func:`~shift.catalog.sources.base.on_meta`) and run once on a meta input;
* input size and normalisation: ``preprocessor_config.json``'s ``crop_size`` (when it centre
  crops) or ``size``, ``image_mean`` and ``image_std`` when the folder has one, else
  ``config.image_size`` and ImageNet's mean/std.

Embedding = the input of the classifier's last linear layer (:class:`HFEmbedding`): for ViT and
DeiT the final layer-normed ``[CLS]`` token, for ConvNeXt/Swin/ResNet the pooled features;
logits = the classifier's output. Weights: ``AutoModelForImageClassification.from_config`` builds
the classifier and :mod:`shift.catalog.checkpoint` reads its weight file (``from_pretrained``,
which may unpickle, is never called).
The package is imported only inside these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shift.catalog.sources.base import (
    LOGITS_OUTPUT,
    input_spec,
    meta_shapes,
    on_meta,
    quiet_warnings,
)
from shift.errors import BackendError, ModelFileError, ShiftError
from shift.records import InputSpec

#: ImageNet's mean/std (0..1 scale), used when a folder states no normalisation
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _transformers() -> Any:
    try:
        with quiet_warnings():
            import transformers
    except ImportError:
        raise BackendError(
            "this is a transformers checkpoint, and the transformers package is not installed",
            hint="pip install 'shift[torch]' (or pip install transformers)",
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def is_transformers_folder(folder: Path) -> bool:
    """A folder with a ``config.json`` that names a ``model_type`` and no timm
    ``architecture``."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "architecture" not in cfg


def load_config(where: str | Path, download: bool = False) -> Any:
    """``AutoConfig`` of a folder (or, with ``download``, a hub id)."""
    tf = _transformers()
    try:
        return tf.AutoConfig.from_pretrained(str(where), local_files_only=not download)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFileError(
            f"{where}: not a transformers config ({str(e).splitlines()[0][:300]})"
        ) from None


def preprocessing(folder: Path, config: Any) -> InputSpec:
    """Input size and normalisation: ``preprocessor_config.json`` when present, else
    ``config.image_size`` (224 without one) and ImageNet's mean/std."""
    size = getattr(config, "image_size", None) or 224
    h = w = int(size[0] if isinstance(size, (list, tuple)) else size)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            p = json.loads(pre.read_text())
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{pre}: not readable JSON ({e})") from None
        crop = p.get("crop_size") if p.get("do_center_crop") else None
        given = crop or p.get("size")
        if isinstance(given, int):
            h = w = given
        elif isinstance(given, dict) and "height" in given and "width" in given:
            h, w = int(given["height"]), int(given["width"])
        elif isinstance(given, dict) and "shortest_edge" in given:
            h = w = int(given["shortest_edge"])
        mean, std = p.get("image_mean") or mean, p.get("image_std") or std
    return input_spec((h, w), mean, std)


def head_linear(net: Any) -> Any:
    """The module whose input is the embedding: the last ``nn.Linear`` of ``net.classifier``
    (``classifier`` itself when it has none, e.g. ``Identity`` for ``num_labels=0``)."""
    from torch import nn

    head = getattr(net, "classifier", None)
    if not isinstance(head, nn.Module):
        raise ModelFileError(
            f"{type(net).__name__}: no classifier module to take the embedding from",
            hint="give the folder of an image classifier (…ForImageClassification)",
        )
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else head


def _embedding_class() -> Any:
    from torch import nn

    class HFEmbedding(nn.Module):
        """A transformers image classifier as ``forward(x) -> (embedding, logits)``:
        embedding = the (flattened) input of :func:`head_linear`, logits = the model's
        ``logits``."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.head = head_linear(net)

        def forward(self, x: Any) -> tuple[Any, Any]:
            seen: list[Any] = []
            hook = self.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            try:
                logits = self.net(pixel_values=x).logits
            finally:
                hook.remove()
            emb = seen[-1]
            width = getattr(self.head, "in_features", None)  # static in the ONNX graph
            return emb.reshape(-1, width) if width else emb.flatten(1), logits

    return HFEmbedding


def embedder(net: Any) -> Any:
    """``net`` (a transformers image classifier) wrapped as ``(embedding, logits)``, eval mode."""
    return _embedding_class()(net).eval()


def _classifier_class(config: Any) -> Any:
    tf = _transformers()
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as classifiers,
    )

    if config.model_type not in classifiers:
        raise ModelFileError(
            f"transformers has no image classifier for model_type {config.model_type!r}",
            hint="give the folder of an image classification model (ViT, DeiT, BEiT, ...)",
        )
    return tf.AutoModelForImageClassification


def shapes(config: Any, spec: InputSpec) -> tuple[int, int, int]:
    """(parameters, embedding dim, classes) of ``config``'s image classifier, built on the
    ``meta`` device (no memory, no weights) and run once on a meta input of ``spec``'s size."""
    auto = _classifier_class(config)
    with quiet_warnings():
        net = on_meta(lambda: auto.from_config(config))
        return meta_shapes(embedder(net), spec)


def folder_metadata(folder: Path) -> dict[str, Any]:
    """The ModelRecord fields a transformers folder states (see the module docstring)."""
    config = load_config(folder)
    spec = preprocessing(folder, config)
    params, dim, classes = shapes(config, spec)
    return {
        "architecture": config.model_type,
        "family": config.model_type,
        "params": params,
        "dim": dim,
        "head_output": LOGITS_OUTPUT if classes else None,
        "head_classes": classes or None,
        "input": spec,
    }


def load(name: str, where: str | Path, download: bool) -> Any:
    """The ``(embedding, logits)`` module of a local folder (or, with ``download``, a hub id
    fetched into the local hub cache first). The weight file is read by
    :mod:`shift.catalog.checkpoint`; transformers then only maps that state dict's keys (its
    checkpoint conversions) into the classifier of ``config.json``: it is given no file to read.
    Missing, unexpected or mis-shaped keys are refused."""
    from shift.catalog.checkpoint import read_state_dict, size_cap
    from shift.catalog.sources.timm_models import weight_file

    folder = Path(where) if Path(where).is_dir() else _fetch(str(where), download)
    path = weight_file(folder)  # a clear error when the folder holds no weight file
    config = load_config(folder)
    cls = _classifier_class(config)._model_mapping[type(config)]
    with quiet_warnings():
        params = sum(p.numel() for p in on_meta(lambda: cls(config)).parameters())
    state = read_state_dict(path, max_bytes=size_cap(params))
    with quiet_warnings():
        try:
            net, info = cls.from_pretrained(
                None, config=config, state_dict=state, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise _misfit(path, cls, str(e).splitlines()[0][:300]) from None
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if bad:
        detail = "; ".join(
            f"{len(v)} {k.replace('_', ' ')} (e.g. {sorted(v)[0]})" for k, v in bad.items()
        )
        raise _misfit(path, cls, detail)
    return embedder(net)


def _misfit(path: Path, cls: Any, detail: str) -> Exception:
    from shift.errors import WeightsFileError

    return WeightsFileError(
        f"{path}: the weights do not fit transformers' {cls.__name__} ({detail})",
        hint="give the folder save_pretrained wrote for this model",
    )


def _fetch(hub_id: str, download: bool) -> Path:
    """The local snapshot of ``hub_id`` (config, preprocessor config and one weight file),
    downloaded when ``download`` and online."""
    if not download:
        raise ModelFileError(f"{hub_id}: no such folder", hint="give the model's local folder")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "preprocessor_config.json", "model.safetensors"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - the hub's errors have no common base
        raise ShiftError(f"cannot download {hub_id} ({type(e).__name__}: {e})") from None
