"""Fine-tune a registered model on a task: the ground truth that model search is measured against.

:func:`finetune` (and :func:`finetune_many`) run a :class:`FinetuneProtocol` (Renggli et al.'s,
scaled down to fit a 2-core CPU) on the model's torch module (:mod:`shift.tools.finetune_modules`)
with the task's images preprocessed by the model's registered ``InputSpec``, on CUDA when torch
sees a GPU (``device``), else on the CPU. Results are stored in the registry's
``finetune_results`` table keyed by (task content hash, model sha256, protocol JSON), so a second
call is served from there unless ``force``; :func:`results_table` draws them.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shift.errors import ShiftError
from shift.store import finetunes
from shift.store.registry import Registry
from shift.tools.finetune_modules import catalog_entry, training_module

__all__ = [
    "FinetuneProtocol",
    "FinetuneResult",
    "cached_result",
    "catalog_entry",
    "finetune",
    "finetune_many",
    "results_table",
]


class FinetuneProtocol(BaseModel):
    """Fine-tuning hyper-parameters: Renggli et al.'s protocol (*Which Model to Transfer?*, §4:
    a new linear layer trained on the whole training set, then the whole network fine-tuned at two
    learning rates, 2,500 SGD steps at batch 512, the best validation accuracy kept), scaled down
    to ``epochs`` passes at batch 32. With the defaults:

    1. the source head is replaced by a new ``Linear(dim, C)`` (C = the task's classes), warmed
       up for ``head_steps`` SGD steps (lr ``head_lr``, momentum 0.9, batch 32) on the frozen,
       eval-mode embeddings of the training split;
    2. the whole network is fine-tuned at each lr in ``lrs`` = (0.00625, 0.000625): VTAB's
       (0.1, 0.01) at batch 512 (Zhai et al. 2019) scaled linearly to batch 32 (Goyal et al.
       2017); SGD, momentum 0.9, ``epochs`` passes over the training split, the global gradient
       norm clipped to ``clip_grad_norm`` (as in ViT's fine-tuning, Dosovitskiy et al. 2021),
       each run from the pre-trained weights and the warmed-up head, in eval mode
       (``eval_mode``: BatchNorm keeps its pre-trained running statistics, dropout and
       drop-connect are off);
    3. the result is the best validation accuracy over lrs and epochs, evaluated after each
       epoch and once before the first (epoch 0: the warmed-up head alone), so fine-tuning
       reports at least the linear probe's accuracy, like early stopping would.

    Runs are seeded (``seed``); no data augmentation. ``threads`` is not part of the cache key
    (results can differ in the last digits across thread counts)."""

    # Why eval mode, clipping and these lrs (160 training samples, 2 epochs, on the demo tasks):
    # train-mode BatchNorm mixes source and target statistics at batch 32 (MobileNet V2 on
    # `position`: 48 % with the head alone, 25-37 % after fine-tuning, 59 % with frozen
    # statistics); EfficientNet-Lite0's drop-connect in train mode took `digits` from 67 % to
    # 37-51 % (74 % without it); with statistics frozen nothing rescales the backbone's gradients,
    # and without clipping one SGD step at lr 0.001 took the MNIST expert from 95 % to 35 % and 15
    # steps to chance (with clipping it keeps 96 %); lr 0.01, even clipped, took
    # EfficientNet-Lite0 on `digits` from 67 % to 38-44 %.

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_steps: int = Field(100, ge=0, description="linear-head warm-up steps, frozen features")
    head_lr: float = Field(0.1, gt=0)
    lrs: tuple[float, ...] = Field((0.00625, 0.000625), min_length=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(32, ge=2)
    epochs: int = Field(2, ge=1)
    max_train: int | None = Field(
        None, ge=2, description="fine-tune on a seeded random subset of this many training samples"
    )
    eval_mode: bool = Field(
        True,
        description="fine-tune in eval mode: BatchNorm keeps its pre-trained running statistics, "
        "dropout and drop-connect are off",
    )
    clip_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the global gradient norm of each step (None: no clipping)"
    )
    seed: int = 0
    threads: int = Field(2, ge=1, le=2)
    device: Literal["cuda"] | None = Field(
        None, description="set by finetune when it trains on CUDA (None: the CPU)"
    )

    def key(self) -> str:
        """Canonical JSON (sorted keys, without ``threads`` and unset options): the cache key."""
        data = self.model_dump(mode="json", exclude={"threads"}, exclude_none=True)
        return json.dumps(data, sort_keys=True)


@dataclass
class FinetuneResult:
    task: str
    model: str
    task_hash: str
    model_sha: str
    protocol: FinetuneProtocol
    accuracy: float
    seconds: float
    epochs: int
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "task_hash": self.task_hash,
            "model_sha": self.model_sha,
            "protocol": json.loads(self.protocol.key()),
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "epochs": self.epochs,
            "cached": self.cached,
            "details": self.details,
        }


# ---- cache ----------------------------------------------------------------------------------
def cached_result(
    registry: Registry, task: str, model: str, protocol: FinetuneProtocol | None = None
) -> FinetuneResult | None:
    protocol = protocol or FinetuneProtocol()
    rec, trec = registry.get_model(model), registry.get_task(task)
    r = finetunes.get_result(registry, trec.content_hash, rec.sha256, protocol.key())
    if r is None:
        return None
    return FinetuneResult(
        task=task,
        model=model,
        task_hash=trec.content_hash,
        model_sha=rec.sha256,
        protocol=protocol,
        accuracy=float(r["accuracy"]),
        seconds=float(r["seconds"]),
        epochs=int(r["epochs"]),
        cached=True,
        details=r["details"],
    )


def _store(registry: Registry, res: FinetuneResult) -> None:
    finetunes.put_result(
        registry,
        task_hash=res.task_hash,
        model_sha=res.model_sha,
        protocol=res.protocol.key(),
        accuracy=res.accuracy,
        seconds=res.seconds,
        epochs=res.epochs,
        details=res.details,
    )


# ---- training -------------------------------------------------------------------------------
@contextmanager
def _threads(n: int) -> Iterator[None]:
    """``n`` torch threads inside, restored afterwards. ``use_deterministic_algorithms`` is left
    as the caller set it: under this protocol it changes nothing measurable (same curves on the
    MNIST expert either way); the divergence once blamed on it was the unclipped first steps."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _task_data(registry: Registry, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    from shift.store.tasks import TaskStore

    trec = registry.get_task(task)
    rows = registry.samples(task)
    images = TaskStore(registry).load(task, rows)
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    is_train = np.array([r["split"] == "train" for r in rows])
    if is_train.all() or not is_train.any():
        raise ShiftError(f"task {task!r}: fine-tuning needs both a train and a val split")
    classes = max(len(trec.classes or []), int(labels.max()) + 1)
    return images, labels, is_train, classes


def _train(
    module: Any,
    x: Any,
    y: Any,
    is_train: np.ndarray,
    classes: int,
    p: FinetuneProtocol,
) -> dict[str, Any]:
    """The protocol on ``module`` with inputs ``x`` and labels ``y`` (tensors on the device
    ``module`` is on); random draws come from a CPU generator seeded with ``p.seed``."""
    import torch
    from torch import nn

    device = x.device
    train_idx = np.flatnonzero(is_train)
    if p.max_train is not None and len(train_idx) > p.max_train:
        pick = np.random.default_rng(p.seed).permutation(len(train_idx))[: p.max_train]
        train_idx = np.sort(train_idx[pick])
    tr = torch.from_numpy(train_idx).to(device)
    va = torch.from_numpy(np.flatnonzero(~is_train)).to(device)
    loss_fn = nn.CrossEntropyLoss()

    @torch.inference_mode()
    def embed(m: Any, idx: Any) -> Any:
        m.eval()
        return torch.cat([m(x[idx[i : i + 64]])[0] for i in range(0, len(idx), 64)])

    clock = {"eval": 0.0, "train": 0.0}
    sample_steps = 0  # training samples through forward + backward, over all full runs

    @torch.inference_mode()
    def val_acc(m: Any, head: Any) -> float:
        t = time.perf_counter()
        pred = head(embed(m, va)).argmax(1)
        clock["eval"] += time.perf_counter() - t
        return float((pred == y[va]).float().mean())

    t0 = time.perf_counter()
    feats = embed(module, tr).clone()
    embed_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(p.seed)
    head = nn.Linear(feats.shape[1], classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=p.head_lr, momentum=p.momentum)
    ytr = y[tr]
    for _ in range(p.head_steps):
        b = torch.randint(0, len(tr), (p.batch_size,), generator=gen).to(device)
        loss = loss_fn(head(feats[b]), ytr[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head_s = time.perf_counter() - t0
    head_acc = val_acc(module, head)
    warm_backbone = copy.deepcopy(module.state_dict())
    warm_head = copy.deepcopy(head.state_dict())

    runs: dict[str, list[float]] = {}
    for lr in p.lrs:
        module.load_state_dict(warm_backbone)
        head.load_state_dict(warm_head)
        params = [*module.parameters(), *head.parameters()]
        opt = torch.optim.SGD(params, lr=lr, momentum=p.momentum)
        curve = []
        for _ in range(p.epochs):
            module.train(not p.eval_mode)
            perm = tr[torch.randperm(len(tr), generator=gen).to(device)]
            t = time.perf_counter()
            for i in range(0, len(perm), p.batch_size):
                b = perm[i : i + p.batch_size]
                if len(b) < 2:  # BatchNorm needs two samples in train mode
                    continue
                sample_steps += len(b)
                emb, _ = module(x[b])
                loss = loss_fn(head(emb), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, p.clip_grad_norm)
                opt.step()
            clock["train"] += time.perf_counter() - t
            curve.append(val_acc(module, head))
        runs[repr(lr)] = curve
    # epoch 0 (the warmed-up head) is every run's start; max() keeps the first of equal values
    best_lr, best = max(((lr, max([head_acc, *c])) for lr, c in runs.items()), key=lambda t: t[1])
    return {
        "accuracy": best,
        "best_lr": float(best_lr),
        "best_epoch": [head_acc, *runs[best_lr]].index(best),
        "curves": runs,
        "head_accuracy": head_acc,
        "embed_seconds": embed_s,
        "head_seconds": head_s,
        "train_seconds": clock["train"],
        "train_sample_steps": sample_steps,
        "eval_seconds": clock["eval"],
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "classes": classes,
    }


def finetune(
    registry: Registry,
    task: str,
    model: str,
    protocol: FinetuneProtocol | None = None,
    *,
    force: bool = False,
    catalog: str | Path | None = None,
    device: str = "auto",
) -> FinetuneResult:
    """Fine-tune the registered model ``model`` on ``task`` (see the module docstring) and
    return the best validation accuracy; cached in ``finetune_results`` unless ``force``.
    ``device``: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"."""
    import torch

    from shift.inference.preprocess import preprocess
    from shift.inference.torch.backend import pick_device

    dev = pick_device(device)
    protocol = (protocol or FinetuneProtocol()).model_copy(
        update={"device": "cuda" if dev == "cuda" else None}
    )
    rec = registry.get_model(model)
    trec = registry.get_task(task)
    if not force:
        hit = cached_result(registry, task, model, protocol)
        if hit is not None:
            return hit
    images, labels, is_train, classes = _task_data(registry, task)
    with _threads(protocol.threads), torch.random.fork_rng(devices=[]):
        module, origin = training_module(registry, rec, catalog)
        t0 = time.perf_counter()
        x = torch.from_numpy(preprocess(images, rec.input)).to(dev)
        y = torch.from_numpy(labels).to(dev)
        torch.manual_seed(protocol.seed)
        details = _train(module.to(dev), x, y, is_train, classes, protocol)
        seconds = time.perf_counter() - t0
    details.update(origin, threads=protocol.threads, device=dev)
    res = FinetuneResult(
        task=task,
        model=model,
        task_hash=trec.content_hash,
        model_sha=rec.sha256,
        protocol=protocol,
        accuracy=float(details.pop("accuracy")),
        seconds=seconds,
        epochs=protocol.epochs,
        details=details,
    )
    _store(registry, res)
    return res


def finetune_many(
    registry: Registry,
    task: str,
    models: list[str],
    protocol: FinetuneProtocol | None = None,
    *,
    force: bool = False,
    catalog: str | Path | None = None,
    progress: bool = False,
    device: str = "auto",
) -> list[FinetuneResult]:
    """:func:`finetune` each of ``models`` on ``task`` in turn, with a progress bar (stderr)."""
    from shift.progress import progress_bar

    bar = progress_bar(progress)
    results = []
    with bar:
        job = bar.add_task(f"fine-tuning on {task}", total=len(models))
        for m in models:
            bar.update(job, description=f"fine-tuning {m} on {task}")
            results.append(
                finetune(registry, task, m, protocol, force=force, catalog=catalog, device=device)
            )
            bar.advance(job)
    return results


def results_table(results: list[FinetuneResult], title: str) -> Any:
    """A rich table of fine-tuning results, best first."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "val accuracy", "best lr", "epoch", "seconds", "cached"):
        table.add_column(col)
    for r in sorted(results, key=lambda r: -r.accuracy):
        d = r.details
        table.add_row(
            r.model,
            f"{r.accuracy:.3f}",
            str(d.get("best_lr")),
            str(d.get("best_epoch")),
            f"{r.seconds:.1f}",
            "yes" if r.cached else "",
        )
    return table
