"""Placement of the Ray embedding workers: how many actors, with which resources, how many calls
queued per actor, and how many images one inference call or run takes on the device.

With GPUs in the cluster: one actor per GPU (``num_gpus=1``; Ray sets each actor's
``CUDA_VISIBLE_DEVICES`` to its own GPU), ``GPU_IN_FLIGHT`` calls queued per actor (their
arguments are shipped while the GPU works on the one before), and the engine's batches grouped
into calls of ``device_batch_size`` images. On CPU: one single-threaded actor per CPU,
``CPU_IN_FLIGHT`` calls queued, each batch run in slices of ``cpu_images_per_run`` images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from shift.records import InputSpec

CPU_IN_FLIGHT = 2
GPU_IN_FLIGHT = 4
# GiB of device memory by Ray's accelerator type (``accelerator_type:<name>`` resource)
GPU_MEMORY_GB: dict[str, float] = {
    "H200": 141,
    "H100": 80,
    "A100-80G": 80,
    "A100": 40,
    "A100-40G": 40,
    "L40S": 48,
    "L40": 48,
    "A10G": 24,
    "L4": 24,
    "V100": 16,
    "T4": 16,
}
DEFAULT_GPU_MEMORY_GB = 16.0
# peak bytes of a run per byte of float32 input: EfficientNet-Lite2, 64 x 260 px on ONNX Runtime
# CPU peaked at ~2 GB, i.e. ~38x (measured November 26); 64 leaves room for wider networks
ACTIVATION_FACTOR = 64
DEVICE_MEMORY_SHARE = 0.25
MIN_DEVICE_BATCH, MAX_DEVICE_BATCH = 32, 512


CPU_ACTIVATION_ENV = "SHIFT_WORKER_ACTIVATION_MB"
DEFAULT_CPU_ACTIVATION_MB = 1024
MAX_CPU_RUN = 256


def _images_for(budget_bytes: float, spec: InputSpec, lo: int, hi: int) -> int:
    """``budget / (ACTIVATION_FACTOR * 4 * C * H * W)`` images, rounded down to a power of two
    and clamped to [lo, hi]."""
    per_image = ACTIVATION_FACTOR * 4 * spec.channels * spec.height * spec.width
    n = int(budget_bytes // per_image)
    n = 2 ** int(math.log2(n)) if n >= 1 else 1
    return max(lo, min(hi, n))


def device_batch_size(memory_bytes: float, spec: InputSpec) -> int:
    """Images per inference call on a GPU of ``memory_bytes``: ``DEVICE_MEMORY_SHARE * memory``
    of activations at ``ACTIVATION_FACTOR`` bytes per byte of float32 input, as a power of two
    in [32, 512] (H100, 224 px: 512; 16 GB card: 64)."""
    return _images_for(DEVICE_MEMORY_SHARE * memory_bytes, spec, MIN_DEVICE_BATCH, MAX_DEVICE_BATCH)


def cpu_images_per_run(spec: InputSpec) -> int:
    """Images per ONNX Runtime run in a CPU worker: ``$SHIFT_WORKER_ACTIVATION_MB`` MiB (default
    1024) of activations, as a power of two in [1, 256] (224-260 px: 16; 32 px: 256). A run's
    activations are the bulk of a worker's peak memory (EfficientNet-Lite2, 64 images of 260 px:
    ~2 GB; 16 images: ~0.65 GB) while per-image speed on a CPU barely depends on the run's size."""
    mb = env_float(CPU_ACTIVATION_ENV, DEFAULT_CPU_ACTIVATION_MB)
    return _images_for(mb * 2**20, spec, 1, MAX_CPU_RUN)


def env_float(env: str, default: float) -> float:
    """A positive number from ``$env``; ``default`` when unset or not a positive number."""
    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


@dataclass
class PoolPlan:
    num_actors: int
    options: dict[str, float]
    device: str
    intra_op_threads: int | None
    in_flight: int = CPU_IN_FLIGHT  # calls queued per actor
    gpu_memory: float | None = None  # bytes per GPU; None: no GPU (one batch per call)
    accelerator: str | None = field(default=None, compare=False)

    def images_per_call(self, spec: InputSpec) -> int:
        """How many images one inference call may hold: ``device_batch_size`` on a GPU, else
        0 (each of the engine's batches is its own call)."""
        return 0 if self.gpu_memory is None else device_batch_size(self.gpu_memory, spec)


def _accelerator(resources: dict[str, float]) -> str | None:
    for key in resources:
        if key.startswith("accelerator_type:"):
            return key.split(":", 1)[1]
    return None


def plan_pool(
    resources: dict[str, float], num_actors: int | None = None, max_useful: int | None = None
) -> PoolPlan:
    """Size the actor pool from ``ray.cluster_resources()``.

    With GPUs: one actor per GPU (``num_gpus=1``), the backend on "auto", ``GPU_IN_FLIGHT``
    calls queued per actor, device memory from ``GPU_MEMORY_GB`` by the cluster's accelerator
    type (``DEFAULT_GPU_MEMORY_GB`` when unknown). Without: one actor per CPU, ``num_cpus``
    fractional when there are more actors than CPUs (a ``num_cpus=1`` actor beyond capacity
    stays pending forever), ``intra_op_threads=1``. ``max_useful`` (number of batches, when
    known) caps the pool.
    """

    def _floor(x: float) -> float:
        return math.floor(x * 100) / 100

    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if gpus >= 1:
        n = num_actors or int(gpus)
        if max_useful:
            n = min(n, max_useful)
        n = max(1, n)
        threads = max(1, int(cpus // n)) if cpus >= n else 1
        acc = _accelerator(resources)
        memory = GPU_MEMORY_GB.get(acc or "", DEFAULT_GPU_MEMORY_GB) * 2**30
        return PoolPlan(
            n,
            {"num_gpus": min(1.0, _floor(gpus / n)), "num_cpus": min(1.0, _floor(cpus / n))},
            "auto",
            threads,
            in_flight=GPU_IN_FLIGHT,
            gpu_memory=memory,
            accelerator=acc,
        )
    n = num_actors or max(1, int(cpus))
    if max_useful:
        n = min(n, max_useful)
    n = max(1, n)
    return PoolPlan(n, {"num_cpus": min(1.0, _floor(cpus / n))}, "cpu", 1)
