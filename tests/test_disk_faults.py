"""A full disk and a read-only home (issue #12, item 11), with genuine OS-level faults on a real
home (real ONNX models, real SQLite, real files):

* **read-only home**: the home is bind-mounted read-only on itself (``mount --bind -o ro``,
  when running as root, where permission bits do not bind) or its folders and registry lose
  their write bits (``chmod``, any other user). Reads and cached queries work and give the same
  answers; every write fails with ``ReadOnlyHomeError`` naming the home; doctor reports the home
  ``unwritable``, never ``corrupt``, and ``--repair`` refuses it.
* **full disk**: a child process runs the CLI under ``RLIMIT_FSIZE`` (``SIGXFSZ`` ignored), so
  its writes past the limit fail with ``EFBIG`` as they would with ``ENOSPC``: a chunk file and,
  separately, SQLite's WAL; with a limit of 0 not even SQLite's WAL files can be created, and the
  registry is still read (listing, cached queries, doctor) while writes are refused. The
  command exits 1 with ``DiskFullError`` ("the disk holding ...
  is full"), no traceback; afterwards, without the limit, every command works, doctor finds
  nothing corrupt and nothing stored is lost.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn

from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

QUERY = "SELECT top 2 FROM pool all WHERE task=toy"


def _samples(n: int, seed: int = 0, side: int = 32) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (rng.random((n, side, side, 3)) * 60 + y[:, None, None, None] * 50).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c"], [])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        for i in range(2):
            register_onnx(reg, build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i).path, f"tiny{i}")
        TaskStore(reg).add("toy", _samples(48), kind="npz", source="t")
    r = cli(home, "query", QUERY, "--executor", "inprocess")  # scores now cached
    assert r.exit_code == 0, r.output
    return home


# ---- read-only home ----------------------------------------------------------------------------


@contextmanager
def read_only(home: Path) -> Iterator[None]:
    """``home`` read-only for this process: a read-only bind mount as root, else chmod a-w."""
    if os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(home), str(home)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"running as root and cannot bind-mount read-only: {r.stderr!r}")
        try:
            yield
        finally:
            subprocess.run(["umount", str(home)], check=True)
        return
    dirs = [p for p in home.rglob("*") if p.is_dir()] + [home]
    modes = {p: p.stat().st_mode for p in [*dirs, home / "registry.db"]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _answer(text: str) -> dict:
    """A query's JSON without its timings."""
    out = json.loads(text)
    out.pop("timings", None)
    return out


def test_a_read_only_home_reads_and_refuses_writes_by_name(home: Path, tmp_path: Path) -> None:
    before = {
        cmd: cli(home, *cmd.split()).output for cmd in ("models list", "tasks list", "pools list")
    }
    cached = _answer(cli(home, "query", QUERY, "--executor", "inprocess", "--json").output)
    np.savez(tmp_path / "more.npz", x=_samples(9, seed=5).images, y=np.arange(9) % 3)
    with read_only(home):
        for cmd, out in before.items():
            r = cli(home, *cmd.split())
            assert r.exit_code == 0 and r.output == out, r.output
        r = cli(home, "query", QUERY, "--executor", "inprocess", "--json")
        assert r.exit_code == 0 and _answer(r.output) == cached, r.output
        writes = [
            ("pools", "add", "small", "WHERE dim <= 8"),
            ("tasks", "add", "other", "--npz", str(tmp_path / "more.npz")),
            ("tasks", "append", "toy", "--npz", str(tmp_path / "more.npz")),
            ("tasks", "remove", "toy"),
            ("models", "remove", "tiny0"),
            ("models", "add", str(tmp_path / "m0.onnx"), "--name", "again"),
            ("index", "toy", "--executor", "inprocess"),
            ("query", QUERY + " RANK BY logme", "--executor", "inprocess"),  # not cached
        ]
        for args in writes:
            r = cli(home, *args)
            assert r.exit_code == 1, (args, r.output)
            assert f"home {home}" in r.output and "is read-only" in r.output, (args, r.output)
        r = cli(home, "doctor", "--json")
        assert r.exit_code == 1
        assert '"unwritable"' in r.output and '"corrupt"' not in r.output, r.output
        r = cli(home, "doctor", "--repair")
        assert r.exit_code == 1 and "is read-only" in r.output, r.output
    assert cli(home, "pools", "add", "small", "WHERE dim <= 8").exit_code == 0  # writable again
    assert cli(home, "doctor").exit_code == 0


# ---- full disk ---------------------------------------------------------------------------------

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["shift-cli", *sys.argv[1:]]
from shift.cli import main
main()
"""


def _cli_limited(home: Path, limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process whose files cannot grow past ``limit`` bytes (EFBIG)."""
    code = _LIMITED.format(limit=limit)
    env = {**os.environ, "SHIFT_HOME": str(home), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )


def _limit_above(home: Path, extra: int) -> int:
    """A file-size limit ``extra`` bytes above the largest file now in the home."""
    return max(f.stat().st_size for f in home.rglob("*") if f.is_file()) + extra


