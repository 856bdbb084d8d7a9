"""Homes are created only on purpose, failures leave no debris, a read-only home that needs a
migration still reads (issue 20, items 3, 4 and 7):

* a read command on a folder without a registry says there is no home there and writes nothing;
  a write creates a home only in a missing or empty folder; ``shift-cli init PATH [--force]``
  makes one on purpose;
* ``doctor --repair`` lists what shift did not write and leaves it where it is;
* after a failed ``tasks add`` and a failed index build, ``doctor`` finds nothing;
* a read-only home whose registry needs a migration is read through a migrated in-memory copy,
  so cached queries work as the read-only hint says.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn
from PIL import Image

import shift
import shift.cli
from shift.catalog.onnx_import import register_onnx
from shift.config import HOME_MARKER
from shift.errors import NotAHomeError
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore
from shift.tools.doctor import doctor

QUERY = "SELECT top 2 FROM pool all WHERE task=toy"


def listing(root: Path) -> list[tuple[str, str, bytes]]:
    """Everything under ``root`` (itself included): path, kind and, for a file, its bytes."""
    if not root.exists():
        return []
    out = [(".", "dir", b"")]
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out.append((rel, "file", p.read_bytes()) if p.is_file() else (rel, "dir", b""))
    return out


def samples(n: int = 48, seed: int = 0, classes: int = 3) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 50).astype(np.uint8)
    return Samples(x, y, None, [str(c) for c in range(classes)], [])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder that is not a shift home: a fine-tuned checkpoint and notes."""
    p = tmp_path / "project"
    (p / "models").mkdir(parents=True)
    (p / "models" / "ft.pt").write_bytes(b"my fine-tuned weights")
    (p / "notes.md").write_text("experiment notes\n")
    (p / "tasks").mkdir()
    (p / "tasks" / "labels.csv").write_text("a,1\n")
    return p


# ---- item 3: homes are created only on purpose -------------------------------------------------

READS = [
    ("models", "list"),
    ("models", "show", "x"),
    ("tasks", "list"),
    ("pools", "list"),
    ("query", "SELECT * FROM models"),
    ("explain", "SELECT * FROM models"),
    ("index", "toy", "--executor", "inprocess"),
    ("doctor",),
    ("doctor", "--repair"),
]


def _no_home(r, where: Path) -> None:  # noqa: ANN001
    assert r.exit_code == 1, r.output
    assert f"no shift home at {where}" in r.output, r.output
    assert "shift-cli init" in r.output, r.output  # the hint says how to make one


def test_a_read_on_a_folder_that_is_not_a_home_writes_nothing(project: Path) -> None:
    before = listing(project)
    for args in READS:
        _no_home(cli(project, *args), project)
        assert listing(project) == before, args
    for args in [("models", "list"), ("tasks", "list")]:  # through $SHIFT_HOME, as reported
        r = runner.invoke(shift.cli.app, list(args), env={"SHIFT_HOME": str(project)})
        _no_home(r, project)
        assert listing(project) == before, args


def test_a_read_on_a_missing_or_empty_folder_creates_nothing(tmp_path: Path) -> None:
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for where in (missing, empty):
        for args in READS:
            _no_home(cli(where, *args), where)
    assert not missing.exists() and list(empty.iterdir()) == []


def test_a_write_creates_a_home_only_in_a_missing_or_empty_folder(
    tmp_path: Path, project: Path
) -> None:
    data = tmp_path / "toy.npz"
    s = samples()
    np.savez(data, x=s.images, y=s.labels)
    before = listing(project)
    for args in [
        ("tasks", "add", "toy", "--npz", str(data)),
        ("pools", "add", "small", "WHERE dim <= 8"),
    ]:
        r = cli(project, *args)
        assert r.exit_code == 1, r.output
        assert "not a shift home" in r.output and "init" in r.output and "--force" in r.output
        assert listing(project) == before
    with pytest.raises(NotAHomeError, match="not a shift home"):
        shift.connect(project).tasks()
    assert listing(project) == before
    # a missing folder and an empty one become homes on the first write, as before
    empty = tmp_path / "empty"
    empty.mkdir()
    for where in (tmp_path / "new" / "home", empty):
        r = cli(where, "tasks", "add", "toy", "--npz", str(data))
        assert r.exit_code == 0, r.output
        assert (where / HOME_MARKER).is_file() and (where / "registry.db").is_file()
        assert "toy" in cli(where, "tasks", "list").output
    with shift.connect(tmp_path / "py") as c:  # the Python client too, on first use
        assert c.tasks() == []
    assert (tmp_path / "py" / HOME_MARKER).is_file()


