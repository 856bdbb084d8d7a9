"""Indexing and ranking a zoo: what every part of the path around the model costs, per phase, and
a projection to 1,000 models x 10,000 images.

Three profiles, one command each:

* ``--profile zero`` (2-core box, ~1 min): M models run by a *zero-cost* backend (registered
  through the ``Embedder`` seam; it returns seeded random embeddings without touching the pixels),
  so what is measured is everything but the model: reading, preparing (crop/resize once per
  geometry), feeding, writing and committing indexes. The issue's yardstick: 4 models x 2,048
  images stored at 320 px, in process.
* ``--profile cpu`` (2-core box, a few minutes): a realistic mix of torchvision architectures
  with random weights, exported to ONNX and registered, run by ONNX Runtime on a small task;
  then ``RANK BY knn``, ``RANK BY linear`` and ``sh(linear)``.
* ``--profile gpu`` (``benchmarks/zoo_device.sh`` on the GPU machine): >= 50 models x 10,000
  images at 224 px through the torch backend, in process (no Ray there).

Per phase: prepare (resize once per geometry), per model load (session / conversion / check),
embed, write and commit, score; end-to-end vs model-only img/s per architecture; per-model fixed
overhead; and the projection

    T(M, N) = prepare(N) + M * (fixed + N / rate_end_to_end + score(N))

from the measured per-model figures (means over the architectures of the mix).

    python -m benchmarks.bench_zoo --profile zero
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result

ZERO_BACKEND = "zero-cost"


def register_zero_backend() -> None:
    """Register the zero-cost backend: seeded random embeddings, pixels untouched; it records
    the shapes of the batches it was handed (``ZeroCostEmbedder.shapes``)."""
    from shift.inference.embedder import register_backend

    @register_backend(ZERO_BACKEND)
    class ZeroCostEmbedder:
        providers = ["zero-cost"]
        device = "cpu"
        shapes: set[tuple[int, ...]] = set()

        def __init__(self, model_path: str, record: Any, **_: Any) -> None:
            self.name, self.record = record.name, record
            self.rng = np.random.default_rng(int(record.sha256[:8], 16))

        def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            ZeroCostEmbedder.shapes.add(tuple(images.shape[1:]))
            emb = self.rng.standard_normal((len(images), self.record.dim), dtype=np.float32)
            return emb, None

    globals()["ZeroCostEmbedder"] = ZeroCostEmbedder


def zero_home(root: Path, models: int, images: int, size: int, dim: int) -> Any:
    """A home with ``models`` tiny real ONNX files (224-px input, ``dim``-d output; the zero-cost
    backend never runs them) and one task of ``images`` generated images at ``size`` px."""
    import shift
    from benchmarks.workloads import blob_task, tiny_cnn
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples

    c = shift.connect(root / "home", executor="inprocess")
    for i in range(models):
        f = tiny_cnn(root / f"m{i}.onnx", size=224, dim=dim, seed=i)
        register_onnx(c.registry, f, f"m{i:03d}")
    x, y = blob_task(images, size=size)
    c.add_task("zoo", Samples(x, y, None, [], []))
    return c


def run_zero(args: argparse.Namespace) -> dict[str, Any]:
    from shift.engine.indexing import Indexer

    register_zero_backend()
    root = Path(tempfile.mkdtemp(prefix="shift-zoo-"))
    try:
        c = zero_home(root, args.models, args.images, args.size, args.dim)
        models = [c.registry.get_model(f"m{i:03d}") for i in range(args.models)]
        ix = Indexer(c.registry, executor="inprocess", backend=ZERO_BACKEND)
        t0 = time.perf_counter()
        ix.index("zoo", models)
        cold = time.perf_counter() - t0
        report = ix.last_report
        for m in models:  # a second pass over the same task with the indexes removed
            shutil.rmtree(c.registry.home.index_path("zoo", m.name), ignore_errors=True)
        ix2 = Indexer(c.registry, executor="inprocess", backend=ZERO_BACKEND)
        t0 = time.perf_counter()
        ix2.index("zoo", models)
        warm = time.perf_counter() - t0
        n = args.models * args.images
        shapes = sorted(globals()["ZeroCostEmbedder"].shapes)
        out = {
            "profile": "zero",
            "models": args.models,
            "images": args.images,
            "stored_px": args.size,
            "dim": args.dim,
            "cold_seconds": round(cold, 3),
            "cold_img_per_s_per_model": round(n / cold, 1),
            "warm_seconds": round(warm, 3),
            "warm_img_per_s_per_model": round(n / warm, 1),
            "backend_batch_shapes": [list(s) for s in shapes],
            "phases_cold": getattr(report, "phases", {}),
            "phases_warm": getattr(ix2.last_report, "phases", {}),
        }
        c.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- real models: the cpu and gpu profiles -----------------------------------------------------

#: the mix of architectures a zoo holds (torchvision builders, random weights)
MIX = (
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "resnet50",
    "convnext_tiny",
    "vit_b_16",
)


def export_zoo(c: Any, root: Path, models: int, size: int) -> dict[str, dict[str, Any]]:
    """``models`` torchvision architectures (cycling through ``MIX``) with random weights,
    registered; per model its architecture and export seconds. Each architecture is exported
    once at ``size`` px through the catalog's own export (outputs ``embedding`` and ``logits``,
    checked against torch in ONNX Runtime); its further models are that file with every
    initializer perturbed (seeded): other weights, another sha256, nothing shared or cached."""
    import torch
    import torchvision.models as tvm

    from shift.catalog.importer import export
    from shift.catalog.onnx_import import register_onnx
    from shift.catalog.sources.torchvision_models import TorchvisionEmbedding
    from shift.catalog.sources.weights import infer_output_shapes
    from shift.records import InputSpec

    out = {}
    for i in range(models):
        arch = MIX[i % len(MIX)]
        name = f"{arch.replace('_', '-')}-{i:03d}"
        path = root / f"{name}.onnx"
        t0 = time.perf_counter()
        base = root / f"{arch}.onnx"
        if base.is_file():
            _variant(base, path, seed=i)
        else:
            torch.manual_seed(i)
            kw = {"image_size": size} if arch.startswith("vit_") else {}
            net = TorchvisionEmbedding(tvm.get_model(arch, weights=None, **kw)).eval()
            export(net, _Target(name, InputSpec(height=size, width=size)), base, opset=17)
            infer_output_shapes(base)  # ViT's embedding width comes out symbolic otherwise
            shutil.copyfile(base, path)
        register_onnx(c.registry, path, name, family=arch)
        out[name] = {"architecture": arch, "export_s": round(time.perf_counter() - t0, 3)}
    return out


def _variant(base: Path, out: Path, seed: int) -> None:
    """``base`` with each float initializer perturbed by 1 % of its mean magnitude."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(base))
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            noise = rng.standard_normal(a.shape).astype(np.float32) * 0.01 * float(np.abs(a).mean())
            t.CopyFrom(numpy_helper.from_array(a + noise, t.name))
    onnx.save(model, str(out))


