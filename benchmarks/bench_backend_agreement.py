"""Does the inference backend change search results? The demo home's tasks x its models, ranked
once with ONNX Runtime and once with the torch backend (fp32 on this CPU), everything else equal:

* per (task, model): the 1-NN and linear-probe validation accuracies of each backend and their
  difference in points (and in validation samples), and the lowest per-row cosine between the
  two backends' embeddings of the same samples;
* per (task, strategy): each backend's top 2 and whether they are the same.

Two copies of the home, so neither backend's indexes replace the other's (an index directory
holds one backend's embeddings): ``<tmp>/onnxruntime`` (registry and indexes copied: ONNX
Runtime's indexes are reused) and ``<tmp>/torch`` (registry only: every index is built by the
torch backend). The source home is never written.

    python -m benchmarks.bench_backend_agreement        # -> results/backend_agreement.json
    python -m benchmarks.bench_backend_agreement --tasks digits --models cnn-digits-expert
    python -m benchmarks.bench_backend_agreement --tasks mnist --append   # add to the file
    python -m benchmarks.bench_backend_agreement --merge other_run          # runs nothing
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write_result

BACKENDS = ("onnxruntime", "torch")
#: strategies whose top 2 are compared (proxies, and the default hybrid ranker)
STRATEGIES = (
    "knn",
    "knn_cosine",
    "linear",
    "logme",
    "leep",
    "nce",
    "hscore",
    "transrate",
    "gbc",
    "parc",
    "sfda",
    "hybrid(linear)",
    "hybrid(knn)",
)
ROOT = Path(__file__).resolve().parent.parent


def copy_home(src_registry: Path, src_indexes: Path | None, dest: Path) -> Path:
    """``src_registry`` copied to ``dest`` (the home), and ``src_indexes`` to ``dest/indexes``
    when given."""
    shutil.copytree(src_registry, dest, ignore=shutil.ignore_patterns("quarantine"))
    if src_indexes is not None and src_indexes.is_dir():
        shutil.copytree(src_indexes, dest / "indexes", dirs_exist_ok=True)
    return dest


def ranking(client: Any, pool: str, task: str, strategy: str) -> dict[str, Any]:
    """The full ranking of ``pool`` by ``strategy`` on ``task``: names in order and scores."""
    from shift.errors import ShiftError

    try:
        res = client.query(f"SELECT * FROM pool {pool} WHERE task={task} RANK BY {strategy}")
    except ShiftError as e:
        return {"error": e.message}
    return {"names": res.names, "scores": res.scores}


def min_cosines(homes: dict[str, Path], task: str, models: list[str]) -> dict[str, float]:
    """Per model: the lowest cosine between the two backends' embeddings of one sample."""
    from shift.config import Home
    from shift.inference.torch.check import row_cosines
    from shift.store.index.store import IndexStore

    out = {}
    for m in models:
        vecs = {}
        for b, home in homes.items():
            store = IndexStore(Home.resolve(home).index_path(task, m))
            meta = store.read_meta()
            idx = store.open(meta.key) if meta is not None else None
            if idx is None:
                break
            order = np.argsort(np.asarray(idx.sample_ids))
            vecs[b] = np.asarray(idx.vectors)[order]
        if len(vecs) == 2:
            out[m] = round(float(row_cosines(*vecs.values()).min()), 6)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", default=str(ROOT / "registry"))
    ap.add_argument("--indexes", default=str(ROOT / "indexes"))
    ap.add_argument("--tasks", default="", help="comma-separated (default: every task)")
    ap.add_argument("--models", default="", help="comma-separated (default: every model)")
    ap.add_argument("--out", default="backend_agreement")
    ap.add_argument(
        "--append", action="store_true", help="add these tasks to an existing result file"
    )
    ap.add_argument(
        "--merge", default="", help="fold another run's result file into --out; runs nothing"
    )
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.out, a.merge)
    import torch

    from shift.client import Client

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "precision": "fp32",
        "pairs": {},
        "strategies": {},
        "models_by_task": {},
    }
    previous = RESULTS / f"{a.out}.json"
    if a.append and previous.is_file():
        old = json.loads(previous.read_text())
        for key in ("pairs", "strategies", "models_by_task", "seconds_per_backend"):
            result[key] = old.get(key, {})
        t0 -= old.get("seconds", 0.0)
    with tempfile.TemporaryDirectory(prefix="shift-agreement-") as tmp:
        homes = {
            "onnxruntime": copy_home(Path(a.registry), Path(a.indexes), Path(tmp) / "onnxruntime"),
            "torch": copy_home(Path(a.registry), None, Path(tmp) / "torch"),
        }
        clients = {b: Client(homes[b], executor="inprocess", backend=b) for b in BACKENDS}
        reg = clients["onnxruntime"].registry
        tasks = a.tasks.split(",") if a.tasks else [t.name for t in reg.tasks()]
        models = [m.name for m in reg.models() if m.weights == "present"]
        pool = "all"
        if a.models:
            models, pool = [m for m in models if m in a.models.split(",")], "bench"
            names = ", ".join(f"'{m}'" for m in models)
            for c in clients.values():
                c.add_pool(pool, f"WHERE name IN ({names})")
        for task in tasks:
            result["models_by_task"][task] = models
            n_val = sum(r["split"] == "val" for r in reg.samples(task))
            ranks: dict[str, dict[str, Any]] = {b: {} for b in BACKENDS}
            for b in BACKENDS:
                t = time.perf_counter()
                for s in STRATEGIES:
                    ranks[b][s] = ranking(clients[b], pool, task, s)
                result.setdefault("seconds_per_backend", {})[f"{task}:{b}"] = round(
                    time.perf_counter() - t, 1
                )
            cos = min_cosines(homes, task, models)
            for m in models:
                pair: dict[str, Any] = {"n_val": n_val, "min_cosine": cos.get(m)}
                for proxy in ("knn", "linear"):
                    got = {b: ranks[b][proxy].get("scores", {}).get(m) for b in BACKENDS}
                    pair[proxy] = got
                    if None not in got.values():
                        diff = abs(got["torch"] - got["onnxruntime"])
                        pair[f"{proxy}_diff_points"] = round(100 * diff, 3)
                        pair[f"{proxy}_diff_samples"] = round(diff * n_val, 2)
                result["pairs"][f"{task}:{m}"] = pair
            for s in STRATEGIES:
                tops = {b: ranks[b][s].get("names", [])[:2] for b in BACKENDS}
                errors = {b: ranks[b][s]["error"] for b in BACKENDS if "error" in ranks[b][s]}
                result["strategies"][f"{task}:{s}"] = {
                    **{f"top2_{b}": tops[b] for b in BACKENDS},
                    "same_top2": tops["onnxruntime"] == tops["torch"] and not errors,
                    **({"errors": errors} if errors else {}),
                }
            result["summary"] = summarise(result)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            write_result(a.out, result)
            print(task, result["summary"], flush=True)
        for c in clients.values():
            c.close()
    return result


