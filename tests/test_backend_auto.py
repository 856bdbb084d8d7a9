"""``--backend auto``: the order (ORT-CUDA, torch-CUDA, the faster CPU backend by a measurement),
the CPU verdict recorded per machine in the home, auto resolved before any cache key, and the
choice shown by EXPLAIN, the index report and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn
from typer.testing import CliRunner

from shift.catalog.onnx_import import register_onnx
from shift.cli import app
from shift.engine.engine import Engine, model_cache_key
from shift.errors import ShiftError
from shift.inference import backend_auto
from shift.inference.backend_auto import (
    CHOICE_FILE,
    BackendChoice,
    calibration_model,
    cpu_choice,
    resolve_backend,
)
from shift.inference.onnx_backend import OnnxEmbedder
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    """One real calibration on this machine, shared by the tests that need a verdict."""
    return backend_auto.calibrate()


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch, measured: dict[str, float]) -> dict[str, int]:
    """This CPU machine as it is (no CUDA), with the module's real measurement reused; counts
    the calibrations that would run."""
    calls = {"calibrate": 0}

    def calibrate() -> dict[str, float]:
        calls["calibrate"] += 1
        return dict(measured)

    monkeypatch.setattr(backend_auto, "ort_cuda", lambda: False)
    monkeypatch.setattr(backend_auto, "torch_cuda", lambda: False)
    monkeypatch.setattr(backend_auto, "calibrate", calibrate)
    return calls


def test_the_calibration_measures_both_backends_on_a_model_both_run(
    measured: dict[str, float], tmp_path: Path
) -> None:
    assert set(measured) == {"onnxruntime", "torch"}
    assert measured["onnxruntime"] > 0 and measured["torch"] > 0  # both ran here
    rec = calibration_model(tmp_path / "c.onnx")
    imgs = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    emb, logits = OnnxEmbedder(rec.path, rec, device="cpu").embed(imgs)
    assert emb.shape == (2, 64) and logits is None and np.isfinite(emb).all()


def test_a_named_backend_is_taken_as_it_is_and_an_unknown_one_is_refused() -> None:
    assert resolve_backend("onnxruntime") == BackendChoice(
        "onnxruntime", "onnxruntime", "asked for"
    )
    assert resolve_backend("torch").name == "torch"
    with pytest.raises(ShiftError, match="unknown inference backend 'tensorrt'") as err:
        resolve_backend("tensorrt")
    assert "auto" in (err.value.hint or "") and "onnxruntime" in (err.value.hint or "")


def test_the_order_ort_cuda_then_torch_cuda_then_the_cpu_measurement(
    monkeypatch: pytest.MonkeyPatch, no_gpu: dict[str, int], tmp_path: Path
) -> None:
    monkeypatch.setattr(backend_auto, "ort_cuda", lambda: True)
    monkeypatch.setattr(backend_auto, "torch_cuda", lambda: True)
    choice = resolve_backend("auto", tmp_path)
    assert choice.name == "onnxruntime" and "CUDAExecutionProvider" in choice.reason
    monkeypatch.setattr(backend_auto, "ort_cuda", lambda: False)
    choice = resolve_backend("auto", tmp_path)
    assert choice.name == "torch" and "CUDA" in choice.reason
    assert no_gpu["calibrate"] == 0 and not (tmp_path / CHOICE_FILE).exists()
    monkeypatch.setattr(backend_auto, "torch_cuda", lambda: False)
    choice = resolve_backend("auto", tmp_path)
    assert no_gpu["calibrate"] == 1 and choice.measured


def test_the_cpu_verdict_is_the_faster_measured_and_is_recorded_per_machine(
    monkeypatch: pytest.MonkeyPatch, no_gpu: dict[str, int], tmp_path: Path
) -> None:
    first = cpu_choice(tmp_path)
    faster = max(first.measured, key=lambda b: first.measured[b])
    assert first.name == faster and first.requested == "auto"
    assert "img/s" in first.reason and first.describe().startswith(f"{faster} (auto: ")
    recorded = json.loads((tmp_path / CHOICE_FILE).read_text())
    assert recorded[backend_auto.fingerprint()]["name"] == faster
    # the same home and machine: read back, never measured again (deterministic)
    for _ in range(3):
        assert cpu_choice(tmp_path) == first
    assert no_gpu["calibrate"] == 1
    # another machine sharing the home: measured once for it, the first entry kept
    monkeypatch.setattr(backend_auto, "fingerprint", lambda: "another machine")
    cpu_choice(tmp_path)
    assert no_gpu["calibrate"] == 2
    assert len(json.loads((tmp_path / CHOICE_FILE).read_text())) == 2


def test_a_tie_or_a_failed_calibration_keeps_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(backend_auto, "calibrate", lambda: {"onnxruntime": 0.0, "torch": 0.0})
    assert cpu_choice(tmp_path).name == "onnxruntime"


def test_a_backend_that_cannot_run_measures_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # `import onnx2torch` fails
    got = backend_auto.calibrate()
    assert got["torch"] == 0.0 and got["onnxruntime"] > 0


# ---- the engine and the CLI ------------------------------------------------------------------


def toy_home(path: Path) -> tuple[Registry, list[Any]]:
    reg = Registry.open(path)
    rec = register_onnx(reg, build_tiny_cnn(path.parent / "m0.onnx", seed=0).path, "m0")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    x = (rng.random((40, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    TaskStore(reg).add("toy", Samples(x, y, None, list("abcd"), []), kind="npz", source="gen")
    return reg, [rec]


def test_auto_is_resolved_before_any_key_and_recorded_with_the_index(
    no_gpu: dict[str, int], tmp_path: Path
) -> None:
    reg, recs = toy_home(tmp_path / "home")
    engine = Engine(reg, executor="inprocess", backend="auto", batch_size=16)
    concrete = engine.backend
    assert concrete in ("onnxruntime", "torch") and engine.backend_choice.requested == "auto"
    assert engine.score_key(recs[0]) == model_cache_key(recs[0], concrete)  # never "auto"
    status = engine.status("toy", recs, "knn")
    assert status["backend"].startswith(f"{concrete} (auto: faster on this CPU")
    engine.scores("toy", recs, "knn")
    report = engine.last_report
    assert report is not None and report.failed == {} and "auto" in report.backend
    idx = engine.index("toy", recs)["m0"]
    assert idx.meta.backend == concrete and reg.index_entries("toy")["m0"]["backend"] == concrete
    # the same backend named explicitly reuses what auto built (same index, same scores)
    named = Engine(reg, executor="inprocess", backend=concrete, batch_size=16)
    named.index("toy", recs)
    assert named.last_report is not None and named.last_report.reused == ["m0"]
    assert no_gpu["calibrate"] == 1
    reg.close()


def test_cli_index_and_explain_show_the_auto_decision(
    no_gpu: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import shift.cli.base

    monkeypatch.setattr(shift.cli.base, "out", Console(width=250))
    monkeypatch.delenv("SHIFT_HOME", raising=False)
    reg, _ = toy_home(tmp_path / "home")
    reg.close()
    runner = CliRunner()
    home = str(tmp_path / "home")
    res = runner.invoke(
        app, ["index", "toy", "--executor", "inprocess", "--backend", "auto", "--home", home]
    )
    assert res.exit_code == 0, res.output
    assert "(backend " in res.output and "auto: faster on this CPU" in res.output
    res = runner.invoke(
        app,
        ["explain", "SELECT top 1 FROM pool all WHERE task=toy", "--backend", "auto"]
        + ["--home", home],
    )
    assert res.exit_code == 0, res.output
    assert "inference backend:" in res.output and "auto:" in res.output
    res = runner.invoke(app, ["index", "toy", "--backend", "tensorrt", "--home", home])
    assert res.exit_code == 1 and "unknown inference backend 'tensorrt'" in res.output
    assert no_gpu["calibrate"] == 1  # the index run measured; explain read the record
