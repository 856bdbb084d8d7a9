"""Scores on the device: the exact 1-NN and the linear probe in numpy vs torch on the CPU (and on
CUDA when torch sees a GPU), at a few sizes; picks ``shift.scoring.device.CPU_KNN``.

Data: ``bench_estimators.synthetic`` features (C = 10 classes, ReLU-layer spectrum, float32, as an
index stores them; separation ``QUALITY``, so accuracies are mid-range and a disagreement would
show), the first ``n_val`` rows for validation. Each case is timed end to end as the
proxy runs it (input checks, unit scaling, tiles, tie rule, labels), median of ``--repeat`` after
a warm-up; CUDA times include the host→device copies and the read-back.

* ``knn``: ``knn_accuracy_many`` on one problem with ``device`` = ``numpy`` / ``cpu`` (torch) /
  ``cuda``, k = 1 euclidean and cosine, and k = 5 euclidean.
* ``knn_batch``: ``--models`` problems (one per model) in one ``knn_accuracy_many`` call vs one
  call each, on the torch paths (numpy is one at a time either way).
* ``knn_threads``: the largest size at 1 and 2 threads for each (numpy's BLAS through
  threadpoolctl, torch's by fixing what ``idle_cores`` returns), to tell the implementations
  apart from their thread policies on a busy box (torch-CPU takes the idle cores, numpy all).
* ``linear``: ``linear_probe_many`` (300 SGD steps, lrs 0.1/0.01): today's CPU path (numpy
  standardises, torch trains on the CPU) vs the device path run on the CPU (standardised in torch)
  and on CUDA; and ``--models`` problems batched vs one by one. There is no numpy probe: the probe
  has always trained in torch.

Every case records its scores; ``max_diff_points`` is the largest difference from the numpy (kNN)
or today's CPU (linear) score, in accuracy points.

    python -m benchmarks.bench_scores_device [--repeat 3] [--models 4] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from benchmarks.bench_estimators import synthetic
from benchmarks.common import write_result
from shift.scoring import device as score_device
from shift.scoring import knn, linear

C = 10
QUALITY = 0.25  # class separation: 1-NN ~0.3, probe ~0.7 at 2,000 x 1,280 (not saturated)
#: (n_train, n_val, D): the brief's realistic size first, then smaller and larger
KNN_SIZES = ((2_000, 500, 1_280), (1_000, 250, 512), (8_000, 2_000, 2_048))
LINEAR_SIZES = ((2_000, 500, 1_280), (1_000, 250, 512))
QUICK_KNN, QUICK_LINEAR = KNN_SIZES[:2], LINEAR_SIZES[1:]


def problem(n: int, m: int, d: int, seed: int) -> tuple[Any, Any, Any, Any]:
    x, y, _ = synthetic(n + m, d, C, quality=QUALITY, seed=seed)
    return x[m:], y[m:], x[:m], y[:m]


def timed(
    fns: dict[str, Callable[[], list[float]]], repeat: int
) -> dict[str, tuple[dict[str, float], list[float]]]:
    """Each of ``fns`` once to warm up (thread pools, page faults, CUDA context and kernels),
    then ``repeat`` rounds running each once, interleaved so that a busy spell of the shared
    machine falls on every path alike: ``{name: (times, scores)}``."""
    scores = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {
        name: (
            {"median_s": statistics.median(ts), "min_s": min(ts), "repeat": repeat},
            scores[name],
        )
        for name, ts in times.items()
    }


def _diff(a: list[float], b: list[float]) -> float:
    return round(100 * max(abs(x - y) for x, y in zip(a, b, strict=True)), 4)


def devices(cuda: bool) -> list[str]:
    return ["numpy", "cpu", *(["cuda"] if cuda else [])]


def knn_cases(sizes: Any, repeat: int, cuda: bool) -> list[dict[str, Any]]:
    rows = []
    for n, m, d in sizes:
        p = problem(n, m, d, seed=n + d)
        for metric, k in (("euclidean", 1), ("cosine", 1), ("euclidean", 5)):
            row: dict[str, Any] = {"n_train": n, "n_val": m, "dim": d, "metric": metric, "k": k}
            runs = timed(
                {
                    dev: partial(knn.knn_accuracy_many, [p], metric, k=k, device=dev)
                    for dev in devices(cuda)
                },
                repeat,
            )
            base = runs["numpy"][1]
            for dev, (t, s) in runs.items():
                row[dev] = {**t, "scores": s, "max_diff_points": _diff(s, base)}
            row["torch_cpu_over_numpy"] = round(
                row["cpu"]["median_s"] / row["numpy"]["median_s"], 3
            )
            if cuda:
                row["numpy_over_cuda"] = round(
                    row["numpy"]["median_s"] / row["cuda"]["median_s"], 1
                )
            print(
                f"knn {n}x{m} D={d} {metric} k={k}: "
                + ", ".join(f"{dv} {row[dv]['median_s'] * 1000:.0f} ms" for dv in devices(cuda))
            )
            rows.append(row)
    return rows


def one_by_one(ps: list[Any], dev: str) -> list[float]:
    return [knn.knn_accuracy(*p, device=dev) for p in ps]


def batch_cases(size: Any, models: int, repeat: int, cuda: bool) -> dict[str, Any]:
    """``models`` problems of one size: one batched call vs one call per problem."""
    n, m, d = size
    ps = [problem(n, m, d, seed=100 + i) for i in range(models)]
    out: dict[str, Any] = {"n_train": n, "n_val": m, "dim": d, "models": models}
    for dev in devices(cuda)[1:]:
        runs = timed(
            {
                "batched": partial(knn.knn_accuracy_many, ps, device=dev),
                "one": partial(one_by_one, ps, dev),
            },
            repeat,
        )
        (tb, sb), (to, so) = runs["batched"], runs["one"]
        out[dev] = {"batched": tb, "one_by_one": to, "max_diff_points": _diff(sb, so)}
        print(f"knn x{models} {dev}: batched {tb['median_s']:.3f} s, each {to['median_s']:.3f} s")
    return out


@contextmanager
def threads(n: int) -> Iterator[None]:
    """numpy's BLAS and the torch-CPU path at ``n`` threads for the block."""
    from threadpoolctl import threadpool_limits

    real = score_device.idle_cores
    score_device.idle_cores = lambda most: n  # what torch_threads asks
    try:
        with threadpool_limits(n, "blas"):
            yield
    finally:
        score_device.idle_cores = real


