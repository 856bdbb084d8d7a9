"""One embedding index per (task, model): vectors, labels, logits and hnswlib graphs on disk.

Layout of a store root (``indexes/<task>/<model>/``)::

    meta.json            IndexMeta; written LAST, names every data file with its sha256
    vectors.npy          float32 (N, D), rows in ``sample_ids.json`` order
    logits.npy           float32 (N, C), only when the model has a classifier head
    labels.npy           int64 (N,)
    sample_ids.json      list[str] (N,)
    hnsw-l2.bin          hnswlib graph, space "l2", item label = row number
    hnsw-cosine.bin      hnswlib graph, space "cosine"
    parts-<keydigest>/   in-progress batches of a build (see ``IndexWriter``)

Crash safety: every file is written to a temp file, fsynced and renamed into place. Before any
data file of a complete index is replaced, ``meta.json`` is atomically rewritten with
``complete=false``; it is made complete again only after all new data files are in place. So a
crash at any point leaves either the previous complete index or no complete index, and ``open``
verifies every file against the sha256 in ``meta.json`` before accepting it.

Nothing is ever unpickled: arrays are loaded with ``np.load(..., allow_pickle=False)`` and
metadata is JSON. One writer per root at a time (commits take an advisory ``flock``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shift.errors import ShiftError
from shift.fsutil import fsync_dir, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import hnswlib

try:  # POSIX only; elsewhere commits are simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "SPACES",
    "EmbeddingIndex",
    "HnswConfig",
    "IndexCorruptError",
    "IndexKey",
    "IndexMeta",
    "IndexStore",
    "IndexStoreError",
    "IndexWriter",
]

FORMAT_VERSION = 1
SPACES: tuple[str, ...] = ("l2", "cosine")
META_FILE = "meta.json"
VECTORS_FILE = "vectors.npy"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
IDS_FILE = "sample_ids.json"
LOCK_FILE = ".lock"
_TMP_MARK = ".tmp-"


def hnsw_file(space: str) -> str:
    """File name of the hnswlib graph for ``space``."""
    return f"hnsw-{space}.bin"


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


# --------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class HnswConfig:
    """hnswlib build settings, saved in every ``meta.json``. ``threads=1`` makes builds
    deterministic (same seed, same insertion order → byte-identical graph)."""

    M: int = 16
    ef_construction: int = 200
    seed: int = 100
    ef_search: int = 64
    threads: int = 1


class IndexKey(BaseModel):
    """What an index was computed from: task data, model weights and preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_hash: str
    model_sha: str
    preprocess: str

    def digest(self) -> str:
        """``sha256(canonical JSON of the key)[:16]``: keys sorted, no whitespace."""
        canon = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
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
    hnsw: dict[str, int] = Field(default_factory=dict)
    created: str
    updated: str
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 hex")
    complete: bool = False


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# low-level file helpers


def _tmp_path(target: Path) -> Path:
    return target.parent / f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"


