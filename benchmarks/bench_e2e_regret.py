"""End-to-end regret on the demo registry: real fine-tuning as ground truth, every strategy.

python -m benchmarks.bench_e2e_regret [--regenerate] [--tasks T ...] [--epochs N]
    [--max-train N] [--time-budget S]

1. **Ground truth**: every catalog model is fine-tuned on every demo task with
   :func:`shift.tools.finetune.finetune` (cached in the registry's ``finetune_results``) and
   exported to
   ``results/finetune_ground_truth.json``. When that file exists it is used as is (``make bench``
   reproduces the tables without fine-tuning) unless ``--regenerate``. The protocol is scaled down
   to fit a 2-core CPU (``SCALED_DOWN`` says exactly how; it is written into both JSON files).
2. **Search**: for each strategy, ``SELECT * FROM pool all WHERE task=T RANK BY S`` through
   ``shift.connect()``; the top-B of its ranking (B = 1, 2, 3) give regret and relative regret
   (``shift.tools.evaluation``), and weighted Kendall τ between the strategy's scores and the
   fine-tune accuracies: the raw proxy scores for a plain proxy or ``random(seed)`` (the
   SFDA/NCTI convention: genuine score ties stay ties, e.g. a saturated estimator), else, for
   strategies whose order is not a score order (agnostic, hybrid, successive halving), the
   rank-derived scores ``n − position``. Means over tasks. The random baseline's relative
   regret is Renggli's eq. 1, ``Δ(ORACLE, E[max])``; ``E[Δ]`` is kept beside it as
   ``expected_relative_regret``.
3. **Cost**: search seconds = embedding every sample of the task with every model (index build,
   measured once in a throw-away copy of the home and scaled by sample count; successive halving:
   only the samples each model saw) + scoring (the per-model seconds cached with each proxy
   score; successive halving: the measured query) against the seconds of fine-tuning every model:
   as measured under the scaled-down protocol, and projected from the measured per-sample costs
   onto the default protocol on the full training split and onto the paper's 2 × 2,500 steps at
   batch 512 (:func:`projected_finetune_seconds`). ``speedup`` = fine-tuning seconds / search
   seconds, summed over tasks.

Writes ``results/e2e_regret.json`` and ``results/e2e_regret.png``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write_result
from shift.scoring.proxies import PROXIES
from shift.tools import evaluation as ev

GT_PATH = RESULTS / "finetune_ground_truth.json"
BUDGETS = (1, 2, 3)
#: every model; the generalists with ImageNet accuracies (no experts: the agnostic side's pool)
POOLS = ("all", "imagenet")
#: task-agnostic, every registered proxy (so a new estimator joins the study), then the composites
STRATEGIES = [
    "agnostic",
    *PROXIES,
    "hybrid(linear)",
    "hybrid(logme)",
    "hybrid(knn)",
    "sh(linear)",
    "random(0)",
]
#: the benchmark's protocol: FinetuneProtocol defaults except these (see SCALED_DOWN)
BENCH_EPOCHS = 2
BENCH_MAX_TRAIN = 160
SCALED_DOWN = (
    "Paper (Renggli et al. §4): linear head on all training examples, then full fine-tuning at 2 "
    "lrs for 2,500 SGD steps at batch 512, best validation accuracy, median of 5 runs. "
    "shift.tools.finetune's default protocol: 100 linear-head warm-up steps (lr 0.1) on frozen "
    "features, then full fine-tuning at lrs (0.00625, 0.000625) (VTAB's 0.1 and 0.01 at batch "
    "512 scaled linearly to batch 32), SGD momentum 0.9, batch 32, 2 epochs each, in eval mode "
    "(BatchNorm statistics frozen, no dropout or drop-connect), global gradient norm clipped to "
    "1.0, best "
    "validation accuracy (epoch 0 = the warmed-up head included), one seeded run. This benchmark "
    "uses that protocol on a seeded random subset of 160 training samples per task (10 SGD steps "
    "per lr; the full validation split is kept), at each model's native input resolution, "
    "because the full-split protocol does not fit the time box on a 2-core CPU (its projected "
    "seconds are in `speedup`)."
)


# ---- metrics ----------------------------------------------------------------------------------
def rank_scores(ranking: list[str]) -> dict[str, float]:
    """``n − position``: a score per model that reproduces ``ranking`` (best first)."""
    return {m: float(len(ranking) - i) for i, m in enumerate(ranking)}


def has_raw_scores(strategy: str) -> bool:
    """Whether the strategy's order is its score order (a plain proxy, ``random(seed)``)."""
    return strategy in PROXIES or strategy.startswith("random(")


