"""Trained experts are cached by content (recipe, training code, torch) and shared across homes:
a second build loads the same weights instead of training, a damaged entry is trained again,
and nothing is unpickled. Real torch training on a tiny recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from shift.catalog import expert_cache, experts  # noqa: E402
from shift.catalog.experts import EXPERTS  # noqa: E402


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("SHIFT_CACHE_DIR", str(tmp_path / "cache"))
    return next(iter(EXPERTS.values()))


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = experts.train_expert

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(experts, "train_expert", counted)
    return calls


def test_a_second_build_loads_the_same_weights(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_training(monkeypatch)
    first, info1 = expert_cache.cached_expert(spec, epochs=1, n=160)
    second, info2 = expert_cache.cached_expert(spec, epochs=1, n=160)
    assert len(calls) == 1 and (info1["cached"], info2["cached"]) == (False, True)
    assert info2["trained_seconds"] == pytest.approx(info1["trained_seconds"])
    assert info2["heldout_accuracy"] == info1["heldout_accuracy"]
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    files = sorted(p.suffix for p in expert_cache.cache_dir().iterdir())
    assert files == [".json", ".safetensors"]  # no pickle anywhere


def test_other_recipes_do_not_share_an_entry(spec: Any) -> None:
    assert expert_cache.expert_key(spec, 1, 160) != expert_cache.expert_key(spec, 1, 200)
    assert expert_cache.expert_key(spec, 1, 160) != expert_cache.expert_key(spec, 2, 160)


def test_a_damaged_entry_is_trained_again(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    expert_cache.cached_expert(spec, epochs=1, n=160)
    (weights,) = expert_cache.cache_dir().glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    calls = _count_training(monkeypatch)
    _, info = expert_cache.cached_expert(spec, epochs=1, n=160)
    assert len(calls) == 1 and info["cached"] is False
    assert expert_cache.cached_expert(spec, epochs=1, n=160)[1]["cached"] is True


@pytest.mark.slow  # ~12 s: two processes train experts, then a sequential run
def test_warm_trains_missing_experts_in_parallel_processes(
    spec: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two processes train two experts at once; their weights are those of a sequential run."""
    import dataclasses

    small = [dataclasses.replace(spec, n=160, epochs=1, seed=s) for s in (1, 2)]
    assert expert_cache.warm(small, workers=2) == 2
    assert expert_cache.warm(small, workers=2) == 0  # all cached now
    parallel = [expert_cache.cached_expert(s) for s in small]
    assert all(info["cached"] for _, info in parallel)
    monkeypatch.setenv("SHIFT_CACHE_DIR", str(tmp_path / "sequential"))
    for (got, _), s in zip(parallel, small, strict=True):
        want, info = expert_cache.cached_expert(s)
        assert info["cached"] is False
        for k, v in want.state_dict().items():
            assert torch.equal(v, got.state_dict()[k]), k
