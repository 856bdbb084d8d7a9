"""VTAB-1k regret study over the shipped ground-truth table (no embeddings, no fine-tuning).

Ground truth: ``shift/data/benchmarks/vtab1k_finetune.csv`` (4,997 cells, 291 Hugging Face vision
models × 19 VTAB-1k tasks; derived from DS3Lab/shift ``data/ftrecords.csv`` commit a0885e0, no
licence there: attributed, not our data). Metrics come from :mod:`shift.tools.evaluation`
(Renggli et al., "Which model to transfer?", eqs. 1–2; Figure 7 budget curves).

Strategies (none needs embeddings):

* ``meta``: meta-learned; rank by the mean fine-tune accuracy on the *other* tasks
  (leave-one-task-out, :func:`shift.scoring.meta.meta_scores`).
* ``agnostic_natural``: task-agnostic stand-in. The table has **no ImageNet accuracy and no
  upstream metadata** (data README §1), so Renggli's task-agnostic strategy (ImageNet top-1, else
  upstream size) cannot be built. The closest in-data proxy for "good upstream model" is the
  mean fine-tune accuracy on the *natural* VTAB tasks (the ImageNet-like ones, where ImageNet
  accuracy predicts transfer, Kornblith et al. 2019), target excluded. It ignores the target
  task, so it ranks identically for all specialized and structured targets.
* ``agnostic_oracle``: Renggli's "task-agnostic oracle" (Figure 7, §5.4): the mean accuracy over
  *all* 19 tasks, target included. Impractical (it sees the target's results): an upper reference.
* ``random``: B distinct models drawn uniformly; 200 seeded draws (seed 0), with the exact
  expectation (order statistics, ``random_exact``) alongside. Relative regret is Renggli et
  al.'s eq. 1 form, ``Δ(ORACLE, E[max])`` (the expectation of the best pick inside);
  ``expected_relative_regret`` keeps the mean of the draws' relative regrets,
  ``E[Δ(ORACLE, max)]`` (the data README §2.5 figure, smaller since Δ is concave).
* ``oracle``: rank by the true accuracy: regret 0, τw 1 (sanity).

Omitted: ranking by the number of tasks a model was fine-tuned on, which records the maintainers'
logging and protocol filters, not upstream quality (and is constant on the 94-model pool).

Pools: ``task`` (headline): every model with a cell on the target task (210–289 models);
``full94``: the 94 models with all 19 tasks (data README §2.5 reference numbers).
Variants: ``with_diverged`` (the table as is) and ``without_diverged`` (the 477 diverged cells,
a task's most frequent value, removed from both the pool and the meta statistics, as if those
runs did not exist). EuroSAT/Resisc45 (test overlaps train) are kept and flagged.

For each task, pool, variant and strategy: regret and relative regret at B = 1..10, zero-regret
hit, budget to zero regret, weighted τ between strategy scores and true accuracies; means over
tasks overall and per VTAB group.

    python -m benchmarks.bench_vtab_regret [--draws 200] [--no-plots]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write_result
from shift.scoring.meta import VTAB_GROUPS, GroundTruth, load_table, meta_scores
from shift.tools import evaluation as ev

BUDGETS = list(range(1, 11))
SEED = 0
STRATEGIES = ["meta", "agnostic_natural", "agnostic_oracle", "random", "oracle"]
LABELS = {
    "meta": "meta-learned (LOO mean acc.)",
    "agnostic_natural": "task-agnostic proxy (natural-group mean)",
    "agnostic_oracle": "task-agnostic oracle (mean incl. target)",
    "random": "random (200 draws; Δ(ORACLE, E[max]))",
    "oracle": "oracle",
}
COLORS = {
    "meta": "tab:blue",
    "agnostic_natural": "tab:green",
    "agnostic_oracle": "tab:purple",
    "random": "tab:gray",
    "oracle": "black",
}
SCOPES = ["overall", *VTAB_GROUPS]

# Data README §2.5: 94-model full-coverage pool, diverged cells kept, leave-one-task-out.
#: The random row's relative regret there is the mean of the picks' relative regrets, E[Δ]
#: (``mean_expected_relative_regret`` here), not Renggli's eq. 1 form Δ(ORACLE, E[max]).
REFERENCE = {
    ("meta", 1): {"mean": 0.1458, "median": 0.0620, "max": 0.9126, "mean_rel": 0.2791},
    ("meta", 2): {"mean": 0.1032, "median": 0.0395, "max": 0.7532, "mean_rel": 0.2526},
    ("meta", 3): {"mean": 0.0489, "median": 0.0291, "max": 0.2333, "mean_rel": 0.1871},
    ("random_exact", 1): {"mean": 0.2697, "median": 0.2762, "max": 0.5435, "mean_e_rel": 0.4603},
}
REFERENCE_BUDGET = {"mean": 24.7, "median": 24, "max": 72}
TOL = 6e-5  # the README prints 4 decimals


def ranking_of(scores: dict[str, float | None]) -> tuple[list[str], dict[str, float]]:
    """Ranking (models without a score last, by name) and the scored subset."""
    valid = {m: float(s) for m, s in scores.items() if s is not None}
    return ev.rank_by_scores(valid) + sorted(m for m in scores if scores[m] is None), valid


def deterministic(acc: dict[str, float], scores: dict[str, float | None]) -> dict[str, Any]:
    ranking, valid = ranking_of(scores)
    tau = ev.weighted_tau(valid, acc) if len(set(valid.values())) > 1 else math.nan
    return {
        "regret": [ev.regret_at(acc, ranking, b) for b in BUDGETS],
        "relative_regret": [ev.relative_regret_at(acc, ranking, b) for b in BUDGETS],
        "zero_regret": [float(ev.top_k_hit(acc, ranking, b)) for b in BUDGETS],
        "budget_to_zero": ev.budget_to_zero_regret(acc, ranking),
        "weighted_tau": tau,
        "top1": ranking[0],
    }


def random_draws(acc: dict[str, float], rng: np.random.Generator, draws: int) -> dict[str, Any]:
    """``draws`` uniformly random rankings (a B-prefix of a random permutation is a uniform
    B-subset): mean regret; relative regret ``Δ(ORACLE, mean best pick)`` (eq. 1) and, as
    ``expected_relative_regret``, the mean of the draws' relative regrets. Draw 0 is re-scored
    with shift.tools.evaluation as a cross-check."""
    models = list(acc)
    a = np.array([acc[m] for m in models])
    best = a.max()
    picks, rel, hit, b0, taus = [], [], [], [], []
    for d in range(draws):
        perm = rng.permutation(len(a))
        s = np.maximum.accumulate(a[perm])[: len(BUDGETS)]
        s = np.pad(s, (0, len(BUDGETS) - len(s)), mode="edge")
        rr = np.where(s == best, 0.0, (best - s) / np.where(s < 1, 1 - s, 1.0))
        picks.append(s)
        rel.append(rr)
        hit.append(s == best)
        b0.append(int(np.argmax(a[perm] == best)) + 1)
        order = [models[i] for i in perm]
        taus.append(ev.weighted_tau({m: -float(i) for i, m in enumerate(order)}, acc))
        if d == 0:
            for j, b in enumerate(BUDGETS):
                assert abs(ev.regret_at(acc, order, b) - (best - s[j])) < 1e-12
                assert abs(ev.relative_regret_at(acc, order, b) - rr[j]) < 1e-12
            assert ev.budget_to_zero_regret(acc, order) == b0[0]
    mean_pick = np.mean(picks, axis=0)
    return {
        "regret": (best - mean_pick).tolist(),
        "relative_regret": [ev.relative_delta(float(best), float(s)) for s in mean_pick],
        "expected_relative_regret": np.mean(rel, axis=0).tolist(),
        "zero_regret": np.mean(hit, axis=0).tolist(),
        "budget_to_zero": float(np.mean(b0)),
        "weighted_tau": float(np.mean(taus)),
        "draws": draws,
    }


def random_exact(acc: dict[str, float]) -> dict[str, Any]:
    """Exact expectation for a uniform B-subset (:func:`shift.tools.evaluation.
    random_expected_max`: P(max = a_(i)) = C(i−1, B−1)/C(n, B) over ascending accuracies):
    regret ``ORACLE − E[max]``, relative regret ``Δ(ORACLE, E[max])`` (Renggli eq. 1) and
    ``expected_relative_regret`` ``E[Δ(ORACLE, max)]``."""
    n, best = len(acc), max(acc.values())
    k = sum(1 for x in acc.values() if x == best)
    return {
        "regret": [best - ev.random_expected_max(acc, b) for b in BUDGETS],
        "relative_regret": [ev.random_relative_regret(acc, b) for b in BUDGETS],
        "expected_relative_regret": [ev.random_expected_relative_regret(acc, b) for b in BUDGETS],
        "zero_regret": [1 - math.comb(n - k, min(b, n)) / math.comb(n, min(b, n)) for b in BUDGETS],
        "budget_to_zero": (n + 1) / (k + 1),
        "weighted_tau": 0.0,
    }


def evaluate(
    table: GroundTruth, pools: Callable[[str], list[str]], draws: int
) -> dict[str, dict[str, Any]]:
    """Per strategy, per task: metrics on ``table`` with pool ``pools(task)``."""
    natural = VTAB_GROUPS["natural"]
    rng = np.random.default_rng(SEED)
    out: dict[str, dict[str, Any]] = {s: {} for s in [*STRATEGIES, "random_exact"]}
    for task in table.tasks:
        acc = table.task_accuracies(task, pools(task))
        pool = list(acc)
        scores = {
            "meta": meta_scores(table, pool, task),
            "agnostic_natural": meta_scores(table, pool, task, tasks=natural),
            "agnostic_oracle": meta_scores(table, pool, None),
            "oracle": dict(acc),
        }
        for name, sc in scores.items():
            out[name][task] = deterministic(acc, sc)
        out["random"][task] = random_draws(acc, rng, draws)
        out["random_exact"][task] = random_exact(acc)
        for name in out:
            out[name][task]["n_pool"] = len(pool)
            out[name][task]["group"] = table.groups[task]
    return out


def summarise(per_task: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    rows = [per_task[t] for t in tasks]
    reg = np.array([r["regret"] for r in rows])
    rel = np.array([r["relative_regret"] for r in rows])
    hit = np.array([r["zero_regret"] for r in rows])
    b0 = [r["budget_to_zero"] for r in rows]
    taus = [r["weighted_tau"] for r in rows if not math.isnan(r["weighted_tau"])]
    extra = {}
    if all("expected_relative_regret" in r for r in rows):  # random: E[Δ] beside eq. 1
        erel = np.array([r["expected_relative_regret"] for r in rows])
        extra["mean_expected_relative_regret"] = erel.mean(0).tolist()
    return {
        "n_tasks": len(rows),
        **extra,
        "mean_regret": reg.mean(0).tolist(),
        "median_regret": np.median(reg, 0).tolist(),  # JSON: B = 1..3
        "max_regret": reg.max(0).tolist(),
        "mean_relative_regret": rel.mean(0).tolist(),
        "zero_regret_fraction": hit.mean(0).tolist(),
        "budget_to_zero": {
            "mean": statistics.fmean(b0),
            "median": statistics.median(b0),
            "max": max(b0),
            "n_b1": sum(1 for b in b0 if b <= 1),
            "n_b_le2": sum(1 for b in b0 if b <= 2),
        },
        "mean_weighted_tau": statistics.fmean(taus) if taus else math.nan,
    }


def study(table: GroundTruth, draws: int) -> dict[str, Any]:
    clean = table.without_diverged()
    full = table.full_coverage_models()
    pools = {"task": lambda t, tb: tb.models_with(t), "full94": lambda t, tb: full}
    res: dict[str, Any] = {}
    for pool_name, pool_fn in pools.items():
        res[pool_name] = {}
        for variant, tb in (("with_diverged", table), ("without_diverged", clean)):
            per = evaluate(tb, lambda t, tb=tb, f=pool_fn: f(t, tb), draws)
            summary = {}
            for s, pt in per.items():
                summary[s] = {"overall": summarise(pt, list(tb.tasks))}
                for g in VTAB_GROUPS:
                    summary[s][g] = summarise(pt, tb.tasks_in_group(g))
            res[pool_name][variant] = {"summary": summary, "per_task": per}
    return res


def check_reference(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Data README §2.5 on the 94-model pool with diverged cells."""
    summ = res["full94"]["with_diverged"]["summary"]
    checks = []
    for (s, b), ref in REFERENCE.items():
        o = summ[s]["overall"]
        got = {
            "mean": o["mean_regret"][b - 1],
            "median": o["median_regret"][b - 1],
            "max": o["max_regret"][b - 1],
            "mean_rel": o["mean_relative_regret"][b - 1],
        }
        if "mean_expected_relative_regret" in o:
            got["mean_e_rel"] = o["mean_expected_relative_regret"][b - 1]
        ok = all(abs(got[k] - ref[k]) <= TOL for k in ref)
        checks.append({"strategy": s, "B": b, "reference": ref, "got": got, "ok": ok})
    bz = summ["meta"]["overall"]["budget_to_zero"]
    got = {"mean": bz["mean"], "median": bz["median"], "max": bz["max"]}
    ok = abs(got["mean"] - 24.7) < 0.05 and got["median"] == 24 and got["max"] == 72
    checks.append({"strategy": "meta", "B": "to_zero", "reference": REFERENCE_BUDGET, "got": got})
    checks[-1]["ok"] = ok
    return checks


