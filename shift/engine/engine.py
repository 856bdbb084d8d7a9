"""The :class:`Engine`: proxy scores per (task, model), from the registry's cache where
possible, indexing what is missing first (:class:`~shift.engine.indexing.Indexer`)."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from shift.engine.cost import embed_seconds, measured_per_unit, score_seconds
from shift.engine.indexing import Indexer, IndexReport
from shift.errors import ShiftError
from shift.records import InputSpec, ModelRecord
from shift.store.index.meta import IndexStoreError

#: how often a query re-reads a task that changed while its indexes were brought up to date
SNAPSHOT_TRIES = 5


def proxy_params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def model_cache_key(m: ModelRecord, backend: str) -> str:
    """The model part of a cached score's key (its ``model_sha`` column): the weights' sha256
    and a digest of everything else that changes the embedding, the preprocessing and the
    inference backend: ``<sha256>+<16 hex>``."""
    return f"{m.sha256}+{_embedding_digest(m.input, backend)}"


@functools.lru_cache(maxsize=4096)
def _embedding_digest(spec: InputSpec, backend: str) -> str:
    """16 hex of sha256 over (preprocessing key, backend); memoised, since a cached query asks
    for every model in the pool and most models share a few specs."""
    extra = json.dumps([spec.key(), backend], separators=(",", ":"))
    return hashlib.sha256(extra.encode()).hexdigest()[:16]


def covers(index: Any, rows: list[dict[str, Any]]) -> bool:
    """Whether ``index`` holds every sample of ``rows`` with the label ``rows`` give it (so a
    score from it is the score of exactly that task state)."""
    try:
        pos = index.rows([r["sample_id"] for r in rows])
    except IndexStoreError:
        return False
    return bool(np.array_equal(np.asarray(index.labels)[pos], [r["label"] for r in rows]))


#: features of the models scored together (``score_many``) at most, in bytes: at 1,000 models
#: x 10,000 samples x 2,048-d a whole pool would be 80 GB of host memory
SCORE_GROUP_BYTES = 2 * 2**30


def score_groups(
    models: list[ModelRecord], samples: int, *, whole: bool = False
) -> list[list[ModelRecord]]:
    """``models`` in consecutive groups whose float32 features (``samples`` rows of each model's
    embedding, and its logits) fit ``SCORE_GROUP_BYTES`` (at least one model a group);
    ``whole``: one group (pool-relative proxies normalise over everything scored together)."""
    if whole or not models:
        return [models] if models else []
    groups: list[list[ModelRecord]] = [[]]
    used = 0
    for m in models:
        size = 4 * samples * ((m.dim or 0) + (m.head_classes or 0))
        if groups[-1] and used + size > SCORE_GROUP_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(m)
        used += size
    return groups


class Engine(Indexer):
    """Indexes tasks and scores models (an :class:`Indexer` that also ranks)."""

    #: score keys of the records seen, by ``id``: the registry hands out the same cached record
    #: objects until a model changes, so a cached query over N models computes no key again
    _KEY_CACHE_MAX = 100_000

    def score_key(self, m: ModelRecord) -> str:
        """``m``'s part of the key of the scores this engine caches (:func:`model_cache_key`)."""
        cache: dict[int, tuple[ModelRecord, str]] = self.__dict__.setdefault("_score_keys", {})
        hit = cache.get(id(m))
        if hit is not None and hit[0] is m:  # the entry holds the record: its id is not reused
            return hit[1]
        if len(cache) >= self._KEY_CACHE_MAX:
            cache.clear()
        key = cache[id(m)] = (m, model_cache_key(m, self.backend))
        return key[1]

    def status(
        self,
        task: str,
        models: list[ModelRecord],
        proxy: str,
        args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What a query on ``task`` would compute (EXPLAIN); ``args``: the proxy's settings."""
        rec, rows = self.registry.task_snapshot(task)
        work = self._plan(rec, models, rows)
        from shift.scoring.proxies import get_proxy

        spec = get_proxy(proxy).bind(args or {})
        cached = self.registry.get_scores(
            rec.content_hash,
            proxy,
            proxy_params_key(spec.settings),
            [self.score_key(m) for m in models],
        )
        # a model whose score is cached under the task's content hash needs no index at all (a
        # task added again under another name scores from cache and embeds nothing)
        scored = {m.name for m in models if self.score_key(m) in cached}
        to_embed = [w for w in work if w.mode in ("full", "append") and w.model.name not in scored]
        images = sum(len(w.sample_ids) for w in to_embed)
        per_unit = measured_per_unit(self.registry.home.registry_dir, self.backend)
        secs = sum(
            embed_seconds(
                w.model.params,
                w.model.input.height,
                w.model.input.width,
                len(w.sample_ids),
                per_unit,
            )
            for w in to_embed
        )
        n_cached = len(scored)
        n_train = sum(r["split"] != "val" for r in rows)
        per_model = score_seconds(spec.cost_per_1k, n_train)
        score_secs = per_model * (len(models) - n_cached)
        path = spec.index_path(sum(r["split"] == "train" for r in rows))
        via = f"; {proxy} via the {path} graph of each index" if path else ""
        return {
            "task": task,
            "samples": len(rows),
            "to_embed": len(to_embed),
            "indexed": sum(1 for w in work if w.mode in ("ready", "relabel")),
            "per_model": {
                w.model.name: {
                    "index": w.mode,
                    "embed": 0 if w.model.name in scored else len(w.sample_ids),
                    "score_cached": self.score_key(w.model) in cached,
                }
                for w in work
            },
            "embed_summary": f"{sum(w.mode in ('ready', 'relabel') for w in work)} indexed, "
            f"{len(to_embed)} to embed ({images:,} images)"
            + (
                f", {len(scored)} scored already under this content (no embedding)"
                if any(w.mode in ("full", "append") for w in work if w.model.name in scored)
                else ""
            ),
            "to_score": len(models) - n_cached,
            "score_summary": f"{n_cached} cached, {len(models) - n_cached} to compute{via}",
            "score_path": path or "arrays",
            "images_to_embed": images,
            "score_seconds": score_secs,
            "backend": self.backend_choice.describe(),
            "embed_seconds": secs,
            "estimate": f"{images:,} images through {len(to_embed)} models, ~{secs:.0f} s "
            + ("at this machine's measured rate" if per_unit else "on one CPU core (a prior)")
            + f"; scoring {len(models) - n_cached} models ~{score_secs:.1f} s",
        }

    # ---- scoring ----------------------------------------------------------------------------
    last_score_path: str | None = None  # "arrays" or a from_index hook's path, e.g. "hnsw"

    @staticmethod
    def _problem(
        idx: Any, train: list[str], val: list[str], logits: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(train_x, train_y, val_x, val_y)`` of one index: features, or logits if asked."""
        xtr, ytr = idx.select(train)
        xva, yva = idx.select(val)
        if logits:
            xtr, xva = idx.select_logits(train), idx.select_logits(val)
        return np.asarray(xtr), ytr, np.asarray(xva), yva

    def scores(
        self,
        task: str,
        models: list[ModelRecord],
        proxy: str,
        args: Mapping[str, Any] | None = None,
    ) -> dict[str, float | None]:
        """Proxy score per model (None for a model that failed), from cache where possible.
        ``args``: the proxy's settings (``{"k": 5}``), checked and part of the cache key
        (:meth:`~shift.scoring.plugins.ProxySpec.bind`).
        Pool-relative proxies (NCTI: normalised over the models scored together) are scored over
        the whole pool every time and never cached per model. A proxy whose ``from_index`` hook
        applies to the training split (kNN on large splits: the hnsw graph) scores each index
        directly; ``last_score_path`` says which path ran (``"arrays"`` or the hook's path).

        The task's record and samples are read at one moment, and every score is computed from
        indexes holding exactly those samples and labels and cached under that record's hash:
        if the task changes while its indexes are updated, the query reads it again."""
        from shift.scoring.plugins import check_finite
        from shift.scoring.proxies import get_proxy

        spec = get_proxy(proxy).bind(args or {})
        pkey = proxy_params_key(spec.settings)
        pool_relative = spec.pool_relative
        keys = {m.name: self.score_key(m) for m in models}
        # a query whose scores are all cached needs only the record (its hash keys the scores);
        # the samples are read, with the record, only when something must be computed
        rec, rows = self.registry.get_task(task), None
        for _ in range(SNAPSHOT_TRIES + 1):  # + the first, record-only pass
            cached = (
                {}
                if pool_relative
                else self.registry.get_scores(rec.content_hash, proxy, pkey, list(keys.values()))
            )
            result: dict[str, float | None] = {
                m.name: cached[keys[m.name]]["score"] for m in models if keys[m.name] in cached
            }
            missing = [m for m in models if keys[m.name] not in cached]
            if not missing:
                self.last_report = IndexReport()  # nothing indexed or embedded for this query
                return result
            if rows is None:  # first pass: read record and samples at one moment, look again
                rec, rows = self.registry.task_snapshot(task)
                continue
            if spec.needs_logits:
                no_head = [m.name for m in missing if not m.head_output]
                if no_head:
                    raise ShiftError(
                        f"{proxy} needs a source-classifier head; these models have "
                        f"none: {', '.join(no_head)}",
                        hint="filter with has_head = true",
                    )
            indexes = self.index(task, missing)
            if all(covers(idx, rows) for idx in indexes.values()):
                break
            rec, rows = self.registry.task_snapshot(task)  # it changed meanwhile: read it again
        else:
            raise ShiftError(
                f"task {task!r} changed {SNAPSHOT_TRIES} times while this query was indexing it",
                hint="run the query again once the appends or relabels are done",
            )
        train = [r["sample_id"] for r in rows if r["split"] == "train"]
        val = [r["sample_id"] for r in rows if r["split"] == "val"]
        scored = [m for m in missing if m.name in indexes]
        names = [m.name for m in scored]
        t0 = time.perf_counter()
        path = spec.index_path(len(train))
        self.last_score_path = path or "arrays"
        if spec.from_index is not None and path is not None:
            values = [spec.from_index(indexes[m.name], train, val) for m in scored]
        else:  # in groups of bounded memory (the whole pool at once when pool-relative)
            values = []
            for group in score_groups(scored, len(train) + len(val), whole=pool_relative):
                problems = [
                    self._problem(indexes[m.name], train, val, spec.needs_logits) for m in group
                ]
                values += spec.score_many(problems, [m.name for m in group])
        values = check_finite(proxy, values, names)  # NonFiniteScoreError: nothing is cached
        secs = (time.perf_counter() - t0) / max(1, len(scored))
        if not pool_relative:
            self.registry.put_scores(
                [
                    {
                        "task_hash": rec.content_hash,
                        "model_sha": keys[m.name],
                        "proxy": proxy,
                        "params": pkey,
                        "score": float(v),
                        "n_train": len(train),
                        "n_val": len(val),
                        "seconds": secs,
                    }
                    for m, v in zip(scored, values, strict=True)
                ]
            )
        result.update({m.name: float(v) for m, v in zip(scored, values, strict=True)})
        for m in missing:
            result.setdefault(m.name, None)
        return result
