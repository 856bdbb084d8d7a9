"""Embedding throughput (img/s): ONNX Runtime vs torch eager on the same model, same threads,
same batches, in one run; and the Ray executor with 1 vs 2 actors.

    python -m benchmarks.bench_embedding [--depth 18] [--size 112] [--images 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import export_onnx, resnet, write_result


def _record(path: Path, model: Any, size: int) -> Any:
    from shift.fsutil import sha256_file
    from shift.records import InputSpec, ModelRecord

    return ModelRecord(
        name="bench-resnet",
        path=str(path),
        sha256=sha256_file(path),
        family="resnet",
        params=sum(p.numel() for p in model.parameters()),
        dim=model.dim,
        output="embedding",
        head_output="logits",
        head_classes=1000,
        input_name="input",
        input=InputSpec(height=size, width=size),
        source="benchmark",
    )


def ort_vs_torch(
    model: Any, rec: Any, images: np.ndarray, batch: int, threads: int
) -> dict[str, Any]:
    import torch

    from shift.inference.onnx_backend import OnnxEmbedder
    from shift.inference.preprocess import preprocess

    torch.set_num_threads(threads)
    emb = OnnxEmbedder(rec.path, rec, device="cpu", intra_op_threads=threads)
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]

    def run_ort() -> None:
        for b in batches:
            emb.embed(b)

    def run_torch() -> None:
        with torch.inference_mode():
            for b in batches:
                model(torch.from_numpy(preprocess(b, rec.input)))

    out: dict[str, Any] = {}
    for name, fn in (("onnxruntime", run_ort), ("torch_eager", run_torch)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = {"img_per_s": len(images) / best, "seconds": best}
    with torch.inference_mode():
        ref = model(torch.from_numpy(preprocess(images[:4], rec.input)))[0].numpy()
    out["max_abs_diff"] = float(np.abs(emb.embed(images[:4])[0] - ref).max())
    out["ratio_ort_over_torch"] = out["onnxruntime"]["img_per_s"] / out["torch_eager"]["img_per_s"]
    out["threads"] = threads
    out["providers"] = emb.providers
    return out


def ray_actors(rec: Any, images: np.ndarray, batch: int) -> dict[str, Any]:
    from shift.inference.jobs import EmbedJob
    from shift.inference.ray.executor import RayExecutor
    from shift.inference.ray.runtime import ensure_ray, shutdown_ray

    ensure_ray()
    out: dict[str, Any] = {}
    try:
        batches = [(f"b{i}", images[i : i + batch]) for i in range(0, len(images), batch)]
        for n in (1, 2):
            ex = RayExecutor(num_actors=n)
            # warm-up run (actor start + model load), then the timed run
            ex.run(
                [EmbedJob("m", rec.path, rec, batches[:n])],
                lambda r: None,
                lambda f: None,
                progress=False,
            )
            t = time.perf_counter()
            ex.run(
                [EmbedJob("m", rec.path, rec, batches)],
                lambda r: None,
                lambda f: None,
                progress=False,
            )
            secs = time.perf_counter() - t
            out[f"actors_{n}"] = {"img_per_s": len(images) / secs, "seconds": secs}
        out["ratio_2_over_1"] = out["actors_2"]["img_per_s"] / out["actors_1"]["img_per_s"]
    finally:
        shutdown_ray()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=18, choices=(18, 50))
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    model = resnet(args.depth)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "resnet.onnx"
        export_onnx(model, path, args.size, ["embedding", "logits"])
        rec = _record(path, model, args.size)
        res = {
            "model": f"resnet{args.depth}",
            "params": rec.params,
            "input_px": args.size,
            "images": args.images,
            "batch": args.batch,
            "ort_vs_torch": ort_vs_torch(model, rec, images, args.batch, args.threads),
            "ray": ray_actors(rec, images, args.batch),
        }
    path = write_result(f"embedding_resnet{args.depth}_{args.size}px", res)
    o, r = res["ort_vs_torch"], res["ray"]
    print(
        f"resnet{args.depth} @ {args.size}px: ORT {o['onnxruntime']['img_per_s']:.1f} img/s, "
        f"torch {o['torch_eager']['img_per_s']:.1f} img/s → {o['ratio_ort_over_torch']:.2f}×; "
        f"Ray 1 actor {r['actors_1']['img_per_s']:.1f}, 2 actors {r['actors_2']['img_per_s']:.1f}"
        f" img/s → {r['ratio_2_over_1']:.2f}×  ({path})"
    )
    return res


if __name__ == "__main__":
    main()
