"""Per-model fixed costs (load, convert, check, session) and what the in-process executor's
look-ahead hides of them (issue 19, item 4).

Models: torchvision ResNet-18, MobileNetV2 and EfficientNet-B0 with random weights, exported
with ``torch.onnx.export`` (legacy exporter) at opset 17 and 224 px, outputs ``embedding`` and
``logits``; plus the catalog's EfficientNet-Lite0 architecture (random weights) at opset 20,
which onnx2torch converts only after lowering it to opset 17 (the route whose lowered graph the
torch cache keeps).

1. **Fixed costs**, each backend in a fresh process (imports and one-time initialisation paid
   first on a throw-away tiny model, not counted): ONNX Runtime's session creation, and the
   torch backend's convert / move to the device / check against ONNX Runtime, *cold* (empty
   torch cache) and *cached* (a second fresh process over the filled cache). The cold check is
   also split into its parts (ONNX Runtime session, ONNX Runtime run and torch run of the check
   batch).
2. **Overlap**: the in-process executor over the four models on a tiny task (``--images``
   224 px images in batches of 32, already at the model's size as the indexer now hands them),
   with and without ``load_ahead``, alternated ``--repeat`` times in one fresh process per
   setting (per-process verdicts dropped before each run; a cold run gets an empty cache):

   * on this CPU, for ONNX Runtime, torch cached and torch cold: the next model's load competes
     with the running model for the same cores;
   * on an *emulated device*: the torch backend's real loads, but each model's run replaced by
     a wait of ``DEVICE_S`` (the host idles while a GPU computes), which is where the
     look-ahead is meant to hide the load.

   Reported: wall time of ``executor.run`` (each run, min and median), the load seconds and the
   part of them the run waited for.

    python -m benchmarks.bench_model_overhead            # writes results/model_overhead.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result
from shift.inference.embedder import register_backend

ARCHS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "efficientnet-lite0"]
SIZE = 224
EMULATED = "torch-emulated-device"
DEVICE_S = 0.5  # the emulated device's time per model on the tiny task


@register_backend(EMULATED)
class EmulatedDevice:
    """The torch backend's real load (convert, move, check on this CPU) with the model's run
    replaced by a wait of ``DEVICE_S`` per job: the host thread idles while a device computes,
    as with a model on a GPU. Its ``device`` is not "cpu", so ``auto`` looks ahead."""

    providers = ["emulated-device"]
    device = "emulated"

    def __init__(self, model_path: str, record: Any, **opts: Any) -> None:
        from shift.inference.torch.backend import TorchEmbedder

        self.record = record
        self.inner = TorchEmbedder(model_path, record, device="cpu")

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        time.sleep(DEVICE_S * len(images) / 32)
        return np.zeros((len(images), self.record.dim), np.float32), None

    def close(self) -> None:
        self.inner.close()


# ---- models ------------------------------------------------------------------------------------


def _torchvision(arch: str) -> tuple[Any, int]:
    """(module returning (embedding, logits), embedding dim), random weights, seeded."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    if arch.startswith("resnet"):
        head, net.fc = net.fc, torch.nn.Identity()
        dim = head.in_features
    else:
        head, net.classifier = net.classifier, torch.nn.Identity()
        dim = head[-1].in_features

    class Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.head = net, head

        def forward(self, x: Any) -> tuple[Any, Any]:
            z = self.net(x)
            return z, self.head(z)

    return Both().eval(), dim


def export_models(folder: Path) -> list[dict[str, Any]]:
    """Export every architecture to ``folder``; their records (JSON) and export seconds."""
    import torch

    from shift.records import InputSpec, ModelRecord

    out = []
    for arch in ARCHS:
        path = folder / f"{arch}.onnx"
        t0 = time.perf_counter()
        if arch == "efficientnet-lite0":
            from shift.catalog.architectures import build

            torch.manual_seed(0)
            module, dim, opset = build("efficientnet_lite", arch).eval(), 1280, 20
        else:
            (module, dim), opset = _torchvision(arch), 17
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, SIZE, SIZE),),
                str(path),
                input_names=["input"],
                output_names=["embedding", "logits"],
                dynamic_axes={n: {0: "batch"} for n in ("input", "embedding", "logits")},
                dynamo=False,
                opset_version=opset,
            )
        export_s = time.perf_counter() - t0
        rec = ModelRecord(
            name=arch.replace("_", "-"),
            path=str(path),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            params=sum(p.numel() for p in module.parameters()),
            dim=dim,
            output="embedding",
            head_output="logits",
            head_classes=1000,
            input_name="input",
            input=InputSpec(height=SIZE, width=SIZE),
            source="benchmark",
        )
        out.append(
            {
                "arch": arch,
                "opset": opset,
                "export_s": export_s,
                "mb": path.stat().st_size / 2**20,
                "record": rec.model_dump_json(),
            }
        )
    return out


