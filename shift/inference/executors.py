"""Choosing an executor by name. Both run ``EmbedJob``s (``shift.inference.jobs``) behind one
interface: ``InProcessExecutor`` (``local``) and ``RayExecutor`` (``ray.executor``). Neither ray
nor any inference runtime is imported when this module is imported."""

from __future__ import annotations

from shift.errors import ShiftError
from shift.inference.local import InProcessExecutor
from shift.inference.ray.executor import RayExecutor


def make_executor(
    kind: str = "auto",
    address: str | None = None,
    num_actors: int | None = None,
    batch_timeout_s: float | None = None,
) -> InProcessExecutor | RayExecutor:
    """ "inprocess" -> ``InProcessExecutor``; "ray" or "auto" -> ``RayExecutor``. A batch that
    runs past ``batch_timeout_s`` (default: ``jobs.batch_timeout()``) fails its model."""
    if kind == "inprocess":
        return InProcessExecutor(batch_timeout_s=batch_timeout_s)
    if kind in ("ray", "auto"):
        return RayExecutor(num_actors=num_actors, address=address, batch_timeout_s=batch_timeout_s)
    raise ShiftError(f"unknown executor {kind!r}", hint="use 'auto', 'ray' or 'inprocess'")