def tau_scores(
    acc: dict[str, float], ranking: list[str], scores: dict[str, Any] | None
) -> tuple[dict[str, float], str]:
    """The scores τ_w is computed from, and which: ``"scores"`` (the raw ones, when given and
    finite for every model of ``acc``) or ``"rank"`` (``n − position`` of ``ranking``)."""
    if scores is not None:
        raw = {m: scores.get(m) for m in acc}
        if all(isinstance(v, int | float) and np.isfinite(v) for v in raw.values()):
            return {m: float(v) for m, v in raw.items()}, "scores"  # type: ignore[arg-type]
    return rank_scores(ranking), "rank"


def strategy_metrics(
    acc: dict[str, float], ranking: list[str], scores: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Regret and relative regret at B = 1, 2, 3 of the top-B of ``ranking`` and weighted τ
    against ``acc`` of the raw ``scores`` if given (ties stay ties), else of the rank-derived
    ones (:func:`tau_scores`; all from :mod:`shift.tools.evaluation`)."""
    ranking = [m for m in ranking if m in acc]
    tau_from, source = tau_scores(acc, ranking, scores)
    return {
        "top3": ranking[:3],
        "regret": {str(b): ev.regret_at(acc, ranking, b) for b in BUDGETS},
        "relative_regret": {str(b): ev.relative_regret_at(acc, ranking, b) for b in BUDGETS},
        "weighted_tau": ev.weighted_tau(tau_from, acc),
        "tau_from": source,
        "budget_to_zero_regret": ev.budget_to_zero_regret(acc, ranking),
    }


#: per-phase timings of each fine-tuning run kept in the ground truth (for the cost projection)
TIMING_FIELDS = ("embed_seconds", "train_seconds", "train_sample_steps", "eval_seconds")


# ---- ground truth -----------------------------------------------------------------------------
def _protocol(epochs: int, max_train: int | None) -> Any:
    from shift.tools.finetune import FinetuneProtocol

    return FinetuneProtocol(epochs=epochs, max_train=max_train)


def compute_ground_truth(
    reg: Any, tasks: list[str], models: list[str], protocol: Any, time_budget: float
) -> dict[str, Any]:
    """Fine-tune every model on every task (registry-cached); a task is dropped when the time
    budget runs out before all its models are done."""
    from shift.tools.finetune import finetune

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    skipped = []
    for task in tasks:
        rows = {}
        for m in models:
            if time.perf_counter() - t0 > time_budget:
                break
            r = finetune(reg, task, m, protocol)
            rows[m] = {
                "accuracy": r.accuracy,
                "seconds": r.seconds,
                "best_lr": r.details.get("best_lr"),
                "best_epoch": r.details.get("best_epoch"),
                "head_accuracy": r.details.get("head_accuracy"),
                **{k: r.details.get(k) for k in TIMING_FIELDS},
                "n_train": r.details.get("n_train"),
                "n_val": r.details.get("n_val"),
                "model_sha": r.model_sha,
            }
            print(f"  {task:12s} {m:24s} acc {r.accuracy:.3f}  {r.seconds:6.1f} s", flush=True)
        if len(rows) < len(models):
            skipped.append(task)
            continue
        out[task] = {"task_hash": reg.get_task(task).content_hash, "models": rows}
    return {"tasks": out, "skipped_tasks": skipped}


def measure_embedding(reg: Any, task: str, models: list[str]) -> dict[str, Any]:
    """Seconds to index ``task`` with ``models`` from scratch (in-process executor), in a copy of
    the home (registry.db copied, models/ and tasks/ linked) so the real indexes are untouched."""
    from shift.config import Home
    from shift.engine.engine import Engine
    from shift.store.registry import Registry

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "reg").mkdir()
        for sub in ("models", "tasks"):
            (root / "reg" / sub).symlink_to(reg.home.registry_dir / sub)
        dst = sqlite3.connect(root / "reg" / "registry.db")
        reg.db.conn.backup(dst)
        dst.close()
        copy = Registry(Home(root / "reg", root / "idx"))
        engine = Engine(copy, executor="inprocess", progress=False)
        per_model, embedded = {}, 0
        for m in models:  # one at a time: a generalist costs ~20x an expert per image
            t0 = time.perf_counter()
            engine.index(task, [copy.get_model(m)])
            per_model[m] = time.perf_counter() - t0
            embedded += sum(engine.last_report.embedded.values())
        copy.close()
    images = len(reg.samples(task))
    return {
        "task": task,
        "images": images,
        "models": len(models),
        "embedded": embedded,
        "seconds": sum(per_model.values()),
        "seconds_per_image": {m: s / images for m, s in per_model.items()},
        "executor": "inprocess",
    }


def expected_random(gt: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """The exact expectation of a uniformly random B-subset per task (no draws; cost 0), from
    :func:`benchmarks.bench_vtab_regret.random_exact`, in ``run_search``'s layout: relative
    regret ``Δ(ORACLE, E[max])`` (Renggli eq. 1) and ``expected_relative_regret`` E[Δ]."""
    from benchmarks.bench_vtab_regret import random_exact

    per_task = {}
    for t in tasks:
        r = random_exact({m: v["accuracy"] for m, v in gt[t]["models"].items()})
        per_task[t] = {
            key: {str(b): r[key][i] for i, b in enumerate(BUDGETS)}
            for key in ("regret", "relative_regret", "expected_relative_regret")
        } | {"weighted_tau": r["weighted_tau"], "search_seconds": 0.0}
    summary = {
        "tasks": len(tasks),
        **{
            f"mean_{key}": {
                str(b): float(np.mean([v[key][str(b)] for v in per_task.values()])) for b in BUDGETS
            }
            for key in ("regret", "relative_regret", "expected_relative_regret")
        },
        "mean_weighted_tau": 0.0,
    }
    return {"summary": summary, "per_task": per_task}


def finetune_gain(gt: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """How much full fine-tuning added to the warmed-up head (epoch 0) across (task, model)."""
    rows = [v for t in tasks for v in gt[t]["models"].values()]
    gains = np.array([v["accuracy"] - v["head_accuracy"] for v in rows])
    return {
        "pairs": len(rows),
        "improved": int((gains > 0).sum()),
        "mean_gain": float(gains.mean()) if len(rows) else None,
        "max_gain": float(gains.max()) if len(rows) else None,
    }


# ---- cost ----------------------------------------------------------------------------------------
#: the paper's fine-tuning protocol (Renggli et al. §4): lrs × steps × batch
PAPER_LRS, PAPER_STEPS, PAPER_BATCH = 2, 2500, 512


def eval_passes(protocol: dict[str, Any]) -> int:
    """Validation passes of one fine-tuning run: epoch 0, then one per epoch and lr."""
    return 1 + len(protocol["lrs"]) * protocol["epochs"]


def projected_finetune_seconds(
    row: dict[str, Any], n_train: int, n_val: int, evals: int
) -> dict[str, float]:
    """Seconds one model's fine-tuning would take under fuller protocols, from its measured
    per-sample costs: ``t_step`` = train_seconds / train_sample_steps (forward + backward),
    ``t_fwd`` = eval_seconds / (``evals`` validation passes · n_val) (forward).

    - ``default_full_split``: shift's default protocol (``FinetuneProtocol()``: L lrs, E epochs)
      on the whole training split: n_train·t_fwd (head features) + L·E·n_train·t_step
      + (1 + L·E)·n_val·t_fwd;
    - ``paper``: the paper's 2 lrs × 2,500 steps × batch 512 · t_step + n_train · t_fwd.
    """
    from shift.tools.finetune import FinetuneProtocol

    default = json.loads(FinetuneProtocol().key())
    runs = len(default["lrs"]) * default["epochs"]
    t_step = row["train_seconds"] / row["train_sample_steps"]
    t_fwd = row["eval_seconds"] / (row["n_val"] * evals)
    return {
        "default_full_split": n_train * t_fwd
        + runs * n_train * t_step
        + eval_passes(default) * n_val * t_fwd,
        "paper": PAPER_LRS * PAPER_STEPS * PAPER_BATCH * t_step + n_train * t_fwd,
    }


def finetune_costs(
    models: dict[str, Any], n_train: int, n_val: int, protocol: dict[str, Any]
) -> dict[str, float]:
    """Seconds to fine-tune every model in ``models`` on a task with ``n_train`` / ``n_val``
    samples: as measured (the scaled-down ``protocol``) and projected
    (:func:`projected_finetune_seconds`)."""
    out = {"measured": float(sum(v["seconds"] for v in models.values()))}
    if all(v.get("train_sample_steps") for v in models.values()):
        for v in models.values():
            for k, sec in projected_finetune_seconds(
                v, n_train, n_val, eval_passes(protocol)
            ).items():
                out[k] = out.get(k, 0.0) + sec
    return out


# ---- search ------------------------------------------------------------------------------------
def _score_seconds(reg: Any, task_hash: str, proxy: str, shas: list[str]) -> float | None:
    qs = ",".join("?" * len(shas))
    rows = reg.db.conn.execute(
        f"SELECT substr(model_sha, 1, 64) AS sha, avg(seconds) FROM scores WHERE task_hash = ? "
        f"AND proxy = ? AND substr(model_sha, 1, 64) IN ({qs}) GROUP BY sha",  # <sha256>+<...>
        [task_hash, proxy, *shas],
    ).fetchall()
    return float(sum(s for _, s in rows)) if rows else None


def run_search(
    c: Any,
    tasks: list[str],
    gt: dict[str, Any],
    emb: dict[str, Any],
    protocol: dict[str, Any],
    pool: str = "all",
) -> dict:
    """Every strategy on every task over ``pool`` (``gt`` restricted to its members)."""
    reg = c.registry
    splits = {}  # task -> (train, val) sample counts
    for task in tasks:
        n_train = sum(r["split"] == "train" for r in reg.samples(task))
        splits[task] = (n_train, len(reg.samples(task)) - n_train)
    costs = {t: finetune_costs(gt[t]["models"], *splits[t], protocol) for t in tasks}
    per_strategy: dict[str, Any] = {}
    for s in STRATEGIES:
        per_task: dict[str, Any] = {}
        for task in tasks:
            acc = {m: v["accuracy"] for m, v in gt[task]["models"].items()}
            t0 = time.perf_counter()
            try:
                q = f"SELECT * FROM pool {pool} WHERE task={task} AND weights = 'present'"
                res = c.query(f"{q} RANK BY {s}")
            except Exception as e:  # noqa: BLE001 — record and go on
                per_task[task] = {"error": str(e).splitlines()[0]}
                continue
            query_s = time.perf_counter() - t0
            m = strategy_metrics(acc, res.names, res.scores if has_raw_scores(s) else None)
            proxy = s.split("(")[1].rstrip(")") if s.startswith("hybrid(") else s
            models = list(acc)
            n_train, n_val = splits[task]
            if s == "agnostic" or s.startswith("random"):
                embed_s, score_s = 0.0, 0.0
            elif s.startswith("sh("):  # embeds the val split + the train prefix each model saw
                per_image = emb["seconds_per_image"]
                seen = sum(per_image[r["name"]] * (n_val + int(r["samples"])) for r in res.rows)
                embed_s, score_s = seen, query_s
            else:
                embed_s = (n_train + n_val) * sum(emb["seconds_per_image"][m] for m in models)
                shas = [v["model_sha"] for v in gt[task]["models"].values()]
                cached = _score_seconds(reg, gt[task]["task_hash"], proxy, shas)
                score_s = cached if cached is not None else query_s
            ft = costs[task]
            search_s = embed_s + score_s
            m.update(
                search_seconds=search_s,
                embed_seconds=embed_s,
                score_seconds=score_s,
                finetune_all_seconds=ft,
                cost_ratio=search_s / ft["measured"],
                speedup={k: (v / search_s if search_s else None) for k, v in ft.items()},
            )
            per_task[task] = m
        ok = [v for v in per_task.values() if "error" not in v]
        summary: dict[str, Any] = {"tasks": len(ok)}
        if ok:
            for key in ("regret", "relative_regret"):
                summary[f"mean_{key}"] = {
                    str(b): float(np.mean([v[key][str(b)] for v in ok])) for b in BUDGETS
                }
            summary["mean_weighted_tau"] = float(np.mean([v["weighted_tau"] for v in ok]))
            summary["mean_cost_ratio"] = float(np.mean([v["cost_ratio"] for v in ok]))
            if all(v["search_seconds"] for v in ok):  # the whole pool's seconds, all tasks
                search_all = sum(v["search_seconds"] for v in ok)
                summary["speedup"] = {
                    k: sum(v["finetune_all_seconds"][k] for v in ok) / search_all
                    for k in ok[0]["finetune_all_seconds"]
                }
            summary["total_search_seconds"] = float(sum(v["search_seconds"] for v in ok))
        per_strategy[s] = {"summary": summary, "per_task": per_task}
        if ok:
            rr = summary["mean_relative_regret"]
            print(
                f"{s:16s} rel. regret B=1 {rr['1']:.3f} B=2 {rr['2']:.3f} B=3 {rr['3']:.3f}  "
                f"tau_w {summary['mean_weighted_tau']:+.2f}  cost {summary['mean_cost_ratio']:.3f}"
                + "".join(f"  {k} {x:.0f}x" for k, x in summary.get("speedup", {}).items()),
                flush=True,
            )
    return per_strategy


def markdown_table(per_strategy: dict[str, Any]) -> str:
    """README's table: mean regret / relative regret at each B, weighted τ, search speed-up."""
    head = "| strategy | " + " | ".join(f"B = {b}" for b in BUDGETS) + " | weighted τ |"
    lines = [head, "|---" * (len(BUDGETS) + 2) + "|"]
    for name, v in per_strategy.items():
        sm = v["summary"]
        if "mean_regret" not in sm:
            continue
        cells = [
            f"{sm['mean_regret'][str(b)]:.3f} / {sm['mean_relative_regret'][str(b)]:.3f}"
            for b in BUDGETS
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {sm['mean_weighted_tau']:+.2f} |")
    return "\n".join(lines)


def plot(by_pool: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per pool: mean relative regret of every strategy at each B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(by_pool), 1, figsize=(13, 4.2 * len(by_pool)), squeeze=False)
    for ax, (pool, per_strategy) in zip(axes[:, 0], by_pool.items(), strict=True):
        names = [s for s, v in per_strategy.items() if "mean_relative_regret" in v["summary"]]
        x = np.arange(len(names))
        for i, b in enumerate(BUDGETS):
            vals = [per_strategy[s]["summary"]["mean_relative_regret"][str(b)] for s in names]
            ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=f"B = {b}")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylabel("mean relative regret")
        ax.set_title(
            f"demo registry, pool {pool}: relative regret vs fine-tuning (lower is better)"
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def restrict(gt: dict[str, Any], tasks: list[str], members: list[str]) -> dict[str, Any]:
    """The ground truth of ``tasks`` with only the models in ``members``."""
    keep = set(members)
    return {
        t: {**gt[t], "models": {m: v for m, v in gt[t]["models"].items() if m in keep}}
        for t in tasks
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import shift
    from shift.datasets import DEMO_TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regenerate", action="store_true", help="fine-tune again (registry cache)")
    ap.add_argument("--tasks", nargs="*", default=list(DEMO_TASKS))
    ap.add_argument("--pools", nargs="*", default=list(POOLS))
    ap.add_argument(
        "--measure-embedding",
        action="store_true",
        help="measure the embedding cost again (kept in the ground-truth file)",
    )
    ap.add_argument("--epochs", type=int, default=BENCH_EPOCHS)
    ap.add_argument("--max-train", type=int, default=BENCH_MAX_TRAIN)
    ap.add_argument(
        "--time-budget", type=float, default=float("inf"), help="fine-tuning seconds at most"
    )
    args = ap.parse_args(argv)

    with shift.connect(executor="inprocess") as c:
        reg = c.registry
        missing = [t for t in args.tasks if not reg.has_task(t)]
        if missing:
            raise SystemExit(f"demo tasks missing ({missing}): run `python -m shift.demo` first")
        # metadata-only rows (model sources, e.g. the demo's torchvision zoo) have no weights
        models = [m.name for m in reg.models() if m.has_weights]
        fresh = args.regenerate or not GT_PATH.is_file()
        if fresh:
            protocol = _protocol(args.epochs, args.max_train)
            t0 = time.perf_counter()
            done = compute_ground_truth(reg, args.tasks, models, protocol, args.time_budget)
            gt_doc = {
                "protocol": json.loads(protocol.key()),
                "scaled_down": SCALED_DOWN,
                "models": models,
                **done,
                "seconds": time.perf_counter() - t0,
            }
        else:
            gt_doc = json.loads(GT_PATH.read_text())
            print(f"ground truth from {GT_PATH} (pass --regenerate to fine-tune)")
        if fresh or args.measure_embedding:
            task = min(args.tasks, key=lambda t: len(reg.samples(t)))
            gt_doc["embedding_measurement"] = measure_embedding(reg, task, gt_doc["models"])
            RESULTS.mkdir(parents=True, exist_ok=True)
            GT_PATH.write_text(json.dumps(gt_doc, indent=2) + "\n")
        gt = gt_doc["tasks"]
        want = json.loads(_protocol(args.epochs, args.max_train).key())
        if gt_doc["protocol"] != want:
            print(f"warning: the ground truth used protocol {gt_doc['protocol']}, not {want}")
        stale = [
            t for t in args.tasks if t in gt and reg.get_task(t).content_hash != gt[t]["task_hash"]
        ]
        if stale:  # the task's data changed since: its fine-tuning results do not describe it
            print(f"warning: left out, data changed since the ground truth: {', '.join(stale)}")
        tasks = [t for t in args.tasks if t in gt and t not in stale]
        if not tasks:
            raise SystemExit("no task has ground truth for its current data: pass --regenerate")
        by_pool: dict[str, Any] = {}
        members: dict[str, list[str]] = {}
        for pool in args.pools:
            print(f"pool {pool}:")
            q = f"SELECT * FROM pool {pool} WHERE weights = 'present'"
            members[pool] = sorted(c.query(q).names)
            gt_pool = restrict(gt, tasks, members[pool])
            emb = gt_doc["embedding_measurement"]
            by_pool[pool] = run_search(c, tasks, gt_pool, emb, gt_doc["protocol"], pool)
            by_pool[pool]["random (expected)"] = expected_random(gt_pool, tasks)
    ft_seconds = {
        m: float(np.mean([gt[t]["models"][m]["seconds"] for t in tasks])) for m in gt_doc["models"]
    }
    data = {
        "protocol": gt_doc["protocol"],
        "protocol_matches_code": gt_doc["protocol"] == want,
        "scaled_down": SCALED_DOWN,
        "finetune_vs_head": finetune_gain(gt, tasks),
        "tasks": tasks,
        "tasks_not_run": [t for t in DEMO_TASKS if t not in gt],
        "skipped_tasks": gt_doc.get("skipped_tasks", []),
        "stale_tasks": stale,
        "budgets": list(BUDGETS),
        "tau": "scipy weightedtau(scores, fine-tune accuracy), mean over tasks; scores = the"
        " raw proxy scores for a plain proxy or random(seed) (ties stay ties; tau_from ="
        " 'scores'), n - rank position for agnostic, hybrid and sh (tau_from = 'rank')",
        "random_baseline": "random (expected): relative regret = Renggli eq. 1,"
        " Delta(ORACLE, E[max of B uniform picks]); expected_relative_regret = E[Delta]",
        "oracle": {
            t: ev.oracle({m: v["accuracy"] for m, v in gt[t]["models"].items()}) for t in tasks
        },
        "finetune_seconds_per_model_mean": ft_seconds,
        "embedding_measurement": gt_doc["embedding_measurement"],
        "pool_members": members,
        "strategies_by_pool": by_pool,
    }
    for pool, per_strategy in by_pool.items():
        print(f"pool {pool}:\n{markdown_table(per_strategy)}")
    write_result("e2e_regret", data)
    plot(by_pool, RESULTS / "e2e_regret.png")
    return data


if __name__ == "__main__":
    main()
