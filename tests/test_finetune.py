"""shift.tools.finetune on a tiny home: a catalog entry whose torch module is a seeded TinyCNN
(built by a monkeypatched ``build_module``), registered as its ONNX export, and a 2-class
toy task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn, tiny_torch_model

import shift.tools.finetune as ft
from shift.errors import ShiftError
from shift.store.registry import Registry
from shift.tools import finetune_modules
from shift.tools.finetune import FinetuneProtocol, finetune

CATALOG = """\
models:
  - name: tiny-expert
    builder: expert
    expert: cnn-digits-expert
    family: tiny-cnn
    input: {height: 16, width: 16, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}
    upstream_dataset: test
    source: test
    license: MIT
    tags: [expert]
"""

FAST = FinetuneProtocol(head_steps=20, epochs=1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    from shift.catalog.entries import load_catalog
    from shift.catalog.importer import export
    from shift.catalog.onnx_import import register_onnx
    from shift.records import Samples
    from shift.store.tasks import TaskStore

    reg = Registry.open(tmp_path)
    reg.home.catalog_path.write_text(CATALOG)
    (entry,) = load_catalog(reg.home.catalog_path)
    builds: list[int] = []

    def fake_build(e):  # the catalog's torch module: seeded, (embedding, logits)
        builds.append(1)
        return tiny_torch_model(seed=0), {}

    monkeypatch.setattr("shift.catalog.importer.build_module", fake_build)
    monkeypatch.setattr(finetune_modules, "_BUILT", {})
    export(tiny_torch_model(seed=0), entry, tmp_path / "tiny.onnx")
    register_onnx(
        reg, tmp_path / "tiny.onnx", "tiny-expert", input_overrides=entry.input.model_dump()
    )
    other = build_tiny_cnn(tmp_path / "other.onnx", seed=3, size=16)
    register_onnx(reg, other.path, "not-in-catalog")

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    images = rng.integers(0, 90, (60, 16, 16, 3)).astype(np.uint8)
    images[labels == 1] += 150  # bright vs dark: separable
    splits = ["val" if i % 3 == 0 else "train" for i in range(60)]
    TaskStore(reg).add(
        "toy",
        Samples(images, labels, splits, ["dark", "bright"], [f"t{i}" for i in range(60)]),
        kind="generated",
        source="test",
    )
    yield {"reg": reg, "builds": builds}
    reg.close()


def test_finetune_accuracy_cache_and_protocol_key(home: dict, monkeypatch) -> None:
    reg = home["reg"]
    trained: list[int] = []
    real_train = ft._train

    def counting_train(*a, **k):
        trained.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(ft, "_train", counting_train)
    res = finetune(reg, "toy", "tiny-expert", FAST)
    assert 0.0 <= res.accuracy <= 1.0
    assert res.accuracy >= 0.9  # separable toy task
    assert not res.cached and res.epochs == 1 and len(trained) == 1
    assert set(res.details["curves"]) == {repr(lr) for lr in FinetuneProtocol().lrs}

    again = finetune(reg, "toy", "tiny-expert", FAST)  # cached: no training, no build
    assert again.cached and again.accuracy == res.accuracy and len(trained) == 1
    assert len(home["builds"]) == 1

    other = finetune(reg, "toy", "tiny-expert", FAST.model_copy(update={"lrs": (0.05,)}))
    assert not other.cached and len(trained) == 2
    assert len(home["builds"]) == 1  # the expert is rebuilt once per process
    n = reg.db.execute("SELECT count(*) FROM finetune_results").fetchone()[0]
    assert n == 2

    forced = finetune(reg, "toy", "tiny-expert", FAST, force=True)
    assert not forced.cached and forced.accuracy == res.accuracy  # seeded, deterministic
    assert reg.db.execute("SELECT count(*) FROM finetune_results").fetchone()[0] == 2
    assert FAST.key() == FAST.model_copy(update={"threads": 1}).key()


def test_a_non_catalog_model_needs_onnx2torch(home: dict, monkeypatch) -> None:
    """Outside the catalog a model is converted by onnx2torch (tests/test_finetune_any.py);
    without it, a named error with the install command."""
    import sys

    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # `import onnx2torch` fails
    with pytest.raises(ShiftError, match="needs onnx2torch") as e:
        finetune(home["reg"], "toy", "not-in-catalog", FAST)
    assert "pip install" in (e.value.hint or "")


def test_mismatched_onnx_is_refused(home: dict, monkeypatch) -> None:
    monkeypatch.setattr(
        "shift.catalog.importer.build_module", lambda e: (tiny_torch_model(seed=5), {})
    )
    with pytest.raises(ShiftError, match="does not match"):
        finetune(home["reg"], "toy", "tiny-expert", FAST)


def test_bench_metrics_use_shift_evaluation() -> None:
    """About the end-to-end regret study (benchmarks/bench_e2e_regret.py): its metrics are
    shift.tools.evaluation's regret, relative regret and weighted τ."""
    from benchmarks.bench_e2e_regret import strategy_metrics
    from shift.tools import evaluation as ev

    acc = {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.7}
    ranking = ["c", "b", "a", "d"]
    m = strategy_metrics(acc, ranking)
    for b in (1, 2, 3):
        assert m["regret"][str(b)] == pytest.approx(ev.regret_at(acc, ranking, b))
        assert m["relative_regret"][str(b)] == pytest.approx(ev.relative_regret_at(acc, ranking, b))
    assert m["relative_regret"]["3"] == 0.0
    scores = {name: float(len(ranking) - i) for i, name in enumerate(ranking)}
    assert m["weighted_tau"] == pytest.approx(ev.weighted_tau(scores, acc))


