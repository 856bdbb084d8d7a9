"""Output that fits and parses (issue 21, items 2 and 3): every command takes ``--json`` and
``--format table|csv|tsv|json|jsonl``; tables fit 80 columns without hiding rank, name, the
ordering column or the score; piped output is plain text; headers a newcomer can read."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from cli_runner import cli, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn
from records import fake_model
from rich.console import Console

import shift.cli
from shift.catalog.onnx_import import register_onnx
from shift.records import Result, Samples, TaskRecord
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

BOX = set("│┃━─┏┓┗┛┡┩└┘╇╋┼")


def _toy(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 50).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c"], [])


@pytest.fixture
def small_home(tmp_path: Path) -> Path:
    """Two tiny real ONNX models and a 48-image task."""
    home = tmp_path / "home"
    with Registry.open(home) as reg:
        for i in range(2):
            register_onnx(reg, build_tiny_cnn(tmp_path / f"m{i}.onnx", seed=i).path, f"tiny{i}")
        TaskStore(reg).add("toy", _toy(48, 0), kind="npz", source="t")
    return home


def seeded(home: Path) -> Path:
    """Metadata-only models (one with a long name) and a task: enough for listings."""
    with Registry.open(home) as reg:
        reg.add_model(
            fake_model(
                "tv-efficientnet_v2_s-imagenet1k_v1",
                params=21_458_488,
                dim=1280,
                imagenet_top1=84.228,
                imagenet_source="torchvision",
                source="torchvision",
                upstream_dataset="ImageNet-1k",
                tags=["torchvision", "generalist"],
            )
        )
        reg.add_model(
            fake_model(
                "r50",
                params=25_557_032,
                dim=2048,
                imagenet_top1=76.1,
                imagenet_source="torchvision",
                source="torchvision",
                upstream_dataset="ImageNet-1k",
            )
        )
        reg.put_task(
            TaskRecord(
                name="flowers-102-with-a-long-name",
                content_hash="c1" * 32,
                data_hash="d1" * 32,
                kind="images",
                source="/data/flowers",
                num_samples=8189,
                num_train=6551,
                num_val=1638,
                num_classes=102,
            )
        )
    return home


# ---- item 3: --json and --format on every command --------------------------------------------


def command_paths(group: object, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    """Every leaf command of the click group, by its space-separated path."""
    out: dict[str, object] = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            out.update(command_paths(cmd, path))
        else:
            out[" ".join(path)] = cmd
    return out


def test_every_command_takes_json_and_format() -> None:
    commands = command_paths(typer.main.get_command(shift.cli.app))
    assert {"query", "index", "tasks add", "models show", "pools remove"} <= set(commands)
    for path, cmd in commands.items():
        opts = {o for p in cmd.params for o in p.opts}  # type: ignore[attr-defined]
        assert {"--json", "--format"} <= opts, path


@pytest.mark.slow  # ~12 s: every command once, models imported from torchvision
def test_every_command_prints_json(
    small_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A representative invocation of every command, with --json: exit 0, stdout is JSON."""
    monkeypatch.setenv("SHIFT_CACHE_DIR", str(tmp_path / "cache"))
    import torch
    import torchvision.models as tvm

    home = small_home
    onnx = build_tiny_cnn(tmp_path / "extra.onnx", seed=5).path
    np.savez(tmp_path / "t2.npz", x=_toy(30, 1).images, y=np.arange(30) % 3)
    np.savez(tmp_path / "more.npz", x=_toy(9, 2).images, y=np.arange(9) % 3)
    np.savez(tmp_path / "labels.npz", y=(np.arange(39) + 1) % 3)
    torch.save(tvm.mobilenet_v3_small().state_dict(), tmp_path / "mnv3.pth")
    entry = {  # already registered with its file: the catalog import reports it cached
        "name": "tiny0",
        "builder": "expert",
        "expert": "digits",
        "family": "tiny-cnn",
        "input": {"height": 32, "width": 32},
        "upstream_dataset": "none",
        "source": "a test",
        "license": "MIT",
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    tv = "tv-mobilenet_v3_small-imagenet1k_v1"
    invocations: list[tuple[str, list[str]]] = [
        ("init", []),
        ("models add", [str(onnx), "--name", "extra"]),
        ("models list", []),
        ("models show", ["extra"]),
        ("models import torchvision", ["mobilenet_v3_small"]),
        ("models import timm", ["resnet18.a1_in1k"]),
        ("models import hf", ["google/vit-base-patch16-224"]),
        ("models import vtab1k", []),
        ("models weights", [tv, "--weights", str(tmp_path / "mnv3.pth")]),
        ("models import-catalog", ["--catalog", str(tmp_path / "catalog.yaml")]),
        ("pools add", ["tiny", "WHERE name LIKE 'tiny%'"]),
        ("pools list", []),
        ("tasks add", ["toy2", "--npz", str(tmp_path / "t2.npz")]),
        ("tasks append", ["toy2", "--npz", str(tmp_path / "more.npz")]),
        ("tasks relabel", ["toy2", "--npz", str(tmp_path / "labels.npz")]),
        ("tasks list", []),
        ("index", ["toy", "--pool", "tiny", "--executor", "inprocess"]),
        ("query", ["SELECT top 2 FROM pool tiny WHERE task=toy RANK BY knn"]),
        ("explain", ["SELECT top 2 FROM pool tiny WHERE task=toy"]),
        ("finetune", ["toy", "--model", "tiny0", "--epochs", "1", "--max-train", "16"]),
        ("doctor", []),
        ("pools remove", ["tiny"]),
        ("tasks remove", ["toy2"]),
        ("models remove", ["extra"]),
    ]
    commands = command_paths(typer.main.get_command(shift.cli.app))
    assert {p for p, _ in invocations} == set(commands), "every command needs an invocation here"
    for path, args in invocations:
        r = cli(home, *path.split(), *args, "--json")
        assert r.exit_code == 0, (path, r.output)
        try:
            json.loads(r.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"{path}: not JSON:\n{r.stdout}")
    shown = json.loads(cli(home, "models", "show", "tiny0", "--format", "json").stdout)
    assert shown["name"] == "tiny0"
    r = cli(home, "tasks", "add", "toy3", "--npz", str(tmp_path / "t2.npz"), "--format", "jsonl")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "toy3"
    assert len(r.stdout.strip().splitlines()) == 1


# ---- item 2: --format csv | tsv | jsonl, plain when piped, tables that fit --------------------


def test_csv_tsv_jsonl(tmp_path: Path) -> None:
    home = seeded(tmp_path / "home")
    r = cli(home, "models", "list", "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["name"] for row in rows] == ["r50", "tv-efficientnet_v2_s-imagenet1k_v1"]
    assert rows[0]["params"] == "25557032" and rows[0]["imagenet_top1"] == "76.1"
    assert json.loads(rows[1]["tags"]) == ["generalist", "torchvision"]

    r = cli(home, "tasks", "list", "--format", "tsv")
    header, row = r.stdout.splitlines()
    assert header.split("\t")[:3] == ["name", "kind", "num_samples"]
    assert row.split("\t")[:3] == ["flowers-102-with-a-long-name", "images", "8189"]

    r = cli(home, "query", "SELECT * FROM models ORDER BY params DESC", "--format", "jsonl")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["rank"], x["name"]) for x in lines] == [
        (1, "r50"),
        (2, "tv-efficientnet_v2_s-imagenet1k_v1"),
    ]
    r = cli(home, "query", "SELECT * FROM models ORDER BY params DESC", "--format", "csv")
    assert r.stdout.splitlines()[0].startswith("rank,name,params,dim,imagenet_top1")
    assert "rows" not in r.stdout  # data only: no row count, no timings

    r = cli(home, "models", "list", "--format", "xml")
    assert r.exit_code != 0 and "xml" in r.output
    assert "table, plain, csv, tsv, json, jsonl" in " ".join(r.output.split())
    r = cli(home, "models", "list", "--json", "--format", "csv")
    assert r.exit_code != 0 and "--json" in r.output


