"""Models overlap (issue 19, item 4): the in-process executor loads model m+1 while model m runs,
and the torch backend's conversion is cached on disk per (model sha256, backend, opset).

The executor tests run a probe backend (registered through ``register_backend``) that records
when each model is built, embeds and is closed, with sleeps for its costs; the cache tests run
the real torch backend on tiny ONNX models (skipped where onnx2torch is not installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shift.config import Home
from shift.errors import ModelFileError, ShiftError
from shift.inference.embedder import register_backend
from shift.inference.jobs import BatchResult, EmbedJob, JobFailure
from shift.inference.local import InProcessExecutor
from shift.inference.torch.cache import TorchCache, cache_dir, home_cache_dir
from shift.records import InputSpec, ModelRecord

PROBE = "overlap-probe"
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("onnx2torch") is None, reason="onnx2torch is not installed"
)


class Probe:
    """What the probe backend does per model (``plans``) and what happened (``events``:
    ``(time, what, model, thread)``)."""

    plans: dict[str, dict[str, Any]] = {}
    events: list[tuple[float, str, str, int]] = []
    lock = threading.Lock()

    @classmethod
    def note(cls, what: str, model: str) -> None:
        with cls.lock:
            cls.events.append((time.perf_counter(), what, model, threading.get_ident()))

    @classmethod
    def times(cls, what: str) -> dict[str, float]:
        return {m: t for t, w, m, _ in cls.events if w == what}


@register_backend(PROBE)
class ProbeEmbedder:
    providers = ["probe"]
    device = "cpu"

    def __init__(self, model_path: str, record: ModelRecord, **_: Any) -> None:
        self.name, self.record = record.name, record
        plan = Probe.plans.get(record.name, {})
        Probe.note("load-start", self.name)
        time.sleep(plan.get("load_s", 0.0))
        if plan.get("fail_load"):
            Probe.note("load-failed", self.name)
            raise ModelFileError(
                f"model {self.name!r}: cannot load {model_path}: broken on purpose"
            )
        self._cancelled = threading.Event()
        self.device = plan.get("device", "cpu")
        Probe.note("load-end", self.name)

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        plan = Probe.plans.get(self.name, {})
        if plan.get("hang"):
            self._cancelled.wait(30)
            raise ModelFileError(f"model {self.name!r}: cancelled")
        time.sleep(plan.get("embed_s", 0.0))
        Probe.note("embed", self.name)
        value = float(int(self.record.sha256[:4], 16))
        return np.full((len(images), self.record.dim), value, np.float32), None

    def cancel(self) -> None:
        Probe.note("cancel", self.name)
        self._cancelled.set()

    def close(self) -> None:
        Probe.note("close", self.name)


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    Probe.plans, Probe.events = {}, []
    yield
    Probe.plans, Probe.events = {}, []


def probe_record(name: str, i: int) -> ModelRecord:
    return ModelRecord(
        name=name,
        path=f"/nonexistent/{name}.onnx",
        sha256=f"{i + 1:04x}" + "0" * 60,
        params=1,
        dim=4,
        output="embedding",
        input_name="input",
        input=InputSpec(height=4, width=4),
        source="test",
    )


def probe_jobs(names: list[str], batches: int = 3, pulled: list[str] | None = None) -> list[Any]:
    def stream(name: str) -> Iterator[tuple[str, np.ndarray]]:
        for b in range(batches):
            if pulled is not None:
                pulled.append(f"{name}:{b}")
            yield f"b{b}", np.zeros((2, 4, 4, 3), np.uint8)

    return [
        EmbedJob(n, f"/nonexistent/{n}.onnx", probe_record(n, i), stream(n), batches, PROBE)
        for i, n in enumerate(names)
    ]


def run_jobs(executor: InProcessExecutor, jobs: list[EmbedJob]) -> list[tuple[str, ...]]:
    """What the run reported, in order: ("ok", model, batch) or ("failed", model, error)."""
    out: list[tuple[str, ...]] = []
    caller = threading.get_ident()

    def on_result(r: BatchResult) -> None:
        assert threading.get_ident() == caller  # on the calling thread
        out.append(("ok", r.model_name, r.batch_id))

    def on_failure(f: JobFailure) -> None:
        assert threading.get_ident() == caller
        out.append(("failed", f.model_name, f.error))

    executor.run(jobs, on_result, on_failure, progress=False)
    return out


# ---- the look-ahead ----------------------------------------------------------------------------


def test_results_and_failures_keep_job_order_and_a_failed_load_fails_only_its_job() -> None:
    names = ["a", "broken", "c", "d"]
    Probe.plans = {n: {"load_s": 0.05, "embed_s": 0.01} for n in names}
    Probe.plans["broken"]["fail_load"] = True
    runs = {}
    for ahead in (True, False):
        pulled: list[str] = []
        executor = InProcessExecutor(load_ahead=ahead, batch_timeout_s=30)
        runs[ahead] = run_jobs(executor, probe_jobs(names, pulled=pulled))
        assert not any(p.startswith("broken:") for p in pulled)  # no batch pulled for it
        assert executor.inference_calls == 9
    assert runs[True] == runs[False]  # the same reports, in the same order
    got = runs[True]
    assert [r[1:] for r in got if r[0] == "ok"] == [
        (m, f"b{b}") for m in ("a", "c", "d") for b in range(3)
    ]
    failed = [r for r in got if r[0] == "failed"]
    assert len(failed) == 1 and failed[0][1] == "broken" and "broken on purpose" in failed[0][2]
    assert got.index(failed[0]) == 3  # after a's batches, before c's


def test_at_most_one_model_is_loaded_ahead_and_loads_overlap_the_previous_model() -> None:
    names = [f"m{i}" for i in range(5)]
    Probe.plans = {n: {"load_s": 0.15, "embed_s": 0.05} for n in names}
    executor = InProcessExecutor(load_ahead=True, batch_timeout_s=30)
    got = run_jobs(executor, probe_jobs(names))
    assert len(got) == 15 and all(r[0] == "ok" for r in got)
    # models in memory at any moment: built (load-start) and not yet closed
    alive, peak = 0, 0
    for _, what, _, _ in sorted(Probe.events):
        alive += {"load-start": 1, "close": -1}.get(what, 0)
        peak = max(peak, alive)
    assert alive == 0 and peak == 2  # every model closed; never more than one ahead
    starts, closes = Probe.times("load-start"), Probe.times("close")
    last_embed: dict[str, float] = {}
    for t, what, m, _ in Probe.events:
        if what == "embed":
            last_embed[m] = t
    for prev, nxt in zip(names, names[1:], strict=False):
        assert starts[nxt] < last_embed[prev]  # loaded while the previous model ran
    for before, nxt in zip(names, names[2:], strict=False):
        assert closes[before] <= starts[nxt]  # m0 closed before m2 is built
    load_threads = {th for _, what, m, th in Probe.events if what == "load-start" and m != "m0"}
    assert threading.get_ident() not in load_threads  # built on the background thread
    # the load time of every model after the first is hidden behind the previous one's batches
    waited = sum(executor.load_waited[n] for n in names[1:])
    loaded = sum(executor.load_seconds[n] for n in names[1:])
    assert loaded >= 4 * 0.15 and waited < 0.5 * loaded


def test_without_look_ahead_each_model_loads_when_its_job_starts() -> None:
    names = ["a", "b", "c"]
    Probe.plans = {n: {"load_s": 0.05} for n in names}
    executor = InProcessExecutor(load_ahead=False, batch_timeout_s=30)
    run_jobs(executor, probe_jobs(names))
    order = [(w, m) for _, w, m, _ in sorted(Probe.events) if w in ("load-start", "close")]
    assert order == [(w, m) for m in names for w in ("load-start", "close")]
    assert {th for _, w, _, th in Probe.events if w == "load-start"} == {threading.get_ident()}


def test_auto_looks_ahead_only_while_a_model_runs_off_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHIFT_LOAD_AHEAD", raising=False)
    assert InProcessExecutor().load_ahead == "auto"
    for device, ahead in (("cpu", False), ("cuda", True)):
        Probe.plans = {n: {"load_s": 0.05, "embed_s": 0.02, "device": device} for n in "abc"}
        Probe.events = []
        run_jobs(InProcessExecutor(batch_timeout_s=30), probe_jobs(list("abc")))
        starts, closes = Probe.times("load-start"), Probe.times("close")
        assert (starts["b"] < closes["a"]) is ahead and (starts["c"] < closes["b"]) is ahead
    for raw, mode in (("0", "off"), ("off", "off"), ("1", "on"), ("auto", "auto")):
        monkeypatch.setenv("SHIFT_LOAD_AHEAD", raw)
        assert InProcessExecutor().load_ahead == mode
    assert InProcessExecutor(load_ahead=True).load_ahead == "on"  # the argument wins
    monkeypatch.setenv("SHIFT_LOAD_AHEAD", "sometimes")
    with pytest.raises(ShiftError, match="SHIFT_LOAD_AHEAD"):
        InProcessExecutor()


def test_a_batch_timeout_still_cancels_and_fails_only_its_model() -> None:
    names = ["a", "hangs", "c"]
    Probe.plans = {n: {"load_s": 0.05} for n in names}
    Probe.plans["hangs"]["hang"] = True
    executor = InProcessExecutor(load_ahead=True, batch_timeout_s=0.3)
    got = run_jobs(executor, probe_jobs(names))
    assert [r[1] for r in got] == ["a"] * 3 + ["hangs"] + ["c"] * 3
    assert got[3][0] == "failed" and "did not finish within 0.3 s" in got[3][2]
    assert [m for _, w, m, _ in Probe.events if w == "cancel"] == ["hangs"]
    assert executor.inference_calls == 7  # the timed-out batch, not the ones after it


def test_a_run_that_raises_lets_go_of_the_model_loaded_ahead() -> None:
    names = ["a", "b"]
    Probe.plans = {"a": {"embed_s": 0.0}, "b": {"load_s": 0.3}}
    executor = InProcessExecutor(load_ahead=True, batch_timeout_s=30)

    def on_result(r: BatchResult) -> None:
        raise RuntimeError("the caller's own error")

    with pytest.raises(RuntimeError, match="the caller's own error"):
        executor.run(probe_jobs(names), on_result, lambda f: None, progress=False)
    deadline = time.monotonic() + 5
    while "b" not in Probe.times("close") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(Probe.times("close")) == {"a", "b"}  # b was closed once its load finished


# ---- the torch conversion cache ----------------------------------------------------------------


def tiny_cnn_builder() -> Any:
    try:
        from onnx_factory import build_tiny_cnn
    except ImportError:  # tests/ is a package
        from tests.onnx_factory import build_tiny_cnn
    return build_tiny_cnn


@pytest.fixture
def home_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Home, ModelRecord]:
    """A tiny opset-20 CNN (onnx2torch needs it lowered to 17) in a home's models/ folder."""
    pytest.importorskip("onnx2torch")
    build_tiny_cnn = tiny_cnn_builder()
    monkeypatch.delenv("SHIFT_TORCH_CACHE", raising=False)
    home = Home(tmp_path / "home", tmp_path / "home" / "indexes").ensure(mark=True)
    rec = build_tiny_cnn(tmp_path / "src.onnx", seed=3, opset=20, name="tiny")
    dst = home.models_dir / f"{rec.sha256}.onnx"
    shutil.copy(tmp_path / "src.onnx", dst)
    return home, rec.model_copy(update={"path": str(dst)})


