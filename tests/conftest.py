"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shift.records import ModelRecord
from shift.store.registry import Registry


def pytest_configure(config: pytest.Config) -> None:
    """One trained-experts cache per test session (shared by its homes and subprocesses),
    never the user's ``~/.cache/shift``."""
    if "SHIFT_CACHE_DIR" not in os.environ:
        os.environ["SHIFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="shift-test-cache-")


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """A local Ray started once per test session (3-4 s), shut down at the end."""
    from shift.inference.ray.runtime import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    """An empty registry in ``tmp_path / "home"``, closed after the test (a module may define
    its own ``reg`` with more in it)."""
    r = Registry.open(tmp_path / "home")
    yield r
    r.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelRecord]:
    """Tiny real ONNX models (32 px input), built once per session; ``record.path`` is the
    absolute file path.

    * ``tiny-a``: seed 0, dim 16, 10-class head;  * ``tiny-b``: seed 1, dim 8, no head;
    * ``tiny-nan``: outputs NaN;  * ``tiny-corrupt``: random bytes.
    """
    from onnx_factory import build_tiny_cnn, write_corrupt_model

    d = tmp_path_factory.mktemp("tiny_models")
    models = [
        build_tiny_cnn(d / "tiny-a.onnx", seed=0),
        build_tiny_cnn(d / "tiny-b.onnx", seed=1, dim=8, classes=None),
        build_tiny_cnn(d / "tiny-nan.onnx", seed=2, nan=True),
        write_corrupt_model(d / "tiny-corrupt.onnx"),
    ]
    return {m.name: m for m in models}
