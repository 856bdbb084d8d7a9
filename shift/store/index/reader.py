"""A loaded index (``EmbeddingIndex``): rows by sample id, embeddings, logits and k-NN queries,
and the registry row that describes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shift.store.index.arrays import as_matrix
from shift.store.index.graphs import build_graph, load_graph
from shift.store.index.meta import (
    SPACES,
    HnswConfig,
    IndexKey,
    IndexMeta,
    IndexStoreError,
    hnsw_file,
)

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of ``path``, or None if it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class EmbeddingIndex:
    """A loaded index: ``vectors[i]`` is the embedding of ``sample_ids[i]`` with ``labels[i]``.

    ``vectors``/``logits`` may be read-only memory maps. hnswlib graphs load on first use."""

    def __init__(
        self,
        root: Path,
        meta: IndexMeta,
        sample_ids: list[str],
        vectors: np.ndarray,
        logits: np.ndarray | None,
        labels: np.ndarray,
        hnsw_config: HnswConfig | None = None,
        graphs: dict[str, hnswlib.Index] | None = None,
    ) -> None:
        self.root = Path(root)
        self.meta = meta
        self.sample_ids = sample_ids
        self.vectors = vectors
        self.logits = logits
        self.labels = labels
        self.hnsw_config = hnsw_config or HnswConfig()
        self._graphs: dict[str, hnswlib.Index] = dict(graphs or {})
        self._rows: dict[str, int] | None = None
        # identity of the graph files as of now: a lazy load must read these very files
        self._stamps = {s: file_stamp(self.root / hnsw_file(s)) for s in meta.spaces}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(root={str(self.root)!r}, count={self.meta.count}, "
            f"dim={self.meta.dim}, logits_dim={self.meta.logits_dim})"
        )

    @property
    def key(self) -> IndexKey:
        return self.meta.key

    @property
    def dim(self) -> int:
        return self.meta.dim

    def rows(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``sample_ids`` (int64), in the given order; unknown ids raise."""
        if self._rows is None:
            self._rows = {s: i for i, s in enumerate(self.sample_ids)}
        try:
            return np.fromiter((self._rows[s] for s in sample_ids), np.int64)
        except KeyError as e:
            raise IndexStoreError(f"sample {e.args[0]!r} is not in the index") from None

    def select(self, sample_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: float32 (n, D) embeddings and int64 (n,) labels of ``sample_ids``."""
        r = self.rows(sample_ids)
        return np.asarray(self.vectors[r], dtype=np.float32), np.asarray(self.labels[r])

    def select_logits(self, sample_ids: Sequence[str]) -> np.ndarray:
        """float32 (n, C) source-classifier logits of ``sample_ids``."""
        if self.logits is None:
            raise IndexStoreError("this index has no logits (the model has no classifier head)")
        return np.asarray(self.logits[self.rows(sample_ids)], dtype=np.float32)

    def hnsw(self, space: str = "l2") -> hnswlib.Index:
        """The hnswlib graph of ``space`` (``"l2"`` or ``"cosine"``): loaded lazily when the
        index was committed with it, else built in memory from the vectors on first use (what
        the store would have built: the same settings and insertion order)."""
        if space not in SPACES:
            raise IndexStoreError(f"no {space!r} graph: the spaces are {list(SPACES)}")
        if space not in self._graphs and space not in self.meta.spaces:
            g = build_graph(np.asarray(self.vectors, np.float32), space, self.hnsw_config)
            self._graphs[space] = g
        if space not in self._graphs:
            path = self.root / hnsw_file(space)
            if file_stamp(path) != self._stamps.get(space):
                raise IndexStoreError(
                    f"{path} changed since this index was opened", hint="open the index again"
                )
            g = load_graph(path, space, self.meta.dim, self.meta.count)
            g.set_ef(self.hnsw_config.ef_search)
            self._graphs[space] = g
        return self._graphs[space]

    def knn_query(
        self, queries: Any, k: int = 1, space: str = "l2", ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest rows: ``(rows int64 (n, k), distances float32 (n, k))``.

        hnswlib distances: ``l2`` = squared euclidean, ``cosine`` = ``1 - cos``."""
        q = as_matrix("queries", np.atleast_2d(queries), self.meta.dim)
        k = min(int(k), self.meta.count)
        g = self.hnsw(space)
        g.set_ef(max(ef or self.hnsw_config.ef_search, k))
        rows, dist = g.knn_query(q, k=k)
        return rows.astype(np.int64), dist.astype(np.float32)


def index_entry(
    task: str, model: str, index: EmbeddingIndex, providers: Sequence[str] | None = None
) -> dict[str, Any]:
    """The registry's ``index_entries`` row describing ``index``."""
    return {
        "task": task,
        "model": model,
        "key_digest": index.key.digest(),
        "task_hash": index.key.task_hash,
        "model_sha": index.key.model_sha,
        "preprocess": index.key.preprocess,
        "path": str(index.root),
        "count": len(index),
        "dim": index.dim,
        "providers": json.dumps(list(providers or index.meta.providers)),
        "backend": index.meta.backend,
    }
