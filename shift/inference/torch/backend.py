"""The "torch" inference backend: a registered ONNX model converted to torch (onnx2torch, see
``convert``) and run by torch, on CUDA when there is one.

On CUDA each uint8 NHWC batch is copied into a pinned host buffer, sent to the GPU and
normalised there (``preprocess``'s ``normalisation``), then run in channels-last under bf16
autocast (or fp32). Images of another size than the model's are resized on the host first, by
``preprocess.resize_images`` (PIL), so both backends see the same pixels. On CPU it runs in fp32
(bf16 on request). Results come back as float32 numpy arrays.

Every torch call of an embedder runs on one thread it owns, whichever thread calls ``embed``
(the executors run each batch on a fresh thread to time it out): with
``cudnn.benchmark`` on, cuDNN's execution-plan cache is per thread (pytorch/pytorch#191744), so
a fresh thread per batch autotuned every convolution again, every batch; that made shift's end to
end path on an H100 run at 53-208 img/s against 13,000-18,000 img/s for ``embed`` alone.

Before a (model, backend) pair is first used, the converted graph is checked against ONNX
Runtime (``check``); a model whose conversion disagrees is refused with ``BackendError``.
An agreement, and a graph that had to be lowered to opset 17, are kept in the home's torch cache
(``cache``), so a model file in a home is lowered and checked once, not once per process.
torch, onnx and onnx2torch are imported when an embedder is built, never at module import.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from shift.errors import BackendError, ModelFileError, ShiftError
from shift.inference.embedder import register_backend
from shift.inference.onnx_backend import check_output, flatten_output
from shift.inference.preprocess import check_batch, normalisation, resize_images
from shift.inference.torch.convert import convert_onnx, first_line, import_onnx2torch
from shift.records import ModelRecord

log = logging.getLogger(__name__)

BACKEND = "torch"
PRECISIONS = ("fp32", "bf16")
#: the precision used when none is passed: "fp32" or "bf16" (default: bf16 on CUDA, fp32 on CPU)
PRECISION_ENV = "SHIFT_TORCH_PRECISION"


def pick_device(device: str) -> str:
    """The device to run on, "cuda" or "cpu", for the request ``device`` ("auto", "cpu",
    "cuda"): CUDA when asked for (or "auto") and torch sees a GPU; "cuda" without one falls
    back to CPU with a warning."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ShiftError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        log.warning("torch backend: CUDA requested but torch sees no GPU; running on CPU")
    return "cpu"


def pick_precision(precision: str | None, device: str) -> str:
    """``precision``, else ``$SHIFT_TORCH_PRECISION``, else "bf16" on CUDA and "fp32" on CPU."""
    chosen = precision or os.environ.get(PRECISION_ENV) or ("bf16" if device == "cuda" else "fp32")
    if chosen not in PRECISIONS:
        raise ShiftError(
            f"torch backend: unknown precision {chosen!r}",
            hint=f"use one of {', '.join(PRECISIONS)} (argument or ${PRECISION_ENV})",
        )
    return chosen


