"""The torch backend's disk cache: what a re-run need not compute again, kept in the home.

A converted onnx2torch module is a ``torch.fx.GraphModule`` whose structure is generated Python
code; the only ways to store it whole are pickle (``torch.save`` of the module) or
``torch.export.save``, whose loader falls back to ``torch.load(weights_only=False)``. shift never
unpickles, so the module is rebuilt by onnx2torch on every load (0.1-0.5 s at 224 px on a CPU)
and the cache keeps the two parts around it that are expensive and safe to keep:

* **verdicts** (``verdict-<key>.json``): that a conversion agrees with ONNX Runtime (the check of
  ``check``: an ONNX Runtime session and two runs of the check batch), keyed by the model
  file's sha256, the outputs and preprocessing read, the device, the converted module's
  structure (its generated code, module tree and tensor shapes), the versions of torch, onnx,
  onnx2torch and onnxruntime, and the check's own settings. Only agreements are kept: a
  refusal is checked again by the next process.
* **lowered graphs** (``graph-<key>.onnx`` + ``graph-<key>.json``): the ONNX graph onnx2torch
  converts, when it had to be taken down to ``TORCH_OPSET`` first (``convert``'s routes 2
  and 3: a failed direct conversion, then the version converter), keyed by the file's sha256,
  the outputs, the target opset and the onnx/onnx2torch versions. The meta file holds the
  graph's sha256, checked before it is parsed (protobuf: data, never code).

Nothing here unpickles: JSON and ONNX protobuf only. Every entry is named by a digest of what it
depends on, so a changed model, runtime or setting misses and is computed again; an unreadable
or mismatched entry is a miss (and removed). The folder is bounded (``$SHIFT_TORCH_CACHE_MB``,
default 2048 MB; least recently used first) and safe to delete at any time.

Where: ``<registry>/cache/torch`` for a model file in a home's ``models/`` folder (the engine's
in-process runs), or ``$SHIFT_TORCH_CACHE`` (a folder, or ``off``); a model file elsewhere (a
test's temp file, a Ray node's copy) is not cached on disk. Writes are best effort: a read-only
home runs uncached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from shift.config import HOME_MARKER

log = logging.getLogger(__name__)

CACHE_ENV = "SHIFT_TORCH_CACHE"  # a folder, or "off"/"0": no disk cache
CACHE_MB_ENV = "SHIFT_TORCH_CACHE_MB"
DEFAULT_CACHE_MB = 2048
FORMAT = 1  # bump when an entry's meaning changes: every old entry then misses
_OFF = ("0", "off", "no", "false", "none")
_ENTRY = re.compile(r"(verdict|graph)-[0-9a-f]{64}\.(json|onnx)")


def home_cache_dir(registry_dir: Path) -> Path:
    """The torch backend's cache folder of the home whose registry folder is ``registry_dir``."""
    return Path(registry_dir) / "cache" / "torch"


def _is_home(registry_dir: Path) -> bool:
    return (registry_dir / HOME_MARKER).is_file() or (registry_dir / "registry.db").is_file()


def cache_dir(model_path: str | os.PathLike[str]) -> Path | None:
    """Where the disk cache of ``model_path``'s conversion lives: ``$SHIFT_TORCH_CACHE`` when
    set (None for ``off``), else the home's ``cache/torch`` when the file lies in a home's
    ``models/`` folder, else None (no disk cache)."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.lower() in _OFF:
        return None
    if raw:
        return Path(raw).expanduser()
    folder = Path(model_path).absolute().parent
    if folder.name == "models" and _is_home(folder.parent):
        return home_cache_dir(folder.parent)
    return None


def max_bytes() -> int:
    """The cache's bound: ``$SHIFT_TORCH_CACHE_MB`` megabytes (default 2048)."""
    raw = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_CACHE_MB
    except ValueError:
        log.warning("$%s=%r is not a number; using %d MB", CACHE_MB_ENV, raw, DEFAULT_CACHE_MB)
        mb = DEFAULT_CACHE_MB
    return max(0, int(mb * 2**20))


