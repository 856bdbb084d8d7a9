"""Models that could never run and image folders that were misread (issue #12, items 13 and 14):

* a graph exported with a fixed batch size (1, or 2) runs, that many images at a time, and gives
  the embeddings of the same network exported with a dynamic batch;
* a model keeping tensors in external data files, or with no outputs → ``ModelFileError``
  naming the file and saying why, nothing registered;
* a class folder named ``train``/``val`` is a class unless ``train/`` and ``val/`` are the only
  folders and hold class folders; non-image files are skipped and counted; file names that are
  not UTF-8 are handled, class folders that are not UTF-8 refused by name.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli, wide_consoles  # noqa: F401  (autouse fixture)
from onnx_factory import build_endless_loop, build_tiny_cnn, tiny_torch_model, with_custom_op
from PIL import Image

import shift
from shift.catalog.onnx_import import register_onnx
from shift.errors import ModelFileError, TaskDataError
from shift.inference.onnx_backend import OnnxEmbedder
from shift.store.readers import read_image_folder
from shift.store.registry import Registry
from shift.store.tasks import TaskStore


def _export(path: Path, batch: int, dynamic: bool) -> Path:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny_torch_model(seed=3, classes=None),
            (torch.zeros(batch, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "b"}, "embedding": {0: "b"}} if dynamic else None,
            dynamo=False,
        )
    return path


def _models(reg: Registry) -> tuple[list[str], int]:
    return reg.model_names(), len(list(reg.home.models_dir.glob("*")))


# ---- models (item 13) ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_a_fixed_batch_model_runs_a_few_images_at_a_time(
    tmp_path: Path, reg: Registry, batch: int
) -> None:
    dyn = register_onnx(reg, _export(tmp_path / "dyn.onnx", 1, True), "dyn")
    fixed = register_onnx(reg, _export(tmp_path / f"b{batch}.onnx", batch, False), f"b{batch}")
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    want, _ = OnnxEmbedder(str(reg.model_file(dyn)), dyn).embed(x)
    got, _ = OnnxEmbedder(str(reg.model_file(fixed)), fixed).embed(x)
    assert got.shape == (5, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_external_data_models_are_refused_by_name(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    model = onnx.load(str(_export(tmp_path / "one.onnx", 1, True)))
    out = tmp_path / "ext" / "split.onnx"
    out.parent.mkdir()
    onnx.save_model(
        model, str(out), save_as_external_data=True, location="split.weights", size_threshold=0
    )
    assert (out.parent / "split.weights").is_file()
    monkeypatch.chdir(out.parent)  # where the weights would resolve: the check must not care
    before = _models(reg)
    with pytest.raises(ModelFileError) as err:
        register_onnx(reg, out, "split")
    msg = str(err.value)
    assert "split.onnx" in msg and "external data" in msg and "split.weights" in msg, msg
    assert _models(reg) == before


def test_a_model_without_outputs_says_so(tmp_path: Path, reg: Registry) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"])],
        "no_outputs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "n.onnx")
    before = _models(reg)
    with pytest.raises(ModelFileError, match=r"n\.onnx: the graph has no outputs"):
        register_onnx(reg, tmp_path / "n.onnx", "n")
    assert _models(reg) == before


# ---- models that cannot run (issue 20, item 6): run once before they are registered ----------


def test_a_custom_op_model_is_refused_at_add_by_name(tmp_path: Path, reg: Registry) -> None:
    """A valid graph with an operator ONNX Runtime does not have passed `models add` and failed
    only at index: it is run once (a batch of 2) and refused, naming the model, the file, the
    operator and ONNX Runtime's reason; nothing is written to the registry or models/."""
    good = build_tiny_cnn(tmp_path / "good.onnx", seed=0).path
    bad = with_custom_op(good, tmp_path / "foo.onnx")
    before = _models(reg)
    with pytest.raises(ModelFileError) as err:
        register_onnx(reg, bad, "foo")
    msg, hint = str(err.value), err.value.hint or ""
    assert "model 'foo'" in msg and "foo.onnx" in msg and "cannot run" in msg, msg
    assert "com.example:Foo" in msg + hint and "not a registered function/op" in msg, (msg, hint)
    assert _models(reg) == before
    assert register_onnx(reg, good, "good").dim == 16  # a model that runs is registered


def test_models_add_refuses_a_model_that_cannot_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good = build_tiny_cnn(tmp_path / "good.onnx", seed=0).path
    assert cli(home, "models", "add", str(good), "--name", "good").exit_code == 0
    files = sorted(p.name for p in (home / "models").iterdir())
    bad = with_custom_op(good, tmp_path / "foo.onnx")
    r = cli(home, "models", "add", str(bad), "--name", "foo")
    assert r.exit_code == 1, r.output
    assert "model 'foo'" in r.output and "cannot run" in r.output, r.output
    assert sorted(p.name for p in (home / "models").iterdir()) == files
    r = cli(home, "models", "list", "--json")
    assert [m["name"] for m in json.loads(r.stdout)] == ["good"]


