"""``shift doctor --repair`` never deletes what it does not recognise (issue 12, item 4): a home is
marked as one, repair refuses an unmarked folder, and foreign files are listed and left where
they are, never moved (issue 20, item 3)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn
from typer.testing import CliRunner

import shift
import shift.cli
from shift.catalog.onnx_import import register_onnx
from shift.config import HOME_MARKER, Home
from shift.records import Samples
from shift.store.index.meta import IndexKey
from shift.store.index.store import IndexStore
from shift.store.registry import Registry
from shift.store.tasks import TaskStore
from shift.tools.doctor import doctor

KNN = "SELECT top 2 FROM pool all WHERE task=toy RANK BY knn"


def toy_samples(n: int = 64) -> Samples:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 4
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("safety_models")
    return [build_tiny_cnn(d / f"m{i}.onnx", seed=i).path for i in range(2)]


def indexed_home(home: Path, files: list[Path]) -> Path:
    with Registry.open(home) as reg:
        for i, f in enumerate(files):
            register_onnx(reg, f, f"tiny{i}")
        TaskStore(reg).add("toy", toy_samples(), kind="npz", source="gen")
    with shift.connect(home, executor="inprocess") as c:
        c.query(KNN)
    return home


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative path -> content."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_new_home_is_marked_and_an_old_one_on_first_open(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "new")
    Registry(home).close()
    assert home.marker_path.is_file() and home.marker_path.name == HOME_MARKER
    home.marker_path.unlink()  # a home from before the marker
    Registry(home).close()
    assert home.is_marked()
    # a folder whose registry.db is another program's database is not marked by opening it
    other = Home.resolve(tmp_path / "other")
    other.registry_dir.mkdir()
    with sqlite3.connect(other.db_path) as conn:
        conn.execute("CREATE TABLE notes (text)")
    other.ensure()
    assert not other.is_marked()


def test_repair_refuses_a_folder_that_is_not_a_home(tmp_path: Path) -> None:
    from shift.errors import NotAHomeError

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "resnet.pt").write_bytes(b"weights")
    (project / "tasks").mkdir()
    (project / "tasks" / "notes.md").write_text("notes")
    with sqlite3.connect(project / "registry.db") as conn:
        conn.execute("CREATE TABLE runs (id INTEGER, loss REAL)")
        conn.execute("INSERT INTO runs VALUES (1, 0.5)")
    before = tree(project)
    with pytest.raises(NotAHomeError, match="not marked as a shift home") as e:
        doctor(project, repair=True, grace_s=0)
    assert e.value.hint and HOME_MARKER in e.value.hint
    rep = doctor(project)  # a check changes nothing either, and says what it is
    assert [(f.severity, f.check) for f in rep.findings] == [("corrupt", "registry")]
    assert "not a shift registry" in rep.findings[0].message
    assert tree(project) == before  # no file touched, no shift table added, no marker
    r = CliRunner().invoke(shift.cli.app, ["doctor", "--repair", "--home", str(project)])
    assert r.exit_code == 1 and "not marked as a shift home" in r.output
    assert "Traceback" not in r.output and tree(project) == before


def test_repair_of_an_old_unmarked_home_marks_it(tmp_path: Path, onnx_files: list[Path]) -> None:
    home = indexed_home(tmp_path / "home", onnx_files)
    (home / HOME_MARKER).unlink()
    rep = doctor(home, repair=True, grace_s=0)
    assert rep.ok and rep.findings == [] and (home / HOME_MARKER).is_file()


def test_repair_leaves_what_it_does_not_know_where_it_is(
    tmp_path: Path, onnx_files: list[Path]
) -> None:
    home = indexed_home(tmp_path / "home", onnx_files)
    with Registry.open(home) as reg:
        rec, m = reg.get_task("toy"), reg.get_model("tiny0")
        reg.remove_model("tiny1")  # its index folder is now an orphan
        names = (reg.model_names(), reg.task_names(), len(reg.samples("toy")))
    idx_dir = home / "indexes"
    foreign = {  # a project's files where shift keeps its own
        "models/resnet50.pt": b"torch weights",
        "tasks/notes.md": b"my notes",
        "tasks/experiment1/img0.png": b"png",
        "tasks/experiment1/sub/labels.csv": b"a,1",
        "tasks/toy/README.txt": b"about toy",
        "indexes/run3/results.csv": b"acc,0.9",
        "indexes/toy/tiny0/notes.txt": b"index notes",
        "indexes/toy/tiny1/keep-me.txt": b"in an orphan index",
        "indexes/toy/tiny0/parts-00000000000000ab/mine.txt": b"in leftover parts",
        "indexes/summary.json": b"{}",
    }
    for rel, data in foreign.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(data)
    # shift's own leftovers, which are still removed
    (idx_dir / "toy" / "tiny0" / "parts-00000000000000cd").mkdir()
    (idx_dir / "gone" / "tiny0").mkdir(parents=True)

    rep = doctor(home, grace_s=0)
    assert not rep.ok and not rep.corrupt
    listed = {Path(f.path).relative_to(home).as_posix() for f in rep.findings if f.path}
    for rel in ["models/resnet50.pt", "tasks/notes.md", "tasks/experiment1", "indexes/run3"]:
        assert rel in listed, (rel, listed)
    assert all(f.severity == "foreign" for f in rep.findings if "tiny1/keep-me" in str(f.path))
    assert all(f.action for f in rep.problems), rep.problems
    assert all(not f.repairable for f in rep.findings if f.severity == "foreign")

    rep = doctor(home, repair=True, grace_s=0)
    assert rep.ok, rep.problems
    assert not (home / "quarantine").exists()  # nothing is moved anywhere
    for rel, data in foreign.items():
        assert (home / rel).read_bytes() == data, rel  # same place, same bytes
    assert not (idx_dir / "gone").exists()
    assert not (idx_dir / "toy" / "tiny0" / "parts-00000000000000cd").exists()
    # the orphan index of tiny1 lost shift's files; the folder stays for the file it holds
    assert sorted(p.name for p in (idx_dir / "toy" / "tiny1").iterdir()) == ["keep-me.txt"]
    after = doctor(home, grace_s=0)
    assert after.ok and {f.severity for f in after.findings} == {"foreign"}, [
        (f.severity, f.path, f.message) for f in after.findings
    ]
    # nothing registered was touched: the model, the task and its index are all there
    with Registry.open(home) as reg:
        assert (reg.model_names(), reg.task_names(), len(reg.samples("toy"))) == names
        assert reg.model_file(reg.get_model("tiny0")).is_file()
    key = IndexKey.of(rec.data_hash, m)
    assert IndexStore(idx_dir / "toy" / "tiny0").open(key) is not None


def test_foreign_files_of_any_age_are_listed_not_problems(
    tmp_path: Path, onnx_files: list[Path]
) -> None:
    home = indexed_home(tmp_path / "home", onnx_files)
    notes = home / "tasks" / "notes.md"
    notes.write_text("being written")
    for grace in (300.0, 0.0):
        rep = doctor(home, repair=True, grace_s=grace)
        assert notes.read_text() == "being written"
        assert rep.ok and [(f.severity, f.path) for f in rep.findings] == [("foreign", str(notes))]
        assert "left where it is" in rep.findings[0].message
