"""``--backend auto``: which inference backend runs here, decided once and named.

``resolve_backend(requested, home)`` turns a requested name into a concrete backend before any
cache key is computed (the backend is part of every index key and score key), so ``auto`` never
reaches the index or the score cache. The order:

1. ``onnxruntime`` when ONNX Runtime reports ``CUDAExecutionProvider`` (``onnxruntime-gpu``);
2. ``torch`` when torch sees a CUDA device and onnx2torch imports;
3. otherwise the faster of the two on this CPU, **measured**: ``calibrate`` times both backends
   on one fixed calibration model (``calibration_model``: a seeded 5-convolution network with a
   depthwise layer, 96 px, batch 32; each backend's default threads, the best of 3 batches after
   one warm-up; the torch backend also passes its first-use check against ONNX Runtime). A
   backend that cannot run here (torch or onnx2torch missing) is measured as 0.

The CPU verdict is written to ``<registry>/backend_auto.json`` under a fingerprint of the
machine and the runtime versions (host, CPU count, onnxruntime/torch/onnx2torch versions), so
within a home on one machine ``auto`` always resolves to the same backend (cached indexes are
reused); another machine, or an upgrade, is measured once again. A run of about 1-3 s, once.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import ShiftError
from shift.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

AUTO = "auto"
CHOICE_FILE = "backend_auto.json"
CALIBRATION_PX = 96
CALIBRATION_BATCH = 32
CALIBRATION_REPEATS = 3


@dataclass(frozen=True)
class BackendChoice:
    """What runs: ``name`` (a concrete backend) for the ``requested`` one, and why.
    ``measured``: img/s per backend of the CPU calibration, when one decided."""

    name: str
    requested: str
    reason: str
    measured: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for EXPLAIN and the index report, e.g. ``torch (auto: torch sees ...)``."""
        if self.requested == self.name:
            return self.name
        return f"{self.name} ({self.requested}: {self.reason})"


def ort_cuda() -> bool:
    """Whether ONNX Runtime here reports the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_cuda() -> bool:
    """Whether torch sees a CUDA device and onnx2torch imports (the torch backend can run)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from shift.inference.torch.convert import import_onnx2torch

        import_onnx2torch()
    except (ImportError, ShiftError):
        return False
    return True


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint() -> str:
    """This machine and its runtimes: host, CPU count, onnxruntime/torch/onnx2torch versions."""
    parts = [
        platform.node(),
        platform.machine(),
        f"{os.cpu_count()} cpus",
        *(f"{p} {_version(p)}" for p in ("onnxruntime", "torch", "onnx2torch")),
    ]
    return "; ".join(parts)


