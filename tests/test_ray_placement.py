"""GPU placement on CPU: a local Ray with declared GPUs gets one actor per GPU (``num_gpus=1``),
each with its own GPU id, calls grouped to the device batch size, and correct embeddings."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from shift.inference.jobs import BatchResult, EmbedJob, JobFailure
from shift.inference.onnx_backend import OnnxEmbedder
from shift.inference.ray.executor import RayExecutor
from shift.inference.ray.plan import (
    CPU_IN_FLIGHT,
    GPU_IN_FLIGHT,
    MAX_DEVICE_BATCH,
    MIN_DEVICE_BATCH,
    cpu_images_per_run,
    device_batch_size,
    plan_pool,
)
from shift.records import InputSpec, ModelRecord

GiB = 2**30


def spec(px: int) -> InputSpec:
    return InputSpec(height=px, width=px)


def test_device_batch_size_follows_memory_and_input_size() -> None:
    assert device_batch_size(80 * GiB, spec(224)) == 512  # H100
    assert device_batch_size(16 * GiB, spec(224)) == 64  # T4 / V100-16G
    assert device_batch_size(24 * GiB, spec(224)) == 128
    assert device_batch_size(16 * GiB, spec(448)) == MIN_DEVICE_BATCH  # floor
    assert device_batch_size(141 * GiB, spec(32)) == MAX_DEVICE_BATCH  # cap
    sizes = [device_batch_size(m * GiB, spec(224)) for m in (8, 16, 24, 40, 80)]
    assert sizes == sorted(sizes) and all(s & (s - 1) == 0 for s in sizes)  # powers of two


def test_cpu_runs_are_sliced_by_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_images_per_run(spec(224)) == cpu_images_per_run(spec(260)) == 16
    assert cpu_images_per_run(spec(32)) == 256
    monkeypatch.setenv("SHIFT_WORKER_ACTIVATION_MB", "256")
    assert cpu_images_per_run(spec(224)) == 4
    monkeypatch.setenv("SHIFT_WORKER_ACTIVATION_MB", "junk")  # ignored: the default
    assert cpu_images_per_run(spec(224)) == 16


def test_plan_pool_one_actor_per_gpu_from_the_accelerator_table() -> None:
    p = plan_pool({"CPU": 16.0, "GPU": 4.0, "accelerator_type:H100": 1.0})
    assert p.num_actors == 4 and p.options == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert p.in_flight == GPU_IN_FLIGHT > CPU_IN_FLIGHT and p.intra_op_threads == 4
    assert p.accelerator == "H100" and p.gpu_memory == 80 * GiB
    assert p.images_per_call(spec(224)) == 512
    unknown = plan_pool({"CPU": 2.0, "GPU": 1.0})
    assert unknown.gpu_memory == 16 * GiB and unknown.images_per_call(spec(224)) == 64
    cpu = plan_pool({"CPU": 2.0})
    assert cpu.gpu_memory is None and cpu.images_per_call(spec(224)) == 0
    assert cpu.in_flight == CPU_IN_FLIGHT


@pytest.fixture
def two_declared_gpus() -> Iterator[None]:
    """A local Ray declaring 2 GPUs (none exist); the shared runtime is restored afterwards
    with the CPUs it had."""
    from shift.inference.ray.runtime import ensure_ray, ray_is_running, shutdown_ray

    cpus = None
    if ray_is_running():
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0)) or None
    shutdown_ray()
    ensure_ray(num_cpus=2, num_gpus=2)
    try:
        yield
    finally:
        shutdown_ray()
        if cpus:
            ensure_ray(num_cpus=cpus)


@pytest.mark.ray
def test_declared_gpus_get_one_actor_each(
    two_declared_gpus: None, tiny_models: dict[str, ModelRecord]
) -> None:
    import ray

    from shift.inference.ray.pool import ACTOR_POOL

    rec = tiny_models["tiny-a"]
    rng = np.random.default_rng(3)
    batches = [(f"b{i}", rng.integers(0, 256, (4, 32, 32, 3), np.uint8)) for i in range(200)]
    results: dict[str, BatchResult] = {}
    failures: list[JobFailure] = []

    def on_result(r: BatchResult) -> None:
        results[r.batch_id] = r

    ex = RayExecutor()
    ex.run([EmbedJob(rec.name, rec.path, rec, batches)], on_result, failures.append, False)
    assert failures == [] and sorted(results) == sorted(b for b, _ in batches)
    plan = ex.last_plan
    assert plan is not None and plan.num_actors == 2 and plan.options["num_gpus"] == 1.0
    infos = ray.get([a.info.remote() for a in ACTOR_POOL.actors])
    gpu_ids = [tuple(i["gpus"]) for i in infos]
    assert all(len(g) == 1 for g in gpu_ids) and len(set(gpu_ids)) == 2  # one GPU each
    # 800 images in calls of at most 512 (the 16 GB default at 32 px): 2 calls, not 200
    assert ex.inference_calls == 2
    ref = OnnxEmbedder(rec.path, rec, device="cpu")
    for bid, images in batches[::37]:
        emb, logits = ref.embed(images)
        np.testing.assert_allclose(results[bid].embeddings, emb, atol=1e-5)
        np.testing.assert_allclose(results[bid].logits, logits, atol=1e-5)
