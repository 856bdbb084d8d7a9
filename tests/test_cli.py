"""The ``shift`` command line, driven through typer's CliRunner against a home in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import cli, runner, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn, tiny_torch_model
from records import fake_model
from rich.console import Console

from shift.cli import app
from shift.records import TaskRecord
from shift.store.registry import Registry


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-onnx") / "tiny.onnx"
    build_tiny_cnn(path, seed=0)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def seed_registry(home: Path) -> None:
    with Registry.open(home) as reg:
        reg.add_model(
            fake_model(
                "r50",
                params=25_557_032,
                dim=2048,
                imagenet_top1=76.1,
                imagenet_source="torchvision",
                source="torchvision",
                architecture="resnet50",
            )
        )
        reg.add_model(
            fake_model(
                "vit",
                params=86_000_000,
                dim=768,
                imagenet_top1=81.1,
                imagenet_source="torchvision",
                source="torchvision",
            )
        )
        reg.add_model(
            fake_model(
                "birds",
                params=5_000_000,
                dim=256,
                tags=["expert"],
                upstream_size=50_000,
                upstream_dataset="inat-birds",
            )
        )
        fields = {
            "name": "flowers",
            "content_hash": "c1",
            "data_hash": "d1",
            "kind": "npz",
            "source": "/data/flowers.npz",
            "num_samples": 30,
            "num_train": 20,
            "num_val": 10,
            "num_classes": 3,
        }
        reg.put_task(
            TaskRecord(**{k: v for k, v in fields.items() if k in TaskRecord.model_fields})
        )


# ---- models ----------------------------------------------------------------------------------


def test_models_add_list_show_remove(home: Path, onnx_file: Path) -> None:
    r = cli(
        home,
        "models",
        "add",
        str(onnx_file),
        "--name",
        "tiny-a",
        "--imagenet-top1",
        "61.5",
        "--imagenet-source",
        "a test",
        "--tag",
        "expert",
        "--tag",
        "small",
        "--family",
        "tiny-cnn",
    )
    assert r.exit_code == 0, r.output
    params = sum(p.numel() for p in tiny_torch_model(seed=0).parameters())
    assert f"registered tiny-a: {params:,} parameters, 16-d embedding from 'embedding'" in r.stdout
    assert "head 'logits' (10 classes)" in r.stdout

    r = cli(home, "models", "list", "--format", "table")
    assert r.exit_code == 0
    assert "1 models" in r.stdout
    r = cli(home, "models", "list")  # not a terminal: plain text, title, header, one line a row
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3
    row = next(line for line in r.stdout.splitlines() if "tiny-a" in line)
    for cell in ("tiny-cnn", f"{params:,}", "16", "61.5%", "expert, small"):
        assert cell in row, (cell, row)

    r = cli(home, "models", "list", "--json")
    listed = json.loads(r.stdout)
    assert [m["name"] for m in listed] == ["tiny-a"]
    assert listed[0]["params"] == params

    r = cli(home, "models", "show", "tiny-a")
    assert r.exit_code == 0 and "head_classes" in r.stdout and "61.5" in r.stdout
    r = cli(home, "models", "show", "tiny-a", "--json")
    assert r.exit_code == 0
    shown = json.loads(r.stdout)
    assert shown["name"] == "tiny-a"
    assert (shown["dim"], shown["head_output"], shown["head_classes"]) == (16, "logits", 10)
    assert (shown["imagenet_top1"], shown["imagenet_source"]) == (61.5, "a test")
    assert shown["tags"] == ["expert", "small"]
    assert shown["path"] == f"models/{shown['sha256']}.onnx"
    assert (home / shown["path"]).read_bytes() == onnx_file.read_bytes()

    r = cli(home, "models", "remove", "tiny-a")
    assert r.exit_code == 0 and "removed tiny-a" in r.stdout
    assert not (home / shown["path"]).exists()
    assert json.loads(cli(home, "models", "list", "--json").stdout) == []


def test_models_add_errors(home: Path, onnx_file: Path, tmp_path: Path) -> None:
    r = cli(home, "models", "add", str(onnx_file), "--name", "x", "--imagenet-top1", "70")
    assert r.exit_code == 1
    assert "imagenet_source" in r.stderr

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    r = cli(home, "models", "add", str(junk), "--name", "junk")
    assert r.exit_code == 1
    assert "junk.onnx" in r.stderr and "not a valid ONNX model" in r.stderr
    assert "hint:" in r.stderr

    r = cli(home, "models", "add", str(onnx_file), "--name", "../evil")
    assert r.exit_code == 1 and "invalid model name" in r.stderr

    r = cli(home, "models", "add", str(onnx_file), "--name", "ok", "--mean", "a,b")
    assert r.exit_code == 1 and "--mean must be comma-separated numbers" in r.stderr

    assert cli(home, "models", "add", str(onnx_file), "--name", "ok").exit_code == 0
    r = cli(home, "models", "add", str(onnx_file), "--name", "ok")
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert [m["name"] for m in json.loads(cli(home, "models", "list", "--json").stdout)] == ["ok"]


def test_models_show_unknown(home: Path) -> None:
    seed_registry(home)
    r = cli(home, "models", "show", "nope")
    assert r.exit_code == 1
    assert r.stdout == ""
    assert "error: no model named 'nope'" in r.stderr
    assert "hint: registered models: birds, r50, vit" in r.stderr
    r = cli(home, "models", "remove", "nope")
    assert r.exit_code == 1 and "no model named 'nope'" in r.stderr


def test_home_from_environment(tmp_path: Path, onnx_file: Path) -> None:
    home = tmp_path / "env-home"
    env = {"SHIFT_HOME": str(home)}
    r = runner.invoke(app, ["models", "add", str(onnx_file), "--name", "via-env"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert [m["name"] for m in json.loads(r.stdout)] == ["via-env"]
    with Registry.open(home) as reg:
        assert reg.model_names() == ["via-env"]


# ---- pools and tasks -------------------------------------------------------------------------


def test_pools_list_add_remove(home: Path) -> None:
    seed_registry(home)
    r = cli(home, "pools", "list", "--json")
    pools = {p["name"]: p for p in json.loads(r.stdout)}
    assert list(pools) == ["all", "resnet50", "dim2048", "expert", "imagenet"]
    assert {n: p["models"] for n, p in pools.items()} == {
        "all": 3,
        "resnet50": 1,
        "dim2048": 3,
        "expert": 1,
        "imagenet": 2,
    }
    assert all(p["builtin"] for p in pools.values())

    r = cli(home, "pools", "add", "tiny", "WHERE params < 10M", "--description", "small ones")
    assert r.exit_code == 0 and "pool tiny: params < 10M" in r.stdout
    r = cli(home, "pools", "list")
    row = next(line for line in r.stdout.splitlines() if "tiny" in line)
    assert "params < 10M" in row and "small ones" in row and "False" in row
    pools = {p["name"]: p for p in json.loads(cli(home, "pools", "list", "--json").stdout)}
    assert pools["tiny"]["models"] == 1 and pools["tiny"]["builtin"] is False

    r = cli(home, "pools", "add", "bad", "WHERE parms < 10M")
    assert r.exit_code == 1
    assert "query error: unknown column 'parms' (line 1, column 1)" in r.stderr
    assert "did you mean 'params'" in r.stderr

    r = cli(home, "pools", "add", "resnet50", "dim < 3")
    assert r.exit_code == 1 and "built-in" in r.stderr

    r = cli(home, "pools", "remove", "tiny")
    assert r.exit_code == 0 and "removed pool tiny" in r.stdout
    r = cli(home, "pools", "remove", "tiny")
    assert r.exit_code == 1 and "no pool named 'tiny'" in r.stderr
    r = cli(home, "pools", "remove", "all")
    assert r.exit_code == 1 and "built-in" in r.stderr
    names = [p["name"] for p in json.loads(cli(home, "pools", "list", "--json").stdout)]
    assert names == ["all", "resnet50", "dim2048", "expert", "imagenet"]


def test_tasks_list(home: Path) -> None:
    r = cli(home, "tasks", "list")  # no home yet: a read says so and creates none
    assert r.exit_code == 1 and "no shift home" in r.stderr and not home.exists()
    assert cli(home, "init").exit_code == 0
    r = cli(home, "tasks", "list", "--format", "table")
    assert r.exit_code == 0 and "0 tasks" in r.stdout
    seed_registry(home)
    r = cli(home, "tasks", "list")
    row = next(line for line in r.stdout.splitlines() if "flowers" in line)
    assert "npz" in row and "30" in row and "20" in row
    tasks = json.loads(cli(home, "tasks", "list", "--json").stdout)
    assert [(t["name"], t["num_samples"], t["num_classes"]) for t in tasks] == [("flowers", 30, 3)]


# ---- queries ---------------------------------------------------------------------------------


def test_query_table(home: Path) -> None:
    seed_registry(home)
    r = cli(home, "query", "SELECT top 2 FROM pool all", "--format", "table")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == 2
    assert "vit" in body[0] and "81.1%" in body[0] and "86.00M" in body[0]
    assert "r50" in body[1] and "76.1%" in body[1]
    assert any("2 rows" in line for line in lines)


def test_query_json(home: Path) -> None:
    seed_registry(home)
    r = cli(home, "query", "SELECT * FROM models ORDER BY params DESC", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [row["name"] for row in res["rows"]] == ["vit", "r50", "birds"]
    assert [row["rank"] for row in res["rows"]] == [1, 2, 3]
    assert res["plan"]["ranker"] == "ORDER BY params DESC"
    assert res["query"] == "SELECT * FROM models ORDER BY params DESC"
    assert res["timings"]["total_ms"] > 0

    r = cli(home, "query", "SELECT top 1 FROM pool expert", "--json")
    res = json.loads(r.stdout)
    assert [row["name"] for row in res["rows"]] == ["birds"]
    assert res["rows"][0]["why"] == "task-agnostic: largest upstream dataset (inat-birds, 50,000)"

    r = cli(home, "query", "SELECT top 5 FROM pool resnet50 WHERE source = 'torchvision'", "--json")
    res = json.loads(r.stdout)
    assert [row["name"] for row in res["rows"]] == ["r50"]
    assert res["plan"]["filters"] == [
        "pool resnet50: architecture = 'resnet50'",
        "source = 'torchvision'",
    ]


def test_explain(home: Path) -> None:
    seed_registry(home)
    r = cli(
        home, "explain", "SELECT top 2 FROM pool imagenet WHERE dim < 1000", "--format", "table"
    )
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["all models", "filter", "filter", "rank"]
    assert [row.split("│")[3].strip() for row in rows] == ["3", "2", "1", "—"]
    assert "agnostic, keep 2" in rows[-1]

    r = cli(home, "explain", "SELECT top 2 FROM pool imagenet WHERE dim < 1000", "--json")
    plan = json.loads(r.stdout)
    assert (plan["pool"], plan["ranker"], plan["budget"], plan["task"]) == (
        "imagenet",
        "agnostic",
        2,
        None,
    )
    assert [s["models"] for s in plan["steps"]] == [3, 2, 1, None]


@pytest.mark.parametrize(
    ("text", "line", "column", "caret_line", "hint"),
    [
        (
            "SELECT top 2 FROM\npool all WHERE x ~ 1",
            2,
            18,
            "                 ^",
            "a comparison",
        ),
        ("SELECT top 2 pool all", 1, 14, "             ^^^^", "FROM pool NAME"),
        (
            "SELECT top 2 FROM pool all WHERE parms < 3M",
            1,
            34,
            " " * 33 + "^^^^^",
            "did you mean 'params'",
        ),
        ("SELECT top 2 FROM pool nope", 1, 24, " " * 23 + "^^^^", "pools: all, resnet50"),
    ],
)
def test_malformed_query(
    home: Path, text: str, line: int, column: int, caret_line: str, hint: str
) -> None:
    seed_registry(home)
    commands = ("query", "explain") if line > 1 else ("query",)  # see the xfail below
    for command in commands:
        r = cli(home, command, text)
        assert r.exit_code == 1
        assert r.stdout == ""
        assert f"(line {line}, column {column})" in r.stderr
        assert text.splitlines()[line - 1] in r.stderr.splitlines()
        assert caret_line in r.stderr.splitlines()
        assert "hint:" in r.stderr and hint in r.stderr
        assert "Traceback" not in r.output


def test_explain_error_positions_refer_to_the_users_text(home: Path) -> None:
    assert cli(home, "init").exit_code == 0  # the pools are looked up in a home
    r = cli(home, "explain", "SELECT top 2 FROM pool nope")
    assert r.exit_code == 1
    assert "(line 1, column 24)" in r.stderr
    assert "SELECT top 2 FROM pool nope" in r.stderr.splitlines()


def test_malformed_query_in_a_real_process(tmp_path: Path) -> None:
    """Outside CliRunner too: exit 1, caret and hint on stderr, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shift.cli",
            "query",
            "SELECT top FROM pool all",
            "--home",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "(line 1, column 12)" in proc.stderr
    assert "           ^^^^" in proc.stderr.splitlines()
    assert "hint: expected an integer" in proc.stderr


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import shift.cli"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = [
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "shift.cli" in modules and "typer" in modules
    heavy = [m for m in modules if m.split(".")[0] in {"ray", "torch", "onnxruntime"}]
    assert heavy == []