def calibration_model(path: Path) -> Any:
    """Write the calibration graph to ``path`` (opset 17; seeded weights): conv 3->16 s2, relu,
    depthwise 3x3, relu, conv 1x1 16->32, relu, conv 3x3 32->64 s2, relu, conv 3x3 64->64,
    global average pool, flatten -> "embedding" (batch, 64). Returns its ``ModelRecord``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from shift.fsutil import sha256_file
    from shift.records import InputSpec, ModelRecord

    rng = np.random.default_rng(0)
    convs = [  # (name, out, in/group, k, stride, group)
        ("c1", 16, 3, 3, 2, 1),
        ("dw", 16, 1, 3, 1, 16),
        ("pw", 32, 16, 1, 1, 1),
        ("c2", 64, 32, 3, 2, 1),
        ("c3", 64, 64, 3, 1, 1),
    ]
    inits, nodes, x = [], [], "input"
    for name, cout, cin, k, stride, group in convs:
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"{name}_w"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"),
        ]
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [f"{name}_y"],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"]))
        x = f"{name}_r"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
    ]
    px = CALIBRATION_PX
    graph = helper.make_graph(
        nodes,
        "shift_calibration",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, px, px])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 64])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return ModelRecord(
        name="shift-calibration",
        path=str(path),
        sha256=sha256_file(path),
        params=sum(int(np.prod(i.dims)) for i in inits),
        dim=64,
        output="embedding",
        input_name="input",
        input=InputSpec(height=px, width=px),
        source="shift backend calibration",
    )


def _rate(backend: str, path: str, rec: Any, images: np.ndarray) -> float:
    """img/s of ``backend`` on ``images`` (best of ``CALIBRATION_REPEATS`` after a warm-up);
    0.0 when the backend cannot run here."""
    from shift.inference.backends import make_embedder

    try:
        emb = make_embedder(backend, path, rec, device="cpu")
        emb.embed(images)  # warm-up
        best = float("inf")
        for _ in range(CALIBRATION_REPEATS):
            t = time.perf_counter()
            emb.embed(images)
            best = min(best, time.perf_counter() - t)
    except ShiftError as e:
        log.info("backend calibration: %s cannot run here: %s", backend, e.message)
        return 0.0
    finally:
        close = getattr(locals().get("emb"), "close", None)
        if callable(close):
            close()
    return round(len(images) / best, 1)


def calibrate() -> dict[str, float]:
    """img/s of "onnxruntime" and "torch" on the calibration model, on this CPU."""
    with tempfile.TemporaryDirectory(prefix="shift-calibration-") as tmp:
        path = Path(tmp) / "calibration.onnx"
        rec = calibration_model(path)
        px = CALIBRATION_PX
        images = np.random.default_rng(1).integers(
            0, 256, (CALIBRATION_BATCH, px, px, 3), dtype=np.uint8
        )
        return {b: _rate(b, str(path), rec, images) for b in ("onnxruntime", "torch")}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cpu_choice(home_dir: Path | None) -> BackendChoice:
    """The faster CPU backend, as recorded for this machine in ``home_dir`` (the home's
    registry folder), else measured now and recorded there (best effort: a read-only home is
    measured again next time)."""
    key = fingerprint()
    path = home_dir / CHOICE_FILE if home_dir is not None else None
    known = _read(path) if path is not None else {}
    hit = known.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("measured"), dict) and hit.get("name"):
        return BackendChoice(hit["name"], AUTO, hit.get("reason", ""), hit["measured"])
    measured = calibrate()
    name = max(("onnxruntime", "torch"), key=lambda b: (measured[b], b == "onnxruntime"))
    ips = ", ".join(f"{b} {v:,.0f} img/s" for b, v in measured.items())
    choice = BackendChoice(name, AUTO, f"faster on this CPU ({ips}, calibration model)", measured)
    log.info("backend auto: %s", choice.describe())
    if path is not None:
        known[key] = {**asdict(choice), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            atomic_write_bytes(path, json.dumps(known, indent=2).encode())
        except OSError as e:
            log.warning("backend auto: cannot record the choice in %s: %s", path, e)
    return choice


def resolve_backend(requested: str, home_dir: Path | None = None) -> BackendChoice:
    """``requested`` as a concrete backend: a registered name as it is; ``"auto"`` by the order
    in the module doc. An unknown name raises ``ShiftError`` naming the known ones."""
    from shift.inference.backends import backend_factory, known_backends

    if requested != AUTO:
        try:
            backend_factory(requested)
        except ShiftError as e:
            raise ShiftError(
                f"unknown inference backend {requested!r}",
                hint=f"use auto or one of: {', '.join(known_backends())}",
            ) from e
        return BackendChoice(requested, requested, "asked for")
    if ort_cuda():
        choice = BackendChoice(
            "onnxruntime", AUTO, "ONNX Runtime reports CUDAExecutionProvider (GPU)"
        )
    elif torch_cuda():
        choice = BackendChoice("torch", AUTO, "torch sees a CUDA device, onnx2torch imports")
    else:
        return cpu_choice(home_dir)
    log.info("backend auto: %s", choice.describe())
    return choice
