"""Shipped ground-truth tables (shift.scoring.meta): loading, meta scores, diverged flags; and the
regret studies' random baseline and weighted τ, which are about the benchmarks themselves
(benchmarks/bench_vtab_regret.py and bench_e2e_regret.py), so those tests import them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shift.scoring.meta import (
    VTAB_GROUPS,
    Cell,
    GroundTruth,
    available_tables,
    load_table,
    meta_scores,
    table_path,
)


@pytest.fixture(scope="module")
def vtab() -> GroundTruth:
    return load_table("vtab1k")


def test_vtab_table_loads(vtab: GroundTruth) -> None:
    assert "vtab1k" in available_tables()
    assert table_path("vtab1k").is_file()
    assert vtab.n_cells == 4997
    assert len(vtab.tasks) == 19
    assert len(vtab.models) == 291
    assert set(vtab.tasks) == {t for g in VTAB_GROUPS.values() for t in g}
    assert len(vtab.full_coverage_models()) == 94  # data README §2.3
    assert vtab.overlaps_train == {"EuroSAT", "Resisc45"}
    assert {vtab.groups[t] for t in vtab.tasks} == set(VTAB_GROUPS)
    # data README §2.2: per-task pool sizes, best accuracies and elapsed times
    assert len(vtab.models_with("SVHN")) == 289
    assert len(vtab.models_with("sNORB-Elev")) == 210
    assert max(vtab.task_accuracies("Flowers102").values()) == pytest.approx(0.989, abs=5e-4)
    m = "Aftabhussain/Tomato_Leaf_Classifier"
    assert vtab.acc[m]["CIFAR-100"] == 0.4679538309574127
    assert vtab.elapsed[m]["CIFAR-100"] == 244.5
    assert all(0.0 <= a <= 1.0 for row in vtab.acc.values() for a in row.values())


def test_vtab_diverged_counts_match_readme(vtab: GroundTruth) -> None:
    assert len(vtab.diverged) == 477
    per_task = {t: sum(1 for _, tt in vtab.diverged if tt == t) for t in vtab.tasks}
    assert per_task["SVHN"] == 72
    assert per_task["Retinopathy"] == 75
    assert per_task["Caltech101"] == 8
    assert per_task["Clevr-Dist"] == 32
    clean = vtab.without_diverged()
    assert clean.n_cells == 4997 - 477
    assert not clean.diverged
    assert all(not clean.has(m, t) for m, t in vtab.diverged)


def test_unknown_table() -> None:
    with pytest.raises(KeyError):
        load_table("nope")


def _toy() -> GroundTruth:
    return GroundTruth.from_cells(
        [
            ("a", "t1", 0.9, 10.0),
            ("a", "t2", 0.5),
            ("a", "t3", 0.7),
            ("b", "t1", 0.6),
            ("b", "t2", 0.8),
            ("c", "t1", 0.2),
        ],
        name="toy",
    )


def test_meta_scores_leave_one_task_out() -> None:
    tb = _toy()
    assert tb.tasks == ("t1", "t2", "t3")
    assert tb.models == ("a", "b", "c")
    assert tb.elapsed["a"]["t1"] == 10.0 and math.isnan(tb.elapsed["b"]["t1"])
    s = meta_scores(tb, ["a", "b", "c"], exclude_task="t1")
    assert s["a"] == pytest.approx((0.5 + 0.7) / 2)  # t1's 0.9 is not used
    assert s["b"] == pytest.approx(0.8)
    assert s["c"] is None  # its only cell is the excluded task
    s = meta_scores(tb, ["a", "b"], exclude_task="t3")
    assert s["a"] == pytest.approx((0.9 + 0.5) / 2)
    assert s["b"] == pytest.approx((0.6 + 0.8) / 2)
    # no exclusion: the plain mean; restricted to a task subset
    assert meta_scores(tb, ["a"], None)["a"] == pytest.approx(0.7)
    assert meta_scores(tb, ["a", "b"], "t2", tasks=["t1", "t2"]) == pytest.approx(
        {"a": 0.9, "b": 0.6}
    )
    # a model not in the table has no cell
    assert meta_scores(tb, ["zzz"], "t1") == {"zzz": None}


def test_diverged_flags_on_hand_made_table() -> None:
    cells = [
        # t1: 0.1 three times (mode) -> flagged; 0.1000000004 equals it at 6 decimals
        ("a", "t1", 0.1),
        ("b", "t1", 0.1),
        ("c", "t1", 0.1000000004),
        ("d", "t1", 0.8),
        ("e", "t1", 0.8),
        # t2: all distinct -> nothing flagged
        ("a", "t2", 0.3),
        ("b", "t2", 0.4),
        ("c", "t2", 0.5),
        # t3: tie between two most frequent values -> both flagged
        ("a", "t3", 0.25),
        ("b", "t3", 0.25),
        ("c", "t3", 0.6),
        ("d", "t3", 0.6),
        ("e", "t3", 0.9),
    ]
    tb = GroundTruth.from_cells(cells)
    assert tb.diverged == {
        ("a", "t1"),
        ("b", "t1"),
        ("c", "t1"),
        ("a", "t3"),
        ("b", "t3"),
        ("c", "t3"),
        ("d", "t3"),
    }
    assert tb.is_diverged("a", "t1") and not tb.is_diverged("d", "t1")
    clean = tb.without_diverged()
    assert clean.task_accuracies("t1") == {"d": 0.8, "e": 0.8}
    assert clean.task_accuracies("t3") == {"e": 0.9}
    assert clean.task_accuracies("t2") == tb.task_accuracies("t2")


def test_bad_cells_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        GroundTruth.from_cells([("a", "t", 0.5), ("a", "t", 0.6)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GroundTruth.from_cells([Cell("a", "t", 85.0)])


def test_load_table_from_path(tmp_path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("model,task,test_accuracy\nm1,x,0.5\nm2,x,0.7\nm1,y,0.2\n")
    tb = load_table(path=p)
    assert tb.n_cells == 3 and tb.tasks == ("x", "y")
    assert tb.task_accuracies("x") == {"m1": 0.5, "m2": 0.7}
    assert not tb.diverged


# ------------------------------------------------------------------------------ study metrics


def test_random_baseline_is_renggli_eq1() -> None:
    """Accuracies 0.5, 0.7, 0.9, one pick: E[max] = 0.7, so Δ(ORACLE, E[max]) = 0.2/0.3; the
    mean of the picks' relative regrets, (0.8 + 2/3 + 0)/3, is kept under its own name."""
    from benchmarks.bench_vtab_regret import random_draws, random_exact

    acc = {"a": 0.5, "b": 0.7, "c": 0.9}
    exact = random_exact(acc)
    assert exact["regret"][0] == pytest.approx(0.2)
    assert exact["relative_regret"][0] == pytest.approx(2 / 3)
    assert exact["expected_relative_regret"][0] == pytest.approx((0.8 + 2 / 3) / 3)
    assert exact["relative_regret"][1] == pytest.approx(0.4)  # E[max] of two = 2.5/3
    draws = random_draws(acc, np.random.default_rng(0), 2000)
    assert draws["relative_regret"][0] == pytest.approx(2 / 3, abs=0.02)
    assert draws["expected_relative_regret"][0] == pytest.approx(0.4889, abs=0.02)