def test_shift_cli_console_script_works_from_bash(tmp_path: Path) -> None:
    """`shift` is a bash builtin that a shell runs instead of the program; `shift-cli` (the same
    entry point, installed in the venv's bin dir) is not shadowed, typed into bash as written."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "shift-cli").is_file(), "reinstall: pip install --no-deps -e ."
    home = tmp_path / "h"
    seed_registry(home)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    line = f"shift-cli query 'SELECT top 1 FROM pool all' --json --home '{home}'"
    proc = subprocess.run(
        ["bash", "-c", f"type -t shift; {line}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    kind, _, payload = proc.stdout.partition("\n")
    assert kind == "builtin"  # why the second name exists
    assert [r["name"] for r in json.loads(payload)["rows"]] == ["vit"]


def test_python_dash_m_shift(tmp_path: Path) -> None:
    home = tmp_path / "h"
    seed_registry(home)
    proc = subprocess.run(
        [sys.executable, "-m", "shift", "models", "list", "--json", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [m["name"] for m in json.loads(proc.stdout)] == ["birds", "r50", "vit"]


def test_index_report_shows_the_spread_over_ray_nodes() -> None:
    """On a cluster the index report says how many batches each node embedded (one node: none)."""
    from shift.engine.indexing import IndexReport
    from shift.render import print_index_report

    rep = IndexReport(embedded={"m": 64}, seconds=1.0, backend="onnxruntime")
    rep.nodes = {"aaaaaaaaaaaa": 10, "bbbbbbbbbbbb": 6}
    out, err = Console(width=200, record=True), Console(width=200, record=True)
    print_index_report("t", rep, out, err)
    assert "batches per Ray node: aaaaaaaa 10, bbbbbbbb 6" in out.export_text()
    rep.nodes = {"aaaaaaaaaaaa": 16}
    out = Console(width=200, record=True)
    print_index_report("t", rep, out, err)
    assert "Ray node" not in out.export_text()