def _records(models: list[dict[str, Any]]) -> list[Any]:
    from shift.records import ModelRecord

    return [ModelRecord.model_validate_json(m["record"]) for m in models]


def _warm_up(folder: Path, device: str) -> None:
    """Pay the process's one-time costs (imports, first kernels) on a throw-away tiny model."""
    import torch

    from shift.inference.onnx_backend import OnnxEmbedder
    from shift.inference.torch.backend import TorchEmbedder
    from shift.records import InputSpec, ModelRecord

    path = folder / "warm-up.onnx"
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    ).eval()
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "b"}, "embedding": {0: "b"}},
            dynamo=False,
            opset_version=17,
        )
    rec = ModelRecord(
        name="warm-up",
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        params=1,
        dim=8,
        output="embedding",
        input_name="input",
        input=InputSpec(height=32, width=32),
        source="benchmark",
    )
    x = np.zeros((2, 32, 32, 3), np.uint8)
    old = os.environ.get("SHIFT_TORCH_CACHE")
    os.environ["SHIFT_TORCH_CACHE"] = "off"
    try:
        OnnxEmbedder(str(path), rec, device="cpu").embed(x)
        TorchEmbedder(str(path), rec, device=device).embed(x)
    finally:
        if old is None:
            os.environ.pop("SHIFT_TORCH_CACHE")
        else:
            os.environ["SHIFT_TORCH_CACHE"] = old


# ---- children (one fresh process each) ---------------------------------------------------------