def test_e2e_tau_uses_raw_scores_with_ties() -> None:
    """Scores a = b = 1 > c = 0 against accuracies 0.9, 0.5, 0.7. By hand (Vigna's additive
    hyperbolic τ, estimators.md §1.1): ranked by (x, y) the positions are a 0, b 1, c 2 and
    τ = (4/3 − 5/6)/sqrt(13/6 · 11/3); ranked by (y, x) a 0, c 1, b 2 and τ = 2/sqrt(77); the
    mean of the two. The ranking's tie-break (a before b) must not enter."""
    from benchmarks.bench_e2e_regret import has_raw_scores, strategy_metrics

    acc = {"a": 0.9, "b": 0.5, "c": 0.7}
    scores = {"a": 1.0, "b": 1.0, "c": 0.0}
    expected = (0.5 / math.sqrt(13 / 6 * 11 / 3) + 2 / math.sqrt(77)) / 2
    m = strategy_metrics(acc, ["a", "b", "c"], scores)
    assert m["tau_from"] == "scores"
    assert m["weighted_tau"] == pytest.approx(expected, rel=1e-12)
    assert strategy_metrics(acc, ["b", "a", "c"], scores)["weighted_tau"] == m["weighted_tau"]
    ranked = strategy_metrics(acc, ["a", "b", "c"])  # no scores: n − position
    assert ranked["tau_from"] == "rank" and ranked["weighted_tau"] != pytest.approx(expected)
    partial = strategy_metrics(acc, ["a", "b", "c"], {"a": 1.0, "b": None, "c": 0.0})
    assert partial["tau_from"] == "rank"  # a model without a score: rank positions
    assert has_raw_scores("logme") and has_raw_scores("random(0)")
    assert not has_raw_scores("hybrid(linear)") and not has_raw_scores("agnostic")
