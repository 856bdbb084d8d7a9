"""GPU inference throughput (img/s), one command, in process (no Ray, no services):

* **model only**: native torch vs shift's torch backend (the ONNX export converted by onnx2torch),
  the same device tensor in, fp32 and bf16 (autocast; channels-last on CUDA);
* **from uint8 host arrays**: native (pinned batch, copied and normalised on the device) vs
  ``TorchEmbedder.embed`` (copy into its pinned buffer, preprocess on the device, results back),
  also called from a fresh thread per batch as the executors do (``embed`` runs the model on the
  embedder's own thread: cuDNN's autotuning cache is per thread);
* **end to end**: a task of uint8 images in a home -> ``Engine(executor="inprocess",
  backend="torch").index`` -> an index on disk (``img_per_s``: all of it), split into ``load_s``
  (the model's conversion), ``stream`` (task-store reads + embedding + batch writes) and
  ``finalize`` (assembling the index and building its hnswlib graphs);
* **ONNX Runtime** on all CPU cores (shift's ONNX Runtime backend, uint8 in).

Models: the catalog's MobileNetV2 architecture (its catalog weights when installed, else random)
and a torchvision-layout ResNet-50 (random weights); batch 256 at 224 px. Results are written
after every measurement, so a run cut short keeps what it measured.

    python -m benchmarks.bench_gpu             # -> benchmarks/results/gpu.json
    python -m benchmarks.bench_gpu --smoke     # tiny sizes, any CPU: results/gpu_smoke.json

Needs torch, onnx, onnxruntime, onnx2torch (+ torchvision), numpy, pillow; the end-to-end part
also pydantic, sqlite-utils and hnswlib (``benchmarks/gpu_device.sh`` brings them as wheels).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import export_onnx, resnet, write_result

PRECISIONS = ("fp32", "bf16")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def rate(fn: Any, images: int, iters: int, device: str, warmup: int = 3) -> dict[str, float]:
    """img/s of ``fn`` (``images`` per call) over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    secs = time.perf_counter() - t
    return {"img_per_s": round(images * iters / secs, 1), "seconds": round(secs, 3)}


def mobilenet_v2() -> tuple[Any, str]:
    """The catalog's MobileNetV2 module: its catalog weights when installed, else random."""
    import torch

    from shift.catalog.architectures import MobileNetV2, load_weights

    torch.manual_seed(0)
    module = MobileNetV2().eval()
    try:
        from shift.catalog.entries import SHIPPED_CATALOG, load_catalog

        entry = next(e for e in load_catalog(SHIPPED_CATALOG) if e.builder == "mobilenet_v2")
        assert entry.weights is not None
        load_weights(module, str(entry.weights.path()))
        return module.eval(), f"catalog ({entry.name})"
    except Exception:  # the weights package (or yaml) is not installed: random weights
        return module, "random"


def native_rates(
    module: Any, device: str, precision: str, batch: int, size: int, iters: int
) -> dict[str, Any]:
    """Native torch: model only (a device tensor in) and from a pinned uint8 NHWC host batch."""
    import torch

    cl = device == "cuda"
    model = copy.deepcopy(module).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    u8 = torch.from_numpy(
        np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), np.uint8)
    )
    host = u8.pin_memory() if cl else u8
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    bf16 = precision == "bf16"

    def run(inp: Any) -> Any:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16),
        ):
            return model(inp)

    def from_uint8() -> None:
        t = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        emb, logits = run(((t - mean) / std).contiguous(memory_format=fmt))
        emb.float().cpu(), logits.float().cpu()

    return {
        "model_only": rate(lambda: run(x), batch, iters, device),
        "from_uint8_host": rate(from_uint8, batch, iters, device),
    }


def shift_rates(
    path: str, rec: Any, device: str, precision: str, batch: int, iters: int
) -> dict[str, Any]:
    """shift's torch backend: load (convert + check), model only, and ``embed`` from uint8."""
    import torch

    from shift.inference.torch.backend import TorchEmbedder

    t = time.perf_counter()
    emb = TorchEmbedder(path, rec, device=device, precision=precision)
    load_s = time.perf_counter() - t
    size = rec.input.height
    fmt = torch.channels_last if device == "cuda" else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    u8 = np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), np.uint8)

    def on_fresh_thread() -> None:  # as the executors call it: one new thread per batch
        t = threading.Thread(target=emb.embed, args=(u8,))
        t.start()
        t.join()

    return {
        "providers": emb.providers,
        "route": emb.route,
        "load_s": round(load_s, 2),
        "model_only": rate(lambda: emb.forward(x), batch, iters, device),
        "from_uint8_host": rate(lambda: emb.embed(u8), batch, iters, device),
        "from_uint8_fresh_thread_per_batch": rate(on_fresh_thread, batch, iters, device),
    }