class Counts:
    """How often a torch embedder lowered a graph, ran onnx2torch and checked against ONNX
    Runtime."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import onnx2torch

        from shift.inference.torch import check as torch_check
        from shift.inference.torch import convert as torch_convert

        self.n = {"lower": 0, "onnx2torch": 0, "check": 0}

        def counting(key: str, fn: Any) -> Any:
            def wrapped(*a: Any, **k: Any) -> Any:
                self.n[key] += 1
                return fn(*a, **k)

            return wrapped

        monkeypatch.setattr(torch_convert, "_lower", counting("lower", torch_convert._lower))
        monkeypatch.setattr(onnx2torch, "convert", counting("onnx2torch", onnx2torch.convert))
        monkeypatch.setattr(
            torch_check, "_disagreement", counting("check", torch_check._disagreement)
        )

    def take(self) -> dict[str, int]:
        out, self.n = self.n, dict.fromkeys(self.n, 0)
        return out


def new_process_embedder(rec: ModelRecord, path: str | None = None) -> Any:
    """A torch embedder as a fresh process would build it (the per-process verdicts dropped)."""
    from shift.inference.torch import check as torch_check
    from shift.inference.torch.backend import TorchEmbedder

    torch_check.forget_verdicts()
    return TorchEmbedder(path or rec.path, rec, device="cpu")


@needs_torch
def test_a_rerun_neither_lowers_nor_checks(
    home_model: tuple[Home, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, rec = home_model
    counts = Counts(monkeypatch)
    cold = new_process_embedder(rec)
    assert counts.take() == {"lower": 1, "onnx2torch": 2, "check": 1}  # direct try, then 17
    assert cold.verdict == "checked" and not cold.graph_cached
    assert "-> 17" in cold.route
    root = home_cache_dir(home.registry_dir)
    assert root == home.registry_dir / "cache" / "torch" == cache_dir(rec.path)
    kinds = sorted(p.name.split("-")[0] + p.suffix for p in root.iterdir())
    assert kinds == ["graph.json", "graph.onnx", "verdict.json"]

    warm = new_process_embedder(rec)
    assert counts.take() == {"lower": 0, "onnx2torch": 1, "check": 0}  # rebuilt, not checked
    assert warm.verdict == "disk" and warm.graph_cached and warm.route == cold.route
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for a, b in zip(cold.embed(x), warm.embed(x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert new_process_embedder(rec).verdict == "disk"
    from shift.inference.torch import check as torch_check

    torch_check.forget_verdicts()


@needs_torch
def test_the_cache_is_ignored_when_the_model_file_differs(
    home_model: tuple[Home, ModelRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_tiny_cnn = tiny_cnn_builder()
    home, rec = home_model
    counts = Counts(monkeypatch)
    new_process_embedder(rec)
    counts.take()
    # other weights at the same path, under the same (now stale) record: keyed by the bytes
    build_tiny_cnn(tmp_path / "other.onnx", seed=4, opset=20, name="tiny")
    shutil.copy(tmp_path / "other.onnx", rec.path)
    other = new_process_embedder(rec)
    assert counts.take() == {"lower": 1, "onnx2torch": 2, "check": 1}
    assert other.verdict == "checked" and not other.graph_cached
    assert other.model_sha256 == hashlib.sha256(Path(rec.path).read_bytes()).hexdigest()
    # a cached graph whose bytes were damaged is not parsed: removed, lowered again
    for graph in home_cache_dir(home.registry_dir).glob("graph-*.onnx"):
        graph.write_bytes(graph.read_bytes()[:-7] + b"damaged")
    again = new_process_embedder(rec)
    assert counts.take() == {"lower": 1, "onnx2torch": 2, "check": 0}
    assert not again.graph_cached and again.verdict == "disk"
    from shift.inference.torch import check as torch_check

    torch_check.forget_verdicts()


@needs_torch
def test_a_changed_conversion_is_checked_again_and_refused(
    home_model: tuple[Home, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk verdict holds for the module it checked: a conversion with another structure
    (here an embedding reversed on purpose) misses it and is refused."""
    from torch import nn

    from shift.errors import BackendError
    from shift.inference.torch import backend as torch_backend
    from shift.inference.torch import check as torch_check

    _, rec = home_model
    assert new_process_embedder(rec).verdict == "checked"
    real_convert = torch_backend.convert_onnx

    class Reversed(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> tuple[Any, ...]:
            emb, logits = self.inner(x)
            return emb.flip(1), logits

    def broken(path: str, record: ModelRecord) -> Any:
        converted = real_convert(path, record)
        converted.module = Reversed(converted.module)
        return converted

    monkeypatch.setattr(torch_backend, "convert_onnx", broken)
    try:
        with pytest.raises(BackendError, match="disagrees with ONNX Runtime"):
            new_process_embedder(rec)
    finally:
        torch_check.forget_verdicts()


@needs_torch
def test_nothing_is_unpickled_and_the_cache_holds_json_and_onnx_only(
    home_model: tuple[Home, ModelRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    import torch

    home, rec = home_model
    new_process_embedder(rec)

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("something unpickled")

    class NoUnpickler:
        def __init__(self, *a: Any, **k: Any) -> None:
            refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    warm = new_process_embedder(rec)
    assert warm.verdict == "disk" and warm.graph_cached
    monkeypatch.undo()
    for p in home_cache_dir(home.registry_dir).iterdir():
        data = p.read_bytes()
        assert not data.startswith((b"\x80", b"PK"))  # neither a pickle nor a torch zip
        if p.suffix == ".json":
            assert isinstance(json.loads(data), dict)
        else:
            assert p.suffix == ".onnx"
            onnx.checker.check_model(onnx.load_model_from_string(data))
    from shift.inference.torch import check as torch_check

    torch_check.forget_verdicts()


def test_where_the_cache_lives_and_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIFT_TORCH_CACHE", raising=False)
    home = Home(tmp_path / "home", tmp_path / "home" / "indexes").ensure(mark=True)
    assert cache_dir(home.models_dir / "x.onnx") == home.registry_dir / "cache" / "torch"
    assert cache_dir(tmp_path / "x.onnx") is None  # a file outside a home: no disk cache
    monkeypatch.setenv("SHIFT_TORCH_CACHE", "off")
    assert cache_dir(home.models_dir / "x.onnx") is None
    monkeypatch.setenv("SHIFT_TORCH_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir(tmp_path / "x.onnx") == tmp_path / "elsewhere"

    cache = TorchCache(tmp_path / "bounded", limit=1000)
    (tmp_path / "bounded").mkdir()
    (tmp_path / "bounded" / "notes.txt").write_text("a user's file" * 200)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(12)]
    for i, k in enumerate(keys):
        cache.put_verdict(k, {"pad": "x" * 100})
        if i == 0:
            time.sleep(0.01)
        assert cache.has_verdict(keys[0])  # used: kept as the most recent
        time.sleep(0.01)
    assert cache.size() <= 1000
    assert cache.has_verdict(keys[0]) and cache.has_verdict(keys[-1])
    assert not cache.has_verdict(keys[1])  # least recently used: evicted
    assert (tmp_path / "bounded" / "notes.txt").exists()  # not the cache's: left alone
    cache.clear()
    assert cache.size() == 0 and not cache.has_verdict(keys[-1])
    shutil.rmtree(tmp_path / "bounded")
    assert not cache.has_verdict(keys[-1])  # deleting the folder is safe
    cache.put_verdict(keys[0], {})
    assert cache.has_verdict(keys[0])
