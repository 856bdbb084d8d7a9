"""The ``hf`` source's ``transformers`` path, offline: tiny random ViT/ConvNeXt classifiers
written by ``save_pretrained`` to local folders, read as metadata without weights (meta-device
build, ``preprocessor_config.json``), then exported through the catalog's export and check,
registered, indexed and ranked like a catalog model. Real transformers, ONNX Runtime, SQLite and
hnswlib; in-process executor."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import shift
from shift.catalog.sources import get_source
from shift.cli import app
from shift.errors import ModelFileError
from shift.records import Samples

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

warnings.filterwarnings("ignore", category=FutureWarning)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
QUERY = "SELECT top 2 FROM models WHERE task=toy RANK BY knn"


def tiny_vit(classes: int = 4) -> Any:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
    )
    return transformers.ViTForImageClassification(cfg).eval()


def tiny_convnext(classes: int = 3) -> Any:
    torch.manual_seed(0)
    cfg = transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=64, num_labels=classes
    )
    return transformers.ConvNextForImageClassification(cfg).eval()


def save(net: Any, folder: Path, preprocessor: dict[str, Any] | None = None) -> Path:
    net.save_pretrained(folder)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    net = tiny_vit()
    return net, save(net, tmp_path_factory.mktemp("hf") / "tiny-vit")


def toy_samples(n: int = 40) -> Samples:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.mark.parametrize("build", [tiny_vit, tiny_convnext])
def test_metadata_equals_the_built_model(build: Any, tmp_path: Path) -> None:
    """No weights loaded: params/dim/classes from a meta-device build of config.json."""
    net = build()
    folder = save(net, tmp_path / "m")
    (rec,) = get_source("hf").describe([str(folder)])
    cfg = net.config
    dim = cfg.hidden_size if cfg.model_type == "vit" else cfg.hidden_sizes[-1]
    assert rec.weights == "missing" and rec.path == "" and rec.name == "m"
    assert (rec.architecture, rec.source, rec.source_id) == (
        cfg.model_type,
        "hf",
        f"hf:{folder.resolve()}",
    )
    assert rec.params == sum(p.numel() for p in net.parameters())
    assert (rec.dim, rec.head_classes) == (dim, cfg.num_labels)
    assert (rec.input.height, rec.input.width) == (cfg.image_size, cfg.image_size)
    assert (rec.input.mean, rec.input.std) == IMAGENET  # no preprocessor_config.json


def test_preprocessor_config_gives_size_and_normalisation(tmp_path: Path) -> None:
    pre = {"size": {"height": 48, "width": 48}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    folder = save(tiny_convnext(), tmp_path / "cnx", pre)
    (rec,) = get_source("hf").describe([str(folder)])
    assert (rec.input.height, rec.input.width) == (48, 48)
    assert (rec.input.mean, rec.input.std) == ((0.5,) * 3, (0.25,) * 3)
    pre |= {"do_center_crop": True, "crop_size": {"height": 40, "width": 40}}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    (rec,) = get_source("hf").describe([str(folder)])
    assert (rec.input.height, rec.input.width) == (40, 40)  # the centre crop is the input


def test_local_folder_exports_indexes_and_ranks(vit: tuple[Any, Path], tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    net, folder = vit
    home = tmp_path / "home"
    r = CliRunner().invoke(app, ["models", "import", "hf", str(folder), "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "weights" in r.output
    with shift.connect(home, executor="inprocess") as c:
        rec = c.model("tiny-vit")
        assert rec.weights == "present" and rec.architecture == "vit"
        assert (rec.params, rec.dim, rec.head_classes) == (24_036, 32, 4)
        assert rec.params == sum(p.numel() for p in net.parameters())
        assert rec.provenance.startswith("local transformers folder")
        path = c.registry.model_file(rec)
        opset = max(o.version for o in onnx.load(str(path)).opset_import if o.domain == "")
        assert opset <= 17

        # embedding = the final layer-normed [CLS] token (the classifier's input)
        x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            cls = net.vit(pixel_values=torch.from_numpy(x)).last_hidden_state[:, 0]
            logits = net(pixel_values=torch.from_numpy(x)).logits
        sess = ort.InferenceSession(str(path))
        got_emb, got_logits = sess.run(["embedding", "logits"], {"input": x})
        np.testing.assert_allclose(got_emb, cls.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-4)

        c.add_task("toy", toy_samples())
        c.import_models("torchvision", ["mobilenet_v3_small"])
        c.drop_model("tv-mobilenet_v3_small-imagenet1k_v1")  # only models with weights rank
        res = c.query(QUERY)
        assert res.names == ["tiny-vit"] and isinstance(res.scores["tiny-vit"], float)
        assert c.query(QUERY).scores == res.scores  # cached, like any model
        assert c.doctor().ok


def test_an_id_registered_first_takes_its_folder_later(
    vit: tuple[Any, Path], tmp_path: Path
) -> None:
    net, folder = vit
    with shift.connect(tmp_path / "home", executor="inprocess") as c:
        (res,) = c.import_models("hf", ["google/vit-base-patch16-224"])
        name = res.name
        before = c.model(name)
        assert before.params is None and before.input.height == 224
        rec = c.add_weights(name, folder)
        assert (rec.params, rec.dim, rec.architecture) == (24_036, 32, "vit")
        assert (rec.input.height, rec.input.mean) == (32, IMAGENET[0])  # from the folder
        assert rec.source_id == "hf:google/vit-base-patch16-224" and rec.family == "vit"
        assert rec.provenance.endswith(f"weights from folder {folder.resolve()}")
        assert rec.weights_url == before.weights_url


def test_bad_folders_are_refused_clearly(tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFileError, match="no image classifier for model_type 'bert'"):
        get_source("hf").describe([str(bert)])
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ModelFileError, match="neither a timm 'architecture' nor"):
        get_source("hf").describe([str(junk)])


def test_cli_import_loads_no_transformers() -> None:
    code = "import sys, shift.cli; print(sorted({'transformers', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
