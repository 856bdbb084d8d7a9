"""1-NN validation accuracy and time: exact numpy vs the index's hnsw graph (the ``knn`` proxy's
two paths), at N_train = 1k … 100k.

Data: ``bench_estimators.synthetic`` features (C = 100 classes in a 96-d latent space through a
random ReLU layer, D = 1,280, class separation ``--quality``), the first ``--val`` rows for
validation and the next N_train rows for training. The graph is built the way the index store
builds it (``HnswConfig`` defaults: M 16, ef_construction 200, seed 100; ``l2`` space) over the
validation and training rows together, and grown by insertion from one N_train to the next, so
its build time is cumulative and reported apart from the queries (the index builds it anyway).
The exact path is ``knn_accuracy`` on the arrays; the graph path is ``GraphKnn`` as the engine
calls it (nearest training hit among ``GRAPH_K``, widening for the rest) at each ``--ef``.
Target at 100k: accuracy within 0.5 points of exact at ≥ 5× faster.

    python -m benchmarks.bench_knn [--sizes 1000 10000 100000] [--val 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.bench_estimators import synthetic
from benchmarks.common import RESULTS, write_result
from shift.scoring import knn

D, C = 1280, 100
SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
EFS = (32, 64, 128)
TARGET_POINTS, TARGET_SPEEDUP = 0.5, 5.0


class _GraphIndex:
    """The part of an ``EmbeddingIndex`` the graph path uses, over in-memory rows whose sample
    ids are their row numbers; ``knn_query`` sets ``ef`` the way the store's does."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, graph: Any) -> None:
        self.vectors, self.labels, self.graph = vectors, labels, graph

    def __len__(self) -> int:
        return self.graph.get_current_count()

    def rows(self, sample_ids: Sequence[Any]) -> np.ndarray:
        return np.asarray(sample_ids, np.int64)

    def select(self, sample_ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        r = self.rows(sample_ids)
        return self.vectors[r], self.labels[r]

    def knn_query(
        self, queries: Any, k: int = 1, space: str = "l2", ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), len(self))
        self.graph.set_ef(max(ef or 64, k))
        rows, dist = self.graph.knn_query(queries, k=k)
        return rows.astype(np.int64), dist


def run(
    sizes: Sequence[int], n_val: int, efs: Sequence[int], threads: int, quality: float
) -> dict[str, Any]:
    import hnswlib

    sizes = sorted(sizes)
    t = time.perf_counter()
    x, y, _ = synthetic(n_val + sizes[-1], D, C, quality=quality, seed=0, cs=1)
    gen_s = time.perf_counter() - t
    print(f"data: {len(x):,} × {D} in {gen_s:.1f} s", flush=True)
    graph = hnswlib.Index(space="l2", dim=D)
    graph.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100)
    index = _GraphIndex(x, y, graph)
    val_ids = np.arange(n_val)
    built, build_s = 0, 0.0
    rows = []
    for n in sizes:
        t = time.perf_counter()
        graph.add_items(x[built : n_val + n], np.arange(built, n_val + n), threads)
        built, build_s = n_val + n, build_s + time.perf_counter() - t
        xt, yt = x[n_val : n_val + n], y[n_val : n_val + n]
        t = time.perf_counter()
        exact = knn.knn_accuracy(xt, yt, x[:n_val], y[:n_val])
        exact_s = time.perf_counter() - t
        row: dict[str, Any] = {
            "n_train": n,
            "graph_build_s": round(build_s, 2),
            "exact": {"accuracy": exact, "seconds": round(exact_s, 4)},
            "hnsw": {},
        }
        train_ids = np.arange(n_val, n_val + n)
        for ef in efs:
            t = time.perf_counter()
            acc = knn.GraphKnn("euclidean", ef=ef)(index, train_ids, val_ids)
            secs = time.perf_counter() - t
            row["hnsw"][str(ef)] = {
                "accuracy": acc,
                "seconds": round(secs, 4),
                "speedup": round(exact_s / secs, 2),
                "accuracy_diff_points": round(100 * (acc - exact), 2),
            }
        rows.append(row)
        hnsw = "; ".join(
            f"ef {ef}: {h['accuracy']:.3f} in {h['seconds']:.2f} s ({h['speedup']:.1f}×)"
            for ef, h in row["hnsw"].items()
        )
        print(
            f"N_train {n:>7,}: exact {exact:.3f} in {exact_s:.2f} s; graph built in "
            f"{build_s:.1f} s; hnsw {hnsw}",
            flush=True,
        )
    return {
        "data": {
            "generator": "benchmarks.bench_estimators.synthetic",
            "dim": D,
            "classes": C,
            "quality": quality,
            "n_val": n_val,
            "seed": 0,
        },
        "graph": {"space": "l2", "M": 16, "ef_construction": 200, "seed": 100, "threads": threads},
        "graph_k": knn.GRAPH_K,
        "blas_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "sizes": rows,
        "target": {"max_accuracy_diff_points": TARGET_POINTS, "min_speedup": TARGET_SPEEDUP},
    }


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sizes"]
    ns = [r["n_train"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(ns, [r["exact"]["seconds"] for r in rows], "o-", color="#888", label="exact")
    axes[1].plot(ns, [r["exact"]["accuracy"] for r in rows], "o-", color="#888", label="exact")
    for ef in rows[0]["hnsw"]:
        axes[0].plot(ns, [r["hnsw"][ef]["seconds"] for r in rows], "o-", label=f"hnsw ef {ef}")
        axes[1].plot(ns, [r["hnsw"][ef]["accuracy"] for r in rows], ".--", label=f"hnsw ef {ef}")
    axes[0].plot(ns, [r["graph_build_s"] for r in rows], "x:", color="#a52", label="graph build")
    axes[0].set(xscale="log", yscale="log", xlabel="N_train", ylabel="seconds")
    axes[0].set_title(f"1-NN of {result['data']['n_val']:,} queries, D = {D}")
    axes[1].set(xscale="log", xlabel="N_train", ylabel="1-NN validation accuracy")
    axes[1].set_title(f"C = {C} synthetic classes")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "knn_hnsw.png", dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--ef", type=int, nargs="+", default=list(EFS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quality", type=float, default=0.5)
    args = ap.parse_args(argv)
    result = run(args.sizes, args.val, args.ef, args.threads, args.quality)
    path = write_result("knn_hnsw", result)
    plot(result)
    print(f"wrote {path} and {RESULTS / 'knn_hnsw.png'}")
    return result


if __name__ == "__main__":
    main()
