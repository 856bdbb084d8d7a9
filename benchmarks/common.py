"""Shared benchmark helpers: result files, timing, and the torch models exported to ONNX."""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def median_ms(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "min_ms": times[0],
        "repeat": repeat,
    }


def export_onnx(model: Any, path: Path, size: int, outputs: list[str]) -> None:
    import torch

    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in ["input", *outputs]},
            dynamo=False,
        )


def resnet(depth: int = 18, classes: int = 1000) -> Any:
    """A torchvision-layout ResNet (18: basic blocks; 50: bottlenecks), random weights; returns
    (embedding, logits)."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin: int, c: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(c)
            self.c2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(c)
            self.down = (
                None
                if stride == 1 and cin == c
                else nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idt = x if self.down is None else self.down(x)
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + idt)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, c: int, stride: int) -> None:
            super().__init__()
            out = c * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, c, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, out, 1, bias=False),
                nn.BatchNorm2d(out),
            )
            self.down = (
                None
                if stride == 1 and cin == out
                else nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idt = x if self.down is None else self.down(x)
            return torch.relu(self.body(x) + idt)

    block, layers = (Basic, [2, 2, 2, 2]) if depth == 18 else (Bottleneck, [3, 4, 6, 3])

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            blocks, cin = [], 64
            for i, n in enumerate(layers):
                c = 64 * 2**i
                for j in range(n):
                    blocks.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                    cin = c * block.expansion
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, classes)
            self.dim = cin

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.blocks(self.stem(x)).mean(dim=(2, 3))
            return z, self.fc(z)

    torch.manual_seed(0)
    return ResNet().eval()
