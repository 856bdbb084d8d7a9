"""EXPLAIN's cost model: seconds to embed a task with a model and to score a proxy.

Embedding cost is counted in *work units*: images × million parameters × pixels / 224². A fixed
prior (``SECONDS_PER_UNIT``) gives the seconds per unit on one core; once this home has indexed
something, the rate measured here replaces it: after every index run the indexer records the
wall seconds its embed phase took (model loads, reads, the model, writes) for the units it did,
per inference backend, in ``<registry>/cache/throughput.json`` (a units-weighted running mean).
So EXPLAIN's estimate is this machine's, not a constant's (it estimated ~15 s for a run that
took 60 s).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: rough CPU cost before anything was measured: seconds per image per million parameters at
#: 224 px on one core (EfficientNet-Lite0 72 img/s → 0.0030; ResNet-18 24 img/s → 0.0036)
SECONDS_PER_UNIT = 0.0033
THROUGHPUT_FILE = "throughput.json"
#: the running mean forgets older runs at this rate of units (recent runs weigh more)
_MEMORY_UNITS = 1e6


def work_units(params: int | None, height: int, width: int, images: int) -> float:
    """``images · Mparams · height·width / 224²``: what embedding costs in proportion to."""
    return images * (params or 0) / 1e6 * (height * width) / 224**2


def embed_seconds(
    params: int | None, height: int, width: int, images: int, per_unit: float | None = None
) -> float:
    """Seconds to embed ``images`` with a model of ``params`` parameters at ``height``×``width``:
    work units × ``per_unit`` (this machine's measured rate) or the one-core prior."""
    return work_units(params, height, width, images) * (per_unit or SECONDS_PER_UNIT)


def score_seconds(cost_per_1k: float, n_train: int) -> float:
    """Seconds to score one model with a proxy registered at ``cost_per_1k`` seconds per 1,000
    training samples (``ProxySpec.cost_per_1k``) on ``n_train`` samples: cost · n / 1000."""
    return cost_per_1k * max(n_train, 1) / 1000


def _path(registry_dir: Path) -> Path:
    return Path(registry_dir) / "cache" / THROUGHPUT_FILE


def measured_per_unit(registry_dir: Path, backend: str) -> float | None:
    """Seconds per work unit measured by this home's index runs with ``backend``, if any."""
    try:
        entry = json.loads(_path(registry_dir).read_text()).get(backend) or {}
        value = float(entry.get("seconds_per_unit", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return value if value > 0 else None


def record_throughput(registry_dir: Path, backend: str, units: float, seconds: float) -> None:
    """Fold one index run (``units`` of work in ``seconds``) into the measured rate; a home that
    cannot be written keeps its old figure (this is only an estimate's input)."""
    if units <= 0 or seconds <= 0:
        return
    from shift.fsutil import atomic_write_bytes

    path = _path(registry_dir)
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    old = data.get(backend)
    if not isinstance(old, dict):
        old = {}
    w_old = min(float(old.get("units", 0) or 0), _MEMORY_UNITS)
    rate_old = float(old.get("seconds_per_unit", 0) or 0)
    rate = (rate_old * w_old + seconds) / (w_old + units) if w_old else seconds / units
    data[backend] = {"seconds_per_unit": rate, "units": w_old + units}
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    except Exception as e:  # noqa: BLE001 - read-only or full: the estimate keeps the old rate
        log.debug("throughput not recorded in %s: %s", path, e)
