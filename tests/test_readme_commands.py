"""README's "Using it" commands run as written, offline, in order, on a fresh home (issue 21,
item 4): the shell block is read from README.md itself (continuation lines joined, comments
dropped), its input files are made first (a tiny ONNX model, an image folder, .npz arrays), and
each command goes through the real CLI in process — the shipped catalog, real ONNX Runtime, Ray,
SQLite. ``doctor [--repair]`` runs both ways; the format examples run up to their pipe or
redirect. The headline query at the top of README needs ResNet-50 weights, which no offline
package ships: it is covered by ``tests/test_weights_state.py`` with local weight files."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from cli_runner import cli, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_tiny_cnn
from PIL import Image

pytest.importorskip("torch")

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(after: str) -> list[list[str]]:
    """The shell code blocks of README after the heading ``after``, each as its commands (lines
    joined at a trailing backslash, ``# comments`` dropped)."""
    text = README.read_text().split(after, 1)[1]
    blocks = []
    for body in re.findall(r"```\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", body)
        cmds = [re.sub(r"\s+#\s.*$", "", ln).strip() for ln in joined.splitlines()]
        blocks.append([c for c in cmds if c.startswith("shift-cli ")])
    return [b for b in blocks if b]


def _images(folder: Path, classes: int, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x = (rng.random((40, 40, 3)) * 80 + c * 60).astype(np.uint8)
            Image.fromarray(x).save(folder / f"class{c}" / f"img{seed}-{i}.png")


def make_inputs(cwd: Path) -> None:
    """What the commands name: model.onnx, ./flowers, ./more-flowers, digits.npz and
    new_labels.npz (the labels of flowers after the append)."""
    build_tiny_cnn(cwd / "model.onnx", seed=0, size=32)
    _images(cwd / "flowers", classes=3, per_class=8, seed=0)
    _images(cwd / "more-flowers", classes=3, per_class=2, seed=1)
    rng = np.random.default_rng(2)
    y = np.arange(60) % 3
    x = (rng.random((60, 28, 28)) * 60 + y[:, None, None] * 60).astype(np.uint8)
    np.savez(cwd / "digits.npz", x=x, y=y)
    np.savez(cwd / "new_labels.npz", y=np.arange(30) % 2)


@pytest.mark.slow
@pytest.mark.ray
def test_readme_commands_run_as_written(
    ray_runtime: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    using, formats = readme_blocks("## Using it")[:2]
    assert len(using) >= 14 and any("finetune" in c for c in using)
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    home = tmp_path / "my-home"
    for cmd in [*using, *formats]:
        cmd = re.split(r"\s[|>]\s", cmd)[0]  # a pipe or redirect: the shift-cli part
        cmd = cmd.replace("~/my-home", str(home))
        variants = (
            [cmd.replace(" [--repair]", ""), cmd.replace("[--repair]", "--repair")]
            if "[--repair]" in cmd
            else [cmd]
        )
        for line in variants:
            args = shlex.split(line)[1:]
            res = cli(home, *args)
            assert res.exit_code == 0, f"$ {line}\n{res.output}"
    out = cli(home, "query", "SELECT top 5 FROM pool all WHERE task=digits", "--format", "jsonl")
    names = [json.loads(ln)["name"] for ln in out.stdout.splitlines()]
    assert len(names) == 5  # jsonl: one row a line, nothing else on stdout