def test_piped_output_is_plain_text(tmp_path: Path) -> None:
    """stdout not a terminal: aligned columns, a header line, one line per row, no box."""
    home = seeded(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "shift.cli", "models", "list", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")},
    )
    assert proc.returncode == 0, proc.stderr
    assert not BOX & set(proc.stdout), proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 models"  # the title, then a header line and one line per row
    assert lines[1].split()[:2] == ["name", "family"] and "ImageNet top-1" in lines[1]
    long = next(line for line in lines if "tv-efficientnet_v2_s-imagenet1k_v1" in line)
    assert "84.2%" in long and "generalist, torchvision" in long  # nothing cut, one line
    assert len(lines) == 4
    # --format table asks for the box even when piped
    r = cli(home, "models", "list", "--format", "table")
    assert "┃ name" in r.stdout


def _multi_task_result() -> Result:
    names = [
        "cnn-orientation-expert",
        "tv-efficientnet_v2_s-imagenet1k_v1",
        "cnn-digits-expert",
    ]
    rows = [
        {
            "rank": i + 1,
            "name": n,
            "imagenet_top1": 84.228 if n.startswith("tv") else None,
            "agnostic_rank": 3 - i,
            "score:digits": 0.9574 - i / 10,
            "score:mnist": 0.9009 - i / 10,
            "score:position": 0.9699 - i / 10,
            "mean_rank": 1.3333 + i,
            "why": f"#{i + 1} by avg_rank(linear) over 3 tasks",
        }
        for i, n in enumerate(names)
    ]
    return Result(
        query="SELECT top 3 FROM models WHERE task IN (digits, mnist, position)",
        columns=[
            "rank",
            "name",
            "imagenet_top1",
            "agnostic_rank",
            "score:digits",
            "score:mnist",
            "score:position",
            "mean_rank",
            "why",
        ],
        rows=rows,
    )