def test_a_model_whose_output_is_not_what_the_graph_declares_is_refused(
    tmp_path: Path, reg: Registry
) -> None:
    """The graph declares a 16-wide embedding but computes 8 values: indexing would fail on
    the first batch, so add refuses it, saying which output and what shape it gave."""
    import onnx

    model = onnx.load(str(build_tiny_cnn(tmp_path / "t.onnx", seed=0, classes=None).path))
    for node in model.graph.node:
        for i, n in enumerate(node.output):
            if n == "embedding":
                node.output[i] = "wide"
    starts = onnx.helper.make_tensor("starts", onnx.TensorProto.INT64, [1], [0])
    ends = onnx.helper.make_tensor("ends", onnx.TensorProto.INT64, [1], [8])
    axes = onnx.helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    model.graph.initializer.extend([starts, ends, axes])
    model.graph.node.append(
        onnx.helper.make_node("Slice", ["wide", "starts", "ends", "axes"], ["embedding"])
    )
    onnx.save(model, str(tmp_path / "narrow.onnx"))
    before = _models(reg)
    with pytest.raises(ModelFileError) as err:
        register_onnx(reg, tmp_path / "narrow.onnx", "narrow")
    msg = str(err.value)
    assert "model 'narrow'" in msg and "'embedding'" in msg and "(2, 8)" in msg, msg
    assert _models(reg) == before


def test_a_model_that_does_not_finish_one_batch_is_refused(
    tmp_path: Path, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run at add is bounded by the inference batch timeout ($SHIFT_BATCH_TIMEOUT_S)."""
    monkeypatch.setenv("SHIFT_BATCH_TIMEOUT_S", "0.5")
    endless = build_endless_loop(tmp_path / "endless.onnx").path
    before = _models(reg)
    with pytest.raises(ModelFileError, match=r"model 'endless'.*within 0\.5 s"):
        register_onnx(reg, endless, "endless")
    assert _models(reg) == before


# ---- image folders (item 14) ----------------------------------------------------------------


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write(root: Path, layout: dict[str, int]) -> Path:
    """``{"cls": n}`` or ``{"train/cls": n}``: n PNGs in each folder."""
    for k, (folder, n) in enumerate(layout.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"{i}.png").write_bytes(_png(100 * k + i))
    return root


def test_a_class_named_train_is_a_class(tmp_path: Path, reg: Registry) -> None:
    s = read_image_folder(_write(tmp_path / "voc", {"cat": 3, "dog": 2, "train": 4}))
    assert s.classes == ["cat", "dog", "train"] and s.splits is None
    assert np.bincount(s.labels).tolist() == [3, 2, 4]
    rec = TaskStore(reg).add("voc", s, kind="images", source="voc")
    assert rec.num_classes == 3 and rec.num_samples == 9


def test_train_and_val_holding_images_are_two_classes(tmp_path: Path) -> None:
    s = read_image_folder(_write(tmp_path / "d", {"train": 3, "val": 4}))
    assert s.classes == ["train", "val"] and s.splits is None and len(s.labels) == 7


def test_the_split_layout_is_explicit(tmp_path: Path) -> None:
    s = read_image_folder(
        _write(tmp_path / "s", {"train/a": 3, "train/b": 2, "val/a": 1, "val/b": 1})
    )
    assert s.classes == ["a", "b"] and s.splits == ["train"] * 5 + ["val"] * 2
    with pytest.raises(TaskDataError, match="no val/ folder"):
        read_image_folder(_write(tmp_path / "t", {"train/a": 3, "train/b": 2}))


def test_non_image_files_are_skipped_and_counted(tmp_path: Path, reg: Registry) -> None:
    root = _write(tmp_path / "d", {"a": 3, "b": 3})
    (root / "b" / "README.md").write_text("# about class b\n")
    (root / "a" / "NOTES").write_text("notes\n")
    (root / "LICENSE").write_text("MIT\n")
    s = read_image_folder(root)
    assert len(s.labels) == 6 and s.classes == ["a", "b"]
    assert sorted(Path(p).name for p in s.skipped) == ["LICENSE", "NOTES", "README.md"]
    assert TaskStore(reg).add("d", s, kind="images", source=str(root)).num_samples == 6


def test_non_utf8_file_names_are_handled(tmp_path: Path, reg: Registry) -> None:
    root = _write(tmp_path / "d", {"a": 3, "b": 3})
    odd = os.fsencode(root / "b") + b"/caf\xe9-\xff.png"
    with open(odd, "wb") as f:
        f.write(_png(7))
    s = read_image_folder(root)
    assert len(s.labels) == 7
    name = next(o for o in s.origin if "caf" in o)
    assert name.endswith("caf\\xe9-\\xff.png") and name.encode("utf-8")
    rec = TaskStore(reg).add("odd", s, kind="images", source=str(root))
    assert rec.num_samples == 7
    os.mkdir(os.fsencode(root) + b"/d\xe9j\xe0")
    with open(os.fsencode(root) + b"/d\xe9j\xe0/1.png", "wb") as f:
        f.write(_png(8))
    with pytest.raises(TaskDataError, match=r"d\\xe9j\\xe0: its name is not valid UTF-8"):
        read_image_folder(root)


def test_a_non_utf8_dataset_folder_is_handled(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/d\xe9j\xe0"
    _write(Path(os.fsdecode(root)), {"a": 3, "b": 3})
    with shift.connect(tmp_path / "home") as c:
        rec = c.add_task("t", Path(os.fsdecode(root)))
        assert rec.num_samples == 6 and rec.source.endswith("d\\xe9j\\xe0")
        assert c.task("t").source == rec.source
