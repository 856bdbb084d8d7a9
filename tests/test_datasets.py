"""Demo datasets are reproducible and well-formed; expert training is deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from shift import datasets as dd
from shift.catalog.experts import EMBED_DIM, EXPERTS, SmallCNN, embed, preprocess, train_expert


@pytest.fixture(scope="module")
def demo() -> dict:
    return {name: build() for name, build in dd.DEMO_TASKS.items()}


@pytest.mark.parametrize("name", list(dd.DEMO_TASKS))
def test_demo_task_shape_and_balance(demo: dict, name: str) -> None:
    s = demo[name]
    n, k = dd.DEMO_TASK_SHAPES[name]
    assert s.images.shape == (n, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.shape == (n,) and s.labels.dtype == np.int64
    assert len(s.classes) == k >= 2 and len(s.origin) == n and s.splits is None
    counts = np.bincount(s.labels, minlength=k)
    assert len(counts) == k and counts.min() >= 0.8 * n / k and counts.max() <= 1.2 * n / k
    assert s.images.std() > 10  # not blank


@pytest.mark.parametrize("name", list(dd.DEMO_TASKS))
def test_demo_task_reproducible(demo: dict, name: str) -> None:
    again = dd.DEMO_TASKS[name]()
    assert dd.content_digest(again) == dd.content_digest(demo[name])
    assert again.classes == demo[name].classes and again.origin == demo[name].origin


def test_demo_tasks_distinct(demo: dict) -> None:
    assert len({dd.content_digest(s) for s in demo.values()}) == len(demo)


GENERATORS = [dd.shapes_position, dd.shapes_orientation, dd.shapes_count, dd.shapes_kind]


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__)
def test_generators_seed_and_variant(gen) -> None:
    base = gen(40, 1, 0)
    assert dd.content_digest(gen(40, 1, 0)) == dd.content_digest(base)
    assert dd.content_digest(gen(40, 2, 0)) != dd.content_digest(base)
    other = gen(40, 1, 1)
    assert dd.content_digest(other) != dd.content_digest(base)
    # the variant changes the look, not just the draw: mean colour statistics differ
    assert not np.allclose(other.images.mean((0, 1, 2)), base.images.mean((0, 1, 2)), atol=2)
    assert dd.content_digest(gen(40, 1, 7)) != dd.content_digest(base)  # seeded extra style
    assert base.images.shape == (40, 32, 32, 3)
    assert set(base.labels.tolist()) == set(range(len(base.classes)))


def test_content_digest_sensitive_to_labels() -> None:
    s = dd.shapes_kind(12, 0, 0)
    d0 = dd.content_digest(s)
    s.labels = s.labels.copy()
    s.labels[0] = (s.labels[0] + 1) % 4
    assert dd.content_digest(s) != d0


def test_real_digits() -> None:
    full = dd.digits()
    assert full.images.shape == (1797, 32, 32, 3) and full.images.max() == 255
    sub = dd.digits(100)
    assert np.bincount(sub.labels).tolist() == [10] * 10
    assert dd.content_digest(dd.digits(100)) == dd.content_digest(sub)
    m = dd.mnist(50, seed=3)
    assert m.images.shape == (50, 32, 32, 3) and np.bincount(m.labels).tolist() == [5] * 10
    assert (m.images[:, :2] == 0).all()  # zero padding 28 → 32
    assert dd.content_digest(dd.mnist(50, seed=4)) != dd.content_digest(m)
    with pytest.raises(ValueError):
        dd.mnist(6000)


def test_mnist_upstream_disjoint_from_demo() -> None:
    up = dd.mnist_upstream()
    assert len(up.labels) == 5000 - dd.MNIST_HOLDOUT
    demo_ids = set(dd.DEMO_TASKS["mnist"]().origin)
    assert demo_ids <= set(dd.mnist(dd.MNIST_HOLDOUT, 0).origin)  # subsets nest
    assert not demo_ids & set(up.origin)


def test_small_cnn_shapes() -> None:
    model = SmallCNN(7).eval()
    x = preprocess(dd.shapes_kind(5, 0, 0).images)
    assert x.shape == (5, 3, 32, 32) and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    emb, logits = model(x)
    assert emb.shape == (5, EMBED_DIM) == (5, 128) and logits.shape == (5, 7)


def test_train_expert_deterministic() -> None:
    spec = EXPERTS["cnn-kind-expert"]
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    m1, info1 = train_expert(spec, epochs=1, n=160)
    after = torch.rand(3)
    m2, info2 = train_expert(spec, epochs=1, n=160)
    assert torch.equal(before, after)  # the caller's global RNG is untouched
    assert torch.get_num_threads() == threads  # restored
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert info1["train_accuracy"] == info2["train_accuracy"]
    assert info1["upstream_size"] == 160 and info1["epochs"] == 1
    assert not m1.training
    imgs = dd.shapes_kind(6, 9, 1).images
    emb = embed(m1, imgs)
    assert emb.shape == (6, 128) and emb.dtype == np.float32
    _, logits = m1(preprocess(imgs))
    assert logits.shape == (6, len(spec.classes))


def test_expert_specs_consistent() -> None:
    assert {"cnn-digits-expert", "cnn-position-expert", "cnn-count-expert"} <= set(EXPERTS)
    for spec in EXPERTS.values():
        assert spec.dataset in dd.BUILDERS and "expert" in spec.tags
        probe = dataclasses.replace(spec, n=10).upstream()
        assert tuple(probe.classes) == spec.classes and len(probe.labels) == 10
