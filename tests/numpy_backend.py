"""A deterministic numpy inference backend, registered as "numpy-test": what adding a backend
takes (this one module; its registration is the decorator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shift.errors import ModelFileError
from shift.inference.embedder import register_backend
from shift.records import ModelRecord


@register_backend("numpy-test")
class NumpyEmbedder:
    """embedding = (per-channel mean of the pixels / 255) @ W; logits = embedding @ V when the
    record has a head. W (4, dim) and V (dim, classes) are drawn from a generator seeded by the
    model's sha256, so a model always embeds the same way; the model file must exist."""

    providers = ["numpy"]
    device = "cpu"

    def __init__(
        self, model_path: str, record: ModelRecord, *, device: str = "auto", **_: object
    ) -> None:
        if not Path(model_path).is_file():
            raise ModelFileError(f"model {record.name!r}: cannot load {model_path}: no such file")
        self.name, self.record = record.name, record
        rng = np.random.default_rng(int(record.sha256[:16], 16))
        self._w = rng.standard_normal((4, record.dim)).astype(np.float32)
        classes = record.head_classes if record.head_output else None
        self._v = None if classes is None else rng.standard_normal((record.dim, classes))

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        pooled = images.astype(np.float32).mean(axis=(1, 2)) / 255.0  # (N, C), C <= 4
        emb = (pooled @ self._w[: pooled.shape[1]]).astype(np.float32)
        logits = None if self._v is None else (emb @ self._v).astype(np.float32)
        return emb, logits
