"""Cached query latency: the in-process client and the `shift query` command, on a registry of
1,000 real (tiny) ONNX models whose embeddings and scores are already cached.

    python -m benchmarks.bench_query [--models 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median_ms, write_result
from benchmarks.workloads import blob_task, tiny_cnn, tiny_variants

QUERY = "SELECT top 3 FROM pool all WHERE task=blobs AND params < 30M RANK BY hybrid(knn)"


def build_home(home: Path, n_models: int) -> None:
    import shift
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.tasks import TaskStore

    files = tiny_variants(tiny_cnn(home.parent / "base.onnx"), home.parent / "models", n_models)
    with shift.connect(home, executor="inprocess") as c:
        for i, f in enumerate(files):
            register_onnx(
                c.registry,
                f,
                f"m{i:04d}",
                imagenet_top1=50 + (i % 300) / 10,
                imagenet_source="synthetic benchmark value",
            )
        x, y = blob_task(200)
        TaskStore(c.registry).add(
            "blobs",
            Samples(x, y, None, ["0", "1", "2", "3"], []),
            kind="generated",
            source="benchmarks.workloads.blob_task",
        )
        t = time.perf_counter()
        c.query(QUERY)  # indexes and scores everything once
        print(f"cold query over {n_models} models: {time.perf_counter() - t:.1f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    import shift

    with tempfile.TemporaryDirectory() as d:
        home = Path(d) / "home"
        t = time.perf_counter()
        build_home(home, args.models)
        setup_s = time.perf_counter() - t
        with shift.connect(home) as c:
            names = c.query(QUERY).names
            client = median_ms(lambda: c.query(QUERY), args.repeat)
            agnostic = median_ms(lambda: c.query("SELECT top 3 FROM pool all"), args.repeat)
        env = {**os.environ, "SHIFT_HOME": str(home)}
        exe = Path(sys.executable).parent / "shift"
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([str(exe), "query", QUERY], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
    res = {
        "models": args.models,
        "query": QUERY,
        "picked": names,
        "setup_seconds": setup_s,
        "client_cached": client,
        "client_agnostic": agnostic,
        "cli_wall_s": {"median": statistics.median(walls), "all": walls},
        "targets": {"client_median_ms": 5.0, "cli_wall_s": 0.6},
    }
    path = write_result("query_latency", res)
    print(
        f"{args.models} models: client cached query median {client['median_ms']:.2f} ms "
        f"(agnostic {agnostic['median_ms']:.2f} ms); `shift query` wall "
        f"{statistics.median(walls):.2f} s  ({path})"
    )
    return res


if __name__ == "__main__":
    main()
