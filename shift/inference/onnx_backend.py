"""The "onnxruntime" inference backend: one ONNX model loaded in ONNX Runtime, turning uint8
image batches into embeddings (+ logits).

onnxruntime is imported inside the functions here, never at module import time, so that the CLI
starts without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import ModelFileError
from shift.inference.embedder import DEFAULT_BACKEND, register_backend
from shift.inference.preprocess import preprocess
from shift.records import ModelRecord

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
CPU_ARENA_ENV = "SHIFT_ORT_CPU_ARENA"  # "1": ONNX Runtime's CPU memory arena (off by default)
MEM_PATTERN_ENV = "SHIFT_ORT_MEM_PATTERN"  # "0": no memory-pattern planning (on by default)

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def requested_providers(device: str) -> list[str]:
    """The provider list to ask ONNX Runtime for: "auto" adds CUDA when the installed runtime
    offers it, "cuda" always asks for it (falling back to CPU), "cpu" is CPU only."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return [CPU]
    available = ort.get_available_providers()
    if device == "cuda" or CUDA in available:
        # never pass a provider the runtime lacks: ORT would warn on its own
        return [CUDA, CPU] if CUDA in available else [CPU]
    return [CPU]


def _flag(env: str, default: bool) -> bool:
    raw = os.environ.get(env, "").strip().lower()
    return default if not raw else raw not in ("0", "false", "no", "off")


