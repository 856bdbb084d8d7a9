"""Model sources with the real torchvision and timm packages, offline: metadata against the
packages' own figures, embedding sizes built on the meta device against real builds, weights
from local files exported and checked, the VTAB-1k table's models as a real pool."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import shift
from shift.catalog.sources import get_source, import_models
from shift.catalog.sources.base import registry_name
from shift.catalog.sources.hf_models import hf_name, infer_architecture
from shift.catalog.sources.weights import attach_weights
from shift.cli import app
from shift.errors import ModelFileError, NotFoundError, ShiftError
from shift.store.registry import Registry

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")

warnings.filterwarnings("ignore", category=FutureWarning)


def tv_weights() -> dict[str, Any]:
    """Every weight enum of the installed torchvision's classification builders, by id."""
    return {
        f"{b}.{w.name}": w for b in tvm.list_models(module=tvm) for w in tvm.get_model_weights(b)
    }


@pytest.fixture(scope="module")
def tv_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding every torchvision classification weight as a metadata row."""
    home = tmp_path_factory.mktemp("tv") / "home"
    with Registry.open(home) as reg:
        results, _ = import_models(reg, "torchvision", all=True)
    assert {r.status for r in results} == {"registered"}
    return home


def test_torchvision_all_matches_package_metadata(tv_home: Path) -> None:
    weights = tv_weights()
    classifying = {k: w for k, w in weights.items() if w.meta.get("categories")}
    assert set(weights) - set(classifying) == {"vgg16.IMAGENET1K_FEATURES"}  # no classifier
    with Registry.open(tv_home) as reg:
        recs = {m.source_id.removeprefix("torchvision:"): m for m in reg.models()}
    assert set(recs) == set(classifying) and len(recs) == 114
    for wid, w in classifying.items():
        m, meta, t = recs[wid], w.meta, w.transforms()
        metrics = meta["_metrics"]["ImageNet-1K"]
        assert m.weights == "missing" and m.path == "" and m.sha256 == ""
        assert m.architecture == wid.split(".")[0] and m.source == "torchvision"
        assert m.params == meta["num_params"]
        assert (m.imagenet_top1, m.imagenet_top5) == (metrics["acc@1"], metrics["acc@5"])
        assert m.gflops == meta["_ops"]
        assert (m.input.height, m.input.width) == (t.crop_size[0], t.crop_size[0])
        assert m.input.mean == tuple(t.mean) and m.input.std == tuple(t.std)
        assert (m.weights_url, m.provenance) == (w.url, meta["recipe"])
        assert m.head_classes == len(meta["categories"])
    r50 = recs["resnet50.IMAGENET1K_V1"], recs["resnet50.IMAGENET1K_V2"]
    assert [m.imagenet_top1 for m in r50] == [76.13, 80.858]
    assert {m.params for m in r50} == {25_557_032} and {m.dim for m in r50} == {2048}
    dims = {k.split(".")[0]: recs[k].dim for k in recs}
    assert (dims["vit_b_16"], dims["squeezenet1_0"], dims["mobilenet_v3_small"]) == (768, 512, 1024)
    assert dims["regnet_y_128gf"] == 7392  # RegNet builds through the parameter-level meta path


@pytest.mark.parametrize("builder", ["resnet18", "squeezenet1_1", "mobilenet_v3_small"])
def test_meta_embedding_size_matches_a_real_build(tv_home: Path, builder: str) -> None:
    from shift.catalog.sources.torchvision_models import TorchvisionEmbedding

    with Registry.open(tv_home) as reg:
        rec = next(m for m in reg.models() if m.architecture == builder)
    net = TorchvisionEmbedding(tvm.get_model(builder, weights=None)).eval()
    with torch.no_grad():
        emb, logits = net(torch.zeros(2, 3, 64, 64))
    assert (emb.shape[1], logits.shape[1]) == (rec.dim, rec.head_classes)
    assert sum(p.numel() for p in net.parameters()) == rec.params


def test_agnostic_queries_run_without_weights(tv_home: Path) -> None:
    with shift.connect(tv_home) as c:
        res = c.query("SELECT top 5 FROM pool resnet50 ORDER BY imagenet_top1 DESC")
        assert res.names == ["tv-resnet50-imagenet1k_v2", "tv-resnet50-imagenet1k_v1"]
        assert [r["imagenet_top1"] for r in res.rows] == [80.858, 76.13]
        top = c.query("SELECT top 3 FROM models").names  # agnostic: highest ImageNet top-1
        acc = {k: w.meta["_metrics"]["ImageNet-1K"]["acc@1"] for k, w in tv_weights().items()}
        best = sorted((k for k in acc if acc[k] == acc[k]), key=lambda k: -acc[k])[:3]
        assert top == [registry_name("tv", k) for k in best]
        q = "SELECT * FROM models WHERE architecture = 'vit_h_14' AND upstream_dataset = 'IG-3.6B'"
        assert len(c.query(q).names) == 2
        assert c.pool_size("resnet50") == 2


def test_unknown_ids_register_nothing(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "home") as reg:
        with pytest.raises(NotFoundError, match="resnet5O") as e:
            import_models(reg, "torchvision", ["resnet18", "resnet5O"])
        assert "did you mean" in (e.value.hint or "")
        with pytest.raises(ShiftError, match="--all"):
            import_models(reg, "torchvision", [])
        with pytest.raises(NotFoundError, match="no model source 'keras'"):
            get_source("keras")
        assert reg.model_names() == []


# ---- timm and Hugging Face ---------------------------------------------------------------------


def test_timm_metadata_is_the_pretrained_cfg(tmp_path: Path) -> None:
    cfg = timm.models.get_pretrained_cfg("resnet18.a1_in1k").to_dict()
    (rec,) = get_source("timm").describe(["resnet18"])  # the architecture's default tag
    assert rec.name == "timm-resnet18-a1_in1k" and rec.source_id == "timm:resnet18.a1_in1k"
    assert (rec.input.height, rec.input.width) == cfg["input_size"][1:]
    assert rec.input.mean == cfg["mean"] and rec.input.std == cfg["std"]
    assert rec.license == cfg["license"] and rec.provenance == f"hf-hub:{cfg['hf_hub_id']}"
    assert rec.upstream_dataset == "ImageNet-1k" and rec.upstream_size == 1_281_167
    real = timm.create_model("resnet18", pretrained=False)
    assert rec.params == sum(p.numel() for p in real.parameters()) and rec.dim == 512
    (vit,) = get_source("timm").describe(["vit_tiny_patch16_224.augreg_in21k"])
    assert (vit.upstream_dataset, vit.dim, vit.head_classes) == ("ImageNet-21k", 192, 21843)


def _random_timm_file(path: Path, arch: str = "resnet18", classes: int = 1000) -> Any:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=classes).eval()
    save_file(net.state_dict(), str(path))
    return net


def test_timm_weights_from_a_local_file_export_and_match(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    net = _random_timm_file(tmp_path / "r18.safetensors")
    with Registry.open(tmp_path / "home") as reg:
        import_models(reg, "timm", ["resnet18.a1_in1k"])
        rec = attach_weights(reg, "timm-resnet18-a1_in1k", tmp_path / "r18.safetensors")
        assert rec.weights == "present" and rec.dim == 512 and rec.head_classes == 1000
        assert rec.params == sum(p.numel() for p in net.parameters())  # the source's count
        assert rec.provenance.startswith("hf-hub:timm/resnet18.a1_in1k; weights r18.safetensors")
        path = reg.model_file(rec)
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain == "") <= 17
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net.forward_head(net.forward_features(torch.from_numpy(x)), pre_logits=True)
    got = ort.InferenceSession(str(path)).run(["embedding"], {"input": x})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-3)


def test_hf_ids_timm_hub_transformers_and_local_folders(tmp_path: Path) -> None:
    src = get_source("hf")
    hub, vit = src.describe(["timm/resnet18.a1_in1k", "google/vit-base-patch16-224-in21k"])
    assert (hub.name, hub.source, hub.source_id) == (
        "timm__resnet18-a1_in1k",
        "hf",
        "hf:timm/resnet18.a1_in1k",
    )
    assert hub.dim == 512 and hub.weights == "missing"
    assert (vit.name, vit.architecture, vit.upstream_dataset) == (
        "google__vit-base-patch16-224-in21k",
        "vit-base-patch16",
        "ImageNet-21k",
    )
    assert vit.params is None and vit.dim is None and "inferred from the id" in vit.provenance
    assert hf_name("Ahmed9275/ALL-94.5") == "Ahmed9275__ALL-94-5"
    assert infer_architecture("microsoft/swin-tiny-patch4-window7-224") == "swin"

    folder = tmp_path / "my-r18"
    folder.mkdir()
    net = _random_timm_file(folder / "model.safetensors", classes=10)
    pcfg = {"input_size": [3, 96, 96], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    cfg = {"architecture": "resnet18", "num_classes": 10, "pretrained_cfg": pcfg}
    (folder / "config.json").write_text(json.dumps(cfg))
    with shift.connect(tmp_path / "home") as c:
        (res,) = c.import_models("hf", [str(folder)])
        assert (res.name, res.status, res.weights) == ("my-r18", "weights", "present")
        rec = c.model("my-r18")
        assert (rec.head_classes, rec.input.height, rec.input.std) == (10, 96, (0.25,) * 3)
        assert rec.params == sum(p.numel() for p in net.parameters())
        c.import_models("hf", ["google/vit-base-patch16-224-in21k"])
        with pytest.raises(ModelFileError, match="a timm folder of 'resnet18'"):
            c.add_weights("google__vit-base-patch16-224-in21k", folder)
        hf_folder = tmp_path / "vit"
        hf_folder.mkdir()
        hf_cfg = {"model_type": "vit", "architectures": ["ViTForImageClassification"]}
        (hf_folder / "config.json").write_text(json.dumps(hf_cfg))
        with pytest.raises(ModelFileError, match="no weight file in it"):  # config only
            c.add_weights("google__vit-base-patch16-224-in21k", hf_folder)
        (res,) = c.import_models("hf", [str(hf_folder)])
        assert res.status == "failed" and "no weight file in it" in res.detail
        assert c.model("google__vit-base-patch16-224-in21k").weights == "missing"


def test_vtab1k_table_models_are_a_real_pool(tmp_path: Path) -> None:
    from shift.scoring.meta import load_table, meta_scores

    gt = load_table("vtab1k")
    with shift.connect(tmp_path / "home") as c:
        results = c.import_models("vtab1k")
        assert len(results) == len(gt.models) == 291
        ids = {m.name: m.source_id.removeprefix("hf:") for m in c.models()}
        assert sorted(ids.values()) == sorted(gt.models)
        assert ids["Ahmed9275__ALL-94-5"] == "Ahmed9275/ALL-94.5"  # a name holds no '.'
        res = c.query("SELECT top 5 FROM models WHERE tag = 'vtab1k' RANK BY meta(vtab1k)")
        want = meta_scores(gt, list(gt.models), None)
        best = sorted(want, key=lambda m: (-want[m], m))[:5]
        assert [ids[n] for n in res.names] == best
        assert all(s is not None for s in res.scores.values())
        assert c.query("SELECT * FROM models WHERE architecture = 'swin'").names
        again = c.import_models("vtab1k")
        assert {r.status for r in again} == {"updated"}


def test_cli_import_and_weights(tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")
    r = runner.invoke(
        app, ["models", "import", "torchvision", "resnet18", "mobilenet_v3_small", "--home", home]
    )
    assert r.exit_code == 0, r.output
    assert "torchvision: 2 models (2 registered)" in r.stdout
    r = runner.invoke(app, ["models", "import", "timm", "nope_net", "--home", home])
    assert r.exit_code == 1 and "timm has no model 'nope_net'" in r.stderr
    r = runner.invoke(app, ["models", "weights", "tv-resnet18-imagenet1k_v1", "--home", home])
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert r.exit_code == 1 and "--weights FILE|DIR, or --download" in err
    assert "resnet18-f37072fd.pth" in err
    torch.save(tvm.mobilenet_v3_small().state_dict(), tmp_path / "mnv3.pth")
    r = runner.invoke(
        app,
        ["models", "weights", "tv-mobilenet_v3_small-imagenet1k_v1", "--weights"]
        + [str(tmp_path / "mnv3.pth"), "--home", home],
    )
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "weights present, 2,542,856 parameters, 1024-d embedding" in out
    r = runner.invoke(app, ["models", "import", "vtab1k", "--json", "--home", home])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["models"]) == 291
