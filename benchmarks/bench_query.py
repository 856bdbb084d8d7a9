"""Cached query latency: the in-process client and the `shift query` command, on a registry of
1,000 real (tiny) ONNX models whose embeddings and scores are already cached; and on a zoo
registry of real model sources (every torchvision classification weight and the VTAB-1k
table's 291 models as metadata rows, the catalog's models with weights, synthetic metadata rows
up to ``--zoo-models``), timing ``shift models import torchvision --all`` on the way.

    python -m benchmarks.bench_query [--models 1000] [--zoo-models 1000] [--only tiny|zoo]
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


def add_blobs(c: Any, n: int) -> None:
    """Register the generated 4-class task ``blobs`` of ``n`` samples (``blob_task``)."""
    from shift.records import Samples
    from shift.store.tasks import TaskStore

    x, y = blob_task(n)
    TaskStore(c.registry).add(
        "blobs",
        Samples(x, y, None, ["0", "1", "2", "3"], []),
        kind="generated",
        source="benchmarks.workloads.blob_task",
    )


def build_home(home: Path, n_models: int) -> None:
    import shift
    from shift.catalog.onnx_import import register_onnx

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
        add_blobs(c, 200)
        t = time.perf_counter()
        c.query(QUERY)  # indexes and scores everything once
        print(f"cold query over {n_models} models: {time.perf_counter() - t:.1f} s")


ZOO_QUERIES = {
    "task_aware_cached": "SELECT top 3 FROM models WHERE task=blobs AND weights = 'present' "
    "RANK BY hybrid(knn)",
    "agnostic": "SELECT top 5 FROM pool all",
    "resnet50_by_top1": "SELECT top 5 FROM pool resnet50 ORDER BY imagenet_top1 DESC",
    "meta_vtab1k": "SELECT top 5 FROM models WHERE tag = 'vtab1k' RANK BY meta(vtab1k)",
    "filter_architecture": "SELECT * FROM models WHERE architecture LIKE 'vit%' LIMIT 20",
}


def cpu_median_ms(fn: Any, repeat: int) -> dict[str, float]:
    """Median and min of this process's CPU time per call (``time.process_time``, every thread
    of the process: ONNX Runtime's or SQLite's idle threads count too, so it can exceed wall
    time); unlike wall time it does not grow when other jobs share the cores."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeat": repeat}


def _catalog_rows(c: Any) -> tuple[int, str]:
    """The catalog's models, with weights: copied (rows + absolute ONNX paths) from the default
    home when the demo has imported them there, else exported by ``import_catalog``."""
    import sqlite3

    from shift.config import Home
    from shift.store.registry import Registry

    demo = Home.resolve(None)
    if demo.db_path.is_file():
        with tempfile.TemporaryDirectory() as d:
            copy = Path(d) / "registry"
            copy.mkdir()
            src_db = sqlite3.connect(demo.db_path.resolve().as_uri() + "?mode=ro", uri=True)
            with sqlite3.connect(copy / "registry.db") as dst:  # WAL included; migrated there
                src_db.backup(dst)
            src_db.close()
            with Registry.open(copy) as src:
                rows = [m for m in src.models() if m.has_weights and not m.source_id]
                paths = {m.name: demo.registry_dir / m.path for m in rows}
                rows = [m for m in rows if paths[m.name].is_file()]
        for m in rows:
            c.registry.add_model(m.model_copy(update={"path": str(paths[m.name])}))
        if rows:
            return len(rows), f"copied from {demo.registry_dir}"
    results = c.import_catalog()
    return sum(r.status != "failed" for r in results), "import_catalog"


def _synthetic_rows(n: int, seed: int = 0) -> list[Any]:
    """Metadata rows (no weights) with plausible, seeded figures: the registry's bulk."""
    import random

    from shift.records import InputSpec, ModelRecord

    rng = random.Random(seed)
    archs = ["resnet50", "vit_b_16", "convnext_tiny", "efficientnet_b0", "swin_t", "regnet_y_8gf"]
    return [
        ModelRecord(
            name=f"synth-{i:04d}",
            path="",
            sha256="",
            weights="missing",
            architecture=(arch := rng.choice(archs)),
            family=arch.split("_")[0],
            params=rng.randrange(1_000_000, 300_000_000),
            dim=rng.choice([512, 768, 1024, 2048]),
            output="embedding",
            input_name="input",
            input=InputSpec(height=224, width=224),
            imagenet_top1=round(rng.uniform(60, 88), 2),
            imagenet_source="synthetic benchmark value",
            upstream_dataset=rng.choice(["ImageNet-1k", "ImageNet-21k", "LAION-2B"]),
            source="synthetic",
            tags=["synthetic"],
        )
        for i in range(n)
    ]


def zoo(n_models: int, repeat: int) -> dict[str, Any]:
    """The zoo registry's setup figures and cached in-process query latencies."""
    import resource

    import shift

    with tempfile.TemporaryDirectory() as d:
        home = Path(d) / "home"
        exe = Path(sys.executable).parent / "shift"
        cmd = [str(exe), "models", "import", "torchvision", "--all", "--home", str(home)]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        tv_wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        tv_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        print(out.strip().splitlines()[-1], f"(wall {tv_wall:.1f} s, CPU {tv_cpu:.1f} s)")
        with shift.connect(home, executor="inprocess") as c:
            counts = {"torchvision": c.registry.count_models()}
            t = time.perf_counter()
            counts["vtab1k"] = len(c.import_models("vtab1k"))
            vtab_s = time.perf_counter() - t
            counts["catalog"], catalog_how = _catalog_rows(c)
            synth = _synthetic_rows(max(0, n_models - c.registry.count_models()))
            with c.registry.transaction():
                for m in synth:
                    c.registry.add_model(m)
            counts["synthetic"] = len(synth)
            total = c.registry.count_models()
            add_blobs(c, 100)
            t = time.perf_counter()
            c.query(ZOO_QUERIES["task_aware_cached"])  # embeds and scores the catalog once
            cold_s = time.perf_counter() - t
        with shift.connect(home) as c:
            latency = {k: median_ms(lambda q=q: c.query(q), repeat) for k, q in ZOO_QUERIES.items()}
            cpu = {k: cpu_median_ms(lambda q=q: c.query(q), repeat) for k, q in ZOO_QUERIES.items()}
            picks = {k: c.query(q).names for k, q in ZOO_QUERIES.items()}
    return {
        "models": total,
        "rows_by_source": counts,
        "catalog_rows": catalog_how,
        "import_torchvision_all": {
            "command": "shift models import torchvision --all",
            "wall_s": tv_wall,
            "cpu_s": tv_cpu,
            "models": counts["torchvision"],
            "target_wall_s": 30.0,
        },
        "import_vtab1k_s": vtab_s,
        "cold_task_aware_s": cold_s,
        "queries": ZOO_QUERIES,
        "client_cached": latency,
        "client_cached_cpu": cpu,
        "picked": picks,
        "targets": {"client_median_ms": 5.0},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--zoo-models", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--only", choices=["tiny", "zoo"])
    args = ap.parse_args(argv)
    if args.only != "tiny":
        z = zoo(args.zoo_models, args.repeat)
        path = write_result("query_latency_zoo", z)
        lat = ", ".join(
            f"{k} {v['median_ms']:.2f} ms (CPU {z['client_cached_cpu'][k]['median_ms']:.2f})"
            for k, v in z["client_cached"].items()
        )
        print(f"zoo of {z['models']} models: cached in-process medians {lat}  ({path})")
        if args.only == "zoo":
            return z
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