def at_threads(n: int, fn: Callable[[], list[float]]) -> list[float]:
    with threads(n):
        return fn()


def thread_cases(size: Any, repeat: int) -> dict[str, Any]:
    n, m, d = size
    p = problem(n, m, d, seed=n + d)
    fns = {
        f"{dev}_{t}t": partial(at_threads, t, partial(knn.knn_accuracy_many, [p], device=dev))
        for dev in ("numpy", "cpu")
        for t in (1, 2)
    }
    runs = timed(fns, repeat)
    print(
        f"knn {n}x{m} D={d} threads: "
        + ", ".join(f"{k} {t['median_s'] * 1000:.0f} ms" for k, (t, _) in runs.items())
    )
    return {"n_train": n, "n_val": m, "dim": d, **{k: t for k, (t, _) in runs.items()}}


def linear_cases(sizes: Any, models: int, repeat: int, cuda: bool) -> list[dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {
        "cpu_today": {"device": "cpu"},
        "cpu_device_path": {"device": "cpu", "standardise_on_device": True},
        **({"cuda": {"device": "cuda"}} if cuda else {}),
    }
    rows = []
    for n, m, d in sizes:
        ps = [problem(n, m, d, seed=200 + i) for i in range(models)]
        row: dict[str, Any] = {"n_train": n, "n_val": m, "dim": d, "models": models}
        ones = timed(
            {nm: partial(linear.linear_probe_many, ps[:1], **kw) for nm, kw in paths.items()},
            repeat,
        )
        batches = timed(
            {nm: partial(linear.linear_probe_many, ps, **kw) for nm, kw in paths.items()},
            max(1, repeat - 1),
        )
        base = batches["cpu_today"][1]
        for name in paths:
            (t1, s1), (tb, sb) = ones[name], batches[name]
            row[name] = {
                "one_model": {**t1, "scores": s1},
                "batched": {**tb, "scores": sb, "max_diff_points": _diff(sb, base)},
                "batched_vs_one_by_one_ratio": round(tb["median_s"] / (models * t1["median_s"]), 3),
                "batched_equals_first": _diff(sb[:1], s1),
            }
            print(
                f"linear {n}x{m} D={d} {name}: one {t1['median_s']:.2f} s, "
                f"{models} batched {tb['median_s']:.2f} s"
            )
        rows.append(row)
    return rows


def run(repeat: int, models: int, quick: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    knn_sizes, lin_sizes = (QUICK_KNN, QUICK_LINEAR) if quick else (KNN_SIZES, LINEAR_SIZES)
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_knn_choice": score_device.CPU_KNN,
        "knn": knn_cases(knn_sizes, repeat, cuda),
        "knn_batch": batch_cases(knn_sizes[0], models, repeat, cuda),
        # threadpoolctl comes with scikit-learn (the dev extras)
        "knn_threads": thread_cases(knn_sizes[-1], repeat)
        if importlib.util.find_spec("threadpoolctl")
        else None,
        "linear": linear_cases(lin_sizes, models, repeat, cuda),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="the two smallest sizes only")
    ap.add_argument("--name", default="scores_device", help="result file name")
    args = ap.parse_args(argv)
    result = run(args.repeat, args.models, args.quick)
    path = write_result(args.name, result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
