"""Peak RSS of the Ray embedding workers while one demo task is indexed (issue #12 item 7).

Each configuration runs in its own process with its own local Ray, indexing ``--task`` for every
model of the demo home (``registry/`` in the checkout, copied to a scratch folder first, so the
demo's indexes are never touched) with ``executor="ray"``. A sampler thread reads the RSS of every
``EmbedWorker`` actor process (descendants of the driver whose title names the actor) every
``--interval`` seconds. Configurations, side by side in one run:

* ``legacy_settings`` (default): this checkout with the settings of before the bound --
  ONNX Runtime's CPU arena on, each batch in one run, no byte bound on the session cache;
* ``after`` (default): this checkout with its defaults (no CPU arena, runs of at most
  ``cpu_images_per_run`` images, sessions cached by bytes, heap trimmed after each call);
* ``after_no_mem_pattern``: ``after`` with ``SHIFT_ORT_MEM_PATTERN=0``;
* ``after_arena``: ``after`` with the arena back on (``SHIFT_ORT_CPU_ARENA=1``);
* ``before``: the code of ``--baseline-rev`` (the commit before the bound), taken with
  ``git archive`` into a scratch folder; it runs only on a home whose registry schema that code
  still reads (the demo home has since gained columns).

Writes ``benchmarks/results/worker_memory.json``: per configuration the peak RSS of each worker,
the largest of them, the number of samples and the wall time (a busy machine's: not a speed
figure). Target: <= 1.5 GB per worker.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_HOME = ROOT / "registry"
BASELINE_REV = "c0abca3"
GB = 2**30


def _psutil() -> Any:
    """psutil, which ships with ray (``ray/thirdparty_files``, put on ``sys.path`` by
    ``import ray``)."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _worker_pids() -> list[int]:
    """Our Ray's EmbedWorker processes: descendants of this driver titled ``ray::EmbedWorker``."""
    psutil = _psutil()

    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if any("EmbedWorker" in part for part in p.cmdline()[:1]):
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _sample(stop: threading.Event, peaks: dict[int, int], interval: float) -> None:
    psutil = _psutil()

    while not stop.is_set():
        for pid in _worker_pids():
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                continue
            peaks[pid] = max(peaks.get(pid, 0), rss)
        stop.wait(interval)


def child(home: str, task: str, interval: float) -> dict[str, Any]:
    """Index ``task`` in ``home`` on a fresh local Ray, sampling worker RSS; runs in the
    configuration's process (its ``shift`` is the one on ``sys.path``)."""
    import shift
    from shift.client import Client
    from shift.inference.ray.runtime import shutdown_ray

    peaks: dict[int, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop, peaks, interval), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        with Client(home, executor="ray") as c:
            rep = c.index(task)
    finally:
        stop.set()
        sampler.join()
        shutdown_ray()
    return {
        "shift": str(Path(shift.__file__).parent),
        "seconds": round(time.perf_counter() - t0, 1),
        "models_embedded": len(rep.embedded),
        "samples_embedded": sum(rep.embedded.values()),
        "failed": rep.failed,
        "workers": len(peaks),
        "peak_rss_gb_per_worker": sorted(round(v / GB, 3) for v in peaks.values()),
        "peak_rss_gb_max": round(max(peaks.values(), default=0) / GB, 3),
    }


def _copy_home(dst: Path) -> Path:
    """The demo home without its indexes (so every model is embedded)."""
    home = dst / "home"
    shutil.copytree(DEMO_HOME, home, ignore=shutil.ignore_patterns("indexes"))
    return home


def _baseline_source(rev: str, dst: Path) -> Path:
    out = dst / f"shift-{rev}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "shift"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


CONFIG_ENV = {
    "before": {},
    "legacy_settings": {
        "SHIFT_ORT_CPU_ARENA": "1",
        "SHIFT_WORKER_ACTIVATION_MB": "1000000",
        "SHIFT_WORKER_CACHE_MB": "1000000",
    },
    "after": {},
    "after_no_mem_pattern": {"SHIFT_ORT_MEM_PATTERN": "0"},
    "after_arena": {"SHIFT_ORT_CPU_ARENA": "1"},
}


def _worktree_source(dst: Path) -> Path:
    """A snapshot of this checkout's ``shift`` package (a run takes minutes; edits made
    meanwhile must not reach its workers halfway)."""
    out = dst / "shift-worktree"
    if not out.exists():
        shutil.copytree(ROOT / "shift", out / "shift", ignore=shutil.ignore_patterns("__pycache__"))
    return out


def run_config(name: str, source: Path, task: str, interval: float, scratch: Path) -> dict:
    home = _copy_home(scratch / name)
    env = {**os.environ, "PYTHONPATH": str(source), **CONFIG_ENV[name]}
    env.pop("SHIFT_HOME", None)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--home",
        str(home),
        "--task",
        task,
        "--interval",
        str(interval),
    ]
    proc = subprocess.run(cmd, env=env, cwd=str(scratch), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--configs", default="legacy_settings,after")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.home, args.task, args.interval)))
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import write_result

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shift_worker_mem_") as tmp:
        scratch = Path(tmp)
        for name in args.configs.split(","):
            if name not in CONFIG_ENV:
                raise SystemExit(f"unknown configuration {name!r}: one of {sorted(CONFIG_ENV)}")
            before = name == "before"
            if before:
                source = _baseline_source(args.baseline_rev, scratch)
            else:
                source = _worktree_source(scratch)
            results[name] = run_config(name, source, args.task, args.interval, scratch)
            print(name, json.dumps(results[name]), flush=True)
    data: dict[str, Any] = {
        "task": args.task,
        "baseline_rev": args.baseline_rev,
        "target_gb_per_worker": 1.5,
        "configs": results,
    }
    base = results.get("before") or results.get("legacy_settings")
    if base and "after" in results:
        data["peak_ratio_after_over_baseline"] = round(
            results["after"]["peak_rss_gb_max"] / max(base["peak_rss_gb_max"], 1e-9), 3
        )
    print(write_result("worker_memory", data))


if __name__ == "__main__":
    main()