def child_fixed(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-model load costs in this process: ONNX Runtime's session, then the torch backend's
    convert / device / check (``split``: the cold check's parts timed apart afterwards)."""
    from shift.inference.onnx_backend import OnnxEmbedder
    from shift.inference.torch.backend import TorchEmbedder
    from shift.inference.torch.check import check_images

    folder, device = Path(spec["folder"]), spec["device"]
    _warm_up(folder, device)
    os.environ["SHIFT_TORCH_CACHE"] = spec["cache"]
    out: dict[str, Any] = {}
    for rec in _records(spec["models"]):
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        ort = OnnxEmbedder(rec.path, rec, device="cpu")
        row["ort_session_s"] = time.perf_counter() - t0
        del ort
        t0 = time.perf_counter()
        emb = TorchEmbedder(rec.path, rec, device=device)
        row["torch_total_s"] = time.perf_counter() - t0
        row.update({f"torch_{k}_s": v for k, v in emb.timings.items()})
        row.update(verdict=emb.verdict, graph_cached=emb.graph_cached, route=emb.route)
        if spec.get("split"):
            images = check_images(rec.input)
            t0 = time.perf_counter()
            ref = OnnxEmbedder(rec.path, rec, device="cpu")
            t1 = time.perf_counter()
            ref.embed(images)
            t2 = time.perf_counter()
            emb.run(images, precision="fp32")
            t3 = time.perf_counter()
            row["check_parts_s"] = {
                "ort_session": t1 - t0,
                "ort_run": t2 - t1,
                "torch_run": t3 - t2,
            }
        emb.close()
        out[rec.name] = row
    return out


def child_overlap(spec: dict[str, Any]) -> dict[str, Any]:
    """In-process runs over every model on a tiny task, with and without the look-ahead,
    alternated ``repeat`` times in this process; before each run the per-process verdicts are
    dropped and, for a cold cache, the torch cache points at a new empty folder."""
    from shift.inference.jobs import EmbedJob
    from shift.inference.local import InProcessExecutor
    from shift.inference.torch import check as torch_check

    folder, device = Path(spec["folder"]), spec["device"]
    _warm_up(folder, device)
    n, bs = spec["images"], 32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    recs = _records(spec["models"])

    def batches() -> Any:
        for i in range(0, n, bs):
            yield f"b{i // bs}", images[i : i + bs]

    runs: dict[str, list[dict[str, Any]]] = {"ahead": [], "sequential": []}
    for rep in range(spec["repeat"]):
        for ahead in (True, False) if rep % 2 == 0 else (False, True):
            cache = spec["cache"] or str(folder / f"cold-{spec['backend']}-{rep}-{ahead}")
            os.environ["SHIFT_TORCH_CACHE"] = cache
            torch_check.forget_verdicts()
            jobs = [
                EmbedJob(r.name, r.path, r, batches(), -(-n // bs), spec["backend"]) for r in recs
            ]
            failed: list[str] = []
            done: list[str] = []
            executor = InProcessExecutor(
                device=device,
                intra_op_threads=spec["threads"],
                load_ahead=ahead,
                batch_timeout_s=600,
            )
            c0, t0 = time.process_time(), time.perf_counter()
            executor.run(
                jobs,
                lambda res, done=done: done.append(res.batch_id),
                lambda f, failed=failed: failed.append(f.error),
                False,
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs["ahead" if ahead else "sequential"].append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "load_s": executor.load_seconds,
                    "load_waited_s": executor.load_waited,
                    "failed": failed,
                    "batches": len(done),
                }
            )
    return runs


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_model_overhead", "--child", kind]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        cmd, input=json.dumps(spec), capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---- the benchmark -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32, help="images of the tiny task")
    ap.add_argument("--repeat", type=int, default=5, help="runs per overlap setting")
    ap.add_argument("--device", default="cpu", help="the torch backend's device")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="model_overhead")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(sys.stdin.read())
        fn = child_fixed if args.child == "fixed" else child_overlap
        print(json.dumps(fn(spec)))
        return

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = export_models(folder)
        base = {"folder": str(folder), "models": models, "device": args.device}
        cache = str(folder / "torch-cache")
        cold = run_child("fixed", {**base, "cache": cache, "split": True})
        cached = run_child("fixed", {**base, "cache": cache})
        print("fixed costs (s), cold -> cached:")
        for name in cold:
            c, w = cold[name], cached[name]
            print(
                f"  {name:20s} ORT session {c['ort_session_s']:.3f} | torch "
                f"convert {c['torch_convert_s']:.3f}->{w['torch_convert_s']:.3f} "
                f"check {c['torch_check_s']:.3f}->{w['torch_check_s']:.3f} "
                f"total {c['torch_total_s']:.3f}->{w['torch_total_s']:.3f} ({w['verdict']})"
            )

        overlap: dict[str, dict[str, list[dict[str, Any]]]] = {}
        settings = [
            ("cpu: onnxruntime", "onnxruntime", "off"),
            ("cpu: torch cached", "torch", cache),
            ("cpu: torch cold", "torch", ""),
            ("emulated device: torch cached", EMULATED, cache),
            ("emulated device: torch cold", EMULATED, ""),
        ]
        for label, backend, cache_dir in settings:
            spec = {**base, "backend": backend, "cache": cache_dir, "threads": None}
            spec.update(images=args.images, repeat=args.repeat)
            overlap[label] = run_child("overlap", spec)
            for key, runs in overlap[label].items():
                walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
                print(f"  overlap {label:30s} {key:10s} wall {walls} s")

    summary = {}
    for label, runs in overlap.items():
        med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
        loads = [sum(r["load_s"].values()) for r in runs["sequential"]]
        first = ARCHS[0].replace("_", "-")
        later = [sum(v for k, v in r["load_s"].items() if k != first) for r in runs["sequential"]]
        waited = [
            sum(v for k, v in r["load_waited_s"].items() if k != first) for r in runs["ahead"]
        ]
        pairs = [
            seq["wall_s"] - ahd["wall_s"]
            for seq, ahd in zip(runs["sequential"], runs["ahead"], strict=False)
        ]
        summary[label] = {
            "wall_sequential_min_s": best["sequential"],
            "wall_ahead_min_s": best["ahead"],
            "saved_min_s": best["sequential"] - best["ahead"],
            "wall_sequential_s": med["sequential"],
            "wall_ahead_s": med["ahead"],
            "saved_s": med["sequential"] - med["ahead"],
            "saved_s_paired_median": statistics.median(pairs),
            "speedup": med["sequential"] / med["ahead"],
            "embed_s_sequential": med["sequential"] - statistics.median(loads),
            "load_total_s_sequential": statistics.median(loads),
            "load_after_first_s": statistics.median(later),
            "load_waited_after_first_s_ahead": statistics.median(waited),
        }
        print(f"{label}: {summary[label]}")

    write_result(
        args.name,
        {
            "what": "per-model fixed costs (ONNX Runtime session; torch backend convert / "
            "device / check, cold and cached) and the in-process executor's look-ahead",
            "device": args.device,
            "images": args.images,
            "batch": 32,
            "size_px": SIZE,
            "exports": {
                m["arch"]: {"opset": m["opset"], "export_s": m["export_s"], "mb": m["mb"]}
                for m in models
            },
            "fixed_cold": cold,
            "fixed_cached": cached,
            "overlap_summary": summary,
            "overlap_runs": overlap,
            "load_average_start_end": [load_start, os.getloadavg()],
            "note": "a shared 2-core machine: the CPU overlap rows move by seconds between runs "
            "with the other jobs' load; the emulated-device rows do not use this CPU while a "
            "model runs",
        },
    )


if __name__ == "__main__":
    main()
