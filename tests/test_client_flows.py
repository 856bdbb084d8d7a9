"""The same flows through the Python client and through the CLI: every command is one Client
method, so both must leave a home in the same state and fail with the same messages. State is
read back through a separate client; real ONNX models, SQLite and hnswlib indexes throughout
(in-process executor: Ray is not the point here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn
from PIL import Image
from records import fake_model, fake_task
from rich.console import Console
from typer.testing import CliRunner

import shift
import shift.cli
from shift.errors import NotFoundError, ShiftError
from shift.records import Samples

N = 40  # samples in the toy task


class ViaClient:
    """Each step is one call of a fresh client, as a Python user would make it."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with shift.connect(self.home, executor="inprocess") as c:
            return getattr(c, method)(*args, **kwargs)

    def add_model(self, path: Path, name: str, **meta: Any) -> None:
        self._call("add_model", path, name, **meta)

    def drop_model(self, name: str) -> None:
        self._call("drop_model", name)

    def add_pool(self, name: str, condition: str) -> None:
        self._call("add_pool", name, condition)

    def drop_pool(self, name: str) -> None:
        self._call("drop_pool", name)

    def add_task(self, name: str, path: Path, **opts: Any) -> None:
        self._call("add_task", name, path, **opts)

    def append(self, name: str, path: Path) -> int:
        return self._call("append", name, path)[1]

    def relabel(self, name: str, npz: Path) -> None:
        self._call("relabel", name, npz)

    def drop_task(self, name: str) -> None:
        self._call("drop_task", name)

    def index(self, task: str, pool: str = "all") -> tuple[int, int]:
        rep = self._call("index", task, pool=pool)
        assert rep.failed == {}
        return len(rep.embedded), sum(rep.embedded.values())

    def finetune(self, task: str, models: list[str] | None, pool: str) -> list[str]:
        return [r.model for r in self._call("finetune", task, models, pool=pool, epochs=1)]

    def doctor(self) -> list[tuple[str, str]]:
        return [(f.severity, f.check) for f in self._call("doctor").findings]

    def query(self, text: str) -> list[str]:
        return self._call("query", text).names