def _assert_intact(home: Path, tasks: str) -> None:
    r = cli(home, "tasks", "list")
    assert r.exit_code == 0 and tasks in r.output, r.output
    assert cli(home, "models", "list").exit_code == 0
    r = cli(home, "doctor", "--json")
    assert '"corrupt"' not in r.output, r.output
    r = cli(home, "query", QUERY, "--executor", "inprocess")
    assert r.exit_code == 0, r.output


def test_a_full_disk_while_writing_a_chunk_is_named_and_loses_nothing(
    home: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.npz"
    s = _samples(300, seed=3, side=64)  # a 3.7 MB chunk
    np.savez(big, x=s.images, y=s.labels)
    r = _cli_limited(home, _limit_above(home, 64 << 10), "tasks", "add", "big", "--npz", str(big))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out and "is full" in out and str(home) in out, out
    assert not list((home / "tasks").glob("big/.*tmp*"))  # no temp file left behind
    _assert_intact(home, "toy")
    r = cli(home, "tasks", "add", "big", "--npz", str(big))  # space again: it works
    assert r.exit_code == 0, r.output
    _assert_intact(home, "big")


def test_a_full_disk_while_sqlite_writes_is_named_and_loses_nothing(
    home: Path, tmp_path: Path
) -> None:
    many = tmp_path / "many.npz"
    s = _samples(6000, seed=4, side=2)  # a 72 KB chunk but ~1 MB of sample rows
    np.savez(many, x=s.images, y=s.labels)
    limit = _limit_above(home, 200 << 10)
    r = _cli_limited(home, limit, "tasks", "add", "many", "--npz", str(many))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out and "is full" in out, out
    _assert_intact(home, "toy")
    assert "many" not in cli(home, "tasks", "list").output
    r = cli(home, "tasks", "add", "many", "--npz", str(many))
    assert r.exit_code == 0, r.output
    _assert_intact(home, "many")


def test_a_disk_too_full_to_open_the_registry_still_reads(home: Path) -> None:
    """No byte can be written (limit 0): SQLite cannot create its WAL files, so the registry
    is read through a read-only connection; writes are refused as a full disk."""
    r = _cli_limited(home, 0, "tasks", "list")
    assert r.returncode == 0 and "toy" in r.stdout, r.stdout + r.stderr
    r = _cli_limited(home, 0, "query", QUERY, "--executor", "inprocess")
    assert r.returncode == 0 and "tiny0" in r.stdout, r.stdout + r.stderr
    r = _cli_limited(home, 0, "pools", "add", "small", "WHERE dim <= 8")
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out and "is full" in out, out
    r = _cli_limited(home, 0, "doctor", "--json")
    assert '"unwritable"' in r.stdout and '"corrupt"' not in r.stdout, r.stdout + r.stderr
    _assert_intact(home, "toy")


def test_rlimit_fsize_is_a_real_fault_here(tmp_path: Path) -> None:
    """The fault the two tests above rely on: writes past RLIMIT_FSIZE fail with EFBIG."""
    code = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000)); "
        f"f = open({str(tmp_path / 'f')!r}, 'wb', buffering=0); f.write(b'x' * 1000); "
        "f.write(b'x')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr
    assert resource.RLIMIT_FSIZE and signal.SIGXFSZ


# ---- state saved by older versions -------------------------------------------------------------


def test_a_pool_saved_with_a_64_bit_overflow_is_listed_as_invalid(home: Path) -> None:
    with Registry.open(home) as reg, reg.transaction():  # as an older version saved it
        reg.db["pools"].insert(
            {"name": "huge", "filter": "WHERE params < 9223372036854775808", "description": ""}
        )
    r = cli(home, "pools", "list", "--json")
    assert r.exit_code == 0, r.output
    (row,) = [p for p in json.loads(r.output) if p["name"] == "huge"]
    assert str(row["models"]).startswith("invalid: ") and "out of range" in row["models"]
    assert cli(home, "pools", "list").exit_code == 0
    r = cli(home, "query", "SELECT top 1 FROM pool huge WHERE task=toy", "--executor", "inprocess")
    assert r.exit_code == 1 and "out of range" in r.output, r.output


def test_doctor_repair_removes_scores_under_stale_keys(home: Path) -> None:
    with Registry.open(home) as reg:
        good = {r["model_sha"] for r in reg.db.query("SELECT model_sha FROM scores")}
        assert len(good) == 2
        sha = reg.get_model("tiny0").sha256
        row = next(iter(reg.db.query("SELECT * FROM scores")))
        with reg.transaction():  # a key from before preprocessing was part of it, and a removed
            for key in (sha, "0" * 64 + "+0123456789abcdef"):  # model's key
                reg.db["scores"].insert({**row, "model_sha": key, "score": 0.5})
    r = cli(home, "doctor", "--json")
    assert r.exit_code == 1
    (f,) = [f for f in json.loads(r.output)["findings"] if f["check"] == "scores"]
    assert f["severity"] == "orphan" and f["message"].startswith("2 cached scores under 2")
    assert cli(home, "doctor", "--repair").exit_code == 0
    with Registry.open(home) as reg:
        assert {r["model_sha"] for r in reg.db.query("SELECT model_sha FROM scores")} == good
    r = cli(home, "query", QUERY, "--executor", "inprocess", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["timings"]["index_ms"] == 0.0