def test_init_creates_a_home_and_asks_before_taking_over_a_folder(
    tmp_path: Path, project: Path
) -> None:
    new = tmp_path / "fresh"
    r = runner.invoke(shift.cli.app, ["init", str(new)])
    assert r.exit_code == 0, r.output
    assert (new / HOME_MARKER).is_file() and (new / "registry.db").is_file()
    assert cli(new, "models", "list").exit_code == 0
    r = runner.invoke(shift.cli.app, ["init", str(new)])  # again: nothing to do
    assert r.exit_code == 0 and "already a shift home" in r.output, r.output

    before = listing(project)
    r = runner.invoke(shift.cli.app, ["init", str(project)])
    assert r.exit_code == 1 and "--force" in r.output and "not empty" in r.output, r.output
    assert listing(project) == before
    r = runner.invoke(shift.cli.app, ["init", str(project), "--force"])
    assert r.exit_code == 0, r.output
    assert (project / HOME_MARKER).is_file()
    for rel, kind, data in before:  # the folder's own files are untouched
        assert (project / rel).exists() and (kind == "dir" or (project / rel).read_bytes() == data)
    r = cli(project, "models", "list")
    assert r.exit_code == 0 and "0 models" in r.output

    other = tmp_path / "other"  # another program's registry.db: never turned into a home
    other.mkdir()
    import sqlite3

    with sqlite3.connect(other / "registry.db") as conn:
        conn.execute("CREATE TABLE runs (id INTEGER)")
    before = listing(other)
    r = runner.invoke(shift.cli.app, ["init", str(other), "--force"])
    assert r.exit_code == 1 and "not a shift registry" in r.output, r.output
    assert listing(other) == before
    r = cli(other, "tasks", "list")
    assert r.exit_code == 1 and listing(other) == before


def test_doctor_lists_foreign_files_and_never_moves_them(project: Path) -> None:
    assert runner.invoke(shift.cli.app, ["init", str(project), "--force"]).exit_code == 0
    foreign = {"models/ft.pt", "tasks/labels.csv"}
    rep = doctor(project, grace_s=0)
    flagged = {Path(f.path).relative_to(project).as_posix() for f in rep.findings if f.path}
    assert foreign <= flagged, flagged
    assert rep.ok, rep.problems  # listed, not a problem: they are the folder's own files
    before = listing(project)
    r = cli(project, "doctor", "--repair", "--grace", "0")
    assert r.exit_code == 0, r.output
    assert "ft.pt" in r.output and "labels.csv" in r.output
    after = listing(project)
    assert [e for e in after if e[0] != "registry.db" and not e[0].startswith("registry.db-")] == [
        e for e in before if e[0] != "registry.db" and not e[0].startswith("registry.db-")
    ]
    assert not (project / "quarantine").exists()


# ---- item 4: failures clean up after themselves ------------------------------------------------


