"""Linear-probe proxy (Renggli et al., "Which model to transfer?"): multinomial logistic
regression on frozen features, trained by mini-batch SGD at each learning rate; the score is
the best validation accuracy over the learning rates.

Per problem: features are standardised with the train mean/std (``(x - μ) / σ``, σ = 1 for
constant features: ``σ_j ≤ 1e-8·max(|μ_j|, max_k σ_k)``, relative to the features' own scale, so
the same embeddings at any magnitude get the same probe; train and validation features beyond
float32's range are first divided by one power of two, which standardising undoes), train
labels are remapped to ``0..C-1`` (validation labels unseen in training can never be predicted,
so they count as errors), weights start at zero, and the mini-batches are drawn from epoch-wise
permutations of a ``numpy`` generator seeded with ``seed`` alone, so the same task gets the
same batches for every model and every lr.

``linear_probe_many`` trains all (problem, lr) pairs in one batched torch program: features are
zero-padded to the largest dimension, classes padded and masked out, and the weights of every
pair live in one stacked ``(P, Dmax, L·Cmax)`` tensor driven by ``torch.baddbmm`` and one
``torch.optim.SGD`` (lr 1 on ``Σ_l lr_l·loss_l``, which is plain momentum SGD at ``lr_l`` on each
block). Zero-padded features contribute nothing and padded batch rows have zero weight, so each
pair gets exactly the gradient of its own mean cross-entropy. torch is imported inside the
functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shift.scoring.device import idle_cores, probe_device, to_device, unit_scale_torch
from shift.scoring.plugins import Arg, proxy
from shift.scoring.scale import unit_scale

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_STEPS",
    "Problem",
    "idle_cores",
    "linear_probe",
    "linear_probe_many",
    "linear_probe_scores",
]

Problem = tuple[Any, Any, Any, Any]  # (train_x, train_y, val_x, val_y)
DEFAULT_LRS: tuple[float, ...] = (0.1, 0.01)
DEFAULT_STEPS = 300
DEFAULT_BATCH = 256
DEFAULT_MOMENTUM = 0.9
_NEG = -1e9  # logit given to padded classes
_DEFAULT_MAX_BYTES = 1 << 30
_GPU_MEMORY_SHARE = 4  # on a GPU, groups of up to 1/4 of its free memory (at least 1 GiB)
_SMALL_WORK = 5_000_000  # multiply-adds per SGD step below which one thread is fastest
_CONSTANT_RTOL = 1e-8  # a feature whose std is at most this of the feature scale is constant


@dataclass
class _Prepared:
    xtr: np.ndarray  # float32 (n, D), standardised (or the raw features, standardised later)
    ytr: np.ndarray  # int64 (n,) in 0..C-1
    xva: np.ndarray  # float32 (m, D), standardised with the train statistics (or raw)
    yva: np.ndarray  # int64 (m,), -1 for classes unseen in training
    classes: int
    number: int = 0  # the problem's position, for errors

    @property
    def dim(self) -> int:
        return self.xtr.shape[1]


def _prepare(i: int, problem: Problem, *, standardise: bool = True) -> _Prepared:
    """Problem ``i`` checked, labels remapped; features standardised here (numpy, float64), or
    with ``standardise=False`` left raw (their finiteness too), for :func:`_standardise_torch`
    on the device."""
    try:
        xtr_raw, ytr_raw, xva_raw, yva_raw = problem
    except (TypeError, ValueError):
        raise ValueError(f"problem {i} must be a (train_x, train_y, val_x, val_y) tuple") from None
    xtr, xva = _features(xtr_raw, standardise), _features(xva_raw, standardise)
    ytr, yva = np.asarray(ytr_raw), np.asarray(yva_raw)
    if xtr.ndim != 2 or xva.ndim != 2 or xtr.shape[1] != xva.shape[1]:
        raise ValueError(f"problem {i}: features must be 2-d with the same number of columns")
    if ytr.shape != (len(xtr),) or yva.shape != (len(xva),):
        raise ValueError(f"problem {i}: labels must be 1-d and match the feature rows")
    if len(xtr) == 0 or len(xva) == 0 or xtr.shape[1] == 0:
        raise ValueError(f"problem {i}: needs at least one train row, one val row, one feature")
    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    pos = np.clip(np.searchsorted(classes, yva), 0, len(classes) - 1)
    yva_idx = np.where(classes[pos] == yva, pos, -1)
    if standardise:
        if not (np.isfinite(xtr).all() and np.isfinite(xva).all()):
            raise ValueError(_not_finite(i))
        [xtr, xva], _ = unit_scale(xtr, xva)
        mu, sd = _standardiser(xtr)
        xtr = ((xtr - mu) / sd).astype(np.float32)
        xva = ((xva - mu) / sd).astype(np.float32)
    return _Prepared(
        xtr=xtr,
        ytr=ytr_idx.astype(np.int64).reshape(-1),
        xva=xva,
        yva=yva_idx.astype(np.int64),
        classes=len(classes),
        number=i,
    )


def _features(x: Any, standardise: bool) -> np.ndarray:
    """float64 features for the numpy standardiser; raw numeric ones (any number dtype, e.g. a
    float32 embedding) for the device, which widens them there."""
    if standardise:
        return np.asarray(x, dtype=np.float64)
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.number) else np.asarray(arr, dtype=np.float64)


def _not_finite(i: int) -> str:
    return f"problem {i}: features contain NaN or infinite values"


def _standardiser(xtr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(μ, σ)`` of the train features, σ = 1 where a feature is constant: its std at most
    ``_CONSTANT_RTOL·max(|μ_j|, max_k σ_k)`` (rounding around its mean, or negligible beside the
    most varying feature; never an absolute threshold, which depends on the features' scale)."""
    mu = xtr.mean(axis=0)
    sd = xtr.std(axis=0)
    ref = np.maximum(np.abs(mu), float(sd.max()))
    return mu, np.where(sd > _CONSTANT_RTOL * ref, sd, 1.0)