class _Worker:
    """One daemon thread that runs the calls handed to it, in order (a daemon, so a call that
    never returns, abandoned after the inference timeout, cannot keep the process alive)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        thread = threading.Thread(target=self._loop, args=(self._calls,), name=name, daemon=True)
        thread.start()
        self.ident = thread.ident

    @staticmethod
    def _loop(calls: queue.SimpleQueue[Any]) -> None:
        while (item := calls.get()) is not None:
            fn, args, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # handed to the caller
                    fut.set_exception(e)
            del item, fn, args, fut  # hold nothing of the embedder between calls

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._calls.put((fn, args, fut))
        return fut

    def stop(self) -> None:
        self._calls.put(None)


@register_backend(BACKEND)
class TorchEmbedder:
    """``record``'s ONNX model at ``model_path``, converted to torch (an ``Embedder``).

    ``device``: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda" (falls back to CPU with a
    warning). ``precision``: "fp32" or "bf16" (autocast), see ``pick_precision``.
    ``intra_op_threads`` sets torch's CPU threads (process-wide). ``providers`` is what runs,
    e.g. ``["torch-cuda-bf16"]``. ``verify=False`` skips the check against ONNX Runtime (the
    check itself uses it). ``timings`` holds the seconds of each step of loading ("convert",
    "device", "check") and ``verdict`` where the check's verdict came from ("checked",
    "memory", "disk", or "" unchecked). Raises ``ModelFileError`` for a missing file and
    ``BackendError`` when onnx2torch is missing, the graph cannot be converted or it disagrees
    with ONNX Runtime.
    """

    def __init__(
        self,
        model_path: str,
        record: ModelRecord,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
        precision: str | None = None,
        verify: bool = True,
    ) -> None:
        import_onnx2torch()  # the missing-package error before anything else
        import torch

        self.model_path, self.record, self.name = str(model_path), record, record.name
        if not Path(self.model_path).is_file():
            raise ModelFileError(f"model {record.name!r}: cannot load {model_path}: no such file")
        self._device = pick_device(device)
        self.precision = pick_precision(precision, self._device)
        self.providers = [f"torch-{self._device}-{self.precision}"]
        if intra_op_threads is not None and self._device == "cpu":
            torch.set_num_threads(max(1, int(intra_op_threads)))
        t0 = time.perf_counter()
        converted = convert_onnx(self.model_path, record)
        t1 = time.perf_counter()
        self.route = converted.route
        self.model_sha256 = converted.sha256  # the file's, when the disk cache is in use
        self.graph_cached = converted.cached
        self._channels_last = self._device == "cuda" and record.input.layout == "NCHW"
        module = converted.module.to(self._device)
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest kernels
        self.module = module
        self._staging: Any = None  # pinned host buffer (CUDA)
        mean, std = normalisation(record.input)
        # x = (pixel / 255 - mean) / std  ==  pixel * scale + shift, one pass in place
        scale, shift = 1.0 / (255.0 * std), -mean / std
        self._scale = torch.from_numpy(scale).to(self._device).view(1, -1, 1, 1)
        self._shift = torch.from_numpy(shift).to(self._device).view(1, -1, 1, 1)
        self._worker = _Worker(f"shift-torch-{record.name}")
        self._worker_id = self._worker.ident
        weakref.finalize(self, self._worker.stop)  # the thread ends with the embedder
        t2 = time.perf_counter()
        self.timings = {"convert": t1 - t0, "device": t2 - t1, "check": 0.0}
        self.verdict = ""
        if verify:
            from shift.inference.torch.check import check_against_onnxruntime

            self.verdict = check_against_onnxruntime(self, BACKEND)
            self.timings["check"] = time.perf_counter() - t2

    @property
    def device(self) -> str:
        """What the model runs on: "cuda" or "cpu"."""
        return self._device

    def _on_worker(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on this embedder's own thread (see the module doc), its result or its
        exception returned here."""
        if threading.get_ident() == self._worker_id:
            return fn(*args)
        return self._worker.submit(fn, *args).result()

    def close(self) -> None:
        """Let the embedder's thread end (it also ends when the embedder is collected)."""
        self._worker.stop()

    # ---- input --------------------------------------------------------------------------------
    def _upload(self, arr: np.ndarray) -> Any:
        """The uint8 batch as a tensor on the device (through a pinned buffer on CUDA)."""
        import torch

        host = torch.from_numpy(np.ascontiguousarray(arr))
        if self._device == "cpu":
            return host
        if self._staging is None or self._staging.numel() < host.numel():
            self._staging = torch.empty(host.numel(), dtype=torch.uint8, pin_memory=True)
        staged = self._staging[: host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self._device, non_blocking=True)

    def model_input(self, images: np.ndarray) -> Any:
        """The float32 model input for a uint8 batch, on the device: what ``preprocess`` makes,
        computed by torch (crop and bilinear resize only when the size differs, as there).
        Images of another size are resized on the host first, by ``resize_images`` (PIL, as
        for ONNX Runtime: the same pixels, so the same embeddings). Pixels become floats once,
        on the device, in the layout the model reads (channels-last on CUDA, NCHW on CPU), and
        are normalised in place as ``pixel * scale + shift``."""
        import torch

        spec = self.record.input
        arr = resize_images(check_batch(images), spec)
        c = arr.shape[3]
        u8 = self._upload(arr).permute(0, 3, 1, 2)  # N C H W view of the NHWC batch, 0..255
        if self._channels_last or spec.layout == "NHWC":
            x = u8.float()  # keeps the NHWC memory order: channels-last, one pass
        else:  # NCHW on CPU: convert and transpose in one copy
            x = torch.empty(u8.shape, dtype=torch.float32, device=u8.device).copy_(u8)
        if c != spec.channels:
            x = x.repeat(1, 3, 1, 1) if spec.channels == 3 else x.mean(dim=1, keepdim=True)
        x = x.mul_(self._scale).add_(self._shift)
        if spec.color == "BGR" and spec.channels == 3:
            x = x.flip(1)
        if spec.layout == "NHWC":
            return x.permute(0, 2, 3, 1).contiguous()
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    # ---- running ------------------------------------------------------------------------------
    def forward(self, x: Any, precision: str | None = None) -> list[Any]:
        """The graph's outputs for the model input ``x`` (embedding, then logits if any), in
        ``precision`` (default: this embedder's); run on the embedder's thread."""
        return self._on_worker(self._forward, x, precision)

    def _forward(self, x: Any, precision: str | None) -> list[Any]:
        import torch

        bf16 = (precision or self.precision) == "bf16"
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self._device, dtype=torch.bfloat16, enabled=bf16),
        ):
            out = self.module(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def run(self, images: np.ndarray, precision: str | None = None) -> tuple[Any, ...]:
        """uint8 batch -> float32 numpy outputs (flattened to 2-d), unchecked; on the
        embedder's thread."""
        return self._on_worker(self._run, images, precision)

    def _run(self, images: np.ndarray, precision: str | None) -> tuple[Any, ...]:
        try:
            outs = self._forward(self.model_input(images), precision)
            return tuple(flatten_output(o.float().cpu().numpy(), len(o)) for o in outs)
        except ShiftError:
            raise
        except ValueError as e:  # check_batch: not a uint8 NHWC batch
            raise ModelFileError(f"model {self.name!r}: {e}") from e
        except Exception as e:
            raise BackendError(
                f"model {self.name!r}: torch inference failed: {first_line(e)}",
                hint="use --backend onnxruntime for this model",
            ) from e

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 NHWC batch -> (embeddings float32 (N, record.dim), logits float32
        (N, record.head_classes) or None). Raises ``ModelFileError`` for a wrong shape or
        non-finite values and ``BackendError`` when torch fails."""
        rec = self.record
        n = len(images)
        if n == 0:
            emb = np.zeros((0, rec.dim or 0), np.float32)
            logits = np.zeros((0, rec.head_classes or 0), np.float32) if rec.head_output else None
            return emb, logits
        outs = self.run(images)
        emb = self._check(outs[0], n, rec.dim, rec.output)
        logits = None
        if rec.head_output is not None:
            if len(outs) < 2:
                raise BackendError(f"model {rec.name!r}: the converted graph has no logits")
            logits = self._check(outs[1], n, rec.head_classes, rec.head_output)
        return emb, logits

    def _check(self, arr: np.ndarray, n: int, dim: int | None, output: str) -> np.ndarray:
        """The same shape and NaN/Inf checks as ONNX Runtime's."""
        return check_output(self.record.name, arr, n, dim, output)

    def __repr__(self) -> str:
        return f"TorchEmbedder({self.name!r}, providers={self.providers}, route={self.route!r})"