def session_options() -> Any:
    """ONNX Runtime session options that bound a session's memory: no CPU memory arena (the
    arena keeps the peak of every batch size it has seen and never gives it back; without it,
    memory is freed after each run), memory patterns as ``$SHIFT_ORT_MEM_PATTERN`` says
    (default on). ``$SHIFT_ORT_CPU_ARENA=1`` brings the arena back."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    opts.enable_cpu_mem_arena = _flag(CPU_ARENA_ENV, False)
    opts.enable_mem_pattern = _flag(MEM_PATTERN_ENV, True)
    return opts


def flatten_output(out: Any, n: int) -> np.ndarray:
    """A model output as ``(n, features)`` (spatial outputs flattened); shared with the torch
    backend."""
    arr = np.asarray(out)
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim == 1 and n:
        arr = arr.reshape(n, -1)
    return arr


@register_backend(DEFAULT_BACKEND)
class OnnxEmbedder:
    """An ONNX Runtime session for ``record``'s model file at ``model_path`` (an ``Embedder``).

    ``device`` (the request): "auto" (CUDA when the runtime has it, else CPU), "cpu", or "cuda"
    (asks for CUDA and falls back to CPU with a warning). ``providers`` is
    ``session.get_providers()`` -- the providers actually in use -- ``on_gpu`` says whether CUDA
    is among them and the ``device`` property is then "cuda", else "cpu".
    Raises ``ModelFileError`` naming the model when the file cannot be loaded or does not have
    the inputs/outputs the record names. A graph exported with a fixed batch size (often 1) is
    run that many images at a time. ``cancel()`` (from another thread) stops a running
    ``embed``, which then raises ``ModelFileError``.
    """

    def __init__(
        self,
        model_path: str,
        record: ModelRecord,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = str(model_path)
        self.record = record
        self.name = record.name
        requested = requested_providers(device)
        want_gpu = device == "cuda" or CUDA in requested
        try:
            if not Path(self.model_path).is_file():
                raise FileNotFoundError("no such file")
            opts = session_options()
            if intra_op_threads is not None:
                opts.intra_op_num_threads = max(1, int(intra_op_threads))
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(self.model_path, opts, providers=requested)
        except Exception as e:
            raise ModelFileError(
                f"model {record.name!r}: cannot load {self.model_path}: {_reason(e)}"
            ) from e

        self.providers: list[str] = list(self.session.get_providers())
        self.on_gpu = CUDA in self.providers
        if want_gpu and not self.on_gpu:
            log.warning(
                "model %r: GPU (CUDAExecutionProvider) requested but not obtained; "
                "fell back to CPU (providers in use: %s)",
                record.name,
                self.providers,
            )
        self._check_signature()

    @property
    def device(self) -> str:
        """What the session actually runs on: "cuda" or "cpu"."""
        return "cuda" if self.on_gpu else "cpu"

    def _check_signature(self) -> None:
        rec = self.record
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if rec.input_name not in inputs:
            raise ModelFileError(
                f"model {rec.name!r}: {self.model_path} has no input {rec.input_name!r} "
                f"(inputs: {sorted(inputs)})"
            )
        for out in (rec.output, rec.head_output):
            if out is not None and out not in outputs:
                raise ModelFileError(
                    f"model {rec.name!r}: {self.model_path} has no output {out!r} "
                    f"(outputs: {sorted(outputs)})"
                )
        self._input_dtype = _NP_TYPES.get(inputs[rec.input_name].type, np.float32)
        self._outputs = [rec.output] + ([rec.head_output] if rec.head_output else [])
        batch = (inputs[rec.input_name].shape or [None])[0]
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._run_options: Any = None

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 NHWC batch -> (embeddings float32 (N, record.dim), logits float32
        (N, record.head_classes) or None when the record has no head).

        Outputs with more than 2 dims (N x D x 1 x 1) are flattened to (N, D). Raises
        ``ModelFileError`` naming the model on a runtime failure, a shape that does not match the
        record, or non-finite values.
        """
        rec = self.record
        x = preprocess(images, rec.input)
        n = x.shape[0]
        if n == 0:
            emb = np.zeros((0, rec.dim or 0), np.float32)
            logits = np.zeros((0, rec.head_classes or 0), np.float32) if rec.head_output else None
            return emb, logits
        if x.dtype != self._input_dtype:
            x = x.astype(self._input_dtype)
        import onnxruntime as ort

        self._run_options = run_options = ort.RunOptions()
        run_options.log_severity_level = 4  # a failure is raised below; a cancel is not an error
        try:
            outs = self._run(x, run_options)
        except Exception as e:
            raise ModelFileError(f"model {rec.name!r}: inference failed: {_reason(e)}") from e
        finally:
            self._run_options = None

        emb = self._check(flatten_output(outs[0], n), n, rec.dim, rec.output)
        logits = None
        if rec.head_output is not None:
            logits = self._check(flatten_output(outs[1], n), n, rec.head_classes, rec.head_output)
        return emb, logits

    def _run(self, x: np.ndarray, run_options: Any) -> list[np.ndarray]:
        """The session's outputs for ``x``; a fixed-batch graph gets ``x`` in slices of its
        batch size (the last one zero-padded, the padding's rows dropped)."""
        feed = self.record.input_name
        k = self._fixed_batch
        if k is None or len(x) == k:
            return self.session.run(self._outputs, {feed: x}, run_options)
        parts = []
        for i in range(0, len(x), k):
            chunk = x[i : i + k]
            m = len(chunk)
            if m < k:
                pad = np.zeros((k - m, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs = self.session.run(self._outputs, {feed: chunk}, run_options)
            parts.append([np.asarray(o)[:m] for o in outs])
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self._outputs))]

    def cancel(self) -> None:
        """Stop the ``embed`` running in another thread, if any (ONNX Runtime's terminate)."""
        run_options = self._run_options
        if run_options is not None:
            run_options.terminate = True

    def _check(self, arr: np.ndarray, n: int, dim: int | None, output: str) -> np.ndarray:
        return check_output(self.record.name, arr, n, dim, output)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.name!r}, providers={self.providers})"


def check_output(name: str, arr: np.ndarray, n: int, dim: int | None, output: str) -> np.ndarray:
    """Model ``name``'s output ``output`` as contiguous float32, checked to be ``(n, dim)`` (any
    width for ``dim=None``) and finite; ``ModelFileError`` otherwise. Shared by the backends."""
    if arr.ndim != 2 or arr.shape[0] != n or (dim is not None and arr.shape[1] != dim):
        want = f"({n}, {dim})" if dim is not None else f"({n}, D)"
        raise ModelFileError(
            f"model {name!r}: output {output!r} has shape {tuple(arr.shape)}, expected {want}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ModelFileError(
            f"model {name!r}: output {output!r} has NaN/Inf values in {bad} of {n} rows"
        )
    return arr


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."
