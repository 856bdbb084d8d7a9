"""CPU cost of the transferability estimators (``shift.scoring.estimators``).

1. Seconds per estimator at VTAB-1k scale: N = 1,000 samples, D = 2,048, C = 100 classes,
   synthetic features with class structure (fixed seed); LEEP/NCE/LGC on 1,000-way source
   logits. Median (and minimum) of ``--repeat`` runs after one warm-up run. ``logme`` also
   with the reference's 11-step stopping rule, ``hscore`` and
   ``sfda`` also raw (``pca_dim=None``: what the PCA to 64 components costs or saves), ``gbc``
   also with diagonal covariances.
2. The whole score table a query computes: every estimator proxy × 20 models × one task,
   through ``ProxySpec.score_many`` exactly as the engine calls it (VTAB-1k split: 800 train /
   200 validation rows; the estimators use the train rows), D varied from 512 to 2,048 per
   model. Target: under 60 s in total.

    python -m benchmarks.bench_estimators [--repeat 3] [--models 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import write_result

N, D, C, C_SOURCE = 1000, 2048, 100, 1000
TABLE_TRAIN, TABLE_VAL = 800, 200
TARGET_TABLE_S = 60.0
LATENT = 96


def synthetic(
    n: int, d: int, c: int, *, quality: float, seed: int, cs: int = C_SOURCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (n, d) float32, labels (n,), source logits (n, cs) float32)``: class means in
    a 96-d latent space mapped through a random non-negative (ReLU) layer, so the spectrum
    decays like real penultimate features; ``quality`` scales the class separation."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    latent = quality * rng.normal(size=(c, LATENT))[y] + rng.normal(size=(n, LATENT))
    w = rng.normal(size=(LATENT, d)) / np.sqrt(LATENT)
    feats = np.maximum(latent @ w, 0.0) + 0.05 * rng.normal(size=(n, d))
    head = rng.normal(size=(d, cs)) / np.sqrt(d)
    logits = 4.0 * (feats - feats.mean(0)) @ head
    return feats.astype(np.float32), y, logits.astype(np.float32)


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm-up: BLAS thread pool, page faults
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def per_estimator(repeat: int) -> dict[str, dict[str, float]]:
    from shift.scoring import estimators as E
    from shift.scoring.estimators.linearized import logit_gradients

    x, y, logits = synthetic(N, D, C, quality=1.0, seed=0)
    x2, _, _ = synthetic(N, D, C, quality=0.5, seed=1)
    cases: dict[str, Callable[[], Any]] = {
        "logme": lambda: E.logme(x, y),
        "logme (11 steps, tol 1e-3)": lambda: E.logme(x, y, max_iter=11, tol=1e-3),
        "leep": lambda: E.leep(logits, y),
        "nce": lambda: E.nce(logits, y),
        "hscore": lambda: E.hscore(x, y),
        "hscore (raw, pca_dim=None)": lambda: E.hscore(x, y, pca_dim=None),
        "shrink_hscore": lambda: E.shrinkage_hscore(x, y),
        "transrate": lambda: E.transrate(x, y),
        "gbc": lambda: E.gbc(x, y),
        "gbc (diagonal)": lambda: E.gbc(x, y, covariance="diagonal"),
        "parc": lambda: E.parc(x, y),
        "sfda": lambda: E.sfda(x, y),
        "sfda (raw, pca_dim=None)": lambda: E.sfda(x, y, pca_dim=None),
        "ncti (per model)": lambda: E.ncti_components(x, y),
        "lfc": lambda: E.lfc(x, y),
        "lgc (logit gradients)": lambda: E.lgc(logit_gradients(logits), y),
    }
    out = {}
    for name, fn in cases.items():
        out[name] = _time(fn, repeat)
        print(f"  {name:<28} {out[name]['median_s']:8.3f} s", flush=True)
    # sanity: the better-separated features must score higher on a few estimators
    assert E.logme(x, y) > E.logme(x2, y) and E.lfc(x, y) > E.lfc(x2, y)
    return out


def score_table(n_models: int) -> dict[str, Any]:
    from shift.scoring.proxies import PROXIES

    names = [n for n in PROXIES if n not in ("knn", "knn_cosine", "linear")]
    dims = np.linspace(512, 2048, n_models).round().astype(int)
    problems, logit_problems = [], []
    n = TABLE_TRAIN + TABLE_VAL
    for i, d in enumerate(dims):
        x, y, lg = synthetic(n, int(d), C, quality=0.4 + 0.08 * i, seed=100 + i)
        tr, va = slice(0, TABLE_TRAIN), slice(TABLE_TRAIN, n)
        problems.append((x[tr], y[tr], x[va], y[va]))
        logit_problems.append((lg[tr], y[tr], lg[va], y[va]))
    per_proxy: dict[str, float] = {}
    scores: dict[str, list[float]] = {}
    t_all = time.perf_counter()
    for name in names:
        spec = PROXIES[name]
        t = time.perf_counter()
        vals = spec.score_many(logit_problems if spec.needs_logits else problems)
        per_proxy[name] = time.perf_counter() - t
        scores[name] = [float(v) for v in vals]
        assert all(np.isfinite(vals)), name
        print(f"  {name:<14} {per_proxy[name]:7.2f} s for {n_models} models", flush=True)
    total = time.perf_counter() - t_all
    return {
        "models": n_models,
        "dims": [int(d) for d in dims],
        "train_rows": TABLE_TRAIN,
        "classes": C,
        "source_classes": C_SOURCE,
        "seconds_per_proxy": per_proxy,
        "total_s": total,
        "target_s": TARGET_TABLE_S,
        "within_target": total < TARGET_TABLE_S,
        "scores": scores,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", type=int, default=20)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"per estimator, N={N} D={D} C={C} (source classes {C_SOURCE}), median of {args.repeat}")
    per = per_estimator(args.repeat)
    print(f"score table: every estimator x {args.models} models, D 512..2048, {TABLE_TRAIN} rows")
    table = score_table(args.models)
    res = {
        "scale": {"n": N, "d": D, "classes": C, "source_classes": C_SOURCE},
        "per_estimator_s": per,
        "table": table,
        "load_average_1min_at_start": load,
        "threads": os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    path = write_result("estimators", res)
    print(f"\n{'estimator':<28} {'median s':>9} {'min s':>8}   (N={N}, D={D}, C={C})")
    for name, r in per.items():
        print(f"{name:<28} {r['median_s']:>9.3f} {r['min_s']:>8.3f}")
    print(
        f"\nscore table: {len(table['seconds_per_proxy'])} estimators x {table['models']} models "
        f"in {table['total_s']:.1f} s (target < {TARGET_TABLE_S:.0f} s: "
        f"{'met' if table['within_target'] else 'MISSED'})  ({path})"
    )
    return res


if __name__ == "__main__":
    main()
