"""``.npz`` input: arrays ``x`` (N, H, W[, C]) and integer ``y`` (N,), optional ``split``.

Nothing is unpickled and nothing is loaded before its header is checked. Each member's header
(``numpy.lib.format``: shape, order, dtype) is read from the zip member first, and the member is
refused, naming it, when

* its dtype holds objects (they would need unpickling),
* its declared size (shape × itemsize) differs from the size the zip directory gives for the
  member (a lying or corrupt header: never a raw ``MemoryError``),
* ``x`` declares more than ``MAX_SAMPLES`` images, images over ``MAX_IMAGE_PIXELS`` pixels or
  over ``MAX_NPZ_BYTES`` in all, or ``y``/``split`` do not have one entry per image.

``y`` and ``split`` are then loaded whole (at most ``MAX_SAMPLES`` entries); ``x`` never is: it
is read ``BATCH_BYTES`` at a time from the member (``LazyImages``), converted to uint8 (floats in
[0, 1] scaled by 255, values clipped to 0..255; a first streamed pass finds the range) and
scaled down to ``STORE_CAP`` on the short side. Labels are remapped to 0..C−1 with the original
values kept as the class names (``remap_labels``).
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from shift.errors import TaskDataError
from shift.records import Samples
from shift.store.images import (
    MAX_IMAGE_PIXELS,
    MAX_SAMPLES,
    LazyImages,
    batch_size,
    capped_size,
    path_text,
    remap_labels,
    resize_to,
)

#: uncompressed bytes an ``x`` member may declare (it is streamed, never loaded whole)
MAX_NPZ_BYTES = 64 << 30
#: bytes a Fortran-ordered ``x`` (which cannot be streamed by rows) may take when loaded
MAX_FORTRAN_BYTES = 1 << 30
#: raw bytes of ``x`` read and converted at a time (floats take 4-8 bytes a value)
RAW_BYTES = 8 << 20
_HEADER_CAP = 1 << 16


class _Member:
    """One ``.npy`` member of an npz: its header, checked against the zip directory."""

    def __init__(self, zf: zipfile.ZipFile, name: str, where: str) -> None:
        self.name, self.where = name, where
        key = name[:-4] if name.endswith(".npy") else name
        self.key = key
        info = zf.getinfo(name)
        with zf.open(info) as f:
            self.shape, self.fortran, self.dtype = _read_header(f, f"{where}: array {key!r}")
            self.offset = f.tell()
        self.nbytes = int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize
        declared = self.offset + self.nbytes
        if declared != info.file_size:
            raise TaskDataError(
                f"{where}: array {key!r} declares shape {self.shape} of {self.dtype} "
                f"({self.nbytes:,} bytes) but the file holds {info.file_size - self.offset:,} "
                "bytes: a corrupt or forged header",
                hint="save the arrays again with numpy.savez",
            )

    def load(self, zf: zipfile.ZipFile) -> np.ndarray:
        """The whole array (only for members whose size was checked against a cap)."""
        with zf.open(self.name) as f:
            f.seek(self.offset)
            data = _read_exact(f, self.nbytes, self.where, self.key)
        order: Literal["C", "F"] = "F" if self.fortran else "C"
        return np.frombuffer(data, self.dtype).reshape(self.shape, order=order)


def _read_header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_HEADER_CAP)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_HEADER_CAP)
        else:  # (3, 0): a UTF-8 header, read by numpy's own (private) reader
            from numpy.lib import _format_impl

            read = _format_impl._read_array_header  # type: ignore[attr-defined]  # private: no stub
            shape, fortran, dtype = read(f, version, _HEADER_CAP)
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as e:
        raise TaskDataError(f"{what}: not a readable .npy header ({e})") from None
    if dtype.hasobject:
        raise TaskDataError(
            f"{what}: refused (holds Python objects, which would need unpickling)",
            hint="object arrays are never unpickled; save plain numeric arrays",
        )
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _read_exact(f: IO[bytes], n: int, where: str, key: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise TaskDataError(f"{where}: array {key!r} cannot be read ({e})") from None
    if len(data) != n:
        raise TaskDataError(f"{where}: array {key!r} ends early (a truncated or forged file)")
    return data


class _XReader:
    """Streams rows of ``x`` from its zip member (forward reads reuse one open member)."""

    def __init__(self, path: Path, member: _Member, convert: Any) -> None:
        self.path, self.m, self.convert = path, member, convert
        self.row_bytes = int(np.prod(member.shape[1:], dtype=np.int64)) * member.dtype.itemsize
        self._lock = threading.Lock()
        self._zf: zipfile.ZipFile | None = None
        self._f: IO[bytes] | None = None
        self._pos = -1  # row the open member is positioned at

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Raw rows ``start:stop`` (the member's dtype and shape)."""
        with self._lock:
            if self._f is None or start != self._pos:
                self._open()
                assert self._f is not None
                self._f.seek(self.m.offset + start * self.row_bytes)
            data = _read_exact(self._f, (stop - start) * self.row_bytes, str(self.path), "x")
            self._pos = stop
        return np.frombuffer(data, self.m.dtype).reshape(stop - start, *self.m.shape[1:])

    def _open(self) -> None:
        self.close()
        self._zf = zipfile.ZipFile(self.path)
        self._f = self._zf.open(self.m.name)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._zf is not None:
            self._zf.close()
        self._f = self._zf = None

    def load(self, idx: np.ndarray) -> np.ndarray:
        """Converted uint8 images at positions ``idx`` (runs of consecutive positions are read
        in one go)."""
        parts = []
        step = batch_size(self.m.shape[1:], RAW_BYTES, self.m.dtype.itemsize)
        if len(idx):
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(idx, breaks):
                for a in range(int(run[0]), int(run[-1]) + 1, step):
                    b = min(int(run[-1]) + 1, a + step)
                    parts.append(self.convert(self.rows(a, b)))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def __del__(self) -> None:
        self.close()


