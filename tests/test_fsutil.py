"""fsutil: the one staged atomic-write mechanism (temp + sha256 + fsync + rename)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shift.fsutil import (
    TMP_MARK,
    atomic_copy,
    atomic_open,
    atomic_write_bytes,
    discard,
    put_staged,
    sha256_bytes,
    sha256_file,
    stage_bytes,
    stage_file,
)


def temps(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if TMP_MARK in p.name]


def test_atomic_write_bytes_returns_the_sha_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"  # the folder is created
    sha = atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert sha == sha256_bytes(b"hello") == sha256_file(target)
    assert temps(target.parent) == []


def test_atomic_open_error_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_a_failed_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_staged_files_stay_hidden_until_put(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    sa = stage_bytes(a, b"A" * 1000)
    raw = tmp_path / "library-output"
    raw.write_bytes(b"B")
    sb = stage_file(b, raw)
    assert not a.exists() and not b.exists() and not raw.exists()
    assert sorted(temps(tmp_path)) == sorted([sa.tmp, sb.tmp])
    assert sa.tmp.name.startswith(".a.bin" + TMP_MARK)
    assert put_staged(a, sa) == sha256_bytes(b"A" * 1000) == sha256_file(a)
    assert put_staged(b, sb) == sha256_bytes(b"B")
    assert a.read_bytes() == b"A" * 1000 and b.read_bytes() == b"B"
    assert temps(tmp_path) == []


def test_discard_removes_unput_temps(tmp_path: Path) -> None:
    staged = [stage_bytes(tmp_path / f"{i}.bin", b"x") for i in range(3)]
    put_staged(tmp_path / "0.bin", staged[0])
    discard(staged)
    assert temps(tmp_path) == [] and (tmp_path / "0.bin").read_bytes() == b"x"


def test_atomic_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    sha = atomic_copy(src, tmp_path / "dst")
    assert sha == sha256_file(src) == sha256_file(tmp_path / "dst")


def test_doctor_recognises_every_temp_name(tmp_path: Path) -> None:
    from shift.fsutil import temp_path
    from shift.tools.doctor_checks import is_temp_file

    for name in ("meta.json", "x.onnx", "chunk-0123.npy"):
        tmp = temp_path(tmp_path / name)
        assert tmp.parent == tmp_path and is_temp_file(tmp.name)
        assert not is_temp_file(name)
