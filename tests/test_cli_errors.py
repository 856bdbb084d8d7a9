"""Answers to typos and wrong values (issue 21, item 5): unknown names are caught fast with a
"did you mean" (a model source's names are checked without importing its library, once they
are remembered), option values are validated, help shows plain types and an example, and
``--version`` exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import typer
from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn
from records import fake_model

import shift.cli
from shift.catalog.onnx_import import register_onnx
from shift.records import Samples
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


def command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every leaf command of the click group, as its space-separated path."""
    out: list[str] = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        if hasattr(cmd, "commands"):
            out += command_paths(cmd, (*prefix, name))
        else:
            out.append(" ".join((*prefix, name)))
    return out


def _run(args: list[str], cache: Path) -> tuple[subprocess.CompletedProcess[str], float, list[str]]:
    """``python -X importtime -m shift.cli ARGS`` with its own source-name cache: the process,
    its wall time and the modules it imported."""
    env = {**os.environ, "SHIFT_CACHE_DIR": str(cache), "COLUMNS": "200"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shift.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    seconds = time.perf_counter() - t0
    imported = [
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    stderr = "\n".join(x for x in proc.stderr.splitlines() if not x.startswith("import time:"))
    return (
        subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr),
        seconds,
        imported,
    )


@pytest.mark.slow  # ~8 s: a fresh interpreter per source, each measured without torch
def test_a_torchvision_typo_is_answered_without_importing_torch(tmp_path: Path) -> None:
    cache, home = tmp_path / "cache", tmp_path / "home"
    args = ["models", "import", "torchvision", "resnet51", "--home"]
    first, _, _ = _run([*args, str(tmp_path / "first")], cache)  # learns torchvision's names
    assert first.returncode == 1 and "did you mean 'resnet50'" in first.stderr, first.stderr
    proc, seconds, imported = _run([*args, str(home)], cache)
    assert proc.returncode == 1, proc.stderr
    assert "torchvision has no model 'resnet51'" in proc.stderr
    assert "did you mean 'resnet50'" in proc.stderr
    heavy = sorted({m.split(".")[0] for m in imported} & {"torch", "torchvision", "timm"})
    assert heavy == [], heavy
    assert seconds < 5, seconds  # about a second of Python start-up; 6.5-17 s before
    assert not home.exists()  # a typo creates no home


def test_timm_and_hf_typos_are_answered_from_the_remembered_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shift.catalog.sources import names

    cache, home = tmp_path / "cache", tmp_path / "home"
    monkeypatch.setenv("SHIFT_CACHE_DIR", str(cache))
    names.remember("timm", ["resnet50.a1_in1k", "resnet50.tv_in1k", "vit_base_patch16_224"])
    for args, typo, near in (
        (["timm", "resnet50.a1_in1kk"], "resnet50.a1_in1kk", "resnet50.a1_in1k"),
        (["hf", "timm/resnet50.a1_in1kk"], "resnet50.a1_in1kk", "resnet50.a1_in1k"),
        (["timm", "resnet5O"], "resnet5O", "resnet50"),
    ):
        proc, _, imported = _run(["models", "import", *args, "--home", str(home)], cache)
        assert proc.returncode == 1, proc.stderr
        assert f"timm has no model {typo!r}" in proc.stderr and f"did you mean {near!r}" in (
            proc.stderr
        ), proc.stderr
        assert not {m.split(".")[0] for m in imported} & {"torch", "timm"}


def test_the_remembered_names_never_refuse_what_the_source_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builders, lower-case ids and architectures pass the quick check (the source resolves
    them); a name it cannot judge (a transformers id, a folder) is left to the source."""
    from shift.catalog.sources import names
    from shift.errors import NotFoundError

    monkeypatch.setenv("SHIFT_CACHE_DIR", str(tmp_path))
    names.remember("torchvision", ["resnet50.IMAGENET1K_V1", "resnet50.IMAGENET1K_V2"])
    names.remember("timm", ["resnet50.a1_in1k"], aliases=["vit_huge_patch14_224_in21k"])
    for source, ok in (
        ("torchvision", ["resnet50", "resnet50.imagenet1k_v2", "resnet50.IMAGENET1K_V1"]),
        ("timm", ["resnet50", "resnet50.a1_in1k", "vit_huge_patch14_224_in21k"]),
        ("hf", ["timm/resnet50", "google/vit-base-patch16-224", str(tmp_path)]),
        ("vtab1k", []),
    ):
        names.check_ids(source, ok)
    with pytest.raises(NotFoundError, match="resnet51") as e:
        names.check_ids("torchvision", ["resnet50", "resnet51"])
    assert "did you mean 'resnet50'" in (e.value.hint or "")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = (rng.random((48, 32, 32, 3)) * 60 + y[:, None, None, None] * 50).astype(np.uint8)
    with Registry.open(home) as reg:
        register_onnx(reg, build_tiny_cnn(tmp_path / "m0.onnx", seed=0).path, "tiny0")
        for name in ("mobilenet-v2", "resnet50", "efficientnet-lite0"):  # metadata only
            reg.add_model(fake_model(name, path="", sha256="", weights="missing"))
        TaskStore(reg).add("toy", Samples(x, y, None, ["a", "b", "c"], []), kind="npz", source="t")
    return home


def test_unknown_names_get_a_did_you_mean(home: Path) -> None:
    for args, near in (
        (("models", "show", "mobilenet-v3"), "mobilenet-v2"),
        (("models", "remove", "resnet5"), "resnet50"),
        (("tasks", "remove", "toys"), "toy"),
        (("pools", "remove", "resnet"), "resnet50"),
        (("index", "tyo", "--executor", "inprocess"), "toy"),
    ):
        r = cli(home, *args)
        assert r.exit_code == 1, (args, r.output)
        assert f"did you mean {near!r}" in r.stderr, (args, r.stderr)


def test_option_values_are_validated(home: Path) -> None:
    assert cli(home, "index", "toy", "--executor", "inprocess").exit_code == 0
    q = "SELECT top 1 FROM pool all WHERE task=toy RANK BY knn"
    for args, message, hint in (
        (("index", "toy", "--executor", "foo"), "unknown executor 'foo'", "inprocess"),
        (("index", "toy", "--executor", "inproces"), "unknown executor", "'inprocess'"),
        (("query", q, "--executor", "rya"), "unknown executor 'rya'", "did you mean 'ray'"),
        (("query", q, "--backend", "tensorrt"), "unknown inference backend 'tensorrt'", "auto"),
        (("explain", q, "--backend", "onnxrutime"), "unknown inference backend", "'onnxruntime'"),
        (("tasks", "list", "--format", "yaml"), "unknown format 'yaml'", "jsonl"),
    ):
        r = cli(home, *args)
        assert r.exit_code != 0, (args, r.output)
        text = " ".join(r.output.split())
        assert message in text and hint in text, (args, text)
        assert "Traceback" not in r.output


def test_help_shows_plain_types_and_an_example() -> None:
    commands = command_paths(typer.main.get_command(shift.cli.app))
    env = {"COLUMNS": "150", "TERM": "dumb"}
    for path in ["", "models", "models import", *commands]:
        r = runner.invoke(shift.cli.app, [*path.split(), "--help"], env=env)
        assert r.exit_code == 0, (path, r.output)
        text = r.output
        for odd in ("<bool>", "<str>", "<int>", "<float>", "<path>", "list[", "{"):
            assert odd not in text, (path, odd, text)
        if path in commands:
            assert "Example" in text and f"shift-cli {path}" in text, (path, text)
    r = runner.invoke(shift.cli.app, ["models", "add", "--help"], env=env)
    usage = next(line for line in r.output.splitlines() if "Usage:" in line)
    assert usage.split()[-1] == "FILE", usage
    assert "TEXT" in r.output and ("NUMBER" in r.output or "FLOAT" in r.output)


def test_version() -> None:
    r = runner.invoke(shift.cli.app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout == f"shift-cli {version('shift')}\n"