def agreement(path: str, rec: Any, device: str, n: int) -> dict[str, float]:
    """Min per-row cosine of the torch backend's embeddings to ONNX Runtime's (CPU), per
    precision, on ``n`` random uint8 images."""
    from shift.inference.onnx_backend import OnnxEmbedder
    from shift.inference.torch.backend import TorchEmbedder
    from shift.inference.torch.check import row_cosines

    size = rec.input.height
    imgs = np.random.default_rng(2).integers(0, 256, (n, size, size, 3), np.uint8)
    ref = OnnxEmbedder(path, rec, device="cpu").embed(imgs)[0]
    out = {}
    for p in PRECISIONS:
        got = TorchEmbedder(path, rec, device=device, precision=p).embed(imgs)[0]
        out[f"{p}_min_cosine"] = round(float(row_cosines(got, ref).min()), 6)
    return out


def ort_rate(path: str, rec: Any, batch: int, images: int) -> dict[str, Any]:
    """shift's ONNX Runtime backend on all CPU cores, uint8 batches in."""
    from shift.inference.onnx_backend import OnnxEmbedder

    threads = os.cpu_count() or 1
    emb = OnnxEmbedder(path, rec, device="cpu", intra_op_threads=threads)
    size = rec.input.height
    u8 = np.random.default_rng(3).integers(0, 256, (batch, size, size, 3), np.uint8)
    iters = max(1, images // batch)
    return {
        "threads": threads,
        "batch": batch,
        **rate(lambda: emb.embed(u8), batch, iters, "cpu", 1),
    }


def end_to_end(reg: Any, rec: Any, precision: str, batch: int) -> dict[str, Any]:
    """``Engine.index`` of the "bench" task with the torch backend in ``precision``, from no
    index. Apart: the executor's time (``stream``: model load + task reads + embedding + batch
    writes), the model load within it (conversion; the check's verdict is cached by then) and
    ``finalize`` (assembling the index, building its hnswlib graphs). Within the stream, the
    task-store reads (``read_s``) and the index batch writes (``write_s``) are timed apart: what
    is left (``embed_s``) is the backend's ``embed``, so the feeding costs are in the JSON."""
    from shift.engine.engine import Engine
    from shift.inference import local
    from shift.inference.torch.backend import PRECISION_ENV
    from shift.store.index.writer import IndexWriter

    shutil.rmtree(reg.home.index_path("bench", rec.name), ignore_errors=True)
    engine = Engine(reg, executor="inprocess", backend="torch", batch_size=batch)
    inner, spent = engine.executor, {"run": 0.0, "load": 0.0, "read": 0.0, "write": 0.0}
    make_embedder = local.make_embedder
    read, add_batch = engine.tasks.load, IndexWriter.add_batch

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[key] += time.perf_counter() - t

        return wrapper

    def timed_make(*args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return make_embedder(*args, **kw)
        finally:
            spent["load"] += time.perf_counter() - t

    class Timed:
        inference_calls = 0

        def run(self, *args: Any, **kw: Any) -> None:
            t = time.perf_counter()
            inner.run(*args, **kw)
            spent["run"] += time.perf_counter() - t

    engine._executor = Timed()
    os.environ[PRECISION_ENV] = precision
    local.make_embedder = timed_make
    engine.tasks.load = timed(read, "read")  # type: ignore[method-assign]
    IndexWriter.add_batch = timed(add_batch, "write")  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        idx = engine.index("bench", [rec])
        total = time.perf_counter() - t
    finally:
        local.make_embedder = make_embedder
        IndexWriter.add_batch = add_batch  # type: ignore[method-assign]
        os.environ.pop(PRECISION_ENV, None)
    report = engine.last_report
    if report is None or report.failed or rec.name not in idx:
        raise RuntimeError(f"end-to-end index failed: {report and report.failed}")
    n = len(idx[rec.name])
    streaming = spent["run"] - spent["load"]
    return {
        "images": n,
        "backend": idx[rec.name].meta.backend,
        "providers": idx[rec.name].meta.providers,
        "img_per_s": round(n / total, 1),
        "seconds": round(total, 3),
        "load_s": round(spent["load"], 3),
        "stream_s": round(streaming, 3),
        "stream_img_per_s": round(n / streaming, 1),
        "read_s": round(spent["read"], 3),
        "write_s": round(spent["write"], 3),
        "embed_s": round(streaming - spent["read"] - spent["write"], 3),
        "finalize_s": round(total - spent["run"], 3),
    }


def summarise(m: dict[str, Any]) -> dict[str, float]:
    """The ratios the targets are stated in: shift / native (model only, like with like),
    end to end / shift model only, and the GPU path / ONNX Runtime on the CPU."""

    def ips(*keys: str) -> float | None:
        d: Any = m
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d if isinstance(d, float | int) else None

    out = {}
    for p in PRECISIONS:
        shift, native = (
            ips(f"shift_{p}", "model_only", "img_per_s"),
            ips(f"native_{p}", "model_only", "img_per_s"),
        )
        e2e = ips(f"end_to_end_{p}", "img_per_s")
        u8 = ips(f"shift_{p}", "from_uint8_host", "img_per_s")
        fresh = ips(f"shift_{p}", "from_uint8_fresh_thread_per_batch", "img_per_s")
        if u8 and fresh:
            out[f"{p}_fresh_thread_over_same_thread"] = round(fresh / u8, 3)
        stream = ips(f"end_to_end_{p}", "stream_img_per_s")
        ort = ips("onnxruntime_cpu", "img_per_s")
        if shift and native:
            out[f"{p}_shift_over_native"] = round(shift / native, 3)
        if shift and e2e:
            out[f"{p}_end_to_end_over_model_only"] = round(e2e / shift, 3)
        if shift and stream:
            out[f"{p}_stream_over_model_only"] = round(stream / shift, 3)
        if shift and ort:
            out[f"{p}_shift_model_only_over_onnxruntime_cpu"] = round(shift / ort, 1)
    return out


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "onnx2torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    for pkg in ("hnswlib", "chroma-hnswlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out["hnswlib"] = f"{pkg} {metadata.version(pkg)}"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI, any CPU)")
    ap.add_argument("--models", default="mobilenet_v2,resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=20, help="timed batches per GPU measurement")
    ap.add_argument("--e2e-images", type=int, default=2048)
    ap.add_argument("--ort-images", type=int, default=512)
    ap.add_argument("--budget-s", type=float, default=240, help="skip what starts after this")
    ap.add_argument("--out", default=None, help="result name (default gpu / gpu_smoke)")
    a = ap.parse_args(argv)
    import torch

    if a.smoke:  # fast anywhere: 1 torch thread (2 thrash a busy 2-core box), tiny sizes
        a.batch, a.size, a.iters, a.e2e_images, a.ort_images = 8, 64, 2, 32, 16
        torch.set_num_threads(1)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # as the torch backend sets it: like with like
    t_start = time.perf_counter()
    name = a.out or ("gpu_smoke" if a.smoke else "gpu")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "versions": versions(),
        "batch": a.batch,
        "input_px": a.size,
        "iters": a.iters,
        "smoke": a.smoke,
        "torch_threads": torch.get_num_threads(),
        "models": {},
        "skipped": [],
    }

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        write_result(name, result)

    def step(model: str, key: str, fn: Any) -> Any:
        if time.perf_counter() - t_start > a.budget_s:
            result["skipped"].append(f"{model}:{key} (over the {a.budget_s:.0f} s budget)")
            save()
            return None
        try:
            out = fn()
        except Exception as e:  # one failed measurement does not lose the others
            out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        result["models"][model][key] = out
        save()
        print(f"{model} {key}: {out}", flush=True)
        return out

    with tempfile.TemporaryDirectory(prefix="shift-bench-gpu-") as tmp:
        for model in [m for m in a.models.split(",") if m]:
            result["models"][model] = {}
            bench_model(model, Path(tmp), a, device, lambda key, fn, m=model: step(m, key, fn))
            result["models"][model]["summary"] = summarise(result["models"][model])
            save()
    save()
    return result


def bench_model(model: str, tmp: Path, a: Any, device: str, step: Any) -> None:
    """Every measurement of one model; ``step(key, fn)`` runs and records one."""
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.registry import Registry
    from shift.store.tasks import TaskStore

    builders = {"mobilenet_v2": mobilenet_v2, "resnet50": lambda: (resnet(50), "random")}
    module, weights = builders[model]()
    step("weights", lambda: weights)
    onnx_path = tmp / f"{model}.onnx"
    export_onnx(module, onnx_path, a.size, ["embedding", "logits"])
    reg = Registry.open(tmp / model / "home")
    rec = register_onnx(reg, onnx_path, model)
    path = str(reg.model_file(rec))
    step("dim", lambda: rec.dim)
    for p in PRECISIONS:
        step(f"native_{p}", lambda p=p: native_rates(module, device, p, a.batch, a.size, a.iters))
        step(f"shift_{p}", lambda p=p: shift_rates(path, rec, device, p, a.batch, a.iters))
    step("agreement_vs_onnxruntime", lambda: agreement(path, rec, device, 16))
    step("onnxruntime_cpu", lambda: ort_rate(path, rec, a.batch, a.ort_images))
    n = a.e2e_images
    x = np.random.default_rng(4).integers(0, 256, (n, a.size, a.size, 3), dtype=np.uint8)
    samples = Samples(x, np.arange(n) % 2, None, ["a", "b"], [])
    TaskStore(reg).add("bench", samples, kind="npz", source="bench")
    del x, samples
    for p in PRECISIONS:
        step(f"end_to_end_{p}", lambda p=p: end_to_end(reg, rec, p, a.batch))
    reg.close()


if __name__ == "__main__":
    main()
