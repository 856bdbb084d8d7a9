"""Successive halving over data chunks, as SHiFT runs it (η = 2).

With M models, L = ⌈log2 M⌉ rounds and budget B (AUTO: B = M·L chunk units), every model still in
the race in round k gets R_k = ⌊B / (|S_k|·L)⌋ more training chunks of C samples (AUTO:
C = ⌈N / Σ_k R_k⌉, so a model that survives every round sees all N training samples); the proxy is
scored on the training prefix seen so far against the whole validation split, and the better half
goes on. Only models still racing are embedded further; embedded batches are the first batches of
the full index build (validation first, then train), so a later full query reuses them.
Scores are compared only within a round; the result reports the samples behind every score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shift.engine.steps.base import ScoreSource
from shift.errors import ShiftError
from shift.records import ModelRecord


@dataclass
class Arm:
    model: ModelRecord
    scores: list[float] = field(default_factory=list)  # one per round survived or played
    train_seen: int = 0
    eliminated_in: int | None = None  # round index, None for the survivors; -1: failed
    error: str | None = None  # why the model failed (eliminated_in == -1)


@dataclass
class HalvingResult:
    arms: dict[str, Arm]
    rounds: int
    budget: int
    chunk: int
    per_round: list[int]  # R_k
    embedded: dict[str, int]  # samples embedded per model (train + val)

    def ranking(self) -> list[Arm]:
        """Survivors first, then by the round a model was dropped (later first); within a round
        by that round's score — only comparable scores are compared."""

        def key(a: Arm) -> tuple:
            rnd = self.rounds if a.eliminated_in is None else a.eliminated_in
            return (-rnd, -(a.scores[-1] if a.scores else -math.inf), a.model.name)

        return sorted(self.arms.values(), key=key)


def schedule(
    m: int, n_train: int, budget: int | None = None, chunk: int | None = None
) -> tuple[int, int, int, list[int]]:
    """(rounds L, budget B, chunk C, new chunks per active model in each round R_k)."""
    rounds = max(1, math.ceil(math.log2(max(m, 2))))
    b = budget if budget is not None else m * rounds
    per_round = []
    active = m
    for _ in range(rounds):
        per_round.append(max(1, b // (active * rounds)))
        active = max(1, math.ceil(active / 2))
    c = chunk if chunk is not None else max(1, math.ceil(n_train / sum(per_round)))
    return rounds, b, c, per_round


def embed_prefix(
    engine: ScoreSource, task: str, models: list[ModelRecord], n: int
) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]:
    """Embeddings of the first ``n`` samples of the embedding order for each model: the
    indexer's own prefix path (:meth:`~shift.engine.indexing.Indexer.index_prefix`: build
    locks, the model file's sha256 check, prepared inputs, stored batches reused). Failed models
    are left out and listed in ``engine.last_report.failed``."""
    return engine.index_prefix(task, models, n)


def successive_halving(
    engine: ScoreSource,
    task: str,
    models: list[ModelRecord],
    proxy: str,
    budget: int | None = None,
    chunk: int | None = None,
) -> HalvingResult:
    from shift.scoring.proxies import get_proxy

    spec = get_proxy(proxy)
    rows = engine.registry.samples(task)
    labels = {r["sample_id"]: r["label"] for r in rows}
    n_val = sum(r["split"] == "val" for r in rows)
    n_train = len(rows) - n_val
    rounds, b, c, per_round = schedule(len(models), n_train, budget, chunk)
    arms = {m.name: Arm(m) for m in models}
    active = [m for m in models]
    embedded: dict[str, int] = {}
    seen = 0
    for k in range(rounds):
        seen = min(n_train, seen + per_round[k] * c)
        data = embed_prefix(engine, task, active, n_val + seen)
        for name, why in (engine.last_report.failed if engine.last_report else {}).items():
            arms[name].eliminated_in, arms[name].error = -1, why
        active = [m for m in active if m.name in data]
        problems = []
        for m in active:
            ids, x, lg = data[m.name]
            if spec.needs_logits and lg is None:  # the planner refuses such a pool up front
                raise ShiftError(
                    f"{proxy} needs a source-classifier head; model {m.name} has none",
                    hint="filter with has_head = true",
                )
            feats = lg if spec.needs_logits and lg is not None else x
            y = np.array([labels[s] for s in ids])
            problems.append((feats[n_val:], y[n_val:], feats[:n_val], y[:n_val]))
            embedded[m.name] = n_val + seen
        values = spec.score_many(problems) if problems else []
        for m, v in zip(active, values, strict=True):
            arms[m.name].scores.append(float(v))
            arms[m.name].train_seen = seen
        if k == rounds - 1 or len(active) <= 1:
            break
        keep = math.ceil(len(active) / 2)
        ranked = sorted(active, key=lambda m: -arms[m.name].scores[-1])
        for m in ranked[keep:]:
            arms[m.name].eliminated_in = k
        active = ranked[:keep]
    return HalvingResult(arms, rounds, b, c, per_round, embedded)
