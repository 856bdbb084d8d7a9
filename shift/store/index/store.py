"""One embedding index per (task, model) on disk: open, build, append, relabel, drop, prune.

The layout of an index folder is in ``meta.py``. Crash safety: every file is staged (temp file,
fsync, sha256; ``shift.fsutil``) and renamed into place. Before any data file of a complete index
is replaced, ``meta.json`` is atomically rewritten with ``complete=false``; it is made complete
again only after all new data files are in place. So a crash at any point leaves either the
previous complete index or no complete index, and ``open`` verifies every file against the sha256
in ``meta.json`` before accepting it.

Nothing is ever unpickled: arrays are loaded with ``np.load(..., allow_pickle=False)`` and
metadata is JSON. One writer per root at a time (commits take an advisory ``flock``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from shift.fsutil import (
    TMP_MARK,
    Staged,
    discard,
    fsync_dir,
    put_staged,
    sha256_file,
    stage_bytes,
)
from shift.store.index.arrays import as_matrix, check_array, check_ids, load_npy, stage_npy
from shift.store.index.graphs import build_graph, extend_graph, stage_graph
from shift.store.index.lock import store_lock
from shift.store.index.meta import (
    FORMAT_VERSION,
    IDS_FILE,
    LABELS_FILE,
    LOGITS_FILE,
    META_FILE,
    SPACES,
    VECTORS_FILE,
    HnswConfig,
    IndexCorruptError,
    IndexKey,
    IndexMeta,
    IndexStoreError,
    data_files,
    hnsw_file,
    utcnow,
)
from shift.store.index.reader import EmbeddingIndex
from shift.store.index.writer import IndexWriter

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib


def graph_spaces(count: int) -> tuple[str, ...]:
    """The hnsw graphs an index of ``count`` rows is committed with: every space once it is
    large enough for the kNN proxies to read a graph (``shift.scoring.knn.HNSW_MIN_TRAIN``
    rows, read at call time), none below that; a smaller index builds a graph in memory on
    first use (``EmbeddingIndex.hnsw``). Each graph cost ~0.75 s per 2,048 x 1,280 rows."""
    from shift.scoring import knn

    return SPACES if count >= knn.HNSW_MIN_TRAIN else ()


__all__ = ["IndexStore"]


class IndexStore:
    """The index of one (task, model) under ``root`` (layout: ``meta.py``; safety: module doc).
    ``backend``: the inference backend recorded in the meta of an index built here."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        hnsw: HnswConfig | None = None,
        backend: str = "onnxruntime",
    ) -> None:
        self.root = Path(root)
        self.hnsw_config = hnsw or HnswConfig()
        self.backend = backend

    @property
    def meta_path(self) -> Path:
        return self.root / META_FILE

    def __repr__(self) -> str:
        return f"IndexStore({str(self.root)!r})"

    # ---- reading

    def read_meta(self) -> IndexMeta | None:
        """The current ``meta.json`` (not verified against the data), or None if absent."""
        try:
            text = self.meta_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IndexCorruptError(
                f"cannot read {self.meta_path}: {e}", path=self.meta_path
            ) from e
        try:
            return IndexMeta.model_validate_json(text)
        except ValidationError as e:
            raise IndexCorruptError(
                f"{self.meta_path} is not a valid index meta: {e.errors()[0]['msg']}",
                path=self.meta_path,
            ) from e

    def exists(self, key: IndexKey | None = None) -> bool:
        """Whether a complete index (for ``key``, if given) is recorded; does not verify data."""
        meta = self.read_meta()
        return bool(meta and meta.complete and (key is None or meta.key == key))

    def open(self, key: IndexKey, *, verify: bool = True) -> EmbeddingIndex | None:
        """The complete index built for ``key``; None if absent, incomplete or stale (another
        key). Raises ``IndexCorruptError`` naming the file when a file fails its sha256 check or
        cannot be loaded safely. ``verify=False`` skips hashing (not recommended)."""
        with store_lock(self.root, shared=True):  # waits for a commit in progress
            meta = self.read_meta()
            if meta is None or not meta.complete or meta.format != FORMAT_VERSION:
                return None
            if meta.key != key:
                return None
            return self._load(meta, verify=verify)

    def _load(self, meta: IndexMeta, *, verify: bool) -> EmbeddingIndex:
        required = [VECTORS_FILE, LABELS_FILE, IDS_FILE] + [hnsw_file(s) for s in meta.spaces]
        if meta.has_logits:
            required.append(LOGITS_FILE)
        for name in required:
            if name not in meta.files:
                raise IndexCorruptError(
                    f"{self.meta_path} lists no checksum for {name}", path=self.meta_path
                )
        for name, sha in meta.files.items():
            path = self.root / name
            if Path(name).name != name or name.startswith("."):
                raise IndexCorruptError(f"{self.meta_path} names a bad file {name!r}", path=path)
            if not path.is_file():
                raise IndexCorruptError(f"index file {path} is missing", path=path)
            if verify and sha256_file(path) != sha:
                raise IndexCorruptError(
                    f"index file {path} fails its sha256 check (modified or damaged)", path=path
                )
        n = meta.count
        vec_path = self.root / VECTORS_FILE
        vectors = load_npy(vec_path, mmap=True)
        check_array(vec_path, vectors, np.float32, (n, meta.dim))
        lab_path = self.root / LABELS_FILE
        labels = load_npy(lab_path)
        check_array(lab_path, labels, np.int64, (n,))
        logits = None
        if meta.has_logits:
            lg_path = self.root / LOGITS_FILE
            logits = load_npy(lg_path, mmap=True)
            check_array(lg_path, logits, np.float32, (n, meta.logits_dim or 0))
        ids_path = self.root / IDS_FILE
        try:
            ids = json.loads(ids_path.read_text())
        except (OSError, ValueError) as e:
            raise IndexCorruptError(f"cannot read {ids_path}: {e}", path=ids_path) from e
        if (
            not isinstance(ids, list)
            or len(ids) != n
            or not all(isinstance(s, str) for s in ids)
            or len(set(ids)) != n
        ):
            raise IndexCorruptError(f"{ids_path} is not a list of {n} unique ids", path=ids_path)
        return EmbeddingIndex(self.root, meta, ids, vectors, logits, labels, self.hnsw_config)

    # ---- writing

    def begin(
        self,
        key: IndexKey,
        dim: int,
        logits_dim: int | None = None,
        *,
        providers: Sequence[str] = (),
    ) -> IndexWriter:
        """Start (or resume, for the same key) an incremental build; see ``IndexWriter``."""
        if int(dim) <= 0 or (logits_dim is not None and int(logits_dim) <= 0):
            raise IndexStoreError(f"bad dimensions dim={dim}, logits_dim={logits_dim}")
        self.root.mkdir(parents=True, exist_ok=True)
        return IndexWriter(
            self, key, int(dim), None if logits_dim is None else int(logits_dim), list(providers)
        )

    def append(
        self,
        index: EmbeddingIndex,
        sample_ids: Sequence[str],
        embeddings: Any,
        logits: Any | None,
        labels: Mapping[str, int] | Sequence[int] | np.ndarray,
        *,
        key: IndexKey,
        providers: Sequence[str] = (),
    ) -> EmbeddingIndex:
        """Add new samples to ``index`` and record it under ``key`` (the new task hash). Old
        rows keep their vectors and graph nodes: the graphs are ``resize_index`` + ``add_items``
        of the new rows only. ``labels`` is a mapping by sample id or a sequence aligned with
        ``sample_ids``."""
        self._check_current(index)
        meta = index.meta
        ids = check_ids(sample_ids, "append")
        if not ids:
            raise IndexStoreError("append needs at least one sample")
        clash = set(ids).intersection(index.sample_ids)
        if clash:
            raise IndexStoreError(
                f"{len(clash)} samples are already in the index, e.g. {sorted(clash)[:3]}"
            )
        emb = as_matrix("appended embeddings", embeddings, meta.dim, len(ids))
        if (logits is None) != (not meta.has_logits):
            raise IndexStoreError(
                "appended logits must be given iff the index has logits "
                f"(has_logits={meta.has_logits})"
            )
        lg = None
        if logits is not None:
            lg = as_matrix("appended logits", logits, meta.logits_dim, len(ids))
        if isinstance(labels, Mapping):
            missing = [s for s in ids if s not in labels]
            if missing:
                raise IndexStoreError(f"{len(missing)} appended samples have no label")
            y_new = np.fromiter((int(labels[s]) for s in ids), np.int64, len(ids))
        else:
            y_new = np.asarray(labels).astype(np.int64)
            if y_new.shape != (len(ids),):
                raise IndexStoreError(f"labels must have shape ({len(ids)},)")

        n_old, n_new = meta.count, len(ids)
        staged: dict[str, Staged] = {}
        graphs: dict[str, hnswlib.Index] = {}
        try:
            vectors = np.concatenate([np.asarray(index.vectors, np.float32), emb])
            for space in meta.spaces:  # old nodes kept, new rows added
                path = self.root / hnsw_file(space)
                graphs[space] = extend_graph(path, space, n_old, emb, self.hnsw_config)
                staged[hnsw_file(space)] = stage_graph(graphs[space], path)
            for space in set(graph_spaces(n_old + n_new)) - set(meta.spaces):  # now large enough
                graphs[space] = build_graph(vectors, space, self.hnsw_config)
                staged[hnsw_file(space)] = stage_graph(graphs[space], self.root / hnsw_file(space))
            staged[VECTORS_FILE] = stage_npy(self.root / VECTORS_FILE, vectors)
            all_logits = None
            if lg is not None and index.logits is not None:
                all_logits = np.concatenate([np.asarray(index.logits, np.float32), lg])
                staged[LOGITS_FILE] = stage_npy(self.root / LOGITS_FILE, all_logits)
            all_labels = np.concatenate([np.asarray(index.labels, np.int64), y_new])
            staged[LABELS_FILE] = stage_npy(self.root / LABELS_FILE, all_labels)
            all_ids = index.sample_ids + ids
            staged[IDS_FILE] = stage_bytes(self.root / IDS_FILE, json.dumps(all_ids).encode())
        except BaseException:
            discard(staged.values())
            raise
        new_meta = meta.model_copy(
            update={
                "key": key,
                "count": n_old + n_new,
                "providers": sorted(set(meta.providers).union(providers)),
                "updated": utcnow(),
                "files": {name: sha for name, (_, sha) in staged.items()},
                "spaces": [s for s in SPACES if s in graphs],
                "complete": True,
            }
        )
        self._commit(staged, new_meta)
        return EmbeddingIndex(
            self.root,
            new_meta,
            all_ids,
            vectors,
            all_logits,
            all_labels,
            self.hnsw_config,
            graphs,
        )

    def relabel(
        self, index: EmbeddingIndex, key: IndexKey, labels: Mapping[str, int]
    ) -> EmbeddingIndex:
        """Rewrite ``labels.npy`` and ``meta.json`` only (vectors and graphs untouched), under
        ``key``. Samples absent from ``labels`` keep their label; unknown ids raise."""
        self._check_current(index)
        known = set(index.sample_ids)
        unknown = [s for s in labels if s not in known]
        if unknown:
            raise IndexStoreError(f"{len(unknown)} relabelled samples are not in the index")
        new = np.array(index.labels, dtype=np.int64, copy=True)
        for row, s in enumerate(index.sample_ids):
            if s in labels:
                new[row] = int(labels[s])
        staged = {LABELS_FILE: stage_npy(self.root / LABELS_FILE, new)}
        files = dict(index.meta.files)
        files[LABELS_FILE] = staged[LABELS_FILE][1]
        new_meta = index.meta.model_copy(
            update={"key": key, "updated": utcnow(), "files": files, "complete": True}
        )
        self._commit(staged, new_meta)
        return EmbeddingIndex(
            self.root,
            new_meta,
            index.sample_ids,
            index.vectors,
            index.logits,
            new,
            self.hnsw_config,
            index._graphs,
        )

    def drop(self) -> None:
        """Delete the index and any in-progress builds under ``root``."""
        shutil.rmtree(self.root, ignore_errors=True)

    def prune(self) -> None:
        """Delete leftover temp files and the parts of builds other than the current key's."""
        meta = self.read_meta()
        keep = f"parts-{meta.key.digest()}" if meta and not meta.complete else None
        with store_lock(self.root):
            for p in self.root.glob("parts-*"):
                if p.is_dir() and p.name != keep:
                    shutil.rmtree(p, ignore_errors=True)
            for tmp in self.root.glob(f".*{TMP_MARK}*"):
                tmp.unlink(missing_ok=True)

    # ---- internals

    def _check_current(self, index: EmbeddingIndex) -> None:
        if index.root.resolve() != self.root.resolve():
            raise IndexStoreError(f"index at {index.root} does not belong to {self.root}")
        cur = self.read_meta()
        if cur is None or not cur.complete or cur.files != index.meta.files:
            raise IndexStoreError(
                f"the index at {self.root} changed since it was opened",
                hint="open it again and retry",
            )

    def write_full(
        self,
        *,
        key: IndexKey,
        sample_ids: list[str],
        vectors: np.ndarray,
        logits: np.ndarray | None,
        labels: np.ndarray,
        providers: list[str],
        created: str | None,
    ) -> EmbeddingIndex:
        """Stage every file of a new index, then commit it (meta.json last)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staged: dict[str, Staged] = {}
        graphs = {}
        try:
            staged[VECTORS_FILE] = stage_npy(self.root / VECTORS_FILE, vectors)
            if logits is not None:
                staged[LOGITS_FILE] = stage_npy(self.root / LOGITS_FILE, logits)
            staged[IDS_FILE] = stage_bytes(self.root / IDS_FILE, json.dumps(sample_ids).encode())
            staged[LABELS_FILE] = stage_npy(self.root / LABELS_FILE, labels)
            for space in graph_spaces(len(sample_ids)):
                graphs[space] = build_graph(vectors, space, self.hnsw_config)
                staged[hnsw_file(space)] = stage_graph(graphs[space], self.root / hnsw_file(space))
        except BaseException:
            discard(staged.values())
            raise
        now = utcnow()
        meta = IndexMeta(
            key=key,
            dim=vectors.shape[1],
            count=len(sample_ids),
            spaces=list(graphs),
            has_logits=logits is not None,
            logits_dim=None if logits is None else logits.shape[1],
            providers=list(providers),
            backend=self.backend,
            hnsw=self.hnsw_config.settings(),
            created=created or now,
            updated=now,
            files={name: sha for name, (_, sha) in staged.items()},
            complete=True,
        )
        self._commit(staged, meta)
        return EmbeddingIndex(
            self.root, meta, sample_ids, vectors, logits, labels, self.hnsw_config, graphs
        )

    def _write_meta(self, meta: IndexMeta) -> None:
        put_staged(
            self.meta_path, stage_bytes(self.meta_path, meta.model_dump_json(indent=2).encode())
        )

    def _commit(self, staged: dict[str, Staged], meta: IndexMeta) -> None:
        """Swap staged temp files into place and write ``meta.json`` last.

        Order: (1) mark the current meta incomplete, (2) rename each staged file over its final
        name, (3) delete data files the new meta no longer lists, (4) write the new meta."""
        try:
            with store_lock(self.root):
                old = None
                with suppress(IndexCorruptError):  # a damaged meta is overwritten below
                    old = self.read_meta()
                if old is not None and old.complete:
                    dead = old.model_copy(update={"complete": False, "updated": utcnow()})
                    self._write_meta(dead)
                for name, (tmp, _) in staged.items():
                    os.replace(tmp, self.root / name)
                for name in data_files() - set(meta.files):
                    (self.root / name).unlink(missing_ok=True)
                fsync_dir(self.root)
                self._write_meta(meta)
        finally:
            discard(staged.values())
