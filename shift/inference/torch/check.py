"""Is a converted graph the model? The check a backend that converts ONNX runs before first use.

A fixed batch (``check_images``: two seeded noise images and two ramps at the model's input size)
goes through the backend in fp32 and through ONNX Runtime on CPU; every row of the embeddings,
and of the logits when the model has a head, must have cosine >= ``MIN_COSINE`` to ONNX
Runtime's. The verdict is kept per process by (model sha256, backend) and what else the
check depends on (the outputs read and the input spec), refusals included; an agreement is also
kept on disk in the home's torch cache (``cache``), keyed by all of that plus the device,
the converted module's structure and the runtimes' versions, so a re-run checks nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shift.errors import BackendError, ShiftError
from shift.records import InputSpec

MIN_COSINE = 0.999
CHECK_BATCH = 1  # the version of ``check_images``: bump when the check batch changes
_VERDICTS: dict[tuple[str, ...], str | None] = {}  # verdict_key -> None (agrees) or why not


def check_images(spec: InputSpec) -> np.ndarray:
    """The fixed uint8 (4, H, W, C) check batch for ``spec``: seeded noise x2, two ramps."""
    h, w, c = spec.height, spec.width, spec.channels
    noise = np.random.default_rng(0).integers(0, 256, (2, h, w, c), dtype=np.uint8)
    ramp_x = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32)[None, :, None], (h, w, c))
    ramp_y = np.broadcast_to(np.linspace(255, 0, h, dtype=np.float32)[:, None, None], (h, w, c))
    ramps = np.stack([ramp_x, ramp_y]).round().astype(np.uint8)
    return np.concatenate([noise, ramps])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b``; 1 where both rows are ~zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < 1e-12) & (nb < 1e-12)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    return np.where(both_zero, 1.0, cos)


def _disagreement(embedder: Any) -> str | None:
    """Why ``embedder``'s fp32 outputs differ from ONNX Runtime's on the check batch, or None."""
    from shift.inference.onnx_backend import OnnxEmbedder

    rec = embedder.record
    images = check_images(rec.input)
    reference = OnnxEmbedder(embedder.model_path, rec, device="cpu").embed(images)
    try:
        got = embedder.run(images, precision="fp32")
    except ShiftError as e:
        return e.message
    names = [rec.output] + ([rec.head_output] if rec.head_output else [])
    for i, name in enumerate(names):
        want = reference[i]
        assert want is not None  # names has the head's output only where the model has a head
        have = got[i] if i < len(got) else None
        if have is None or have.shape != want.shape:
            shape = None if have is None else tuple(have.shape)
            return f"output {name!r} has shape {shape}, ONNX Runtime's {tuple(want.shape)}"
        cos = row_cosines(have, want)
        worst = int(np.argmin(cos))
        if not cos[worst] >= MIN_COSINE:  # NaN fails too
            return (
                f"output {name!r}, row {worst} of the check batch: cosine {cos[worst]:.4f} "
                f"< {MIN_COSINE}"
            )
    return None


def verdict_key(rec: Any, backend: str) -> tuple[str, ...]:
    """What a verdict holds for: the weights (sha256), the backend, the outputs compared and
    the preprocessing (a record registered again with another output is checked again)."""
    spec = rec.input.model_dump_json()
    return (rec.sha256, backend, rec.input_name, rec.output, rec.head_output or "", spec)


def disk_verdict_key(embedder: Any, backend: str) -> str:
    """The torch cache's key for ``embedder``'s verdict: ``verdict_key``'s parts with the model
    file's sha256 (``embedder.model_sha256``), the device, the converted module's structure,
    the runtimes' versions and the check's settings."""
    from shift.inference.torch.cache import digest, module_fingerprint, runtime_versions

    rec = embedder.record
    return digest(
        "verdict",
        {
            "sha256": embedder.model_sha256,
            "backend": backend,
            "record": list(verdict_key(rec, backend)[2:]),
            "device": embedder.device,
            "module": module_fingerprint(embedder.module),
            "versions": runtime_versions(),
            "min_cosine": MIN_COSINE,
            "check_batch": CHECK_BATCH,
        },
    )


def _disk_cache(embedder: Any) -> Any:
    """The torch cache for ``embedder``'s model, or None (no cache, or nothing to key by)."""
    from shift.inference.torch.cache import TorchCache

    if not getattr(embedder, "model_sha256", "") or getattr(embedder, "module", None) is None:
        return None
    return TorchCache.for_model(embedder.model_path)


def check_against_onnxruntime(embedder: Any, backend: str) -> str:
    """Raise ``BackendError`` when ``embedder`` (``record``, ``model_path``, ``route`` and
    ``run(images, precision)``; ``model_sha256`` and ``module`` for the disk cache) disagrees
    with ONNX Runtime; checked once per process per (model sha256, ``backend``), and not at all
    when the disk cache holds an agreement. Returns where the verdict came from: "checked",
    "memory" or "disk"."""
    rec = embedder.record
    key = verdict_key(rec, backend)
    source = "memory"
    if key not in _VERDICTS:
        cache = _disk_cache(embedder)
        disk_key = disk_verdict_key(embedder, backend) if cache is not None else ""
        if cache is not None and cache.has_verdict(disk_key):
            _VERDICTS[key], source = None, "disk"
        else:
            _VERDICTS[key], source = _disagreement(embedder), "checked"
            if _VERDICTS[key] is None and cache is not None:
                cache.put_verdict(
                    disk_key,
                    {
                        "model": rec.name,
                        "sha256": embedder.model_sha256,
                        "backend": backend,
                        "device": embedder.device,
                        "route": embedder.route,
                    },
                )
    why = _VERDICTS[key]
    if why is not None:
        raise BackendError(
            f"model {rec.name!r}: the {backend} backend's conversion ({embedder.route}) "
            f"disagrees with ONNX Runtime: {why}",
            hint=f"use --backend onnxruntime for this model (checked in fp32 on a fixed batch; "
            f"per-row cosine >= {MIN_COSINE} required)",
        )
    return source


def forget_verdicts() -> None:
    """Drop every cached verdict (the next embedder of each model is checked again)."""
    _VERDICTS.clear()
