"""Starting, joining and stopping Ray. ray is imported inside the functions, never at import time.

A local Ray started here is quiet and loopback-only: token auth and usage stats are off,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every listening socket on 127.0.0.1, there is no
dashboard, and the object store is 100 MiB.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ADDRESS_ENV = "SHIFT_RAY_ADDRESS"
LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
OBJECT_STORE_BYTES = 100 * 2**20

_lock = threading.Lock()


def _source_root() -> str:
    """The directory that holds the ``shift`` package."""
    return str(Path(__file__).resolve().parent.parent.parent)


def _export_source_root() -> None:
    """Ray workers start in the driver's cwd with the driver's environment. When shift runs from
    a source checkout (not installed), put the checkout on ``$PYTHONPATH`` so workers can import
    it from any cwd. (A per-job ``runtime_env`` would do the same but costs ~0.6 s per pool.)"""
    root = _source_root()
    if "site-packages" in root or "dist-packages" in root:
        return
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def _sync_loopback_constant() -> None:
    """ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported; if something
    imported ray before we set the variable, bring its (private) constant in line, or the node
    would bind to the machine's public address."""
    value = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "").strip().lower()
    if value not in ("0", "false"):
        return
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # pragma: no cover - ray internals moved
        log.warning("could not force Ray onto loopback; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")


def ensure_ray(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> None:
    """Make sure Ray is initialised in this process; a no-op when it already is.

    With ``address`` (or ``$SHIFT_RAY_ADDRESS``) join that existing cluster. Otherwise start a
    local one of our own with ``num_cpus`` (default: ``os.cpu_count()``) and ``num_gpus`` (default:
    Ray's detection; a number declares that many, e.g. to test GPU placement) after setting
    (``setdefault``) RAY_AUTH_MODE=disabled, RAY_USAGE_STATS_ENABLED=0 and
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 -- ``address="local"``, so neither ``$RAY_ADDRESS`` nor
    another Ray on the machine (``ray start``, a stale ``ray_current_cluster`` file) is joined.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    with _lock:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            return
        if address:
            import ray

            ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
            return
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        import ray

        _sync_loopback_constant()
        _export_source_root()
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=OBJECT_STORE_BYTES,
            ignore_reinit_error=True,
            logging_level=logging.WARNING,
        )


def shutdown_ray() -> None:
    """Shut Ray down if this process initialised or joined it; a no-op otherwise."""
    with _lock:
        pool = sys.modules.get("shift.inference.ray.pool")
        if pool is not None:  # the shared actors die with Ray: forget their handles
            pool.ACTOR_POOL.close(None)
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def ray_is_running() -> bool:
    """Whether Ray is initialised in this process (does not import ray)."""
    return "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())


def ray_resources() -> dict[str, float]:
    """Available ``{"CPU": n, "GPU": n}`` of the Ray cluster (starting Ray via ``ensure_ray()``
    if needed)."""
    ensure_ray()
    import ray

    res = ray.available_resources()
    return {"CPU": float(res.get("CPU", 0.0)), "GPU": float(res.get("GPU", 0.0))}