class _Target:
    def __init__(self, name: str, spec: Any) -> None:
        self.name, self.input = name, spec


def model_only(c: Any, name: str, backend: str, images: int, batch: int) -> dict[str, float]:
    """The backend alone: load (session / conversion / check) seconds, then img/s of
    ``embed`` on uint8 batches already at the model's size (normalisation + the model)."""
    from shift.inference.backends import make_embedder

    rec = c.registry.get_model(name)
    t0 = time.perf_counter()
    emb = make_embedder(backend, str(c.registry.model_file(rec)), rec, intra_op_threads=None)
    load = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (batch, rec.input.height, rec.input.width, 3), dtype=np.uint8)
    emb.embed(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < images:
        emb.embed(x)
        n += batch
    return {"load_s": round(load, 3), "img_per_s": round(n / (time.perf_counter() - t0), 1)}


def _time_model_loads() -> list[float]:
    """Seconds of every model load (``make_embedder``) the in-process executor does from now
    on, appended to the returned list (benchmark instrumentation)."""
    import shift.inference.local as local

    seconds: list[float] = []
    real = local.make_embedder

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            seconds.append(time.perf_counter() - t0)

    local.make_embedder = timed
    return seconds


def sh_embedded(models: int, n_train: int, n_val: int) -> int:
    """Samples ``sh`` embeds over all models: every model the validation split and the training
    prefix it reached before it was dropped (``halving.schedule``, eta = 2)."""
    from shift.engine.halving import schedule

    rounds, _, chunk, per_round = schedule(models, n_train)
    total, active, seen = 0, models, 0
    for k in range(rounds):
        new_seen = min(n_train, seen + per_round[k] * chunk)
        total += active * (new_seen - seen)
        seen = new_seen
        active = max(1, -(-active // 2))
    return total + models * n_val


def score_seconds(proxy: str, n: int, dim: int, classes: int = 10) -> float:
    """Seconds ``proxy`` takes for one model on a task of ``n`` samples (a tenth validation)
    with ``dim``-d features (clustered, seeded), as ``score_many`` computes it."""
    from shift.scoring.proxies import get_proxy

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    x = centres[y] + 2 * rng.standard_normal((n, dim)).astype(np.float32)
    v = n // 10
    t0 = time.perf_counter()
    get_proxy(proxy).score_many([(x[v:], y[v:], x[:v], y[:v])])
    return time.perf_counter() - t0


def projection(
    prepare_rate: float, fixed_s: float, e2e_rate: float, score_s: dict[str, float], n: int
) -> dict[str, Any]:
    """Wall time for 1,000 models x 10,000 images: T = N/prepare + M*(fixed + N/stream +
    score(N)): ``fixed`` the per-model seconds that do not grow with N (loading the model),
    ``stream`` the img/s of everything else of an index build (reads, the model, writes,
    commit), ``score_s`` the per-model score seconds measured at N (``score_seconds``);
    ``sh(linear)`` embeds only the samples ``sh_embedded`` counts and scores the linear probe
    once per model per round it plays, on a training prefix: bounded by 2 full probes a model
    (the prefixes of a model's rounds sum to at most twice its last)."""
    m, big = 1000, 10_000
    n_val = big // 10
    knn, lin = score_s["knn"], score_s["linear"]
    exh = big / prepare_rate + m * (fixed_s + big / e2e_rate + knn)
    emb_sh = sh_embedded(m, big - n_val, n_val)
    sh_scores = 2 * lin * emb_sh / (m * big)  # probe time ~ linear in the samples it sees
    sh = big / prepare_rate + m * fixed_s + emb_sh / e2e_rate + m * sh_scores
    return {
        "models": m,
        "images": big,
        "formula": "N/prepare_rate + M*(fixed_s + N/stream_img_per_s + score_s(N))",
        "inputs": {
            "prepare_img_per_s": round(prepare_rate, 1),
            "fixed_s_per_model": round(fixed_s, 3),
            "stream_img_per_s_per_model": round(e2e_rate, 1),
            "knn_score_s_at_N": round(knn, 3),
            "linear_score_s_at_N": round(lin, 3),
            "sh_embedded_samples": emb_sh,
        },
        "exhaustive_knn_min": round(exh / 60, 1),
        "sh_linear_min": round(sh / 60, 1),
    }


def run_models(args: argparse.Namespace) -> dict[str, Any]:
    """Export a zoo, then per phase: prepare, per-model load, embed, commit; model-only vs end
    to end per architecture; RANK BY knn / linear and sh(linear); the projection."""
    import shift
    from benchmarks.workloads import blob_task
    from shift.engine.indexing import Indexer
    from shift.engine.prepared import Geometry
    from shift.records import Samples

    deadline = time.monotonic() + args.budget_s
    root = Path(tempfile.mkdtemp(prefix="shift-zoo-"))
    result: dict[str, Any] = {"profile": args.profile, "backend": args.backend}
    try:
        c = shift.connect(root / "home", executor="inprocess", backend=args.backend)
        models = export_zoo(c, root, args.models, args.input_px)
        x, y = blob_task(args.images, classes=10, size=args.size)
        c.add_task("zoo", Samples(x, y, None, [], []))
        result.update(
            models=args.models,
            images=args.images,
            stored_px=args.size,
            input_px=args.input_px,
            batch=args.batch,
        )
        ix = Indexer(c.registry, executor="inprocess", backend=args.backend, batch_size=args.batch)
        recs = [c.registry.get_model(n) for n in models]
        t0 = time.perf_counter()
        rows = c.registry.samples("zoo")
        resized = sum(
            ix.prepared.ensure("zoo", rows, g) for g in {Geometry.of(r.input) for r in recs}
        )
        prepare_s = time.perf_counter() - t0
        result["prepare"] = {
            "seconds": round(prepare_s, 3),
            "images_resized": resized,
            "img_per_s": round(resized / max(prepare_s, 1e-9), 1),
        }
        per: dict[str, Any] = {}
        loads = _time_model_loads()
        for rec in recs:
            if time.monotonic() > deadline:
                result["cut_short"] = f"budget reached before {rec.name}"
                break
            only = model_only(
                c, rec.name, args.backend, min(args.images, 4 * args.batch), args.batch
            )
            loads.clear()
            t0 = time.perf_counter()
            ix.index("zoo", [rec])
            wall = time.perf_counter() - t0
            rep = ix.last_report
            if rec.name in rep.failed:
                per[rec.name] = {"failed": rep.failed[rec.name]}
                continue
            # the model's load inside the index run, as far as the run waited for it (a load
            # ahead on an accelerator hides the rest behind the previous model)
            waited = getattr(ix.executor, "load_waited", {})
            load = waited.get(rec.name, sum(loads)) if waited else sum(loads)
            e2e = args.images / wall
            per[rec.name] = {
                **models[rec.name],
                "load_s": round(load, 3),
                "load_s_first": only["load_s"],
                "model_only_img_per_s": only["img_per_s"],
                "index_wall_s": round(wall, 3),
                "e2e_img_per_s": round(e2e, 1),
                "e2e_vs_model_only": round(e2e / only["img_per_s"], 3),
                "stream_img_per_s": round(args.images / max(wall - load, 1e-9), 1),
                "phases": {k: round(v, 3) for k, v in rep.phases.items()},
            }
            result["per_model"] = per
            write_result(args.out or f"zoo_{args.profile}", result)
        done = [r for r in recs if "e2e_img_per_s" in per.get(r.name, {})]
        queries: dict[str, float] = {}
        for proxy in ("knn", "linear"):
            t0 = time.perf_counter()
            c.query(f"SELECT top 3 FROM models WHERE task=zoo RANK BY {proxy}")
            queries[proxy] = (time.perf_counter() - t0) / max(1, len(done))
        for r in done:  # sh(linear) from scratch: indexes gone, prepared inputs kept
            shutil.rmtree(c.registry.home.index_path("zoo", r.name), ignore_errors=True)
        t0 = time.perf_counter()
        c.query("SELECT top 3 FROM models WHERE task=zoo RANK BY sh(linear)")
        sh_wall = time.perf_counter() - t0
        # harmonic means: the mean time per image over the mix
        e2e_mean = statistics.harmonic_mean([per[r.name]["stream_img_per_s"] for r in done])
        fixed = statistics.mean(per[r.name]["load_s"] for r in done)
        n_val = sum(1 for s in c.registry.samples("zoo") if s["split"] == "val")
        sh_emb = sh_embedded(len(done), args.images - n_val, n_val)
        result["query_s_per_model"] = {k: round(v, 3) for k, v in queries.items()}
        result["sh_linear"] = {"wall_s": round(sh_wall, 3), "embedded_samples": sh_emb}
        dim = round(statistics.mean(r.dim for r in done))
        scores = {p: score_seconds(p, 10_000, dim) for p in ("knn", "linear")}
        result["score_s_per_model_at_10k"] = {
            "dim": dim,
            **{k: round(v, 3) for k, v in scores.items()},
        }
        result["projection"] = projection(
            result["prepare"]["img_per_s"], fixed, e2e_mean, scores, args.images
        )
        c.close()
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per model: model-only vs end-to-end img/s (bars) and the end-to-end share (labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, r) for n, r in result.get("per_model", {}).items() if "e2e_img_per_s" in r]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["model_only_img_per_s"] for _, r in rows], 0.4, label="model only")
    ax.bar(xs + 0.2, [r["e2e_img_per_s"] for _, r in rows], 0.4, label="end to end (index)")
    for x, (_, r) in zip(xs, rows, strict=True):
        ax.annotate(f"{r['e2e_vs_model_only']:.0%}", (x + 0.2, r["e2e_img_per_s"]), ha="center")
    ax.set_xticks(xs, [n.rsplit("-", 1)[0] for n, _ in rows], rotation=30, ha="right")
    ax.set_ylabel("images / s")
    proj = result.get("projection", {})
    ax.set_title(
        f"{result['backend']}, {result['images']} images at {result['input_px']} px: "
        f"1,000 x 10,000 projected {proj.get('exhaustive_knn_min', '?')} min exhaustive, "
        f"{proj.get('sh_linear_min', '?')} min sh(linear)",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_ref(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    """The zero profile on the code of git ``ref`` (a worktree; this file runs there with the
    worktree's ``shift``), in a child process of this run: the before of a side-by-side."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    tree = Path(tempfile.mkdtemp(prefix="shift-ref-"))
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(tree), ref],
                   check=True, capture_output=True)  # fmt: skip
    try:
        out = tree / "ref.json"
        cmd = [sys.executable, __file__, "--profile", "zero", "--out-file", str(out)]
        cmd += [
            "--models",
            str(args.models),
            "--images",
            str(args.images),
            "--size",
            str(args.size),
        ]
        env = {**__import__("os").environ, "PYTHONPATH": str(tree)}
        subprocess.run(cmd, check=True, env=env, cwd=tree, capture_output=True, text=True)
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="zero", choices=("zero", "cpu", "gpu"))
    ap.add_argument("--backend", default=None, help="default: zero-cost, onnxruntime, torch")
    ap.add_argument("--input-px", type=int, default=None, help="models' input size")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting models after")
    ap.add_argument("--models", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument("--size", type=int, help="stored image size (px)")
    ap.add_argument("--dim", type=int, default=1280, help="zero profile: embedding size")
    ap.add_argument("--out", default=None, help="result name (default zoo_<profile>)")
    ap.add_argument("--out-file", default=None, help=argparse.SUPPRESS)  # run_ref's child
    ap.add_argument(
        "--vs", default=None, help="zero profile: also run git REF's code, side by side"
    )
    args = ap.parse_args(argv)
    for key, value in PROFILES[args.profile].items():  # what the command line left unset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    result = run_zero(args) if args.profile == "zero" else run_models(args)
    if args.out_file:  # a child of run_ref: the raw result only
        Path(args.out_file).write_text(__import__("json").dumps(result))
        return result
    if args.vs and args.profile == "zero":
        before = run_ref(args.vs, args)
        result["vs"] = {
            "ref": args.vs,
            "before": {k: v for k, v in before.items() if not k.startswith("phases")},
            "cold_ratio": round(before["cold_seconds"] / result["cold_seconds"], 2),
            "warm_ratio": round(before["warm_seconds"] / result["warm_seconds"], 2),
        }
    path = write_result(args.out or f"zoo_{args.profile}", result)
    print(path)
    if result.get("per_model"):
        print(plot(result, path.with_suffix(".png")))
    print({k: v for k, v in result.items() if not k.startswith("phases")})
    return result


PROFILES = {
    "zero": {"models": 4, "images": 2048, "size": 320, "backend": ZERO_BACKEND, "batch": 64},
    "cpu": {
        "models": 8,
        "images": 512,
        "size": 128,
        "input_px": 96,
        "backend": "onnxruntime",
        "batch": 32,
    },
    "gpu": {
        "models": 56,
        "images": 10_000,
        "size": 256,
        "input_px": 224,
        "backend": "torch",
        "batch": 256,
    },
}


if __name__ == "__main__":
    main()
