"""Reproducible benchmark workloads: tiny ONNX model variants and a generated image task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def tiny_variants(base: Path, out_dir: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct real ONNX models: ``base`` with its initializers perturbed (seeded)."""
    import onnx
    from onnx import numpy_helper

    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(base))
    originals = [numpy_helper.to_array(t).copy() for t in model.graph.initializer]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        for t, orig in zip(model.graph.initializer, originals, strict=True):
            noisy = (orig + rng.normal(0, 0.2, orig.shape) * np.abs(orig).mean()).astype(orig.dtype)
            t.CopyFrom(numpy_helper.from_array(noisy, t.name))
        p = out_dir / f"variant{i:04d}.onnx"
        onnx.save(model, str(p))
        paths.append(p)
    return paths


def tiny_cnn(
    path: Path, size: int = 32, dim: int = 16, seed: int = 0, classes: int | None = None
) -> Path:
    """A seeded tiny CNN exported to ONNX: output ``embedding`` (and ``logits`` with a head)."""
    import torch
    from torch import nn

    from benchmarks.common import export_onnx

    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()
            )
            self.e = nn.Linear(16, dim)
            self.h = nn.Linear(dim, classes) if classes else None

        def forward(self, x: torch.Tensor) -> Any:
            z = self.e(self.f(x).mean(dim=(2, 3)))
            return z if self.h is None else (z, self.h(z))

    export_onnx(Tiny(), path, size, ["embedding"] + (["logits"] if classes else []))
    return path


def blob_task(
    n: int, classes: int = 4, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images whose brightness and a coloured square depend on the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 80, (n, size, size, 3)).astype(np.int32)
    for i, c in enumerate(y):
        r, col = (c * 7) % (size - 8), (c * 11) % (size - 8)
        x[i, r : r + 8, col : col + 8, c % 3] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)
