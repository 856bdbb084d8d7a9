"""Weight files never run code and bad ones get named errors, for every source: torchvision,
timm (file and Hugging Face folder), transformers folders, the catalog's own architectures, and
the CLI's ``models weights``. Each malicious file's payload would create a marker file; the marker
must never appear. Real torch, torchvision, timm and transformers; nothing is mocked."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_runner import cli, wide_consoles  # noqa: F401  (autouse fixture)

from shift.catalog.checkpoint import read_state_dict, size_cap
from shift.catalog.sources import get_source, import_models
from shift.errors import WeightsFileError
from shift.store.registry import Registry

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")

R18 = "tv-resnet18-imagenet1k_v1"


class Payload:
    """Unpickling this calls ``os.system`` (what a hostile checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _zip(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def _legacy(obj: Any, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _raw(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


WRITERS = {"zip": _zip, "legacy": _legacy, "raw-pickle": _raw}


def hostile_files(folder: Path, marker: Path, name: str = "evil.pth") -> list[Path]:
    """Every format × (payload at the top level, nested inside a state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt, write in WRITERS.items():
        for where, obj in {
            "top": Payload(marker),
            "nested": {"state_dict": {"w": torch.zeros(2), "extra": [Payload(marker)]}},
        }.items():
            path = folder / f"{fmt}-{where}-{name}"
            write(obj, path)
            out.append(path)
    return out


def assert_refused(load: Callable[[Path], Any], files: list[Path], marker: Path) -> None:
    for path in files:
        with pytest.raises(WeightsFileError) as e:
            load(path)
        assert str(path) in str(e.value)
        assert not marker.exists(), f"{path.name}: the payload ran"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    with Registry.open(tmp_path / "home") as reg:
        import_models(reg, "torchvision", ["resnet18"])
        import_models(reg, "timm", ["resnet18.a1_in1k"])
        yield reg


def test_hostile_pickles_never_run_in_any_source(registry: Registry, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    files = hostile_files(tmp_path / "evil", marker)
    tv, tm = get_source("torchvision"), get_source("timm")
    r18, timm18 = registry.get_model(R18), registry.get_model("timm-resnet18-a1_in1k")
    assert_refused(lambda p: tv.load(r18, p, False), files, marker)
    assert_refused(lambda p: tm.load(timm18, p, False), files, marker)
    # a torch hub cache folder holding the hostile file under torchvision's own name
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.replace(files[0], hub / os.path.basename(r18.weights_url))
    assert_refused(lambda p: tv.load(r18, p, False), [tmp_path / "hub"], marker)


def test_hostile_pickles_in_hugging_face_folders(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    marker = tmp_path / "PWNED"
    hf = get_source("hf")
    for fmt, write in WRITERS.items():
        timm_dir, tf_dir = tmp_path / f"timm-{fmt}", tmp_path / f"tf-{fmt}"
        for d in (timm_dir, tf_dir):
            d.mkdir()
            write({"state_dict": {"w": [Payload(marker)]}}, d / "pytorch_model.bin")
        (timm_dir / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
        cfg = transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=16, num_labels=3,
        )  # fmt: skip
        cfg.save_pretrained(tf_dir)
        for d in (timm_dir, tf_dir):
            (rec,) = hf.describe([str(d)])
            with pytest.raises(WeightsFileError, match="pytorch_model.bin"):
                hf.load(rec, d, False)
            assert not marker.exists(), f"{d.name}: the payload ran"


def test_catalog_architectures_read_through_the_same_reader(tmp_path: Path) -> None:
    from shift.catalog.architectures import build, load_weights

    marker = tmp_path / "PWNED"
    net = build("mobilenet_v2", None)
    assert_refused(lambda p: load_weights(net, str(p)), hostile_files(tmp_path, marker), marker)


def test_cli_models_weights_refuses_a_hostile_file(tmp_path: Path) -> None:
    """The reported exploit: ``models weights tv-resnet18-imagenet1k_v1 --weights evil.pth``."""
    home, marker = tmp_path / "home", tmp_path / "PWNED"
    assert cli(home, "models", "import", "torchvision", "resnet18").exit_code == 0
    for path in hostile_files(tmp_path / "evil", marker)[::2]:
        res = cli(home, "models", "weights", R18, "--weights", str(path))
        assert res.exit_code != 0 and "Python objects besides tensors" in res.output
        assert not marker.exists()
    assert "missing" in cli(home, "models", "show", R18).output


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.manual_seed(0)
    torch.save(tvm.resnet18().state_dict(), path)
    return path


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Each bad file and the words its error must contain."""
    rng = __import__("numpy").random.default_rng(0)
    (folder / "random.pth").write_bytes(rng.bytes(4096))
    (folder / "empty.pth").write_bytes(b"")
    (folder / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    state = tvm.resnet18().state_dict()
    state["fc.bias"][3] = float("nan")
    torch.save(state, folder / "nan.pth")
    torch.save(tvm.mobilenet_v3_small().state_dict(), folder / "mnv3.pth")
    torch.save([1, 2, 3], folder / "list.pth")
    with open(folder / "huge.pth", "wb") as f:  # sparse: costs no disk
        f.truncate(size_cap(11_689_512) + 1)
    return {
        "random": (folder / "random.pth", "not a weights checkpoint"),
        "empty": (folder / "empty.pth", "empty file"),
        "truncated": (folder / "truncated.pth", "truncated or corrupt"),
        "nan": (folder / "nan.pth", "non-finite weights"),
        "architecture": (folder / "mnv3.pth", "do not fit torchvision's resnet18"),
        "not a state dict": (folder / "list.pth", "not a state dict"),
        "too large": (folder / "huge.pth", "more than the"),
        "device": (Path("/dev/zero"), "not a regular file"),
        "folder without the file": (folder, "no resnet18-f37072fd.pth in it"),
    }


def test_bad_weight_files_get_named_errors(
    registry: Registry, r18_file: Path, tmp_path: Path
) -> None:
    tv, r18 = get_source("torchvision"), registry.get_model(R18)
    for case, (path, words) in _bad_files(tmp_path, r18_file).items():
        with pytest.raises(Exception) as e:
            tv.load(r18, path, False)
        assert isinstance(e.value, WeightsFileError) or case == "folder without the file", case
        assert words in str(e.value), (case, str(e.value))
    assert tv.load(r18, r18_file, False) is not None  # the good file still loads


def test_cli_names_bad_files_without_a_traceback(r18_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "models", "import", "torchvision", "resnet18").exit_code == 0
    for case, (path, words) in _bad_files(tmp_path, r18_file).items():
        res = cli(home, "models", "weights", R18, "--weights", str(path))
        assert res.exit_code != 0, case
        assert words in " ".join(res.output.split()), (case, res.output)


def test_safetensors_and_wrapped_checkpoints_read(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt"
    )
    for name in ("w.safetensors", "w.pt"):
        got = read_state_dict(tmp_path / name, max_bytes=2**20)
        assert set(got) == {"a", "b"} and torch.equal(got["a"], state["a"])
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-8])
    with pytest.raises(WeightsFileError, match="truncated or corrupt safetensors"):
        read_state_dict(tmp_path / "cut.safetensors", max_bytes=2**20)