class ViaCli:
    """Each step is one ``shift`` command; exit 1 becomes a ShiftError carrying stderr."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> str:
        r = self.runner.invoke(shift.cli.app, [*args, "--home", str(self.home)])
        if r.exception is not None:  # a clean exit, never an escaped exception
            assert isinstance(r.exception, SystemExit), repr(r.exception)
        assert "Traceback" not in r.output
        if r.exit_code not in ok_codes or (r.exit_code and not r.stdout):  # an error, not a report
            assert r.exit_code == 1 and r.stdout == "", r.output
            raise ShiftError(r.stderr)
        return r.stdout

    def add_model(self, path: Path, name: str, **meta: Any) -> None:
        args = ["models", "add", str(path), "--name", name]
        for key, value in meta.items():
            for v in value if isinstance(value, list) else [value]:
                args += [f"--{key.removesuffix('s').replace('_', '-')}", str(v)]
        assert f"registered {name}:" in self.run(*args)

    def drop_model(self, name: str) -> None:
        assert f"removed {name}" in self.run("models", "remove", name)

    def add_pool(self, name: str, condition: str) -> None:
        assert f"pool {name}:" in self.run("pools", "add", name, condition)

    def drop_pool(self, name: str) -> None:
        assert f"removed pool {name}" in self.run("pools", "remove", name)

    def add_task(self, name: str, path: Path, **opts: Any) -> None:
        kind = "--images" if path.is_dir() else "--npz"
        extra = [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        assert f"task {name}:" in self.run("tasks", "add", name, kind, str(path), *extra)

    def append(self, name: str, path: Path) -> int:
        kind = "--images" if path.is_dir() else "--npz"
        out = self.run("tasks", "append", name, kind, str(path))
        return int(re.search(r": \+(\d+) samples", out).group(1))

    def relabel(self, name: str, npz: Path) -> None:
        assert "relabelled" in self.run("tasks", "relabel", name, "--npz", str(npz))

    def drop_task(self, name: str) -> None:
        assert f"removed task {name}" in self.run("tasks", "remove", name)

    def index(self, task: str, pool: str = "all") -> tuple[int, int]:
        out = self.run("index", task, "--pool", pool, "--executor", "inprocess")
        m = re.search(rf"indexed {task}: (\d+) models embedded \(([\d,]+) samples\)", out)
        assert m and "0 failed" in out, out
        return int(m.group(1)), int(m.group(2).replace(",", ""))

    def finetune(self, task: str, models: list[str] | None, pool: str) -> list[str]:
        args = [a for m in models or [] for a in ("--model", m)]
        out = self.run("finetune", task, *args, "--pool", pool, "--epochs", "1", "--json")
        return [r["model"] for r in json.loads(out)]

    def doctor(self) -> list[tuple[str, str]]:
        data = json.loads(self.run("doctor", "--json", ok_codes=(0, 1)))
        return [(f["severity"], f["check"]) for f in data["findings"]]

    def query(self, text: str) -> list[str]:
        res = json.loads(self.run("query", text, "--json", "--executor", "inprocess"))
        return [r["name"] for r in res["rows"]]


@pytest.fixture(params=["client", "cli"])
def front(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(shift.cli.base, "out", Console(width=250))
    monkeypatch.setattr(shift.cli.base, "err", Console(width=250, stderr=True))
    monkeypatch.delenv("SHIFT_HOME", raising=False)
    home = tmp_path / "home"
    return ViaClient(home) if request.param == "client" else ViaCli(home)


def reader(front: Any) -> shift.Client:
    """A separate client on the same home, to read back what a flow left there."""
    return shift.connect(front.home, executor="inprocess")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("flow_models")
    for i in range(2):
        build_tiny_cnn(d / f"m{i}.onnx", seed=i)
    return [d / f"m{i}.onnx" for i in range(2)]


def toy(n: int = N, seed: int = 0, offset: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40 + offset).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


def write_npz(path: Path, s: Samples) -> Path:
    np.savez(path, x=s.images, y=s.labels)
    return path


def write_pngs(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"s{seed}-{i:03d}.png")
    return root


# ---- models and pools ------------------------------------------------------------------------


def test_models_flow(front: Any, onnx_files: list[Path]) -> None:
    front.add_model(
        onnx_files[0], "tiny-a", imagenet_top1=61.5, imagenet_source="a test", tags=["x", "y"]
    )
    with reader(front) as c:
        rec = c.model("tiny-a")
        assert (rec.dim, rec.head_output, rec.head_classes) == (16, "logits", 10)
        assert (rec.imagenet_top1, rec.imagenet_source, rec.tags) == (61.5, "a test", ["x", "y"])
        stored = c.registry.model_file(rec)
        assert stored.read_bytes() == onnx_files[0].read_bytes()
    with pytest.raises(ShiftError, match="already exists"):
        front.add_model(onnx_files[0], "tiny-a")
    with pytest.raises(ShiftError, match="invalid model name"):
        front.add_model(onnx_files[0], "../evil")
    with pytest.raises(ShiftError, match="imagenet_source"):
        front.add_model(onnx_files[1], "no-source", imagenet_top1=70.0)
    front.drop_model("tiny-a")
    with reader(front) as c:
        assert c.models() == []
    assert not stored.exists()
    with pytest.raises(ShiftError, match="no model named 'tiny-a'"):
        front.drop_model("tiny-a")


def test_pools_flow(front: Any) -> None:
    with reader(front) as c:
        for name, params in (("small", 5_000_000), ("big", 90_000_000)):
            arch = "resnet50" if name == "small" else None  # the resnet50 pool's member
            c.registry.add_model(fake_model(name, params=params, dim=256, architecture=arch))
    front.add_pool("tiny", "WHERE params < 10M")
    with reader(front) as c:
        assert c.pool("tiny").filter == "params < 10M"
        assert [m.name for m in c.models("tiny")] == ["small"]
        assert (c.pool_size("tiny"), c.pool_size("all"), c.pool_size("resnet50")) == (1, 2, 1)
    assert front.query("SELECT * FROM pool tiny") == ["small"]
    with pytest.raises(ShiftError, match="unknown column 'parms'"):
        front.add_pool("bad", "WHERE parms < 10M")
    with pytest.raises(ShiftError, match="built-in"):
        front.add_pool("resnet50", "dim < 3")
    front.drop_pool("tiny")
    with pytest.raises(ShiftError, match="no pool named 'tiny'"):
        front.drop_pool("tiny")
    with reader(front) as c:
        assert "tiny" not in [p.name for p in c.pools()]
        with pytest.raises(NotFoundError, match="no pool named 'tiny'") as e:
            c.models("tiny")
        assert "pools: all, resnet50" in (e.value.hint or "")


# ---- tasks -----------------------------------------------------------------------------------


def test_tasks_flow(front: Any, tmp_path: Path) -> None:
    front.add_task("toy", write_npz(tmp_path / "toy.npz", toy()), seed=3)
    front.add_task("pics", write_pngs(tmp_path / "pics", {"cat": 5, "dog": 5}))
    with reader(front) as c:
        t = c.task("toy")
        assert (t.kind, t.num_samples, t.num_classes) == ("npz", N, 4)
        assert t.source == str(tmp_path / "toy.npz")
        p = c.task("pics")
        assert (p.kind, p.num_samples, p.classes) == ("images", 10, ["cat", "dog"])
    # append: only new samples count; a new class extends the class list
    assert front.append("pics", write_pngs(tmp_path / "more", {"dog": 2, "eel": 3}, seed=1)) == 5
    assert front.append("toy", write_npz(tmp_path / "more.npz", toy(8, seed=5))) == 8
    with reader(front) as c:
        assert c.task("pics").classes == ["cat", "dog", "eel"]
        before = c.task("toy")
        assert before.num_samples == N + 8
        n = before.num_samples
    np.savez(tmp_path / "labels.npz", y=np.arange(n) % 2)
    front.relabel("toy", tmp_path / "labels.npz")
    with reader(front) as c:
        after = c.task("toy")
        assert after.data_hash == before.data_hash  # same images: indexes stay valid
        assert after.content_hash != before.content_hash
        assert {r["label"] for r in c.registry.samples("toy")} == {0, 1}
    np.savez(tmp_path / "short.npz", y=np.zeros(3, dtype=np.int64))
    with pytest.raises(ShiftError, match="label"):
        front.relabel("toy", tmp_path / "short.npz")
    with pytest.raises(ShiftError, match="no task named 'nope'"):
        front.append("nope", tmp_path / "more.npz")
    front.drop_task("pics")
    with reader(front) as c:
        assert [t.name for t in c.tasks()] == ["toy"]
        assert not (c.home.tasks_dir / "pics").exists()


# ---- index, query, doctor, finetune ----------------------------------------------------------


def test_index_query_doctor_flow(front: Any, onnx_files: list[Path], tmp_path: Path) -> None:
    for i, f in enumerate(onnx_files):
        front.add_model(f, f"tiny{i}", imagenet_top1=50.0 + i, imagenet_source="test")
    front.add_task("toy", write_npz(tmp_path / "toy.npz", toy()))
    assert front.index("toy") == (2, 2 * N)
    assert front.index("toy") == (0, 0)  # everything reused
    assert front.append("toy", write_npz(tmp_path / "more.npz", toy(8, seed=7, offset=3))) == 8
    front.add_pool("first", "WHERE name = 'tiny0'")
    assert front.index("toy", pool="first") == (1, 8)  # only the new samples, only the pool
    with reader(front) as c:
        counts = {m: e["count"] for m, e in c.registry.index_entries("toy").items()}
        assert counts == {"tiny0": N + 8, "tiny1": N}
        want = c.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY knn").names
    assert front.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY knn") == want
    assert front.doctor() == []
    with pytest.raises(ShiftError, match="no pool named 'nope'"):
        front.index("toy", pool="nope")
    with pytest.raises(ShiftError, match="no task named 'nada'"):
        front.index("nada")


def test_doctor_on_a_home_without_registry(front: Any) -> None:
    with pytest.raises(ShiftError, match="no shift registry"):
        front.doctor()
    assert not front.home.exists()  # checking a mistyped home does not create one


def test_finetune_resolves_models_and_protocol(front: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client picks the models (named, or the pool's) and the protocol; the fine-tuning
    itself is tests/test_finetune.py's (replaced here by a recorder)."""
    from shift.tools import finetune as ft

    calls: list[tuple[str, list[str], Any]] = []

    def fake_many(registry: Any, task: str, models: list[str], proto: Any, **kw: Any) -> list:
        calls.append((task, models, proto))
        return [ft.FinetuneResult(task, m, "h", "s", proto, 0.5, 0.0, proto.epochs) for m in models]

    monkeypatch.setattr(ft, "finetune_many", fake_many)
    with reader(front) as c:
        for name, params in (("small", 5_000_000), ("big", 90_000_000)):
            arch = "resnet50" if name == "small" else None  # the resnet50 pool's member
            c.registry.add_model(fake_model(name, params=params, dim=256, architecture=arch))
        c.registry.put_task(fake_task("toy"))
    assert front.finetune("toy", None, "resnet50") == ["small"]
    assert front.finetune("toy", ["big", "small"], "all") == ["big", "small"]
    assert [(t, m, p.epochs) for t, m, p in calls] == [
        ("toy", ["small"], 1),
        ("toy", ["big", "small"], 1),
    ]
    with pytest.raises(ShiftError, match="no task named 'nope'"):
        front.finetune("nope", None, "all")
    assert len(calls) == 2


