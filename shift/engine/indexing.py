"""Indexing: make sure every (task, model) embedding index exists, computing only what is missing.

Incremental rules, per (task, model):
* index for the current data hash exists → reuse (relabel in place if only labels changed);
* index for an older data hash whose samples are a subset of the task's → embed only the new
  samples and append them;
* otherwise embed everything; batches are written as they arrive, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shift.engine.feeder import WriteBehind, prefetched
from shift.engine.prepared import Geometry, PreparedInputs
from shift.fsutil import sha256_file
from shift.records import ModelRecord, TaskRecord
from shift.store.index.lock import build_lock
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

log = logging.getLogger(__name__)
DEFAULT_BATCH = 64
#: batches read (and prepared) ahead of the model, per job
PREFETCH_BATCHES = 2
#: batch results waiting to be hashed and written behind the model
WRITE_BEHIND_BATCHES = 4


@dataclass
class _Work:
    """What one (task, model) pair needs."""

    model: ModelRecord
    store: Any
    key: Any
    mode: str  # ready | relabel | append | full
    index: Any = None
    old: Any = None
    sample_ids: list[str] = field(default_factory=list)  # to embed


@dataclass
class IndexReport:
    embedded: dict[str, int] = field(default_factory=dict)  # model -> samples embedded
    reused: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    providers: dict[str, list[str]] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> batches it embedded
    seconds: float = 0.0
    backend: str = ""  # the concrete backend, with why when "auto" chose it
    prepared: int = 0  # images cropped/resized to a model geometry by this run
    #: model -> samples of its existing index kept as they were (an append embeds only the rest;
    #: a resumed build keeps the batches stored before it was interrupted)
    kept: dict[str, int] = field(default_factory=dict)
    #: models left out before any work, with why (a pool's models without weights)
    skipped: dict[str, str] = field(default_factory=dict)
    #: wall seconds per phase: prepare (resize once per geometry), embed (models run, batches
    #: read ahead and written behind), commit (indexes assembled and committed, registry rows)
    phases: dict[str, float] = field(default_factory=dict)


def _batch_id(i: int, ids: list[str]) -> str:
    return f"b{i:05d}-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]


def _batches_of(ids: list[str], size: int) -> dict[str, list[str]]:
    """The batches ``ids`` is embedded in, by batch id, in order."""
    return {
        _batch_id(i // size, ids[i : i + size]): ids[i : i + size] for i in range(0, len(ids), size)
    }


def embed_order(rows: list[dict[str, Any]]) -> list[str]:
    """The order samples are embedded in: validation first, then train (each in task order), so
    a prefix is what successive halving needs and its batches are reused by a full build."""
    return [r["sample_id"] for r in rows if r["split"] == "val"] + [
        r["sample_id"] for r in rows if r["split"] != "val"
    ]


class Indexer:
    """Builds and reuses a task's embedding indexes. ``executor``: "ray", "inprocess" or "auto"
    (chosen per run: ``shift.inference.executors.AutoExecutor``);
    ``backend``: the inference backend that embeds (a name registered with
    ``shift.inference.embedder.register_backend``, or "auto"), recorded with every index it
    builds; "auto" is resolved to a concrete name here, before any key is computed
    (``shift.inference.backend_auto``), and ``backend_choice`` says what was chosen and why."""

    def __init__(
        self,
        registry: Registry,
        executor: str = "auto",
        ray_address: str | None = None,
        progress: bool = False,
        batch_size: int = DEFAULT_BATCH,
        backend: str = "onnxruntime",
        batch_timeout_s: float | None = None,
        lock_timeout_s: float | None = None,
        prepare_inputs: bool = True,
    ) -> None:
        from shift.inference.backend_auto import resolve_backend

        # an unknown name fails here, naming the known backends; "auto" becomes a concrete one
        self.backend_choice = resolve_backend(backend, registry.home.registry_dir)
        self.registry = registry
        self.backend = self.backend_choice.name
        self.tasks = TaskStore(registry)
        self.executor_kind = executor
        self.ray_address = ray_address
        self.progress = progress
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s  # None: $SHIFT_BATCH_TIMEOUT_S, else 600 s
        self.lock_timeout_s = lock_timeout_s  # None: $SHIFT_LOCK_TIMEOUT_S, else 1800 s
        self._executor: Any = None
        self.last_report: IndexReport | None = None
        self._sha_cache: dict[tuple[Any, ...], str] = {}  # file identity -> sha256
        self.prepared = PreparedInputs(self.tasks)
        self.prepare_inputs = prepare_inputs

    @property
    def executor(self) -> Any:
        if self._executor is None:
            from shift.inference.executors import make_executor

            self._executor = make_executor(
                self.executor_kind, address=self.ray_address, batch_timeout_s=self.batch_timeout_s
            )
        return self._executor

    def close(self) -> None:
        self._executor = None

    # ---- planning ---------------------------------------------------------------------------
    def _plan(
        self, task: TaskRecord, models: list[ModelRecord], rows: list[dict[str, Any]]
    ) -> list[_Work]:
        from shift.store.index.meta import IndexCorruptError, IndexKey
        from shift.store.index.store import IndexStore

        ids = embed_order(rows)
        labels = {r["sample_id"]: r["label"] for r in rows}
        work = []
        for m in models:
            key = IndexKey.of(task.data_hash, m, self.backend)  # backend too: never mix two
            path = self.registry.home.index_path(task.name, m.name)
            store = IndexStore(path, backend=self.backend)
            try:
                idx = store.open(key)
                meta = store.read_meta() if idx is None else None
            except IndexCorruptError as e:
                log.warning("%s; rebuilding it", e)
                store.drop()
                idx, meta = None, None
            if idx is not None:
                same = np.array_equal(np.asarray(idx.labels), [labels[s] for s in idx.sample_ids])
                work.append(_Work(m, store, key, "ready" if same else "relabel", index=idx))
                continue
            if (
                meta is not None
                and meta.complete
                and meta.key.model_sha == key.model_sha
                and meta.key.preprocess == key.preprocess
                and meta.key.backend == key.backend  # never mix two backends' embeddings
            ):
                try:
                    old = store.open(meta.key)
                except IndexCorruptError:
                    old = None
                if old is not None and set(old.sample_ids) <= set(ids):
                    have = set(old.sample_ids)
                    new = [s for s in ids if s not in have]
                    work.append(_Work(m, store, key, "append", old=old, sample_ids=new))
                    continue
            work.append(_Work(m, store, key, "full", sample_ids=ids))
        return work

    # ---- indexing ---------------------------------------------------------------------------
    def _batches(
        self,
        task: str,
        rows_by_id: dict[str, dict[str, Any]],
        ids: list[str],
        skip: set[str],
        geom: Geometry | None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """The batches of ``ids`` not in ``skip``, read ahead on a thread (``prefetched``): the
        prepared images at ``geom`` when the task was prepared for it, else the stored ones."""

        def read() -> Iterator[tuple[str, np.ndarray]]:
            for bid, part in _batches_of(ids, self.batch_size).items():
                if bid in skip:
                    continue
                rows = [rows_by_id[s] for s in part]
                if geom is None:
                    yield bid, self.tasks.load(task, rows)
                else:
                    yield bid, self.prepared.load(rows, geom)

        return prefetched(read(), depth=PREFETCH_BATCHES)

    def _prepare(
        self, task: str, rows: list[dict[str, Any]], todo: list[tuple[_Work, set[str]]]
    ) -> tuple[dict[str, Geometry | None], int]:
        """Crop/resize, once per geometry, the samples the models of ``todo`` will embed
        (``shift.engine.prepared``); returns each model's geometry (None: the task is not
        prepared, its images have several sizes) and the number of images resized."""
        if not todo or not self.prepare_inputs or not self.prepared.uniform(task, rows):
            return {w.model.name: None for w, _ in todo}, 0
        by_id = {r["sample_id"]: r for r in rows}
        need: dict[Geometry, set[str]] = {}
        for w, _ in todo:
            need.setdefault(Geometry.of(w.model.input), set()).update(w.sample_ids)
        resized = sum(
            self.prepared.ensure(task, [by_id[s] for s in ids], g) for g, ids in need.items()
        )
        return {w.model.name: Geometry.of(w.model.input) for w, _ in todo}, resized

    def _check_model_file(self, m: ModelRecord) -> str | None:
        """None if ``m``'s file matches its recorded sha256, else why it is refused."""
        path = self.registry.model_file(m)
        try:
            st = path.stat()
            stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sha = self._sha_cache[stamp] = self._sha_cache.get(stamp) or sha256_file(path)
        except OSError as e:
            return f"model {m.name!r}: cannot read its file {path}: {e.strerror or e}"
        if sha != m.sha256:
            return (
                f"model {m.name!r}: file {path} fails its sha256 check (registered "
                f"{m.sha256[:12]}..., found {sha[:12]}...): modified or damaged, refusing to use it"
            )
        return None

    def _lock_work(self, rec: TaskRecord, rows: list[Any], work: list[_Work], locks: Any) -> Any:
        """Take the build lock of every index that needs work (in name order: no deadlock), then
        plan those again: another process may have built them while we waited."""
        busy = sorted((w.model.name, w) for w in work if w.mode != "ready")
        for _, w in busy:
            locks.enter_context(build_lock(w.store.root, timeout_s=self.lock_timeout_s))
        again = {w.model.name: w for w in self._plan(rec, [w.model for _, w in busy], rows)}
        return [again.get(w.model.name, w) for w in work]

    def index(self, task: str, models: list[ModelRecord]) -> dict[str, Any]:
        """Ensure an up-to-date index for every model; returns the indexes by model name.
        Models that fail are reported in ``self.last_report.failed`` and left out. On a
        read-only home (or one whose disk was too full to open) it refuses by name first."""
        self.registry.require_writable()
        with ExitStack() as locks:
            return self._index(task, models, locks)[0]

    def _record_throughput(self, todo: list[tuple[_Work, set[str]]], report: IndexReport) -> None:
        """This run's embed rate, for EXPLAIN's estimates (``shift.engine.cost``): the work
        units of the models that did not fail over the embed phase's wall seconds."""
        from shift.engine.cost import record_throughput, work_units

        units = sum(
            work_units(w.model.params, w.model.input.height, w.model.input.width, n)
            for w, _ in todo
            if w.model.name not in report.failed and (n := report.embedded.get(w.model.name, 0))
        )
        if units and not report.failed:
            record_throughput(
                self.registry.home.registry_dir, self.backend, units, report.phases["embed"]
            )

    def index_prefix(
        self, task: str, models: list[ModelRecord], n: int
    ) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]:
        """``(sample ids, embeddings, logits)`` of the first ``n`` samples of the embedding order
        (``embed_order``) for each model, through the same path as :meth:`index` (build locks,
        sha256 check of the model file, prepared inputs, feeder): a model without an index
        embeds only the batches of that prefix not stored yet and keeps them for its full build
        (finishing it when the prefix is everything); complete or appendable indexes are read or
        finished. Failed models are left out, listed in ``last_report.failed``."""
        self.registry.require_writable()
        with ExitStack() as locks:
            out, partial = self._index(task, models, locks, prefix=n)
        ids = embed_order(self.registry.samples(task))[:n]
        for name, idx in out.items():
            if name not in partial:
                sel = idx.rows(ids)
                lg = None if idx.logits is None else np.asarray(idx.logits)[sel]
                partial[name] = (ids, np.asarray(idx.vectors)[sel], lg)
        return {m.name: partial[m.name] for m in models if m.name in partial}

    def _index(
        self, task: str, models: list[ModelRecord], locks: ExitStack, prefix: int | None = None
    ) -> tuple[dict[str, Any], dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]]:
        """Indexes by model name, and (with ``prefix``) the prefix arrays of builds left
        unfinished (see :meth:`index_prefix`)."""
        from shift.inference.jobs import EmbedJob
        from shift.store.index.reader import index_entry

        t0 = time.perf_counter()
        rec, rows = self.registry.task_snapshot(task)  # one moment: the hash describes the rows
        rows_by_id = {r["sample_id"]: r for r in rows}
        labels = {r["sample_id"]: r["label"] for r in rows}
        order = [r["sample_id"] for r in rows]
        report = IndexReport(backend=self.backend_choice.describe())
        out: dict[str, Any] = {}
        partial: dict[str, tuple[list[str], np.ndarray, np.ndarray | None]] = {}
        todo: list[tuple[_Work, set[str]]] = []
        writers, pending = {}, {}
        bs = self.batch_size
        entries = self.registry.index_entries(task)
        for w in self._lock_work(rec, rows, self._plan(rec, models, rows), locks):
            name = w.model.name
            if w.mode == "ready":
                out[name] = w.index
                report.reused.append(name)
            elif w.mode == "relabel":
                out[name] = w.store.relabel(w.index, w.key, labels)
                report.relabelled.append(name)
            elif problem := self._check_model_file(w.model):
                report.failed[name] = problem
                log.warning("%s", problem)
            else:
                skip: set[str] = set()
                ids = w.sample_ids
                if w.mode == "full":
                    writers[name] = w.store.begin(w.key, w.model.dim, w.model.head_classes)
                    skip = writers[name].done_batches()
                    if prefix is not None:  # whole batches: they are the full build's first
                        ids = ids[: -(-prefix // bs) * bs]
                else:
                    pending[name] = {"w": w, "emb": {}, "logits": {}}
                todo.append((w, skip))
                pending.setdefault(name, {"w": w})
                pending[name]["ids"] = ids
                batches = _batches_of(ids, bs)
                pending[name]["batches"] = batches
                report.embedded[name] = sum(len(v) for b, v in batches.items() if b not in skip)
                kept = (  # an append keeps the old index; a resumed build its stored batches
                    len(w.old.sample_ids)
                    if w.mode == "append"
                    else sum(len(v) for b, v in batches.items() if b in skip)
                )
                if kept:
                    report.kept[name] = kept
        t_prep = time.perf_counter()
        geoms, report.prepared = self._prepare(task, rows, todo)
        report.phases["prepare"] = time.perf_counter() - t_prep
        jobs = [
            EmbedJob(
                w.model.name,
                str(self.registry.model_file(w.model)),
                w.model,
                self._batches(
                    task, rows_by_id, pending[w.model.name]["ids"], skip, geoms[w.model.name]
                ),
                total_batches=len(set(pending[w.model.name]["batches"]) - skip),
                backend=self.backend,
            )
            for w, skip in todo
        ]
        batch_ids = {name: p["batches"] for name, p in pending.items()}

        def on_result(r: Any) -> None:
            ids = batch_ids[r.model_name][r.batch_id]
            report.providers[r.model_name] = r.providers
            if r.node:
                report.nodes[r.node] = report.nodes.get(r.node, 0) + 1
            if r.model_name in writers:
                writers[r.model_name].providers = list(r.providers)  # recorded in its meta
                behind.submit(
                    writers[r.model_name].add_batch, r.batch_id, ids, r.embeddings, r.logits
                )
            else:
                p = pending[r.model_name]
                p["emb"][r.batch_id], p["logits"][r.batch_id] = r.embeddings, r.logits

        def on_failure(f: Any) -> None:
            report.failed[f.model_name] = f.error
            log.warning("model %s failed: %s", f.model_name, f.error)

        t_run = time.perf_counter()
        behind = WriteBehind(depth=WRITE_BEHIND_BATCHES)
        try:
            if jobs:
                self.executor.run(jobs, on_result, on_failure, progress=self.progress)
        finally:  # every batch handed over is stored, also when the run was interrupted
            behind.close()
        t_commit = time.perf_counter()
        report.phases["embed"] = t_commit - t_run
        self._record_throughput(todo, report)
        for name, p in pending.items():
            if name in report.failed:
                report.embedded.pop(name, None)
                continue
            w = p["w"]
            if name in writers and len(p["ids"]) < len(w.sample_ids):  # a prefix: kept unfinished
                got_ids, emb, lg = writers[name].read_batches(list(p["batches"]))
                partial[name] = (
                    got_ids[:prefix],
                    emb[:prefix],
                    None if lg is None else lg[:prefix],
                )
                continue
            if name in writers:
                idx = writers[name].finalize(order, labels)
            else:
                bids = list(batch_ids[name])
                emb = np.concatenate([p["emb"][b] for b in bids]) if bids else None
                lg = (
                    np.concatenate([p["logits"][b] for b in bids])
                    if bids and w.model.head_output
                    else None
                )
                if emb is None:  # nothing new, only the hash changed (e.g. samples reordered)
                    idx = w.store.relabel(w.old, w.key, labels)
                else:
                    idx = w.store.append(
                        w.old,
                        w.sample_ids,
                        emb,
                        lg,
                        labels,
                        key=w.key,
                        providers=report.providers.get(name, []),
                    )
            out[name] = idx
        for name, idx in out.items():  # new indexes, and entries a killed run left behind
            e = entries.get(name) or {}
            if (name in pending and name not in partial) or (
                e.get("key_digest"),
                e.get("count"),
            ) != (
                idx.key.digest(),
                len(idx),
            ):
                self.registry.put_index_entry(
                    index_entry(task, name, idx, report.providers.get(name))
                )
        report.seconds = time.perf_counter() - t0
        report.phases["commit"] = time.perf_counter() - t_commit
        self.last_report = report
        return out, partial
