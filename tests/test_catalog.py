"""The shipped catalog: every entry valid, ImageNet figures sourced, weights verified, and the ONNX
export matching torch on a fixed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shift.catalog import load_catalog
from shift.catalog.entries import SHIPPED_CATALOG
from shift.catalog.importer import build_module, check_input, export, import_catalog
from shift.errors import ShiftError
from shift.fsutil import sha256_file
from shift.store.registry import Registry

CATALOG = SHIPPED_CATALOG  # package data: shift/data/catalog.yaml


def test_every_entry_is_valid_and_sourced() -> None:
    entries = load_catalog(CATALOG)
    assert len(entries) >= 4
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    generalists = [e for e in entries if e.builder != "expert"]
    assert {e.name for e in generalists} >= {"efficientnet-lite0", "mobilenet-v2"}
    for e in generalists:
        assert e.imagenet_top1 is not None and 60 < e.imagenet_top1 < 90
        assert e.imagenet_source and len(e.imagenet_source) > 10
        assert e.weights is not None
        assert sha256_file(e.weights.path()) == e.weights.sha256
    for e in entries:
        assert e.license and e.upstream_dataset


def test_invalid_catalog_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(
        "models:\n  - name: x\n    builder: mobilenet_v2\n    family: f\n"
        "    input: {height: 224, width: 224}\n    imagenet_top1: 70\n"
        "    upstream_dataset: imagenet\n    source: s\n    license: l\n"
    )
    with pytest.raises(ShiftError, match="imagenet_top1 needs imagenet_source|weights"):
        load_catalog(bad)


@pytest.mark.slow  # ~6 s each: a real generalist exported to ONNX and run
@pytest.mark.parametrize("name", ["mobilenet-v2", "efficientnet-lite0"])
def test_export_matches_torch(tmp_path: Path, name: str) -> None:
    import onnxruntime as ort
    import torch

    entry = next(e for e in load_catalog(CATALOG) if e.name == name)
    module, _ = build_module(entry)
    path = tmp_path / f"{name}.onnx"
    diff = export(module, entry, path)
    assert diff < 1e-3
    x = check_input(entry, n=3) * 0.5
    with torch.inference_mode():
        emb, logits = (t.numpy() for t in module(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_emb, got_logits = sess.run(["embedding", "logits"], {"input": x})
    np.testing.assert_allclose(got_emb, emb, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(got_logits, logits, atol=1e-3, rtol=1e-3)
    assert emb.shape == (3, 1280) and logits.shape == (3, 1000)


def test_import_registers_with_provenance_and_is_idempotent(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as reg:
        first = import_catalog(reg, CATALOG, ["mobilenet-v2"], progress=False)
        assert [r.status for r in first] == ["imported"]
        rec = reg.get_model("mobilenet-v2")
        assert rec.imagenet_top1 == pytest.approx(71.878)
        assert "torchvision" in (rec.imagenet_source or "")
        assert rec.dim == 1280 and rec.head_classes == 1000
        assert 3_400_000 < rec.params < 3_600_000
        again = import_catalog(reg, CATALOG, ["mobilenet-v2"], progress=False)
        assert [r.status for r in again] == ["cached"]


def test_tampered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = next(e for e in load_catalog(CATALOG) if e.name == "mobilenet-v2")
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(type(entry.weights), "path", lambda self: fake)
    with pytest.raises(ShiftError, match="sha256"):
        build_module(entry)
