"""The hnswlib graphs of an index: build, extend, load and stage for a commit.

Item label = row number. Builds are deterministic with ``HnswConfig.threads == 1``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shift.fsutil import Staged, stage_file, temp_path
from shift.store.index.meta import HnswConfig

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib


def build_graph(vectors: np.ndarray, space: str, cfg: HnswConfig) -> hnswlib.Index:
    """A new graph of ``vectors`` (rows 0..N-1) in ``space`` with ``cfg``'s settings."""
    import hnswlib

    g = hnswlib.Index(space=space, dim=vectors.shape[1])
    g.init_index(
        max_elements=len(vectors),
        M=cfg.M,
        ef_construction=cfg.ef_construction,
        random_seed=cfg.seed,
    )
    g.add_items(vectors, np.arange(len(vectors)), num_threads=cfg.threads)
    g.set_ef(cfg.ef_search)
    return g


def load_graph(path: Path, space: str, dim: int, count: int) -> hnswlib.Index:
    """The saved graph at ``path``: ``count`` items of ``dim`` floats in ``space``."""
    import hnswlib

    g = hnswlib.Index(space=space, dim=dim)
    g.load_index(str(path), max_elements=count)
    return g


def extend_graph(
    path: Path, space: str, count: int, new: np.ndarray, cfg: HnswConfig
) -> hnswlib.Index:
    """The saved graph at ``path`` (``count`` items) with the rows of ``new`` added as items
    ``count..count+len(new)-1``; old nodes are kept as they are."""
    g = load_graph(path, space, new.shape[1], count)
    g.resize_index(count + len(new))
    g.add_items(new, np.arange(count, count + len(new)), num_threads=cfg.threads)
    g.set_ef(cfg.ef_search)
    return g


def stage_graph(graph: hnswlib.Index, target: Path) -> Staged:
    """Save ``graph`` and stage the file for ``target`` (see ``fsutil.stage_file``)."""
    raw = temp_path(target)
    try:
        graph.save_index(str(raw))
        return stage_file(target, raw)
    finally:
        raw.unlink(missing_ok=True)
