"""Where the 1-NN and linear-probe proxies compute: ``$SHIFT_SCORE_DEVICE`` = ``auto`` (default),
``cpu`` or ``cuda``.

* ``auto``: CUDA when torch is installed and sees a GPU, else the CPU paths below.
* ``cpu``: the faster CPU path of each proxy, chosen by measurement
  (``benchmarks/bench_scores_device.py``, 2-core box): the 1-NN/k-NN proxies in numpy
  (``CPU_KNN``), the linear probe in torch on the CPU (its only implementation), both exactly as
  before this module. At the realistic size (2,000 train × 500 val × D 1,280) numpy was as
  fast or faster: torch-CPU took 1.10× numpy's time for euclidean 1-NN, 0.99× for cosine and
  1.42× for k = 5 in the committed run (load ~3.7 on 2 cores), and 1.4× for 1-NN on a quieter box
  (35 vs 49 ms). torch-CPU led 1-NN at 1,000 × 250 × 512 (0.66-0.78×) and 8,000 × 2,000 × 2,048
  (0.76×), the latter mostly thread policy (torch takes the idle cores, numpy's BLAS both): at
  equal threads 0.92-0.94×. k > 1 stays faster in numpy (argpartition vs a full sort). Numpy also
  needs no torch; switching is this one constant.
* ``cuda``: torch on the GPU; without one, a warning and the CPU paths (as the torch backend's
  ``cuda`` does).

``auto`` and ``cpu`` never import torch for the kNN proxies unless a GPU may be present: torch is
imported only when it is installed *and* a GPU device node exists (``/dev/nvidiactl``,
``/proc/driver/nvidia`` or ``/dev/kfd``, and ``$CUDA_VISIBLE_DEVICES`` is not empty or ``-1``),
or when torch is already imported (then ``torch.cuda.is_available()`` decides).

**Cache keys.** The device is not part of a score's cache key (the proxy's ``params``), so the
default CPU path keeps its keys and its cached scores stay valid. The kNN proxies on a device
compute the same float64 distances with the same tie rule (distances within ``1e-9`` relative
are ties, smaller train index first), so their different float64 summation order (~1e-16
relative) could change a neighbour only where two distances differ by almost exactly that
tolerance: the same score (equal on every test and benchmark problem). For k > 1 the numpy path
now applies the same tolerance and orders rows tied at the k-th place by index (before, any tied
row could be kept): a cached k > 1 score can differ from a fresh one only on such ties. The
linear probe trains in float32 on either device from the same batches; another device (like
another BLAS or thread count on the CPU, which the probe already picks from the load average)
rounds its SGD steps differently, so an accuracy may move by a validation sample or two. That is
below the proxy's resolution, and keying scores by device would split a shared home's cache by
machine, so it is not keyed either (on the CPU the device code path, standardising in torch,
gave the same scores as today's in every test and benchmark case; on a GPU this is not yet
measured).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shift.errors import ShiftError
from shift.scoring.scale import SAFE_EXP2

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CHOICES",
    "CPU_KNN",
    "ENV",
    "gpu_available",
    "idle_cores",
    "knn_device",
    "probe_device",
    "requested",
    "score_device",
    "to_device",
    "torch_threads",
    "unit_scale_torch",
]

log = logging.getLogger(__name__)

ENV = "SHIFT_SCORE_DEVICE"
CHOICES = ("auto", "cpu", "cuda")
#: the kNN proxies' CPU path, by measurement (module doc): "numpy", or "cpu" for torch on the CPU
CPU_KNN: Literal["numpy", "cpu"] = "numpy"
#: device nodes one of which exists where a GPU driver is loaded (NVIDIA, or AMD ROCm)
_GPU_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd")


def requested(choice: str | None = None) -> str:
    """``choice``, else ``$SHIFT_SCORE_DEVICE``, else ``auto``; lower-cased and checked."""
    raw = choice if choice is not None else os.environ.get(ENV) or "auto"
    value = raw.strip().lower()
    if value not in CHOICES:
        raise ShiftError(
            f"unknown score device {raw!r}",
            hint=f"set ${ENV} to one of {', '.join(CHOICES)}",
        )
    return value


def _gpu_may_exist() -> bool:
    """Whether a GPU could be visible, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path(p).exists() for p in _GPU_NODES)


