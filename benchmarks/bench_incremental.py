"""Incremental indexing: the cost of adding 1 model to a task already indexed for M models, as a
fraction of a full rebuild of all M+1, measured in one run with the same executor.

    python -m benchmarks.bench_incremental [--models 8] [--images 2000] [--executor ray]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from benchmarks.workloads import blob_task, tiny_cnn, tiny_variants


def _home(root: Path, name: str, files: list[Path], x: Any, y: Any) -> Any:
    import shift
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.tasks import TaskStore

    c = shift.connect(root / name)
    for i, f in enumerate(files):
        register_onnx(c.registry, f, f"m{i:03d}")
    TaskStore(c.registry).add(
        "blobs",
        Samples(x, y, None, [], []),
        kind="generated",
        source="benchmarks.workloads.blob_task",
    )
    return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--executor", default="ray", choices=("ray", "inprocess"))
    ap.add_argument(
        "--arch",
        default="resnet18",
        choices=("tiny", "resnet18"),
        help="the base model whose perturbed copies are indexed",
    )
    args = ap.parse_args(argv)
    from shift.engine.engine import Engine

    m = args.models
    x, y = blob_task(args.images, size=args.size)
    root = Path(tempfile.mkdtemp())
    try:
        if args.arch == "tiny":
            base = tiny_cnn(root / "base.onnx", size=args.size)
        else:
            from benchmarks.common import export_onnx, resnet

            base = root / "base.onnx"
            export_onnx(resnet(18), base, args.size, ["embedding", "logits"])
        files = tiny_variants(base, root / "models", m + 1)
        # full rebuild of M+1 models
        full = _home(root, "full", files, x, y)
        eng = Engine(full.registry, executor=args.executor)
        eng.index("blobs", full.registry.models())  # warm-up: Ray start, imports
        shutil.rmtree(full.registry.home.index_dir / "blobs")
        t = time.perf_counter()
        eng.index("blobs", full.registry.models())
        full_s = time.perf_counter() - t
        calls_full = eng.executor.inference_calls
        # M indexed, then 1 added
        inc = _home(root, "inc", files[:m], x, y)
        eng2 = Engine(inc.registry, executor=args.executor)
        eng2.index("blobs", inc.registry.models())
        from shift.catalog.onnx_import import register_onnx

        register_onnx(inc.registry, files[m], f"m{m:03d}")
        before = eng2.executor.inference_calls
        t = time.perf_counter()
        eng2.index("blobs", inc.registry.models())
        add_s = time.perf_counter() - t
        report = eng2.last_report
        calls_add = eng2.executor.inference_calls - before
    finally:
        shutil.rmtree(root, ignore_errors=True)
    frac = add_s / full_s
    target = 1 / (m + 1) + 0.10
    res = {
        "models_indexed": m,
        "arch": args.arch,
        "images": args.images,
        "input_px": args.size,
        "executor": args.executor,
        "full_rebuild_s": full_s,
        "add_one_s": add_s,
        "fraction": frac,
        "target_fraction": target,
        "embedded_on_add": report.embedded if report else {},
        "inference_calls": {"full": calls_full, "add_one": calls_add},
    }
    path = write_result("incremental", res)
    print(
        f"add 1 model to {m} indexed: {add_s:.2f} s vs full rebuild of {m + 1}: {full_s:.2f} s "
        f"→ {frac:.3f} (target ≤ {target:.3f}); batches {calls_add} vs {calls_full}  ({path})"
    )
    return res


if __name__ == "__main__":
    main()