def table_rows(lines: list[str], key: int = 0) -> list[list[str]]:
    """The rows of a boxed table, each cell's lines joined (a folded name is whole again); a
    row starts where column ``key`` (one that never wraps) has a value."""
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[key]:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def _fits(text: str, width: int = 80) -> list[str]:
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    return lines


def test_multi_task_table_fits_80_columns_and_keeps_what_orders_it() -> None:
    from shift.render import print_result

    res = _multi_task_result()
    console = Console(width=80, record=True, force_terminal=True)
    print_result(res, console)
    lines = _fits(console.export_text())
    text = "\n".join(lines)
    header = "\n".join(lines[: next(i for i, x in enumerate(lines) if x.startswith("┡"))])
    assert "mean" in header and "rank" in header
    rows = table_rows(lines)
    assert [r[0] for r in rows] == ["1", "2", "3"]  # rank
    for row, cells in zip(res.rows, rows, strict=True):  # the whole name (folded), the scores
        assert row["name"] in cells and f"{row['mean_rank']:.4f}" in cells
        assert f"{row['score:digits']:.4f}" in cells
    assert "ImageNet" in text and "agnostic" in text  # readable headers, not IN top-1 / agn #
    assert "IN top-1" not in text and "agn #" not in text


def test_scores_table_fits_80_columns() -> None:
    from shift.query.columns import TABLES
    from shift.render import print_result

    cols = list(TABLES["scores"].columns)
    row = {
        "task": "digits",
        "model": "cnn-digits-expert",
        "proxy": "knn",
        "params": '{"k": 5, "metric": "cosine"}',
        "score": 0.9291,
        "n_train": 659,
        "n_val": 141,
        "seconds": 0.0725,
        "computed_at": "2026-11-26T13:57:03+00:00",
    }
    res = Result(
        query="SELECT * FROM scores ORDER BY score DESC",
        columns=cols,
        rows=[row],
        plan={"table": "scores", "order": "score DESC"},
    )
    console = Console(width=80, record=True, force_terminal=True)
    print_result(res, console)
    lines = _fits(console.export_text())
    [cells] = table_rows(lines, key=2)  # proxy
    assert {"digits", "cnn-digits-expert", "knn", "0.9291"} <= set(cells)


def test_listings_fit_80_columns_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = seeded(tmp_path / "home")
    monkeypatch.setattr(
        shift.cli.base, "out", Console(width=80, force_terminal=True, color_system=None)
    )
    r = cli(home, "models", "list")
    lines = _fits(r.stdout)
    assert "┃ name" in r.stdout  # a terminal gets the table
    rows = {cells[0]: cells for cells in table_rows(lines, key=2)}  # params
    assert "21.46M" in rows["tv-efficientnet_v2_s-imagenet1k_v1"] and "25.56M" in rows["r50"]
    r = cli(home, "tasks", "list")
    [cells] = table_rows(_fits(r.stdout), key=2)  # samples
    assert cells[0] == "flowers-102-with-a-long-name" and {"8189", "102"} <= set(cells)