def test_cli_finetune_table_and_cache(home: dict) -> None:
    from typer.testing import CliRunner

    from shift.cli import app

    args = ["finetune", "toy", "--model", "tiny-expert", "--epochs", "1"]
    args += ["--home", str(home["reg"].home.registry_dir)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "tiny-expert" in first.output and "accuracy" in first.output  # plain text, piped
    again = CliRunner().invoke(app, [*args, "--json"])
    assert again.exit_code == 0 and '"cached": true' in again.output
    subset = CliRunner().invoke(app, [*args, "--max-train", "10", "--json"])
    assert subset.exit_code == 0, subset.output
    (row,) = json.loads(subset.output)
    assert row["details"]["n_train"] == 10 and row["protocol"]["max_train"] == 10
    assert not row["cached"]
    bad = CliRunner().invoke(app, ["finetune", "toy", "--model", "no-such-model", *args[4:]])
    assert bad.exit_code == 1 and "no-such-model" in bad.output


@pytest.fixture(scope="module")
def sharp_expert() -> dict:
    """A briefly trained MNIST expert (BatchNorm, AdamW + one-cycle: a sharp minimum) and 300
    digits it did not train on, 2/3 train and 1/3 val."""
    import torch

    from shift.catalog.experts import EXPERTS, preprocess, train_expert

    spec = EXPERTS["cnn-digits-expert"]
    module, _ = train_expert(spec, n=1200, epochs=3)
    data = spec.upstream()  # the full 4,000: the last 300 are outside the 1,200 trained on
    return {
        "module": module,
        "x": preprocess(data.images[-300:]),
        "y": torch.from_numpy(data.labels[-300:].astype(np.int64)),
        "is_train": np.arange(300) % 3 != 0,
    }


def _train_copy(sharp_expert: dict, protocol: FinetuneProtocol) -> dict:
    import copy

    import torch

    torch.manual_seed(0)
    d = sharp_expert
    return ft._train(copy.deepcopy(d["module"]), d["x"], d["y"], d["is_train"], 10, protocol)


@pytest.mark.slow  # ~17 s with the sharp_expert fixture (an MNIST expert trained for it)
def test_fine_tuning_never_falls_below_the_warmed_up_head(sharp_expert: dict) -> None:
    """The regression behind the clipping: in eval mode and without clipping, a few SGD steps at
    lr 0.01 took this expert from ~93 % to chance. Every epoch must stay near the linear probe it
    starts from, under the default protocol and at that lr."""
    d = _train_copy(sharp_expert, FinetuneProtocol(max_train=96, epochs=1, lrs=(0.01, 0.00625)))
    assert d["head_accuracy"] > 0.8
    for lr, curve in d["curves"].items():
        assert min(curve) >= d["head_accuracy"] - 0.1, (lr, curve, d["head_accuracy"])
    assert d["accuracy"] >= d["head_accuracy"]


@pytest.mark.slow  # needs the sharp_expert fixture (~11 s to train)
def test_epoch_zero_is_the_warmed_up_head(sharp_expert: dict) -> None:
    """When no fine-tuning epoch beats the warmed-up head (here: clipping switched off, so the
    runs diverge), the result is the head's accuracy at epoch 0, not the diverged runs'."""
    unclipped = FinetuneProtocol(max_train=96, epochs=1, lrs=(0.01,), clip_grad_norm=None)
    d = _train_copy(sharp_expert, unclipped)
    best_run = max(max(c) for c in d["curves"].values())
    assert best_run < d["head_accuracy"]  # the divergence this protocol option exists for
    assert d["accuracy"] == d["head_accuracy"] and d["best_epoch"] == 0


def test_bench_projects_finetune_cost_from_measured_per_sample_times() -> None:
    """About the end-to-end regret study (benchmarks/bench_e2e_regret.py): how it projects a
    fine-tuning run's cost from measured per-sample times."""
    from benchmarks.bench_e2e_regret import projected_finetune_seconds

    # 0.1 s per training sample (forward + backward), 0.1 s per forward: 5 evals of 10 samples
    row = {"train_seconds": 10.0, "train_sample_steps": 100, "eval_seconds": 5.0, "n_val": 10}
    got = projected_finetune_seconds(row, n_train=50, n_val=10, evals=5)
    assert got["default_full_split"] == pytest.approx(50 * 0.1 + 4 * 50 * 0.1 + 5 * 10 * 0.1)
    assert got["paper"] == pytest.approx(2 * 2500 * 512 * 0.1 + 50 * 0.1)


def test_bench_expected_random_is_the_mean_over_all_b_subsets() -> None:
    """About the end-to-end regret study (benchmarks/bench_e2e_regret.py): its random baseline
    and fine-tuning gain."""
    import itertools

    from benchmarks.bench_e2e_regret import expected_random, finetune_gain
    from shift.tools import evaluation as ev

    acc = {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.7}
    gt = {"t": {"models": {m: {"accuracy": a, "head_accuracy": a - 0.1} for m, a in acc.items()}}}
    got = expected_random(gt, ["t"])["summary"]
    assert got["mean_regret"] == pytest.approx({"1": 0.175, "2": 0.4 / 6, "3": 0.1 / 4})
    for b in (1, 2, 3):  # brute force over every B-subset
        subsets = list(itertools.combinations(acc, b))
        want = np.mean([ev.relative_regret_at(acc, list(s), b) for s in subsets])
        assert got["mean_expected_relative_regret"][str(b)] == pytest.approx(want)  # E[Δ]
        e_max = np.mean([max(acc[m] for m in s) for s in subsets])  # Renggli eq. 1
        assert got["mean_relative_regret"][str(b)] == pytest.approx(ev.relative_delta(0.9, e_max))
    gain = finetune_gain(gt, ["t"])
    assert gain["pairs"] == 4 and gain["improved"] == 4
    assert gain["mean_gain"] == pytest.approx(0.1)
