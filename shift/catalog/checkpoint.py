"""The one way shift reads model weights, for every source (torchvision, timm, Hugging Face
folders, the catalog's own files, fine-tune checkpoints).

A weight file is checked before a byte of it is parsed: a regular file (not a device, FIFO or
folder), not empty, at most :func:`size_cap` bytes for the architecture it is meant for. It is
then read by one of two loaders that never run code: ``safetensors`` (a JSON header and raw
tensors), or ``torch.load(..., weights_only=True, mmap=True)`` for torch's zip and legacy formats
(a restricted unpickler that admits tensors and plain containers only). Library loaders
(``torch.hub``, ``timm.create_model(pretrained=True)``, ``from_pretrained``) are never used: some
unpickle with ``weights_only=False`` and a file linked into their caches skips their hash checks.

The result must be a flat ``{name: tensor}`` state dict (optionally wrapped once under
``state_dict``/``model``/``module`` or with DataParallel's ``module.`` prefix), every floating
value finite, and fit the target module's keys and shapes exactly. Every refusal is a
:class:`~shift.errors.WeightsFileError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shift.errors import WeightsFileError

StateDict = dict[str, torch.Tensor]

#: checkpoint keys that wrap a state dict one level down (training scripts' habits)
WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")

#: bytes a checkpoint may hold beyond its parameters' float64 size (names, buffers, metadata)
SIZE_SLACK = 64 * 2**20

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # torch's legacy format starts with a pickled magic number


def size_cap(params: int | None) -> int:
    """The largest weight file accepted for a model of ``params`` parameters:
    ``2 × 8 × params + 64 MiB`` (float64 weights twice over, e.g. weights and an EMA copy); 4 GiB
    when the parameter count is unknown."""
    if not params:
        return 4 * 2**30
    return 16 * int(params) + SIZE_SLACK


def check_file(path: Path, *, max_bytes: int) -> int:
    """The size of ``path`` after checking it is a regular, non-empty file of at most
    ``max_bytes`` bytes (symlinks followed)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise WeightsFileError(f"{path}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WeightsFileError(
            f"{path}: not a regular file", hint="give the weight file itself (.pth, .safetensors)"
        )
    if st.st_size == 0:
        raise WeightsFileError(f"{path}: empty file (0 bytes), no weights in it")
    if st.st_size > max_bytes:
        raise WeightsFileError(
            f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} its architecture can "
            "need; refused unread",
            hint="give the checkpoint of this architecture's weights only",
        )
    return st.st_size


def read_state_dict(path: str | Path, *, max_bytes: int) -> StateDict:
    """The state dict in ``path`` (safetensors, or torch's zip/legacy format read with
    ``weights_only=True``), checked to be a flat mapping of finite tensors."""
    path = Path(path)
    size = check_file(path, max_bytes=max_bytes)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTO]):
        raw = _torch_load(path, zipped=head.startswith(_ZIP_MAGIC))
    elif _looks_like_safetensors(head, size):
        raw = _safetensors_load(path)
    else:
        raise WeightsFileError(
            f"{path}: not a weights checkpoint (neither safetensors nor a torch.save file)",
            hint="give a state dict saved by torch.save or safetensors",
        )
    state = _unwrap(raw, path)
    check_finite(state, path)
    return state


def load_into(
    module: nn.Module,
    path: str | Path,
    *,
    params: int | None = None,
    adapt: Callable[[StateDict, nn.Module], StateDict] | None = None,
    what: str = "this architecture",
) -> nn.Module:
    """Read ``path`` (capped by ``params``, else by ``module``'s own parameter count), let
    ``adapt`` rename keys as the architecture's library does, and load it strictly into
    ``module`` (``what`` names it in errors); return ``module``."""
    n = params or sum(p.numel() for p in module.parameters())
    state = read_state_dict(path, max_bytes=size_cap(n))
    if adapt is not None:
        try:
            state = adapt(state, module)
        except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as e:
            raise _mismatch(path, what, _first_line(e)) from None
    fit_state(module, state, path, what)
    return module


def fit_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str = "this architecture",
) -> None:
    """Load ``state`` into ``module`` (``what``) strictly: the same keys, the same shapes, else a
    :class:`WeightsFileError` listing what differs."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in want.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise _mismatch(path, what, "; ".join(parts))
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:  # dtype that cannot be copied, etc.
        raise _mismatch(path, what, _first_line(e)) from None


def check_finite(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse a state dict with a NaN or infinite floating value, naming the first tensor."""
    bad = [
        k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise WeightsFileError(
            f"{path}: non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}",
            hint="a diverged training run saves such weights; give a checkpoint from before it",
        )


def fetch_url(url: str) -> Path:
    """``url``'s file in torch.hub's cache folder, downloaded there when absent (the sha256
    prefix in its name checked, as torchvision does); it is then read like any local file."""
    import re

    import torch.hub

    name = os.path.basename(url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        m = re.search(r"-([a-f0-9]{6,})\.", name)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=m.group(1) if m else None)
        except (OSError, RuntimeError) as e:  # no network, or a file that fails its hash
            raise WeightsFileError(f"cannot download {url}: {_first_line(e)}") from None
    return target


def _torch_load(path: Path, *, zipped: bool) -> Any:
    """``torch.load`` that unpickles tensors and plain containers only (never code)."""
    try:
        with warnings.catch_warnings():  # "pickle protocol 4 ... not the default" and the like
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        raise WeightsFileError(
            f"{path}: holds Python objects besides tensors, which only a loader that runs code "
            f"could read; refused, nothing in it was run ({_unpickler_reason(e)})",
            hint="save a plain state dict: torch.save(model.state_dict(), path)",
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, struct.error, ValueError, OSError) as e:
        raise WeightsFileError(
            f"{path}: truncated or corrupt torch checkpoint ({_first_line(e, 160)})"
        ) from None


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """The line of torch's restricted unpickler's message that names what it refused."""
    for line in str(e).splitlines():
        line = line.split("WeightsUnpickler error:", 1)[-1].strip()
        if "GLOBAL" in line or "Unsupported" in line:
            return line[:160]
    return "not a plain state dict"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _safetensors_load(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise WeightsFileError(
            f"{path}: truncated or corrupt safetensors file ({_first_line(e, 160)})"
        ) from None


def _unwrap(raw: Any, path: Path) -> StateDict:
    """The flat ``{str: tensor}`` mapping in ``raw`` (one wrapper level and a DataParallel
    ``module.`` prefix are taken off)."""
    if isinstance(raw, Mapping) and not _is_state(raw):
        for key in WRAPPER_KEYS:
            if key in raw and isinstance(raw[key], Mapping) and _is_state(raw[key]):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw or not _is_state(raw):
        what = type(raw).__name__ if not isinstance(raw, Mapping) else "a mapping of non-tensors"
        raise WeightsFileError(
            f"{path}: not a state dict ({what}; expected names mapped to tensors)",
            hint="save a plain state dict: torch.save(model.state_dict(), path)",
        )
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_state(m: Mapping[Any, Any]) -> bool:
    return bool(m) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in m.items())


def _mismatch(path: str | Path, what: str, detail: str) -> WeightsFileError:
    return WeightsFileError(
        f"{path}: the weights do not fit {what}, another architecture's ({detail})",
        hint="give the checkpoint written for this model's architecture",
    )


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]
