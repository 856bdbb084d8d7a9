"""Model files for Ray workers without a shared disk.

The driver reads a model file once per run, checks it, and puts its bytes in Ray's object store
(``publish``); actors receive a ``ModelBlob`` (sha256, size and the object ref), never a path in
the home. A worker materialises the file in its node's local cache folder
(``node_cache_dir()/<sha256>.onnx``): the bytes are fetched from the object store only when the
node has no verified copy, checked against the sha256 and written atomically, so actors on one
node share one copy and a restarted actor finds it again. ray is imported inside functions only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shift.errors import ModelFileError
from shift.fsutil import atomic_write_bytes, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

CACHE_ENV = "SHIFT_NODE_MODEL_CACHE"
CACHE_SUBDIR = "shift-models"

_verified: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) checked in this process


@dataclass(frozen=True)
class ModelBlob:
    """A model file in the object store: its sha256 and size (the identity; ``ref`` does not
    take part in equality or hashing) and the ``ObjectRef`` of its bytes."""

    sha256: str
    size: int
    ref: Any = field(compare=False, hash=False, repr=False)


def publish(ray: Any, path: str | os.PathLike[str]) -> ModelBlob:
    """Read ``path`` and ``ray.put`` its bytes (once; the caller keeps the blob while actors
    may need it). ``ModelFileError`` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}") from e
    return ModelBlob(sha256_bytes(data), len(data), ray.put(data))


def node_cache_dir() -> Path:
    """This node's model cache: ``$SHIFT_NODE_MODEL_CACHE`` when set, else ``shift-models`` in
    the Ray node's temp folder (each ``ray start --temp-dir`` has its own), else in the system
    temp folder."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env)
    base = None
    try:  # the temp dir of the node this worker belongs to (no public API for it)
        from ray._private import worker as ray_worker

        node = getattr(ray_worker.global_worker, "node", None) or ray_worker._global_node
        base = node.get_temp_dir_path() if node is not None else None
    except Exception:  # pragma: no cover - ray internals moved, or no Ray in this process
        base = None
    return Path(base or tempfile.gettempdir()) / CACHE_SUBDIR


def _is_verified(path: Path, blob: ModelBlob) -> bool:
    """Whether ``path`` holds ``blob``'s bytes: size first, then (once per process and file
    version) the sha256."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != blob.size:
        return False
    stamp = (st.st_size, st.st_mtime_ns)
    key = str(path)
    if _verified.get(key) == stamp:
        return True
    if sha256_file(path) != blob.sha256:
        return False
    _verified[key] = stamp
    return True


def materialize(blob: ModelBlob, name: str) -> Path:
    """The node-local file of ``blob`` (model ``name``, for messages), fetching its bytes from
    the object store when the node has no verified copy. Raises ``ModelFileError`` when the
    bytes received do not match the sha256 or the cache cannot be written."""
    import ray

    folder = node_cache_dir()
    path = folder / f"{blob.sha256}.onnx"
    if _is_verified(path, blob):
        return path
    data = ray.get(blob.ref)
    got = sha256_bytes(data)
    if got != blob.sha256:
        raise ModelFileError(
            f"model {name!r}: the bytes received have sha256 {got[:12]}..., "
            f"expected {blob.sha256[:12]}...; refusing to load them"
        )
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ModelFileError(
            f"model {name!r}: cannot write the node's model cache {folder}: {e.strerror or e}",
            hint=f"set ${CACHE_ENV} to a writable folder on every node",
        ) from e
    st = path.stat()
    _verified[str(path)] = (st.st_size, st.st_mtime_ns)
    log.info("model %r cached at %s", name, path)
    return path
