"""Hand-made registry records for tests that need rows, not real model files or data."""

from __future__ import annotations

from shift.records import InputSpec, ModelRecord, TaskRecord


def fake_sha(name: str) -> str:
    """A valid-looking, name-derived sha256 (64 hex digits)."""
    return (name.encode().hex() + "0" * 64)[:64]


def fake_model(name: str, **kw: object) -> ModelRecord:
    """A ModelRecord with placeholder file and sha256; ``kw`` overrides any field."""
    base: dict[str, object] = {
        "name": name,
        "path": f"/nowhere/{name}.onnx",
        "sha256": fake_sha(name),
        "params": 1_000_000,
        "dim": 512,
        "output": "embedding",
        "input_name": "input",
        "input": InputSpec(height=224, width=224),
    }
    base.update(kw)
    return ModelRecord(**base)


def fake_task(name: str) -> TaskRecord:
    """A TaskRecord with placeholder data (planning only needs the name to exist)."""
    return TaskRecord(
        name=name,
        content_hash=f"c-{name}",
        data_hash=f"d-{name}",
        kind="npz",
        source=f"/data/{name}.npz",
        num_samples=10,
        num_train=8,
        num_val=2,
        num_classes=2,
    )
