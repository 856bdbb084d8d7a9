"""The records of an index: its key, its ``meta.json``, hnswlib settings, file names and errors.

Layout of a store root (``indexes/<task>/<model>/``)::

    meta.json            IndexMeta; written LAST, names every data file with its sha256
    vectors.npy          float32 (N, D), rows in ``sample_ids.json`` order
    logits.npy           float32 (N, C), only when the model has a classifier head
    labels.npy           int64 (N,)
    sample_ids.json      list[str] (N,)
    hnsw-l2.bin          hnswlib graph, space "l2", item label = row number
    hnsw-cosine.bin      hnswlib graph, space "cosine"
    parts-<keydigest>/   in-progress batches of a build (see ``writer.IndexWriter``)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shift.errors import ShiftError
from shift.records import ModelRecord

FORMAT_VERSION = 1
DEFAULT_BACKEND = "onnxruntime"
SPACES: tuple[str, ...] = ("l2", "cosine")
META_FILE = "meta.json"
VECTORS_FILE = "vectors.npy"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
IDS_FILE = "sample_ids.json"
LOCK_FILE = ".lock"


def hnsw_file(space: str) -> str:
    """File name of the hnswlib graph for ``space``."""
    return f"hnsw-{space}.bin"


def data_files(spaces: tuple[str, ...] | list[str] = SPACES) -> set[str]:
    """Every data file name an index may hold (``meta.json`` excluded)."""
    return {VECTORS_FILE, LOGITS_FILE, LABELS_FILE, IDS_FILE} | {hnsw_file(s) for s in spaces}


class IndexStoreError(ShiftError):
    """An index operation that cannot be done (missing samples, mismatched shapes...)."""


class IndexCorruptError(IndexStoreError):
    """A file of a stored index fails its sha256 check or cannot be read safely.

    ``path`` names the offending file; deleting the index (or rebuilding it) recovers."""

    def __init__(self, message: str, *, path: Path | None = None, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint or "rebuild the index (the damaged index directory can be deleted safely)",
        )
        self.path = path


@dataclass(frozen=True)
class HnswConfig:
    """hnswlib build settings, saved in every ``meta.json``. ``threads=1`` makes builds
    deterministic (same seed, same insertion order → byte-identical graph)."""

    M: int = 16
    ef_construction: int = 200
    seed: int = 100
    ef_search: int = 64
    threads: int = 1

    def settings(self) -> dict[str, int]:
        """The build settings recorded in ``IndexMeta.hnsw``."""
        return {"M": self.M, "ef_construction": self.ef_construction, "seed": self.seed}


class IndexKey(BaseModel):
    """What an index was computed from: everything that changes its vectors (task data, model
    weights, preprocessing, the inference backend that ran the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_hash: str
    model_sha: str
    preprocess: str
    backend: str = DEFAULT_BACKEND

    @classmethod
    def of(cls, task_hash: str, model: ModelRecord, backend: str = DEFAULT_BACKEND) -> IndexKey:
        """The key of ``model``'s index over task data ``task_hash``, embedded by ``backend``."""
        return cls(
            task_hash=task_hash,
            model_sha=model.sha256,
            preprocess=model.input.key(),
            backend=backend,
        )

    def digest(self) -> str:
        """``sha256(canonical JSON of the key)[:16]``: keys sorted, no whitespace. The default
        backend is left out, so keys from before the backend was part of them keep their digest."""
        fields = self.model_dump(exclude={"backend"} if self.backend == DEFAULT_BACKEND else None)
        canon = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


class IndexMeta(BaseModel):
    """Sidecar of one index: its key, shapes, build settings and each data file's sha256."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    key: IndexKey
    dim: int = Field(gt=0)
    count: int = Field(ge=0)
    spaces: list[str] = Field(default_factory=lambda: list(SPACES))
    has_logits: bool = False
    logits_dim: int | None = Field(None, gt=0)
    providers: list[str] = Field(default_factory=list)
    backend: str = Field(DEFAULT_BACKEND, description="the inference backend that embedded it")
    hnsw: dict[str, int] = Field(default_factory=dict)
    created: str
    updated: str
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 hex")
    complete: bool = False

    @model_validator(mode="before")
    @classmethod
    def _key_backend(cls, data: Any) -> Any:
        """A meta from before the key held the backend: its key's backend is the meta's."""
        key = data.get("key") if isinstance(data, dict) else None
        if isinstance(key, dict) and "backend" not in key:
            data = {**data, "key": {**key, "backend": data.get("backend", DEFAULT_BACKEND)}}
        return data


def utcnow() -> str:
    """Now, UTC, ISO 8601 to the second: the ``created``/``updated`` stamps of a meta."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