@functools.cache
def runtime_versions() -> dict[str, str]:
    """The versions a cached entry depends on (a package that is absent: "")."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "onnx", "onnx2torch", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = ""
    return out


def digest(kind: str, parts: dict[str, Any]) -> str:
    """The entry key: sha256 of the canonical JSON of ``kind``, ``FORMAT`` and ``parts``."""
    text = json.dumps({"kind": kind, "format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def module_fingerprint(module: Any) -> str:
    """A digest of a converted module's structure (what its weights do not say): the fx
    graph's generated code, the module tree and every tensor's name, shape and dtype."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(str(getattr(module, "code", "")).encode())
    h.update(repr(module).encode())
    state = getattr(module, "state_dict", None)
    if callable(state):
        for name, t in state().items():
            h.update(f"{name}:{tuple(getattr(t, 'shape', ()))}:{getattr(t, 'dtype', '')};".encode())
    return h.hexdigest()


class TorchCache:
    """One cache folder (see the module doc). Every method is best effort: a folder that
    cannot be read or written behaves as an empty cache."""

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.root = Path(root)
        self.limit = max_bytes() if limit is None else limit

    @classmethod
    def for_model(cls, model_path: str | os.PathLike[str]) -> TorchCache | None:
        """The cache for ``model_path``'s conversions, or None where there is none."""
        root = cache_dir(model_path)
        return None if root is None else cls(root)

    # ---- verdicts -----------------------------------------------------------------------------
    def has_verdict(self, key: str) -> bool:
        """Whether an agreement is recorded under ``key`` (touched when it is)."""
        meta = self._read_json(self.root / f"verdict-{key}.json")
        return bool(meta and meta.get("key") == key and meta.get("agrees") is True)

    def put_verdict(self, key: str, info: dict[str, Any]) -> None:
        """Record that the conversion under ``key`` agrees with ONNX Runtime."""
        meta = {**info, "format": FORMAT, "key": key, "agrees": True, "at": time.time()}
        self._write(self.root / f"verdict-{key}.json", json.dumps(meta, default=str).encode())

    # ---- lowered graphs -----------------------------------------------------------------------
    def get_graph(self, key: str) -> tuple[Any, dict[str, Any]] | None:
        """``(ModelProto, meta)`` of the lowered graph under ``key`` (``meta["route"]`` and what
        else ``put_graph`` was given), or None. The graph file's sha256 is checked against its
        meta before it is parsed; a mismatch is removed."""
        meta_path, graph_path = self.root / f"graph-{key}.json", self.root / f"graph-{key}.onnx"
        meta = self._read_json(meta_path)
        if not meta or meta.get("key") != key or not isinstance(meta.get("route"), str):
            return None
        try:
            data = graph_path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            log.info("torch cache: %s does not match its sha256; removed", graph_path.name)
            self._remove(meta_path, graph_path)
            return None
        import onnx

        try:
            model = onnx.load_model_from_string(data)
        except Exception:  # a protobuf that does not parse
            self._remove(meta_path, graph_path)
            return None
        with contextlib.suppress(OSError):
            os.utime(graph_path)
        return model, meta

    def put_graph(self, key: str, graph: Any, route: str, **info: Any) -> None:
        """Keep the lowered ``graph`` (a ModelProto), its ``route`` and ``info`` under ``key``."""
        data = graph.SerializeToString()
        if len(data) > self.limit:
            return
        meta = {
            **info,
            "format": FORMAT,
            "key": key,
            "route": route,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "at": time.time(),
        }
        if self._write(self.root / f"graph-{key}.onnx", data):
            self._write(self.root / f"graph-{key}.json", json.dumps(meta).encode())

    # ---- files --------------------------------------------------------------------------------
    def _read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._remove(path)
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return meta

    def _write(self, path: Path, data: bytes) -> bool:
        """``data`` to ``path`` through a temp file and a rename (not fsynced: an entry torn by a
        crash fails its checks and is a miss), then the folder is pruned to its bound."""
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("torch cache: cannot write %s: %s", path, e)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self.prune()
        return True

    def _remove(self, *paths: Path) -> None:
        for p in paths:
            with contextlib.suppress(OSError):
                p.unlink()

    def entries(self) -> list[Path]:
        """The cache's own files (anything else in the folder is left alone)."""
        try:
            return [p for p in self.root.iterdir() if _ENTRY.fullmatch(p.name)]
        except OSError:
            return []

    def size(self) -> int:
        total = 0
        for p in self.entries():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def prune(self) -> None:
        """Remove the least recently used entries until the folder is within its bound (a graph
        goes with its meta)."""
        stats = []
        for p in self.entries():
            with contextlib.suppress(OSError):
                st = p.stat()
                stats.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in stats)
        for _, size, p in sorted(stats, key=lambda s: s[0]):
            if total <= self.limit:
                break
            self._remove(p)
            total -= size

    def clear(self) -> None:
        """Remove every entry."""
        self._remove(*self.entries())
