"""Catalog entry → torch module → ONNX file → registry, checked on the way: the weight file's
sha256 must match the catalog, and the ONNX outputs must match torch on a fixed input."""

from __future__ import annotations

import io
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shift.catalog.entries import CatalogEntry, catalog_path, load_catalog
from shift.errors import ShiftError
from shift.fsutil import sha256_file
from shift.records import InputSpec
from shift.store.registry import Registry

#: ONNX vs torch agreement required on the fixed check input (max abs difference)
EXPORT_TOLERANCE = 1e-3


@dataclass
class ImportResult:
    name: str
    status: str  # imported | cached | failed
    seconds: float = 0.0
    max_abs_diff: float | None = None
    detail: str = ""


def build_module(entry: CatalogEntry) -> tuple[Any, dict[str, Any]]:
    """The eval-mode torch module of ``entry`` and facts learned while building it."""
    if entry.builder == "expert":
        from shift.catalog.expert_cache import cached_expert
        from shift.catalog.experts import EXPERTS

        if entry.expert not in EXPERTS:
            raise ShiftError(f"{entry.name}: unknown expert recipe {entry.expert!r}")
        module, info = cached_expert(EXPERTS[entry.expert])
        return module.eval(), info
    from shift.catalog.architectures import build, load_weights

    assert entry.weights is not None
    path = entry.weights.path()
    if not path.is_file():
        raise ShiftError(f"{entry.name}: weight file {path} is missing")
    if sha256_file(path) != entry.weights.sha256:
        raise ShiftError(
            f"{entry.name}: {path} does not match the catalog's sha256",
            hint="reinstall the package; a tampered weight file is refused",
        )
    module = build(entry.builder, entry.variant)
    load_weights(module, str(path))
    return module.eval(), {}


def check_input(entry: ExportTarget, n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3, entry.input.height, entry.input.width)).astype(np.float32)


class ExportTarget(Protocol):
    """What an export needs to know of a model: its name (for messages) and input size."""

    name: str
    input: InputSpec


def export(module: Any, entry: ExportTarget, path: Path, opset: int | None = None) -> float:
    """Export with outputs ``embedding`` and ``logits`` (at ``opset``, else torch's default);
    return max |ONNX − torch| on a fixed input (raises if above ``EXPORT_TOLERANCE``)."""
    import onnxruntime as ort
    import torch

    x = check_input(entry)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(x[:1]),),
            str(path),
            input_names=["input"],
            output_names=["embedding", "logits"],
            dynamic_axes={k: {0: "batch"} for k in ("input", "embedding", "logits")},
            dynamo=False,
            opset_version=opset,  # None: torch's default
        )
    with torch.inference_mode():
        ref = [t.numpy() for t in module(torch.from_numpy(x))]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding", "logits"], {"input": x})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    if diff > EXPORT_TOLERANCE:
        raise ShiftError(f"{entry.name}: ONNX output differs from torch by {diff:.2e}")
    return diff


def import_catalog(
    registry: Registry,
    catalog: str | Path | None = None,
    names: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[ImportResult]:
    """Export and register every catalog entry (or ``names``). Already-registered entries are
    kept unless ``force``. A failing entry is reported and the others go on."""
    from shift.catalog.onnx_import import register_onnx

    entries = load_catalog(catalog_path(registry.home.catalog_path, catalog))
    if names:
        unknown = sorted(set(names) - {e.name for e in entries})
        if unknown:
            raise ShiftError(f"not in the catalog: {', '.join(unknown)}")
        entries = [e for e in entries if e.name in names]
    results = []
    from shift.catalog.expert_cache import warm
    from shift.catalog.experts import EXPERTS
    from shift.progress import progress_bar

    todo = [
        e for e in entries if e.expert in EXPERTS and (force or not _registered(registry, e.name))
    ]
    warm(
        [EXPERTS[e.expert] for e in todo if e.expert is not None]
    )  # in parallel: each trains on one thread

    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task("catalog", total=len(entries))
        for e in entries:
            bar.update(task, description=f"catalog: {e.name}")
            t0 = time.perf_counter()
            if not force and _registered(registry, e.name):
                results.append(ImportResult(e.name, "cached"))
                bar.advance(task)
                continue
            try:
                module, info = build_module(e)
                with tempfile.TemporaryDirectory() as d:
                    path = Path(d) / f"{e.name}.onnx"
                    diff = export(module, e, path)
                    register_onnx(
                        registry,
                        path,
                        e.name,
                        replace=True,
                        input_overrides=e.input.model_dump(),
                        family=e.family,
                        architecture=e.variant or (None if e.expert else e.builder),
                        imagenet_top1=e.imagenet_top1,
                        imagenet_source=e.imagenet_source,
                        upstream_dataset=e.upstream_dataset,
                        upstream_size=info.get("upstream_size", e.upstream_size),
                        source=e.source,
                        license=e.license,
                        tags=e.tags,
                    )
                results.append(
                    ImportResult(
                        e.name, "imported", time.perf_counter() - t0, diff, _describe(info)
                    )
                )
            except (ShiftError, OSError, RuntimeError, ValueError) as err:
                results.append(
                    ImportResult(
                        e.name, "failed", time.perf_counter() - t0, detail=str(err).splitlines()[0]
                    )
                )
            bar.advance(task)
    return results


def _registered(registry: Registry, name: str) -> bool:
    """Whether ``name`` is registered with its model file present (import keeps it)."""
    return registry.has_model(name) and registry.model_file(registry.get_model(name)).is_file()


def _describe(info: dict[str, Any]) -> str:
    if "train_accuracy" in info:
        how = (
            f"weights from the expert cache, trained in {info['trained_seconds']:.0f} s"
            if info.get("cached")
            else f"trained in {info.get('trained_seconds', info.get('seconds', 0)):.0f} s"
        )
        return f"{how} on {info['upstream_size']} samples, accuracy {info['train_accuracy']:.3f}"
    return ""
