"""`make bench`: run every quick benchmark in one process and plot the comparisons.

python -m benchmarks.run_all
"""

from __future__ import annotations

from typing import Any

from benchmarks import (
    bench_concurrency,
    bench_crash,
    bench_e2e_regret,
    bench_embedding,
    bench_estimators,
    bench_incremental,
    bench_ingest_memory,
    bench_knn,
    bench_query,
    bench_vtab_regret,
)
from benchmarks.common import RESULTS


def plot(emb: dict[str, Any], inc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o, r = emb["ort_vs_torch"], emb["ray"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(
        ["ONNX Runtime", "torch eager"],
        [o["onnxruntime"]["img_per_s"], o["torch_eager"]["img_per_s"]],
        color=["#2a7", "#888"],
    )
    axes[0].set_title(f"{emb['model']} @ {emb['input_px']} px, {o['threads']} threads")
    axes[0].set_ylabel("images / s")
    axes[1].bar(
        ["1 actor", "2 actors"],
        [r["actors_1"]["img_per_s"], r["actors_2"]["img_per_s"]],
        color=["#888", "#27a"],
    )
    axes[1].set_title(f"Ray executor ({r['ratio_2_over_1']:.2f}×)")
    axes[2].bar(
        [f"full rebuild\n({inc['models_indexed'] + 1} models)", "add 1 model"],
        [inc["full_rebuild_s"], inc["add_one_s"]],
        color=["#888", "#a52"],
    )
    axes[2].set_title(f"incremental: {inc['fraction']:.3f} of a rebuild")
    axes[2].set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(RESULTS / "engine.png", dpi=110)


def main() -> None:
    emb = bench_embedding.main([])
    bench_query.main([])
    inc = bench_incremental.main([])
    plot(emb, inc)
    print(f"plot: {RESULTS / 'engine.png'}")
    bench_estimators.main([])
    bench_knn.main([])  # exact vs hnsw 1-NN up to 100k training rows (a few minutes)
    bench_vtab_regret.main()
    bench_e2e_regret.main([])  # from the committed ground truth; needs the demo home (make demo)
    bench_crash.main([])
    bench_concurrency.main([])  # 6 processes for 60 s on one home, then checks (~5 min)
    bench_ingest_memory.main([])  # peak RSS of tasks add, 1k-10k images (generates 10k PNGs)


if __name__ == "__main__":
    main()