def _clean(home: Path) -> None:
    rep = doctor(home, grace_s=0)
    assert rep.findings == [], [(f.severity, f.path, f.message) for f in rep.findings]
    for args in (("doctor",), ("doctor", "--grace", "0")):
        r = cli(home, *args)
        assert r.exit_code == 0 and "0 orphan, 0 leftover" in r.output, r.output


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def test_a_failed_tasks_add_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shift.store.images

    monkeypatch.setattr(shift.store.images, "BATCH_BYTES", 16 * 16 * 3 * 2)  # 2 images a chunk
    home = tmp_path / "home"
    s = samples()
    np.savez(tmp_path / "ok.npz", x=s.images, y=s.labels)
    assert cli(home, "tasks", "add", "ok", "--npz", str(tmp_path / "ok.npz")).exit_code == 0
    bad = {
        "one-class": dict(x=s.images[:10], y=np.zeros(10, np.int64)),
        "no-val": dict(x=s.images[:10], y=np.arange(10) % 2, split=np.array(["train"] * 10)),
        "unseen-val": dict(
            x=s.images[:8], y=np.array([0, 0, 1, 1, 0, 2, 2, 3]), split=np.array([0] * 4 + [1] * 4)
        ),
    }
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
    imgs = tmp_path / "imgs"  # an undecodable image, met after chunks were already staged
    for c in ("a", "b"):
        (imgs / c).mkdir(parents=True)
        for i in range(4):
            _png(imgs / c / f"{i}.png", i + 10 * (c == "b"))
    (imgs / "b" / "z-bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = listing(home / "tasks")
    for name in bad:
        r = cli(home, "tasks", "add", name.replace("-", ""), "--npz", str(tmp_path / f"{name}.npz"))
        assert r.exit_code == 1, r.output
    r = cli(home, "tasks", "add", "imgs", "--images", str(imgs))
    assert r.exit_code == 1 and "z-bad.png" in r.output, r.output
    assert listing(home / "tasks") == before
    _clean(home)


def test_a_failed_index_build_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        register_onnx(reg, build_tiny_cnn(tmp_path / "ok.onnx", seed=0).path, "ok")
        register_onnx(reg, build_tiny_cnn(tmp_path / "nan.onnx", seed=1, nan=True).path, "nan")
        TaskStore(reg).add("toy", samples(), kind="npz", source="t")
    r = cli(home, "index", "toy", "--executor", "inprocess")
    assert r.exit_code == 1 and "nan" in r.output, r.output
    assert not (home / "indexes" / "toy" / "nan").exists()
    _clean(home)
    # the model is fixed (re-registered with good weights): its old file and build are gone
    fixed = build_tiny_cnn(tmp_path / "fixed.onnx", seed=2).path
    r = cli(home, "models", "add", str(fixed), "--name", "nan", "--replace")
    assert r.exit_code == 0, r.output
    r = cli(home, "index", "toy", "--executor", "inprocess")
    assert r.exit_code == 0, r.output
    _clean(home)
    # a task whose build failed for every model leaves no index folder for it either
    with Registry.open(home) as reg:
        register_onnx(reg, tmp_path / "nan.onnx", "nan2")
        TaskStore(reg).add("other", samples(seed=1), kind="npz", source="t")
    assert cli(home, "pools", "add", "broken", "WHERE name = 'nan2'").exit_code == 0
    r = cli(home, "index", "other", "--pool", "broken", "--executor", "inprocess")
    assert r.exit_code == 1 and "nan2" in r.output, r.output
    assert not (home / "indexes" / "other").exists()
    _clean(home)
    assert cli(home, "index", "other", "--executor", "inprocess").exit_code == 1  # ok, nan: built
    assert sorted(p.name for p in (home / "indexes" / "other").iterdir()) == ["nan", "ok"]
    _clean(home)


def test_a_lock_file_removed_by_its_holder_is_never_held_twice(tmp_path: Path) -> None:
    """A failed build removes its index folder, lock file included, as it releases the lock; a
    process that was waiting for that lock then locks a new file, which excludes others."""
    import threading

    from shift.store.index.lock import build_lock

    root = tmp_path / "indexes" / "toy" / "m"
    seen: list[object] = []

    def waiter() -> None:
        with build_lock(root) as got:
            seen.append(got)
            seen.append((root / ".build.lock").is_file())
            with build_lock(root, blocking=False) as other:
                seen.append(other)

    with build_lock(root):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)  # the waiter is blocked on this lock file
        assert seen == []
    t.join(timeout=30)
    assert seen == [True, True, False]
    assert not (tmp_path / "indexes" / "toy").exists()  # nothing was built: nothing left


# ---- item 7: a read-only home that needs a migration -------------------------------------------


@contextmanager
def read_only(home: Path) -> Iterator[None]:
    """``home`` read-only: a read-only bind mount as root, else chmod a-w."""
    if os.geteuid() == 0:
        r = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(home), str(home)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"running as root and cannot bind-mount read-only: {r.stderr!r}")
        try:
            yield
        finally:
            gc.collect()  # a connection a failed command left open would keep the mount busy
            if subprocess.run(["umount", str(home)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(home)], check=True)
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


def test_a_read_only_home_that_needs_a_migration_still_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlite_utils import Migrations

    from shift.store.migrations import migrations

    home = tmp_path / "home"
    with Registry.open(home) as reg:
        for i in range(2):
            register_onnx(reg, build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i).path, f"tiny{i}")
        TaskStore(reg).add("toy", samples(), kind="npz", source="t")
    r = cli(home, "query", QUERY, "--executor", "inprocess", "--json")
    assert r.exit_code == 0, r.output
    cached = json.loads(r.output)
    listed = cli(home, "models", "list").output

    def m999_newer_shift(db) -> None:  # noqa: ANN001 - what a newer version would add
        db["notes"].create({"id": int, "text": str}, pk="id")

    newer = [*migrations._migrations, Migrations._Migration("m999_newer_shift", m999_newer_shift)]
    monkeypatch.setattr(migrations, "_migrations", newer)
    before = listing(home)
    with read_only(home):
        r = cli(home, "models", "list")
        assert r.exit_code == 0 and r.output == listed, r.output
        assert cli(home, "tasks", "list").exit_code == 0
        r = cli(home, "query", QUERY, "--executor", "inprocess", "--json")  # cached: it works
        assert r.exit_code == 0, r.output
        got = json.loads(r.output)
        assert got["rows"] == cached["rows"] and got["scores"] == cached["scores"]
        r = cli(home, "pools", "add", "small", "WHERE dim <= 8")
        assert r.exit_code == 1 and "is read-only" in r.output, r.output
    assert listing(home) == before  # nothing migrated on disk
    r = cli(home, "models", "list")  # writable again: migrated for real
    assert r.exit_code == 0
    with Registry.open(home) as reg:
        assert "m999_newer_shift" in reg.schema_version()