def merge(out: str, other: str) -> dict[str, Any]:
    """``other``'s per-task results (a run over other tasks) added to ``out``'s, summary
    recomputed: what running the two one after the other with ``--append`` writes."""
    target = RESULTS / f"{out}.json"
    result = json.loads(target.read_text()) if target.is_file() else {}
    more = json.loads((RESULTS / f"{other}.json").read_text())
    for key in ("torch_threads", "precision"):
        result.setdefault(key, more.get(key))
    for key in ("pairs", "strategies", "models_by_task", "seconds_per_backend"):
        mine = result.setdefault(key, {})
        for k, v in more.get(key, {}).items():
            if k in mine and key != "pairs":  # the same task ranked over another pool
                task = k.split(":")[0]
                k = f"{k} (pool: {', '.join(more['models_by_task'].get(task, []))})"
            mine[k] = v
    result["seconds"] = round(result.get("seconds", 0) + more.get("seconds", 0), 1)
    result["summary"] = summarise(result)
    for key in ("benchmark", "machine", "date"):
        result.pop(key, None)
    write_result(out, result)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Worst differences over the pairs, and how many strategies kept their top 2."""
    pairs = result["pairs"].values()
    out: dict[str, Any] = {}
    for proxy in ("knn", "linear"):
        diffs = [p[f"{proxy}_diff_points"] for p in pairs if f"{proxy}_diff_points" in p]
        if diffs:
            out[f"{proxy}_max_diff_points"] = max(diffs)
            out[f"{proxy}_pairs_within_0.5_points"] = f"{sum(d <= 0.5 for d in diffs)}/{len(diffs)}"
    cos = [p["min_cosine"] for p in pairs if p.get("min_cosine") is not None]
    if cos:
        out["min_cosine"] = min(cos)
    strat = [s for s in result["strategies"].values() if "errors" not in s]
    out["strategies_same_top2"] = f"{sum(s['same_top2'] for s in strat)}/{len(strat)}"
    out["strategies_refused"] = len(result["strategies"]) - len(strat)
    return out


if __name__ == "__main__":
    main()