class _HashingFile(io.RawIOBase):
    """A write-only file wrapper that feeds every byte written into a sha256."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.sha.update(mv)
        self._f.write(mv)
        return mv.nbytes


def _stage_bytes(target: Path, data: bytes) -> tuple[Path, str]:
    """Write ``data`` to a fsynced temp file beside ``target``; return (temp path, sha256)."""
    tmp = _tmp_path(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, hashlib.sha256(data).hexdigest()


def _stage_npy(target: Path, array: np.ndarray) -> tuple[Path, str]:
    """``np.save`` ``array`` (never pickled) to a fsynced temp file; return (temp, sha256)."""
    tmp = _tmp_path(target)
    try:
        with open(tmp, "wb") as f:
            hf = _HashingFile(f)
            np.save(hf, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, hf.sha.hexdigest()


def _stage_file(target: Path, src: Path) -> tuple[Path, str]:
    """Move an already written file (e.g. an hnswlib save) to a temp name, fsync, hash it."""
    tmp = _tmp_path(target)
    os.replace(src, tmp)
    with open(tmp, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())
    return tmp, sha


def _put_staged(target: Path, staged: tuple[Path, str]) -> str:
    """Rename a staged (written + fsynced) temp file over ``target``, fsync the directory, and
    return its sha256; the temp file is removed if the rename fails."""
    tmp, sha = staged
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return sha


def _atomic_write(target: Path, data: bytes) -> str:
    """temp + fsync + ``os.replace`` + fsync(dir); returns the sha256 of ``data``."""
    return _put_staged(target, _stage_bytes(target, data))


def _atomic_npy(target: Path, array: np.ndarray) -> str:
    """``_atomic_write`` for an array saved as .npy."""
    return _put_staged(target, _stage_npy(target, array))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of ``path``, or None if it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load_npy(path: Path, data: bytes | None = None, *, mmap: bool = False) -> np.ndarray:
    """``np.load`` with ``allow_pickle=False``; any failure → ``IndexCorruptError`` naming
    ``path`` (object arrays are refused, never unpickled)."""
    try:
        if data is not None:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexCorruptError(f"cannot load {path}: {e}", path=path) from e
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:  # pragma: no cover - defensive
        raise IndexCorruptError(f"{path} holds objects, refusing to load it", path=path)
    return arr


def _check_array(
    path: Path, arr: np.ndarray, dtype: np.dtype[Any] | type, shape: tuple[int, ...]
) -> None:
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise IndexCorruptError(
            f"{path} holds {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}{list(shape)}",
            path=path,
        )


def _as_matrix(name: str, x: Any, cols: int | None, n: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise IndexStoreError(f"{name} must be a 2-d array, got shape {list(arr.shape)}")
    if cols is not None and arr.shape[1] != cols:
        raise IndexStoreError(f"{name} has {arr.shape[1]} columns, expected {cols}")
    if n is not None and arr.shape[0] != n:
        raise IndexStoreError(f"{name} has {arr.shape[0]} rows, expected {n}")
    if not np.isfinite(arr).all():
        raise IndexStoreError(f"{name} contains NaN or infinite values")
    return arr


def _check_ids(ids: Sequence[str], what: str) -> list[str]:
    out = list(ids)
    if not all(isinstance(s, str) for s in out):
        raise IndexStoreError(f"{what}: sample ids must be strings")
    if len(set(out)) != len(out):
        raise IndexStoreError(f"{what}: duplicate sample ids")
    return out


def _hnsw_settings(cfg: HnswConfig) -> dict[str, int]:
    return {"M": cfg.M, "ef_construction": cfg.ef_construction, "seed": cfg.seed}


# --------------------------------------------------------------------------------------------
# the loaded index


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
        self._stamps = {s: _stamp(self.root / hnsw_file(s)) for s in meta.spaces}

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
        """The hnswlib graph of ``space`` (``"l2"`` or ``"cosine"``), loaded lazily."""
        if space not in self.meta.spaces:
            raise IndexStoreError(f"no {space!r} graph in this index (has {self.meta.spaces})")
        if space not in self._graphs:
            import hnswlib

            path = self.root / hnsw_file(space)
            if _stamp(path) != self._stamps.get(space):
                raise IndexStoreError(
                    f"{path} changed since this index was opened", hint="open the index again"
                )
            g = hnswlib.Index(space=space, dim=self.meta.dim)
            g.load_index(str(path), max_elements=self.meta.count)
            g.set_ef(self.hnsw_config.ef_search)
            self._graphs[space] = g
        return self._graphs[space]

    def knn_query(
        self, queries: Any, k: int = 1, space: str = "l2", ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest rows: ``(rows int64 (n, k), distances float32 (n, k))``.

        hnswlib distances: ``l2`` = squared euclidean, ``cosine`` = ``1 - cos``."""
        q = _as_matrix("queries", np.atleast_2d(queries), self.meta.dim)
        k = min(int(k), self.meta.count)
        g = self.hnsw(space)
        g.set_ef(max(ef or self.hnsw_config.ef_search, k))
        rows, dist = g.knn_query(q, k=k)
        return rows.astype(np.int64), dist.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the incremental writer


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
    }