def _members(
    path: Path, where: str, wanted: tuple[str, ...] = ("x", "y", "split")
) -> tuple[dict[str, _Member], list[str], zipfile.ZipFile]:
    """The ``wanted`` members of the npz at ``path`` that exist (their headers checked), the
    names of all its arrays, and the open zip file."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise TaskDataError(f"{where}: not a readable .npz file ({e})") from None
    try:
        names = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
        members = {k: _Member(zf, names[k], where) for k in wanted if k in names}
    except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
        zf.close()
        raise TaskDataError(f"{where}: not a readable .npz file ({e})") from None
    except BaseException:
        zf.close()
        raise
    return members, list(names), zf


def _check_x(m: _Member, where: str) -> tuple[int, ...]:
    shape = m.shape if len(m.shape) != 3 else (*m.shape, 1)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise TaskDataError(
            f"{where}: field 'x' has shape {m.shape}",
            hint="expected (N, H, W), (N, H, W, 1) or (N, H, W, 3)",
        )
    if m.dtype.kind not in "uif" or m.dtype == np.bool_:
        raise TaskDataError(f"{where}: field 'x' holds {m.dtype}, not numbers")
    n, h, w = shape[:3]
    if n > MAX_SAMPLES or h * w > MAX_IMAGE_PIXELS or m.nbytes > MAX_NPZ_BYTES:
        raise TaskDataError(
            f"{where}: field 'x' declares {n:,} images of {h}x{w} ({m.nbytes:,} bytes), over "
            f"the limits ({MAX_SAMPLES:,} images, {MAX_IMAGE_PIXELS:,} pixels each, "
            f"{MAX_NPZ_BYTES:,} bytes)",
            hint="split the data into several npz files and append them",
        )
    if m.fortran and m.nbytes > MAX_FORTRAN_BYTES:
        raise TaskDataError(
            f"{where}: field 'x' is stored in Fortran order and is too large to load whole",
            hint="save it in C order: numpy.savez(..., x=numpy.ascontiguousarray(x))",
        )
    return shape


def _small(zf: zipfile.ZipFile, m: _Member, n: int, where: str) -> np.ndarray:
    """``y`` or ``split``: one entry per image, checked before it is loaded."""
    if len(m.shape) != 1 or m.shape[0] != n:
        what = "labels" if m.key == "y" else "entries"
        raise TaskDataError(
            f"{where}: field {m.key!r} has shape {m.shape} but 'x' has {n} samples",
            hint=f"one {what[:-1]} per image",
        )
    return m.load(zf)


def _converter(reader: _XReader, m: _Member, shape: tuple[int, ...], where: str) -> Any:
    """uint8 conversion for ``x``'s dtype: a streamed first pass finds NaN/Inf and the range."""
    scale, fit = 1.0, capped_size(shape[2], shape[1])
    if m.dtype != np.uint8:
        top = -np.inf
        step = batch_size(m.shape[1:], RAW_BYTES, m.dtype.itemsize)
        for start in range(0, shape[0], step):
            part = reader.rows(start, min(shape[0], start + step))
            if m.dtype.kind == "f" and not np.all(np.isfinite(part)):
                raise TaskDataError(f"{where}: field 'x' contains NaN or Inf")
            top = max(top, float(part.max(initial=0)))
        scale = 255.0 if top <= 1.0 else 1.0

    def convert(raw: np.ndarray) -> np.ndarray:
        x = raw.reshape(len(raw), *shape[1:])
        if x.dtype != np.uint8:
            x = np.clip(np.round(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        if fit != (shape[2], shape[1]):
            x = np.stack([resize_to(img, *fit) for img in x])
        return x

    return convert, fit


def read_npz(path: Path, classes: list[str] | None = None) -> Samples:
    """Arrays ``x`` (N, H, W[, C]) and integer ``y`` (N,), optional ``split`` ('train'/'val' or
    0/1), checked as the module docstring says; ``x`` is read lazily. ``classes`` (an existing
    task's class names) maps label values already known to their positions (append)."""
    path = Path(path)
    where = path_text(path)
    members, found, zf = _members(path, where)
    try:
        for k in ("x", "y"):
            if k not in members:
                raise TaskDataError(
                    f"{where}: missing array {k!r}",
                    hint=f"arrays found: {', '.join(found) or 'none'}",
                )
        mx = members["x"]
        shape = _check_x(mx, where)
        n = shape[0]
        y = _small(zf, members["y"], n, where)
        split = _small(zf, members["split"], n, where) if "split" in members else None
        if mx.fortran:
            x_whole = mx.load(zf)
    finally:
        zf.close()
    y = _labels(y, where)
    splits = _splits(split, where) if split is not None else None
    reader = _XReader(path, mx, None)
    if mx.fortran:  # small (checked): converted from memory

        def whole_rows(start: int, stop: int) -> np.ndarray:
            return np.ascontiguousarray(x_whole[start:stop])

        reader.rows = whole_rows  # type: ignore[method-assign]
    convert, fit = _converter(reader, mx, shape, where)
    reader.convert = convert
    labels, names = remap_labels(y, classes, f"{where}: field 'y'")
    images = LazyImages((n, fit[1], fit[0], shape[3]), reader.load)
    origin = [f"{path_text(Path(path.name))}[{i}]" for i in range(n)]
    return Samples(images, labels, splits, names, origin)  # type: ignore[arg-type]


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            y = y.astype(np.int64)
        else:
            raise TaskDataError(f"{where}: field 'y' holds {y.dtype} values, not integer labels")
    if len(y) and y.min() < 0:
        raise TaskDataError(f"{where}: field 'y' has negative labels")
    return y


def _splits(s: np.ndarray, where: str) -> list[str]:
    if np.issubdtype(s.dtype, np.integer):
        return ["val" if int(v) else "train" for v in s]
    splits = [str(v).lower() for v in s]
    bad = sorted(set(splits) - {"train", "val"})
    if bad:
        raise TaskDataError(
            f"{where}: field 'split' has values {bad}",
            hint="use 'train'/'val' or 0 (train)/1 (val)",
        )
    return splits


def read_labels(path: Path) -> np.ndarray:
    """Array ``y`` of an ``.npz`` file (relabel), its header checked before it is loaded."""
    path = Path(path)
    where = path_text(path)
    members, _, zf = _members(path, where, ("y",))
    try:
        if "y" not in members:
            raise TaskDataError(f"{where}: missing array 'y'")
        m = members["y"]
        if len(m.shape) != 1 or m.shape[0] > MAX_SAMPLES:
            raise TaskDataError(f"{where}: field 'y' has shape {m.shape}, expected (N,)")
        return _labels(m.load(zf), where)
    finally:
        zf.close()