def _standardise_torch(
    xtr: np.ndarray, xva: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_prepare`'s numeric part on ``device``: the standardised float32 (train, val)
    features (float64 arithmetic, :func:`_standardiser`'s constant-feature rule) and a bool
    tensor saying whether both were finite."""
    import torch

    [a, b], finite = unit_scale_torch(to_device(xtr, device), to_device(xva, device))
    mu = a.mean(dim=0)
    sd = a.std(dim=0, correction=0)
    ref = torch.maximum(mu.abs(), sd.amax())
    sd = torch.where(sd > _CONSTANT_RTOL * ref, sd, torch.ones_like(sd))
    return ((a - mu) / sd).to(torch.float32), ((b - mu) / sd).to(torch.float32), finite.all()


def _batch_indices(n: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """(steps, min(batch, n)) row indices from consecutive random permutations of ``range(n)``."""
    b = min(batch, n)
    rng = np.random.default_rng(seed)
    need = steps * b
    perms = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(perms)[:need].reshape(steps, b)


def _groups(probs: list[_Prepared], n_lrs: int, max_bytes: int) -> list[list[int]]:
    """Split problems (largest dimension first) into groups whose padded tensors fit."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i].dim)
    groups: list[list[int]] = []
    cur: list[int] = []
    rows = cls = 0
    for i in order:
        p = probs[i]
        p_rows = len(p.xtr) + len(p.xva)
        if cur:
            d = probs[cur[0]].dim  # the group's padded dimension (sorted, so the largest)
            r, c = max(rows, p_rows), max(cls, p.classes)
            if 4 * (len(cur) + 1) * d * (r + 3 * n_lrs * c) > max_bytes:
                groups.append(cur)
                cur = []
        rows, cls = (max(rows, p_rows), max(cls, p.classes)) if cur else (p_rows, p.classes)
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def _run_group(
    probs: list[_Prepared],
    lrs: Sequence[float],
    steps: int,
    seed: int,
    batch_size: int,
    momentum: float,
    device: torch.device,
    standardise: bool = False,
) -> np.ndarray:
    """Train every (problem, lr) pair of one group jointly; return accuracies (P, L).
    ``standardise``: the problems hold raw features, standardised on ``device``
    (:func:`_standardise_torch`; ValueError for the first non-finite one before training)."""
    import torch
    import torch.nn.functional as F

    P, L = len(probs), len(lrs)
    dmax = max(p.dim for p in probs)
    cmax = max(p.classes for p in probs)
    nmax = max(len(p.xtr) for p in probs)
    mmax = max(len(p.xva) for p in probs)
    bmax = max(min(batch_size, len(p.xtr)) for p in probs)

    host_x = not standardise
    xtr = np.zeros((P, nmax, dmax) if host_x else (0,), np.float32)
    ytr = np.zeros((P, nmax), np.int64)
    xva = np.zeros((P, mmax, dmax) if host_x else (0,), np.float32)
    yva = np.full((P, mmax), -1, np.int64)
    idx = np.zeros((steps, P, bmax), np.int64)
    batches: dict[int, np.ndarray] = {}  # problems with the same n share their batches
    row_w = np.zeros((P, bmax), np.float32)  # 1/b_p on real batch rows, 0 on padding
    cls_mask = np.full((P, 1, 1, cmax), _NEG, np.float32)
    for j, p in enumerate(probs):
        n, m, d = len(p.xtr), len(p.xva), p.dim
        ytr[j, :n], yva[j, :m] = p.ytr, p.yva
        if host_x:
            xtr[j, :n, :d], xva[j, :m, :d] = p.xtr, p.xva
        bi = batches.get(n)
        if bi is None:
            bi = batches[n] = _batch_indices(n, steps, batch_size, seed)
        idx[:, j, : bi.shape[1]] = bi
        row_w[j, : bi.shape[1]] = 1.0 / bi.shape[1]
        cls_mask[j, 0, 0, : p.classes] = 0.0

    t = {
        k: torch.from_numpy(v).to(device)
        for k, v in dict(
            xtr=xtr, ytr=ytr, xva=xva, yva=yva, idx=idx, row_w=row_w, cls_mask=cls_mask
        ).items()
    }
    if standardise:
        t["xtr"] = torch.zeros((P, nmax, dmax), dtype=torch.float32, device=device)
        t["xva"] = torch.zeros((P, mmax, dmax), dtype=torch.float32, device=device)
        finite = []
        for j, p in enumerate(probs):
            a, b, ok = _standardise_torch(p.xtr, p.xva, device)
            t["xtr"][j, : len(p.xtr), : p.dim] = a
            t["xva"][j, : len(p.xva), : p.dim] = b
            finite.append(ok)
        for p, ok in zip(probs, torch.stack(finite).cpu().numpy(), strict=True):
            if not ok:
                raise ValueError(_not_finite(p.number))
    lr_w = torch.tensor([float(lr) for lr in lrs], device=device)  # (L,)
    # all lrs side by side: columns [l * Cmax, (l + 1) * Cmax) of W belong to lrs[l]
    weight = torch.zeros((P, dmax, L * cmax), device=device, requires_grad=True)
    bias = torch.zeros((P, 1, L * cmax), device=device, requires_grad=True)
    # SGD with lr=1 on the loss sum_l lr_l * loss_l is exactly SGD with lr_l on each block
    # (momentum is linear in the gradient), so one optimizer drives every (problem, lr) pair.
    opt = torch.optim.SGD([weight, bias], lr=1.0, momentum=momentum)
    rows = torch.arange(P, device=device)[:, None]
    for s in range(steps):
        bidx = t["idx"][s]  # (P, B)
        xb = t["xtr"][rows, bidx]  # (P, B, Dmax)
        yb = t["ytr"][rows, bidx]  # (P, B)
        opt.zero_grad(set_to_none=True)
        logits = torch.baddbmm(bias, xb, weight).view(P, bmax, L, cmax) + t["cls_mask"]
        target = yb[:, :, None].expand(P, bmax, L).reshape(-1)
        ce = F.cross_entropy(logits.reshape(-1, cmax), target, reduction="none")
        loss = (ce.view(P, bmax, L) * t["row_w"][:, :, None] * lr_w).sum()
        loss.backward()
        opt.step()

    counts = torch.tensor([len(p.xva) for p in probs], device=device, dtype=torch.float64)
    valid = torch.arange(mmax, device=device)[None, :] < counts[:, None]  # (P, M)
    with torch.no_grad():
        logits = torch.baddbmm(bias, t["xva"], weight).view(P, mmax, L, cmax) + t["cls_mask"]
        pred = logits.argmax(dim=-1)  # (P, M, L)
        ok = (pred == t["yva"][:, :, None]) & torch.isfinite(logits).all(dim=-1)
        ok &= valid[:, :, None]
        acc = (ok.sum(dim=1).double() / counts[:, None]).cpu().numpy()
    return acc


def linear_probe_scores(
    problems: Sequence[Problem],
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    device: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    momentum: float = DEFAULT_MOMENTUM,
    threads: int | None = None,
    max_bytes: int | None = None,
    epochs: int | None = None,
    standardise_on_device: bool | None = None,
) -> np.ndarray:
    """Validation accuracy of every (problem, lr) pair: float64 array (P, len(lrs)).

    ``epochs`` (optional) replaces ``steps`` by ``epochs · ⌈n / b⌉`` with ``n`` the largest
    training split and ``b = min(batch_size, n)``: that many passes over the training data.

    ``device``: a torch device, None for :func:`~shift.scoring.device.probe_device`
    (``$SHIFT_SCORE_DEVICE``). ``standardise_on_device`` (default: when the device is not the
    CPU) standardises the features there instead of in numpy (see module doc).

    Problems are trained in batched groups whose padded tensors stay under ``max_bytes``
    (default 1 GiB; on a GPU a quarter of its free memory, if more);
    ``threads`` sets torch's CPU threads for the call; by default 1 for small problems (where
    thread start-up and contention cost more than they save), else ``idle_cores(4)``."""
    import torch

    if not lrs or any(float(lr) <= 0 for lr in lrs):
        raise ValueError("lrs must be a non-empty list of positive learning rates")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    dev = torch.device(probe_device() if device is None else device)
    on_device = dev.type != "cpu" if standardise_on_device is None else standardise_on_device
    probs = [_prepare(i, p, standardise=not on_device) for i, p in enumerate(problems)]
    out = np.zeros((len(probs), len(lrs)))
    if not probs:
        return out
    if epochs is not None:
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        n = max(len(p.xtr) for p in probs)
        steps = int(epochs) * -(-n // min(batch_size, n))
    if max_bytes is None:
        max_bytes = _DEFAULT_MAX_BYTES
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            max_bytes = max(max_bytes, free // _GPU_MEMORY_SHARE)
    if threads is None:
        work = sum(min(batch_size, len(p.xtr)) * p.dim * p.classes for p in probs) * len(lrs)
        threads = 1 if work < _SMALL_WORK else idle_cores(4)
    prev_threads = torch.get_num_threads()
    prev_precision = torch.get_float32_matmul_precision()
    torch.set_num_threads(max(1, threads))
    torch.set_float32_matmul_precision("highest")  # no TF32/bf16 matmuls in the probe
    try:
        for group in _groups(probs, len(lrs), max_bytes):
            acc = _run_group(
                [probs[i] for i in group],
                list(lrs),
                steps,
                seed,
                batch_size,
                momentum,
                dev,
                on_device,
            )
            out[group] = acc
    finally:
        torch.set_num_threads(prev_threads)
        torch.set_float32_matmul_precision(prev_precision)
    return out


def linear_probe_many(
    problems: Sequence[Problem],
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    device: str | None = None,
    **kwargs: Any,
) -> list[float]:
    """``score_p = max_lr val_accuracy(p, lr)`` for every problem, trained in one batched
    program (see module doc; ``kwargs`` go to ``linear_probe_scores``)."""
    scores = linear_probe_scores(problems, lrs, steps, seed, device, **kwargs)
    return [float(s) for s in scores.max(axis=1)] if len(scores) else []


def _one_lr(lr: float) -> tuple[float, ...]:
    return (lr,)


#: what a query may set: ``RANK BY linear(lr=0.01, epochs=400)`` (SHiFT's
#: ``Linear(learning_rate=0.01, num_epochs=400)``, also accepted); ``epochs`` replaces ``steps``
LINEAR_ARGS = (
    Arg(
        "lr",
        float,
        "one learning rate",
        low=0.0,
        high=10.0,
        low_open=True,
        kwarg="lrs",
        convert=_one_lr,
    ),
    Arg("epochs", int, "passes over the training split", low=1, high=10_000),
    # SHiFT's spelling: Linear(learning_rate=0.01, num_epochs=400)
    Arg(
        "learning_rate",
        float,
        "= lr",
        low=0.0,
        high=10.0,
        low_open=True,
        kwarg="lrs",
        convert=_one_lr,
    ),
    Arg("num_epochs", int, "= epochs", low=1, high=10_000, kwarg="epochs"),
    Arg("steps", int, "SGD steps", low=1, high=1_000_000),
    Arg("batch_size", int, "mini-batch size", low=1, high=65_536),
    Arg("momentum", float, "SGD momentum", low=0.0, high=0.999),
    Arg("seed", int, "batch order seed", low=0, high=2**32 - 1),
)


@proxy(
    "linear",
    description=(
        "linear probe: softmax regression on standardised features, mini-batch SGD "
        f"({DEFAULT_STEPS} steps, batch {DEFAULT_BATCH}, momentum {DEFAULT_MOMENTUM}) at "
        f"lr in {list(DEFAULT_LRS)}; best validation accuracy"
    ),
    cost_per_1k=0.5,
    many=linear_probe_many,
    args=LINEAR_ARGS,
    lrs=DEFAULT_LRS,
    steps=DEFAULT_STEPS,
    batch_size=DEFAULT_BATCH,
    momentum=DEFAULT_MOMENTUM,
    seed=0,
)
def linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    device: str | None = None,
    **kwargs: Any,
) -> float:
    """Single-problem ``linear_probe_many``: best validation accuracy over ``lrs``."""
    return linear_probe_many(
        [(train_x, train_y, val_x, val_y)], lrs, steps, seed, device, **kwargs
    )[0]