def plot(res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_pool = res["task"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5), sharex=True)
    for j, scope in enumerate(SCOPES):
        for variant, ls in (("with_diverged", "-"), ("without_diverged", "--")):
            summ = task_pool[variant]["summary"]
            for s in STRATEGIES:
                o = summ[s][scope]
                lab = f"{LABELS[s]}, {variant.replace('_', ' ')}"
                axes[0, j].plot(BUDGETS, o["mean_relative_regret"], ls, color=COLORS[s], label=lab)
                axes[1, j].plot(BUDGETS, o["zero_regret_fraction"], ls, color=COLORS[s])
        n = task_pool["with_diverged"]["summary"]["meta"][scope]["n_tasks"]
        axes[0, j].set_title(f"{scope} ({n} tasks)")
        axes[1, j].set_xlabel("budget B (models fine-tuned)")
        axes[0, j].grid(alpha=0.3)
        axes[1, j].grid(alpha=0.3)
        axes[1, j].set_ylim(-0.03, 1.03)
    axes[0, 0].set_ylabel("mean relative regret")
    axes[1, 0].set_ylabel("fraction of tasks with zero regret")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=7.5)
    fig.suptitle(
        "VTAB-1k (DS3Lab SHiFT fine-tune log, per-task pool = all models with a cell): "
        "solid = with diverged cells, dashed = without"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    p1 = RESULTS / "vtab_budget_curves.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    shown = [s for s in STRATEGIES if s != "oracle"]
    fig, axes = plt.subplots(2, 1, figsize=(16, 8), sharex=True)
    tasks = [t for g in VTAB_GROUPS.values() for t in g]
    x = np.arange(len(tasks))
    w = 0.8 / len(shown)
    for ax, variant in zip(axes, ("with_diverged", "without_diverged"), strict=True):
        per = task_pool[variant]["per_task"]
        for i, s in enumerate(shown):
            vals = [per[s][t]["regret"][1] for t in tasks]
            ax.bar(x - 0.4 + (i + 0.5) * w, vals, w, color=COLORS[s], label=LABELS[s])
        edge = len(VTAB_GROUPS["natural"]) - 0.5
        for b in (edge, edge + len(VTAB_GROUPS["specialized"])):
            ax.axvline(b, color="k", lw=0.8)
        ax.set_ylabel("absolute regret at B = 2")
        ax.set_title(f"{variant.replace('_', ' ')} cells (oracle: 0 everywhere)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(x, tasks, rotation=40, ha="right")
    fig.suptitle("VTAB-1k: regret at B = 2 per task (per-task pool)")
    fig.tight_layout()
    p2 = RESULTS / "vtab_regret_per_task.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1.name, p2.name]


def headline(res: dict[str, Any]) -> None:
    for pool in ("task", "full94"):
        for variant in ("with_diverged", "without_diverged"):
            print(f"\npool={pool} {variant}: mean regret / mean relative regret (τw, B→0 mean)")
            summ = res[pool][variant]["summary"]
            for s in [*STRATEGIES, "random_exact"]:
                o = summ[s]["overall"]
                cells = "  ".join(
                    f"B={b}: {o['mean_regret'][b - 1]:.4f}/{o['mean_relative_regret'][b - 1]:.4f}"
                    for b in (1, 2, 3)
                )
                tau, bz = o["mean_weighted_tau"], o["budget_to_zero"]["mean"]
                print(f"  {s:17s} {cells}  τw={tau:+.3f}  B0={bz:.1f}")
                if "mean_expected_relative_regret" in o:
                    e = o["mean_expected_relative_regret"]
                    print(f"  {'':17s} E[Δ] of the draws: {e[0]:.4f} {e[1]:.4f} {e[2]:.4f}")


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The JSON view: summaries for every pool and variant; per-task rows (B = 1..10 regret
    and relative regret, budget to zero regret, τw, top-1 pick) for the headline pool only."""
    out: dict[str, Any] = {}
    for pool, variants in res.items():
        out[pool] = {}
        for variant, r in variants.items():
            summ = {
                s: {
                    scope: {
                        **o,
                        "median_regret": o["median_regret"][:3],
                        "max_regret": o["max_regret"][:3],
                    }
                    for scope, o in by_scope.items()
                }
                for s, by_scope in r["summary"].items()
            }
            out[pool][variant] = {"summary": summ}
            if pool == "task":
                keep = (
                    "n_pool",
                    "regret",
                    "relative_regret",
                    "expected_relative_regret",
                    "budget_to_zero",
                    "weighted_tau",
                )
                out[pool][variant]["per_task"] = {
                    t: {
                        s: {
                            k: r["per_task"][s][t][k]
                            for k in (*keep, "top1")
                            if k in r["per_task"][s][t]
                        }
                        for s in STRATEGIES
                    }
                    for t in r["per_task"]["meta"]
                }
    return out


def rounded(obj: Any, nd: int = 6) -> Any:
    """Floats rounded for the JSON file (the checks use the unrounded values)."""
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: rounded(v, nd) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, nd) for v in obj]
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = load_table("vtab1k")
    res = study(table, args.draws)
    checks = check_reference(res)
    headline(res)
    print()
    for c in checks:
        print(
            f"§2.5 check {c['strategy']} B={c['B']}: "
            + ", ".join(f"{k} {c['got'][k]:.4f} (ref {v})" for k, v in c["reference"].items())
            + f" -> {'OK' if c['ok'] else 'MISMATCH'}"
        )
    plots = [] if args.no_plots else plot(res)
    elapsed = time.perf_counter() - t0
    path = write_result(
        "vtab_regret",
        {
            "table": {
                "name": table.name,
                "file": "shift/data/benchmarks/vtab1k_finetune.csv",
                "source": "DS3Lab/shift data/ftrecords.csv @ a0885e0 (no licence; attributed)",
                "cells": table.n_cells,
                "models": len(table.models),
                "tasks": len(table.tasks),
                "diverged_cells": len(table.diverged),
                "full_coverage_models": len(table.full_coverage_models()),
                "overlapping_test_tasks_kept": sorted(table.overlaps_train),
            },
            "protocol": {
                "budgets": BUDGETS,
                "pools": {
                    "task": "every model with a cell on the target task (headline)",
                    "full94": "the 94 models with all 19 tasks (data README §2.5)",
                },
                "variants": {
                    "with_diverged": "table as is",
                    "without_diverged": "diverged cells (task's most frequent value, 6 decimals)"
                    " removed from pools and meta statistics",
                },
                "random": f"{args.draws} seeded draws (numpy default_rng({SEED}));"
                " random_exact = exact expectation. relative_regret = Renggli eq. 1,"
                " Delta(ORACLE, E[max of the B picks]); expected_relative_regret ="
                " E[Delta(ORACLE, max)], the mean of the draws' relative regrets (data README"
                " §2.5's random row)",
                "weighted_tau": "scipy weightedtau(strategy scores, true accuracies), defaults",
                "budget_to_zero": "smallest B whose top-B contain a best model (ties count)",
                "relative_regret": "(ORACLE - s)/(1 - s), Renggli eq. 2; for random,"
                " s = E[max of the B picks] (eq. 1: the expectation inside)",
            },
            "strategies": {
                "meta": "rank by mean fine-tune accuracy on the other tasks (leave-one-task-out)",
                "agnostic_natural": "task-agnostic stand-in: mean fine-tune accuracy on the"
                " natural VTAB tasks, target excluded (the table has no ImageNet accuracy)",
                "agnostic_oracle": "Renggli Fig. 7 task-agnostic oracle: mean accuracy over all"
                " tasks INCLUDING the target (impractical upper reference)",
                "random": "B distinct models uniformly at random",
                "oracle": "rank by true accuracy (sanity: regret 0)",
            },
            "task_agnostic_note": (
                "The source log has no ImageNet/upstream accuracies and no upstream-dataset "
                "metadata (data README §1), so Renggli's task-agnostic strategy (highest "
                "ImageNet accuracy, else largest upstream data) cannot be built from the data. "
                "Reported instead: a natural-group-mean proxy (target excluded) and the paper's "
                "own impractical task-agnostic oracle. Ranking by the number of tasks fine-tuned"
                " is omitted: coverage reflects the maintainers' logging/protocol filters, not "
                "upstream quality, and is constant on the 94-model pool."
            ),
            "caveats": [
                "Diverged = the task's single most frequent value (data README); other "
                "near-chance runs stay in the without_diverged variant, e.g. CIFAR-100 has 13 "
                "more cells at exactly 0.0100 and Caltech101 6 at 0.000651.",
                "Meta scores average each model over its own covered tasks (sparse table): a "
                "model fine-tuned on few, easy tasks can rank high. On the per-task pool this "
                "puts a 17-task model whose CIFAR-100 run reached 0.047 (not flagged) and a "
                "14-task model at 0.162 on Sun397 first, which is why meta trails the "
                "natural-group proxy at B = 1 there; the dense 94-model pool has no such bias.",
                "lr chosen on the test set (max over lr), EuroSAT/Resisc45 test sets overlap "
                "train, 25-epoch SGD schedule: not comparable with Renggli et al.'s values.",
            ],
            "reference_check": rounded(checks),
            "results": rounded(compact(res), 5),
            "plots": plots,
            "elapsed_s": elapsed,
        },
    )
    print(f"\nwrote {path} and {', '.join(plots) or 'no plots'} in {elapsed:.1f} s")
    if not all(c["ok"] for c in checks):
        raise SystemExit("data README §2.5 reference numbers not reproduced")


if __name__ == "__main__":
    main()
