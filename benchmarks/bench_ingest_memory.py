"""Peak RSS of ``shift-cli tasks add`` against the number of images (issue #12, item 6).

Generates 10,000 distinct 224×224 PNG images (10 classes, smooth gradients with a few
rectangles, so they encode fast) once, hard-links the first 1,000 / 3,000 / 10,000 into
folders, and runs ``python -m shift tasks add`` on each in a fresh process and a fresh home,
reading that child's peak RSS from ``os.wait4`` (``ru_maxrss``, KiB on Linux). Ingest streams
``BATCH_BYTES`` of pixels at a time, so the peak should stay flat: the target is
``rss_10k / rss_1k`` within 1.2. The decoded pixels are listed beside it (what holding every
image at once would take).

    python -m benchmarks.bench_ingest_memory [--sizes 1000 3000 10000] [--work DIR]

Writes ``benchmarks/results/ingest_memory.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result

SIDE = 224
CLASSES = 10


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * ((xs + ys) / 2)[..., None]
    for _ in range(3):
        x0, y0 = rng.integers(0, SIDE - 40, 2)
        w, h = rng.integers(10, 40, 2)
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    img[0, 0] = [i % 256, (i // 256) % 256, 7]  # distinct pixels for every i
    return img.astype(np.uint8)


def generate(pool: Path, n: int) -> list[Path]:
    """``n`` PNGs under ``pool/<class>/`` (re-used when already there)."""
    from PIL import Image

    files = []
    for i in range(n):
        f = pool / f"c{i % CLASSES}" / f"{i:05d}.png"
        if not f.is_file():
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(i)).save(f, compress_level=1)
        files.append(f)
    return files


def folder(root: Path, files: list[Path]) -> Path:
    """Hard links to ``files`` under ``root``, same class layout."""
    if root.exists():
        shutil.rmtree(root)
    for f in files:
        dst = root / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)
    return root


def peak_rss(images: Path, home: Path) -> dict[str, Any]:
    """Run ``tasks add`` in a child process; its peak RSS (MiB) and wall time."""
    cmd = [sys.executable, "-m", "shift", "tasks", "add", "bench", "--images", str(images)]
    env = {**os.environ, "SHIFT_HOME": str(home)}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    out = (p.stdout.read() + p.stderr.read()).decode(errors="replace") if p.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tasks add failed:\n{out}")
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(secs, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args(argv)
    from shift.store.images import BATCH_BYTES

    work = args.work or Path(tempfile.mkdtemp(prefix="shift-ingest-"))
    t0 = time.perf_counter()
    files = generate(work / "pool", max(args.sizes))
    gen_s = time.perf_counter() - t0
    runs: dict[str, Any] = {}
    for n in args.sizes:
        home = work / f"home-{n}"
        shutil.rmtree(home, ignore_errors=True)
        r = peak_rss(folder(work / f"images-{n}", files[:n]), home)
        r["decoded_mib"] = round(n * SIDE * SIDE * 3 / 2**20, 1)
        r["stored_mib"] = round(
            sum(f.stat().st_size for f in (home / "tasks" / "bench").glob("*.npy")) / 2**20, 1
        )
        runs[str(n)] = r
        print(f"{n:>6} images: peak RSS {r['peak_rss_mib']} MiB ({r['seconds']} s)", flush=True)
    lo, hi = runs[str(min(args.sizes))], runs[str(max(args.sizes))]
    data = {
        "image_px": SIDE,
        "batch_bytes": BATCH_BYTES,
        "generate_seconds": round(gen_s, 1),
        "runs": runs,
        "ratio_max_over_min": round(hi["peak_rss_mib"] / lo["peak_rss_mib"], 3),
        "target_ratio": 1.2,
    }
    path = write_result("ingest_memory", data)
    print(f"ratio {max(args.sizes)}/{min(args.sizes)}: {data['ratio_max_over_min']} -> {path}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return data


if __name__ == "__main__":
    main()
