"""Fine-tuning a user-registered ONNX model (no catalog entry): its graph converted to torch by
onnx2torch (checked against ONNX Runtime first), a new head on its embedding, trained end to end
on the CPU and cached like a catalog model's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx2torch")

import torch  # noqa: E402
from onnx_factory import build_tiny_cnn
from torch import nn  # noqa: E402

from shift.catalog.onnx_import import register_onnx  # noqa: E402
from shift.errors import BackendError, ShiftError  # noqa: E402
from shift.inference.onnx_backend import OnnxEmbedder  # noqa: E402
from shift.inference.preprocess import preprocess  # noqa: E402
from shift.inference.torch import backend as torch_backend  # noqa: E402
from shift.inference.torch import check as torch_check  # noqa: E402
from shift.records import ModelRecord, Samples  # noqa: E402
from shift.store.registry import Registry  # noqa: E402
from shift.store.tasks import TaskStore  # noqa: E402
from shift.tools import finetune_modules  # noqa: E402
from shift.tools.finetune import FinetuneProtocol, finetune  # noqa: E402

FAST = FinetuneProtocol(head_steps=20, epochs=1)


@pytest.fixture
def home(tmp_path: Path) -> Any:
    reg = Registry.open(tmp_path / "home")
    assert not reg.home.catalog_path.exists()  # no catalog at all: a user's own model
    path = build_tiny_cnn(tmp_path / "mine.onnx", seed=3, size=16).path
    overrides = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    rec = register_onnx(reg, path, "my-cnn", input_overrides=overrides)
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
    yield reg, rec
    reg.close()


def test_the_converted_module_is_the_registered_graph(home: Any) -> None:
    reg, rec = home
    module, info = finetune_modules.training_module(reg, rec)
    assert info["source"] == "onnx2torch" and info["trainable_params"] > 0
    imgs = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    with torch.inference_mode():
        emb, _ = module(torch.from_numpy(preprocess(imgs, rec.input)))
    want, _ = OnnxEmbedder(str(reg.model_file(rec)), rec, device="cpu").embed(imgs)
    np.testing.assert_allclose(emb.numpy(), want, rtol=1e-4, atol=1e-5)


def test_a_user_model_is_fine_tuned_end_to_end_and_cached(
    home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, rec = home
    before, _ = finetune_modules.training_module(reg, rec)
    trained: list[Any] = []
    real = finetune_modules.training_module

    def keep(*a: Any, **k: Any) -> Any:
        module, info = real(*a, **k)
        trained.append(module)
        return module, info

    monkeypatch.setattr("shift.tools.finetune.training_module", keep)
    res = finetune(reg, "toy", "my-cnn", FAST, device="cpu")
    assert not res.cached and res.accuracy >= 0.9  # separable toy task
    d = res.details
    assert d["source"] == "onnx2torch" and d["route"].startswith("opset")
    assert d["device"] == "cpu" and d["train_sample_steps"] > 0
    assert set(d["curves"]) == {repr(lr) for lr in FAST.lrs}
    # the backbone itself was trained (every parameter of the converted graph)
    (after,) = trained
    moved = [
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(after.parameters(), before.parameters(), strict=True)
    ]
    assert max(moved) > 0
    # cached like a catalog model's result: no conversion, no training
    monkeypatch.setattr(
        "shift.tools.finetune.training_module", lambda *a, **k: pytest.fail("not cached")
    )
    again = finetune(reg, "toy", "my-cnn", FAST, device="cpu")
    assert again.cached and again.accuracy == res.accuracy
    row = reg.db.execute("SELECT model_sha, protocol FROM finetune_results").fetchone()
    assert row[0] == rec.sha256 and "device" not in json.loads(row[1])  # CPU: the usual key
    monkeypatch.setattr("shift.tools.finetune.training_module", real)
    forced = finetune(reg, "toy", "my-cnn", FAST, force=True, device="cpu")
    assert not forced.cached and forced.accuracy == res.accuracy  # seeded, deterministic


def test_a_conversion_that_disagrees_is_never_fine_tuned(
    home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, _ = home
    real_convert = torch_backend.convert_onnx

    class Shuffled(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            emb, logits = self.inner(x)
            return emb.roll(1, dims=1), logits

    def broken(path: str, record: ModelRecord) -> Any:
        converted = real_convert(path, record)
        converted.module = Shuffled(converted.module)
        return converted

    torch_check.forget_verdicts()
    monkeypatch.setattr(torch_backend, "convert_onnx", broken)
    try:
        with pytest.raises(BackendError, match="disagrees with ONNX Runtime"):
            finetune(reg, "toy", "my-cnn", FAST, device="cpu")
    finally:
        torch_check.forget_verdicts()
    assert reg.db.execute("SELECT count(*) FROM finetune_results").fetchone()[0] == 0


def test_cli_fine_tunes_a_user_model(home: Any) -> None:
    from typer.testing import CliRunner

    from shift.cli import app

    reg, _ = home
    args = ["finetune", "toy", "--model", "my-cnn", "--epochs", "1", "--max-train", "20"]
    res = CliRunner().invoke(app, [*args, "--json", "--home", str(reg.home.registry_dir)])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    assert row["model"] == "my-cnn" and row["details"]["source"] == "onnx2torch"
    assert row["details"]["n_train"] == 20


def test_a_model_without_weights_is_refused_by_name(home: Any) -> None:
    reg, rec = home
    meta_only = rec.model_copy(update={"name": "no-weights"})
    if "weights" not in ModelRecord.model_fields:
        pytest.skip("this checkout has no metadata-only models")
    meta_only = meta_only.model_copy(update={"weights": "missing"})
    with pytest.raises(ShiftError, match="'no-weights' has no weights"):
        finetune_modules.training_module(reg, meta_only)