class IndexWriter:
    """Builds one index batch by batch; each batch is durable as soon as ``add_batch`` returns.

    A batch is ``<stem>.emb.npy`` (+ ``<stem>.logits.npy``) plus a ``<stem>.json`` marker
    written last (sample ids and file sha256s); a batch without a valid marker does not exist.
    """

    def __init__(
        self,
        store: IndexStore,
        key: IndexKey,
        dim: int,
        logits_dim: int | None,
        providers: list[str],
    ) -> None:
        self.store = store
        self.key = key
        self.dim = dim
        self.logits_dim = logits_dim
        self.providers = providers
        self.parts_dir = store.root / f"parts-{key.digest()}"
        self._verified: set[str] = set()  # batch ids whose files were checked or written here
        self._prepare()

    def _prepare(self) -> None:
        manifest = {
            "key": self.key.model_dump(),
            "dim": self.dim,
            "logits_dim": self.logits_dim,
        }
        mpath = self.parts_dir / "writer.json"
        if self.parts_dir.is_dir():
            try:
                same = json.loads(mpath.read_text()) == manifest
            except (OSError, ValueError):
                same = False
            if not same:  # parts of an incompatible (or unreadable) build: start over
                shutil.rmtree(self.parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts_dir.glob(f".*{_TMP_MARK}*"):  # temp files of a killed run
            tmp.unlink(missing_ok=True)
        if not mpath.exists():
            _atomic_write(mpath, json.dumps(manifest, sort_keys=True).encode())

    @staticmethod
    def _stem(batch_id: str) -> str:
        return "b-" + hashlib.sha256(batch_id.encode()).hexdigest()[:32]

    def add_batch(
        self,
        batch_id: str,
        sample_ids: Sequence[str],
        embeddings: Any,
        logits: Any | None = None,
    ) -> None:
        """Durably store one batch (atomic files, marker last). Re-adding a batch id replaces it."""
        if not isinstance(batch_id, str) or not batch_id:
            raise IndexStoreError("batch_id must be a non-empty string")
        ids = _check_ids(sample_ids, f"batch {batch_id!r}")
        emb = _as_matrix(f"embeddings of batch {batch_id!r}", embeddings, self.dim, len(ids))
        if (logits is None) != (self.logits_dim is None):
            raise IndexStoreError(
                f"batch {batch_id!r}: logits must be given iff the writer has logits_dim "
                f"(logits_dim={self.logits_dim})"
            )
        stem = self._stem(batch_id)
        marker = self.parts_dir / f"{stem}.json"
        marker.unlink(missing_ok=True)  # a replaced batch is absent until its new marker lands
        files = {f"{stem}.emb.npy": _atomic_npy(self.parts_dir / f"{stem}.emb.npy", emb)}
        if logits is not None:
            lg = _as_matrix(f"logits of batch {batch_id!r}", logits, self.logits_dim, len(ids))
            files[f"{stem}.logits.npy"] = _atomic_npy(self.parts_dir / f"{stem}.logits.npy", lg)
        record = {"batch_id": batch_id, "sample_ids": ids, "files": files}
        _atomic_write(marker, json.dumps(record).encode())
        self._verified.add(batch_id)

    def _markers(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        for marker in sorted(self.parts_dir.glob("b-*.json")):
            try:
                rec = json.loads(marker.read_text())
                ok = (
                    isinstance(rec, dict)
                    and isinstance(rec.get("batch_id"), str)
                    and self._stem(rec["batch_id"]) == marker.stem
                    and isinstance(rec.get("sample_ids"), list)
                    and isinstance(rec.get("files"), dict)
                )
            except (OSError, ValueError):
                ok = False
            if not ok:
                marker.unlink(missing_ok=True)
                continue
            yield marker, rec

    def done_batches(self) -> set[str]:
        """Batch ids already stored (verified against their sha256 once per writer). A damaged
        batch is deleted and left out, so the caller recomputes it."""
        done: set[str] = set()
        for marker, rec in self._markers():
            bid = rec["batch_id"]
            if bid not in self._verified:
                try:
                    good = all(
                        sha256_file(self.parts_dir / name) == sha
                        for name, sha in rec["files"].items()
                    )
                except OSError:
                    good = False
                if not good:
                    marker.unlink(missing_ok=True)
                    continue
                self._verified.add(bid)
            done.add(bid)
        return done

    def _load_part(self, name: str, sha: str, cols: int | None, n: int) -> np.ndarray:
        path = self.parts_dir / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise IndexCorruptError(f"missing part file {path}", path=path) from e
        if hashlib.sha256(data).hexdigest() != sha:
            raise IndexCorruptError(f"part file {path} fails its sha256 check", path=path)
        arr = _load_npy(path, data)
        _check_array(path, arr, np.float32, (n, cols or 0))
        return arr

    def read_batches(
        self, batch_ids: Sequence[str]
    ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """Sample ids, embeddings and logits of stored batches, concatenated in the given order
        (each file sha256-checked). Lets a caller use a partial build, e.g. successive halving."""
        recs = {rec["batch_id"]: rec for _, rec in self._markers()}
        missing = [b for b in batch_ids if b not in recs]
        if missing:
            raise IndexStoreError(f"{len(missing)} batches are not stored, e.g. {missing[0]!r}")
        ids: list[str] = []
        embs, logits = [], []
        for b in batch_ids:
            rec = recs[b]
            stem = self._stem(b)
            n = len(rec["sample_ids"])
            ids += rec["sample_ids"]
            embs.append(
                self._load_part(f"{stem}.emb.npy", rec["files"][f"{stem}.emb.npy"], self.dim, n)
            )
            if self.logits_dim is not None:
                name = f"{stem}.logits.npy"
                logits.append(self._load_part(name, rec["files"][name], self.logits_dim, n))
        emb = np.concatenate(embs) if embs else np.zeros((0, self.dim), np.float32)
        lg = np.concatenate(logits) if logits else None
        return ids, emb, lg

    def finalize(self, order: Sequence[str], labels: Mapping[str, int]) -> EmbeddingIndex:
        """Assemble rows in ``order`` from the stored batches, build the hnswlib graphs and
        commit the index (meta.json last); then delete the parts. When a sample id occurs in
        several batches, the batch with the smallest batch id wins."""
        order = _check_ids(order, "finalize order")
        if not order:
            raise IndexStoreError("cannot finalize an empty index")
        missing_labels = [s for s in order if s not in labels]
        if missing_labels:
            raise IndexStoreError(
                f"{len(missing_labels)} samples have no label, e.g. {missing_labels[:3]}"
            )
        wanted = {s: i for i, s in enumerate(order)}
        vectors = np.empty((len(order), self.dim), np.float32)
        logits = np.empty((len(order), self.logits_dim), np.float32) if self.logits_dim else None
        filled = np.zeros(len(order), bool)
        recs = sorted((rec for _, rec in self._markers()), key=lambda r: r["batch_id"])
        for rec in recs:
            ids: list[str] = rec["sample_ids"]
            src = [j for j, s in enumerate(ids) if s in wanted and not filled[wanted[s]]]
            if not src:
                continue
            dst = np.fromiter((wanted[ids[j]] for j in src), np.int64, len(src))
            stem = self._stem(rec["batch_id"])
            emb_name = f"{stem}.emb.npy"
            emb = self._load_part(emb_name, rec["files"].get(emb_name, ""), self.dim, len(ids))
            vectors[dst] = emb[src]
            if logits is not None:
                lg_name = f"{stem}.logits.npy"
                lg = self._load_part(
                    lg_name, rec["files"].get(lg_name, ""), self.logits_dim, len(ids)
                )
                logits[dst] = lg[src]
            filled[dst] = True
        if not filled.all():
            absent = [order[i] for i in np.flatnonzero(~filled)[:3]]
            raise IndexStoreError(
                f"{int((~filled).sum())} samples were never added, e.g. {absent}",
                hint="add their batches (IndexWriter.add_batch) before finalize",
            )
        y = np.fromiter((int(labels[s]) for s in order), np.int64, len(order))
        index = self.store._write_full(
            key=self.key,
            sample_ids=order,
            vectors=vectors,
            logits=logits,
            labels=y,
            providers=self.providers,
            created=None,
        )
        self.abort()
        return index

    def abort(self) -> None:
        """Delete this writer's stored batches."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the store


class IndexStore:
    """The index of one (task, model) under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike[str], hnsw: HnswConfig | None = None) -> None:
        self.root = Path(root)
        self.hnsw_config = hnsw or HnswConfig()

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
        with self._lock(shared=True):  # waits for a commit in progress
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
        vectors = _load_npy(vec_path, mmap=True)
        _check_array(vec_path, vectors, np.float32, (n, meta.dim))
        lab_path = self.root / LABELS_FILE
        labels = _load_npy(lab_path)
        _check_array(lab_path, labels, np.int64, (n,))
        logits = None
        if meta.has_logits:
            lg_path = self.root / LOGITS_FILE
            logits = _load_npy(lg_path, mmap=True)
            _check_array(lg_path, logits, np.float32, (n, meta.logits_dim or 0))
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
        import hnswlib

        self._check_current(index)
        meta = index.meta
        ids = _check_ids(sample_ids, "append")
        if not ids:
            raise IndexStoreError("append needs at least one sample")
        clash = set(ids).intersection(index.sample_ids)
        if clash:
            raise IndexStoreError(
                f"{len(clash)} samples are already in the index, e.g. {sorted(clash)[:3]}"
            )
        emb = _as_matrix("appended embeddings", embeddings, meta.dim, len(ids))
        if (logits is None) != (not meta.has_logits):
            raise IndexStoreError(
                "appended logits must be given iff the index has logits "
                f"(has_logits={meta.has_logits})"
            )
        lg = None
        if logits is not None:
            lg = _as_matrix("appended logits", logits, meta.logits_dim, len(ids))
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
        staged: dict[str, tuple[Path, str]] = {}
        graphs: dict[str, hnswlib.Index] = {}
        try:
            for space in meta.spaces:
                g = hnswlib.Index(space=space, dim=meta.dim)
                g.load_index(str(self.root / hnsw_file(space)), max_elements=n_old)
                g.resize_index(n_old + n_new)
                g.add_items(
                    emb, np.arange(n_old, n_old + n_new), num_threads=self.hnsw_config.threads
                )
                g.set_ef(self.hnsw_config.ef_search)
                graphs[space] = g
                staged[hnsw_file(space)] = self._stage_graph(g, space)
            vectors = np.concatenate([np.asarray(index.vectors, np.float32), emb])
            staged[VECTORS_FILE] = _stage_npy(self.root / VECTORS_FILE, vectors)
            all_logits = None
            if lg is not None and index.logits is not None:
                all_logits = np.concatenate([np.asarray(index.logits, np.float32), lg])
                staged[LOGITS_FILE] = _stage_npy(self.root / LOGITS_FILE, all_logits)
            all_labels = np.concatenate([np.asarray(index.labels, np.int64), y_new])
            staged[LABELS_FILE] = _stage_npy(self.root / LABELS_FILE, all_labels)
            all_ids = index.sample_ids + ids
            staged[IDS_FILE] = _stage_bytes(self.root / IDS_FILE, json.dumps(all_ids).encode())
        except BaseException:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
            raise
        new_meta = meta.model_copy(
            update={
                "key": key,
                "count": n_old + n_new,
                "providers": sorted(set(meta.providers).union(providers)),
                "updated": _utcnow(),
                "files": {name: sha for name, (_, sha) in staged.items()},
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
        staged = {LABELS_FILE: _stage_npy(self.root / LABELS_FILE, new)}
        files = dict(index.meta.files)
        files[LABELS_FILE] = staged[LABELS_FILE][1]
        new_meta = index.meta.model_copy(
            update={"key": key, "updated": _utcnow(), "files": files, "complete": True}
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
        with self._lock():
            for p in self.root.glob("parts-*"):
                if p.is_dir() and p.name != keep:
                    shutil.rmtree(p, ignore_errors=True)
            for tmp in self.root.glob(f".*{_TMP_MARK}*"):
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

    @contextmanager
    def _lock(self, shared: bool = False) -> Iterator[None]:
        """Advisory ``flock`` on ``root/.lock``: exclusive for commits, shared for ``open``.
        A reader that cannot open the lock file (nothing committed yet, read-only) goes on."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        path = self.root / LOCK_FILE
        if shared:
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed below
            except OSError:
                yield
                return
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+b")  # noqa: SIM115 - closed below
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _stage_graph(self, graph: hnswlib.Index, space: str) -> tuple[Path, str]:
        target = self.root / hnsw_file(space)
        raw = _tmp_path(target)
        try:
            graph.save_index(str(raw))
            return _stage_file(target, raw)
        finally:
            raw.unlink(missing_ok=True)

    def _build_graph(self, vectors: np.ndarray, space: str) -> hnswlib.Index:
        import hnswlib

        cfg = self.hnsw_config
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

    def _write_full(
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
        staged: dict[str, tuple[Path, str]] = {}
        graphs = {}
        try:
            staged[VECTORS_FILE] = _stage_npy(self.root / VECTORS_FILE, vectors)
            if logits is not None:
                staged[LOGITS_FILE] = _stage_npy(self.root / LOGITS_FILE, logits)
            staged[IDS_FILE] = _stage_bytes(self.root / IDS_FILE, json.dumps(sample_ids).encode())
            staged[LABELS_FILE] = _stage_npy(self.root / LABELS_FILE, labels)
            for space in SPACES:
                graphs[space] = self._build_graph(vectors, space)
                staged[hnsw_file(space)] = self._stage_graph(graphs[space], space)
        except BaseException:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
            raise
        now = _utcnow()
        meta = IndexMeta(
            key=key,
            dim=vectors.shape[1],
            count=len(sample_ids),
            spaces=list(SPACES),
            has_logits=logits is not None,
            logits_dim=None if logits is None else logits.shape[1],
            providers=list(providers),
            hnsw=_hnsw_settings(self.hnsw_config),
            created=created or now,
            updated=now,
            files={name: sha for name, (_, sha) in staged.items()},
            complete=True,
        )
        self._commit(staged, meta)
        return EmbeddingIndex(
            self.root, meta, sample_ids, vectors, logits, labels, self.hnsw_config, graphs
        )

    def _commit(self, staged: dict[str, tuple[Path, str]], meta: IndexMeta) -> None:
        """Swap staged temp files into place and write ``meta.json`` last.

        Order: (1) mark the current meta incomplete, (2) rename each staged file over its final
        name, (3) delete data files the new meta no longer lists, (4) write the new meta."""
        try:
            with self._lock():
                old = None
                with suppress(IndexCorruptError):  # a damaged meta is overwritten below
                    old = self.read_meta()
                if old is not None and old.complete:
                    dead = old.model_copy(update={"complete": False, "updated": _utcnow()})
                    _atomic_write(self.meta_path, dead.model_dump_json(indent=2).encode())
                for name, (tmp, _) in staged.items():
                    os.replace(tmp, self.root / name)
                data_files = {VECTORS_FILE, LOGITS_FILE, LABELS_FILE, IDS_FILE}
                data_files.update(hnsw_file(s) for s in SPACES)
                for name in data_files - set(meta.files):
                    (self.root / name).unlink(missing_ok=True)
                fsync_dir(self.root)
                _atomic_write(self.meta_path, meta.model_dump_json(indent=2).encode())
        finally:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
