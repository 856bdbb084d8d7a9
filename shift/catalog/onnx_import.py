"""Register an ONNX file: read what the graph says, validate the rest, run it once, copy it into
the home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shift.catalog.onnx_inspect import check_runs, describe_onnx, image_input, pick_outputs
from shift.errors import ModelFileError, ShiftError
from shift.fsutil import sha256_file
from shift.records import InputSpec, ModelRecord
from shift.store.registry import Registry


def validation_message(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors()
    )


def register_onnx(
    registry: Registry,
    path: str | Path,
    name: str,
    *,
    output: str | None = None,
    head_output: str | None = None,
    input_size: int | None = None,
    input_overrides: dict[str, Any] | None = None,
    replace: bool = False,
    **meta: Any,
) -> ModelRecord:
    """Inspect ``path``, run it once (:func:`~shift.catalog.onnx_inspect.check_runs`: a model
    that cannot run is refused by name, with nothing written) and register it as ``name``.
    ``meta`` holds the ModelRecord fields the graph cannot tell (imagenet_top1, imagenet_source,
    family, upstream_dataset, tags, ...)."""
    info = describe_onnx(path)
    emb, head = pick_outputs(info, output, head_output)
    tensor, layout, channels, h, w = image_input(info, input_size)
    dim = emb.feature_size
    if dim is None:
        raise ModelFileError(
            f"{Path(path).name}: output {emb.name!r} has a dynamic size {list(emb.shape)}",
            hint="export the model with a fixed embedding size",
        )
    head_classes = head.feature_size if head else None
    spec_fields: dict[str, Any] = {"height": h, "width": w, "channels": channels, "layout": layout}
    if channels == 1:
        spec_fields.update(mean=(0.5,), std=(0.5,))
    spec_fields.update({k: v for k, v in (input_overrides or {}).items() if v is not None})
    try:
        record = ModelRecord(
            name=name,
            path=str(Path(path).resolve()),
            sha256=sha256_file(path),
            params=info.params,
            dim=dim,
            output=emb.name,
            head_output=head.name if head else None,
            head_classes=head_classes,
            input_name=tensor.name,
            input=InputSpec(**spec_fields),
            **{k: v for k, v in meta.items() if v is not None},
        )
    except ValidationError as e:
        raise ShiftError(f"model {name!r}: {validation_message(e)}") from None
    registry.require_writable()  # what add_model would refuse, refused before the run
    if not replace:
        registry.ensure_new("models", name)
    check_runs(path, record, info)
    old = registry.get_model(name) if replace and registry.has_model(name) else None
    new = registry.add_model(record, src_file=path, replace=replace)
    if old is not None and old.has_weights and old.sha256 != new.sha256:
        retire_weights(registry, old)
    return new


def retire_weights(registry: Registry, old: ModelRecord) -> None:
    """What ``old`` (a model's record before it was replaced by other weights) leaves behind,
    removed once the registry points at the new file: its ONNX file in the home's models folder
    and the scores cached under its weights, unless a registered model still has those weights.
    One write transaction; a crash before it leaves an orphan ``doctor --repair`` removes."""
    path = registry.model_file(old)
    with registry.transaction():
        used = registry.db.execute("SELECT 1 FROM models WHERE sha256 = ?", [old.sha256]).fetchone()
        if used:
            return
        # score keys are "<sha256>+<preprocessing and backend digest>"
        registry.db.execute(
            "DELETE FROM scores WHERE substr(model_sha, 1, ?) = ?",
            [len(old.sha256) + 1, old.sha256 + "+"],
        )
        if path.parent == registry.home.models_dir:  # never a file outside the home
            path.unlink(missing_ok=True)