def gpu_available() -> bool:
    """Whether torch is installed and sees a GPU; imports torch only when a GPU may exist (or
    torch is already imported)."""
    torch_absent = "torch" not in sys.modules and importlib.util.find_spec("torch") is None
    if torch_absent or ("torch" not in sys.modules and not _gpu_may_exist()):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken torch or driver: score on the CPU
        return False


def score_device(choice: str | None = None) -> Literal["cpu", "cuda"]:
    """``cuda`` or ``cpu`` for ``choice`` (default ``$SHIFT_SCORE_DEVICE``, see module doc)."""
    want = requested(choice)
    if want == "cpu":
        return "cpu"
    if gpu_available():
        return "cuda"
    if want == "cuda":
        log.warning("%s=cuda but torch sees no GPU; scoring on the CPU", ENV)
    return "cpu"


def knn_device(choice: str | None = None) -> str:
    """Where the kNN proxies run: ``"cuda"`` (torch) or ``CPU_KNN`` (``"numpy"``)."""
    return "cuda" if score_device(choice) == "cuda" else CPU_KNN


def probe_device(choice: str | None = None) -> str:
    """The torch device the linear probe trains on: ``"cuda"`` or ``"cpu"``."""
    return score_device(choice)


# ---- torch helpers of the device paths (torch imported inside) ------------------------------


def to_device(arr: Any, device: torch.device) -> torch.Tensor:
    """``arr`` (numpy) as a tensor on ``device`` in its own dtype (a float32 embedding travels as
    float32 and is widened there); on CUDA through pinned memory and a non-blocking copy, so the
    host can stage the next problem while the GPU works."""
    import warnings

    import torch

    host = np.ascontiguousarray(arr)
    with warnings.catch_warnings():  # read-only arrays (memory-mapped indexes) are only read
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(host)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """``2.0**k`` in float64, exactly, for an int64 tensor ``k`` in [-1022, 1023] (built from its
    bits: ``torch.ldexp`` multiplies by a float32 power that overflows past 2^127)."""
    import torch

    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def unit_scale_torch(*xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`~shift.scoring.scale.unit_scale` on tensors, on their device and (on a GPU)
    without a host round trip: ``(xs as float64, finite)``, with ``finite`` a bool tensor saying
    whether each was free of NaN/inf (read from the same max/min reductions, which propagate
    NaN). Unchanged when the largest |entry| is 0 or within ``[2^-SAFE_EXP2, 2^SAFE_EXP2]``, else
    all divided by the power of two that brings it into [0.5, 1) (in two exact steps, so that
    ``2^-e`` stays a normal float64)."""
    import torch

    dev = xs[0].device
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    tops = torch.stack(
        [
            torch.maximum(x.amax().to(torch.float64), -x.amin().to(torch.float64))
            if x.numel()
            else zero
            for x in xs
        ]
    )
    finite = torch.isfinite(tops)
    top = tops.amax()
    keep = (top == 0) | ((top >= 2.0**-SAFE_EXP2) & (top <= 2.0**SAFE_EXP2))
    e = torch.where(keep, 0, torch.frexp(top).exponent.to(torch.int64))
    wide = [x.to(torch.float64) for x in xs]
    if dev.type == "cpu" and int(e) == 0:  # reading it is free on the CPU: skip the no-op
        return wide, finite
    first = torch.div(-e, 2, rounding_mode="floor")
    f1, f2 = _pow2(first), _pow2(-e - first)
    return [x * f1 * f2 for x in wide], finite


def idle_cores(most: int) -> int:
    """Threads worth starting now: ``min(most, cores − ⌊load average⌋)``, at least 1. OpenMP's
    threads spin at each barrier, so on a busy machine two threads sharing their cores with other
    processes ran a probe's small kernels 10-30x slower than one thread (measured: a 27×1280×10
    ``add_`` 0.06 ms on 1 thread vs 1.3-7.7 ms on 2 with the demo running beside it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(most, (cores or 1) - busy))


@contextmanager
def torch_threads(device: torch.device, most: int = 4) -> Iterator[None]:
    """On the CPU, torch's threads set to :func:`idle_cores` (``most`` at most) for the block
    and restored after; elsewhere nothing."""
    if device.type != "cpu":
        yield
        return
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(idle_cores(most))
    try:
        yield
    finally:
        torch.set_num_threads(prev)