# ---- a home built entirely from Python -------------------------------------------------------


def test_a_home_built_entirely_from_python(tmp_path: Path, onnx_files: list[Path]) -> None:
    """Add models, add a task, index, append, query: nothing but Client methods."""
    pd = pytest.importorskip("pandas")
    extra = build_tiny_cnn(tmp_path / "m9.onnx", seed=9, dim=8, classes=None)
    with shift.connect(tmp_path / "home", executor="inprocess") as c:
        for i, f in enumerate(onnx_files):
            c.add_model(f, f"tiny{i}", imagenet_top1=60.0 + i, imagenet_source="test")
        c.add_model(extra.path, "headless", family="tiny", tags=["expert"])
        assert [m.name for m in c.models()] == ["headless", "tiny0", "tiny1"]
        rec = c.add_task("toy", toy(), source="generated in a test")
        assert (rec.kind, rec.source, rec.num_samples) == ("generated", "generated in a test", N)
        assert c.task_is_current("toy", toy())
        rep = c.index("toy")
        assert rep.embedded == {"tiny0": N, "tiny1": N, "headless": N} and rep.failed == {}
        calls = c.engine.executor.inference_calls
        _, added = c.append("toy", toy(8, seed=7, offset=3))
        assert added == 8 and not c.task_is_current("toy", toy())
        res = c.query("SELECT top 2 FROM pool all WHERE task=toy RANK BY hybrid(knn)")
        assert c.engine.last_report.embedded == {"tiny0": 8, "tiny1": 8, "headless": 8}
        assert c.engine.executor.inference_calls > calls
        assert res.names[0] == "tiny1"  # the task-agnostic pick: highest ImageNet top-1
        assert len(set(res.names)) == 2
        df = res.to_pandas()
        assert isinstance(df, pd.DataFrame)
        assert list(df["name"]) == res.names
        assert list(df.columns[: len(res.columns)]) == res.columns
        built = c.select(2).where(task="toy").rank("hybrid", "knn").run()
        assert built.rows == res.rows
        assert c.doctor().ok
