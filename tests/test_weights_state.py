"""Weights as a state: a model registered without weights (metadata only) takes part in
task-agnostic work, is refused by task-aware work before anything runs (EXPLAIN says so), and,
given a local weight file (or a torch hub cache folder), is exported, indexed and ranked like a
catalog model. Real torchvision code, ONNX Runtime, SQLite and hnswlib; in-process executor."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlite_utils import Database

import shift
from shift.config import Home
from shift.errors import ModelFileError, ShiftError, WeightsMissingError
from shift.records import InputSpec, ModelRecord, Samples
from shift.store.migrations import migrations
from shift.store.registry import Registry
from shift.store.registry_models import model_to_row

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

warnings.filterwarnings("ignore", category=FutureWarning)

MNV3 = "tv-mobilenet_v3_small-imagenet1k_v1"
R18 = "tv-resnet18-imagenet1k_v1"
QUERY = "SELECT top 2 FROM models WHERE task=toy RANK BY knn"


def toy_samples(n: int = 40) -> Samples:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.random((n, 32, 32, 3)) * 60 + y[:, None, None, None] * 40).astype(np.uint8)
    return Samples(x, y, None, ["a", "b", "c", "d"], [])


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init torchvision weights saved as plain state dicts (what the hub serves)."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    files = {MNV3: d / "mnv3-random.pth", R18: d / "r18-random.pth"}
    torch.save(tvm.mobilenet_v3_small().state_dict(), files[MNV3])
    torch.save(tvm.resnet18().state_dict(), files[R18])
    return files


@pytest.fixture
def client(tmp_path: Path) -> shift.Client:
    c = shift.connect(tmp_path / "home", executor="inprocess")
    c.import_models("torchvision", ["mobilenet_v3_small", "resnet18"])
    c.add_task("toy", toy_samples())
    yield c
    c.close()


def test_record_rules() -> None:
    base = {"name": "m", "output": "embedding", "input_name": "input"}
    spec = InputSpec(height=224, width=224)
    meta = ModelRecord(path="", sha256="", weights="missing", input=spec, **base)
    assert meta.params is None and meta.dim is None and not meta.has_weights
    with pytest.raises(ValidationError, match="needs path, sha256, params and dim"):
        ModelRecord(path="", sha256="", input=spec, **base)  # weights present by default
    with pytest.raises(ValidationError):
        ModelRecord(path="x", sha256="abc", params=1, dim=1, input=spec, **base)


def test_migration_keeps_old_models_with_weights(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "old").ensure()
    db = Database(home.db_path)
    migrations.apply(db, stop_before="m005_model_sources")
    old = ModelRecord(
        name="old",
        path="models/x.onnx",
        sha256="a" * 64,
        params=5,
        dim=8,
        output="e",
        input_name="i",
        input=InputSpec(height=4, width=4),
    )
    new_fields = set(ModelRecord.model_fields) - set(db["models"].columns_dict) - {"input"}
    assert new_fields == {"weights", "architecture", "source_id", "provenance", "weights_url"} | {
        "imagenet_top5",
        "gflops",
    }
    row = {k: v for k, v in model_to_row(old).items() if k not in new_fields}
    db["models"].insert(row)  # a model as a home before m005 holds it
    db.conn.close()
    with Registry.open(home.registry_dir) as reg:
        assert "m005_model_sources" in reg.schema_version()
        old = reg.get_model("old")
        assert (old.weights, old.params, old.dim, old.architecture) == ("present", 5, 8, None)
        cols = {c.name: c.notnull for c in reg.db["models"].columns}
        assert not cols["params"] and not cols["dim"] and cols["sha256"] and cols["weights"]


def test_weightless_models_rank_agnostically_and_refuse_task_work(client: shift.Client) -> None:
    res = client.query("SELECT top 2 FROM models")
    assert res.names == [R18, MNV3]  # 69.758 % > 67.668 % ImageNet top-1
    assert client.query("SELECT * FROM models WHERE weights = 'missing'").names == [R18, MNV3]
    with pytest.raises(WeightsMissingError) as e:
        client.query(QUERY)
    err = e.value
    assert err.models == [MNV3, R18] and "none of the 2 model(s) in the pool has" in err.message
    assert "models weights NAME --weights FILE|DIR" in err.hint
    assert "mobilenet_v3_small-047dcff4.pth" in err.hint  # where the source's file is
    assert err.column == QUERY.index("knn") + 1
    assert not any(client.home.index_dir.rglob("*"))  # nothing was embedded

    plan = client.explain(QUERY)
    weights = next(s for s in plan.rows if s["step"] == "weights")
    assert weights["models"] == 2 and MNV3 in weights["detail"]
    assert plan.plan["weights_missing"] == [MNV3, R18]

    with pytest.raises(ShiftError, match="no weights yet for"):
        client.index("toy", models=[MNV3])
    rep = client.index("toy")  # a pool leaves weightless models out, and says so
    assert rep.embedded == {} and sorted(rep.skipped) == sorted([MNV3, R18])
    assert client.doctor().ok
    client.drop_model(R18)
    assert client.registry.model_names() == [MNV3]


@pytest.mark.slow  # ~8 s: real torchvision weights converted, indexed and ranked
def test_local_weights_index_and_rank_like_a_catalog_model(
    client: shift.Client, weight_files: dict[str, Path], tmp_path: Path
) -> None:
    rec = client.add_weights(MNV3, weight_files[MNV3])
    assert rec.weights == "present" and rec.has_weights
    assert (rec.params, rec.dim, rec.imagenet_top1) == (2_542_856, 1024, 67.668)  # kept
    assert client.registry.model_file(rec).is_file()
    partial = client.query(QUERY)  # one model still has none: ranked without it, named
    assert partial.names == [MNV3] and list(partial.skipped) == [R18]
    assert "no weights" in partial.skipped[R18] and not partial.failed

    # a torch hub cache folder: <dir>/checkpoints/<the file name of the weights' URL>
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    url_file = client.model(R18).weights_url.rsplit("/", 1)[1]
    shutil.copy(weight_files[R18], hub / "checkpoints" / url_file)
    client.add_weights(R18, hub)

    res = client.query(QUERY)
    assert sorted(res.names) == sorted([MNV3, R18])
    assert all(isinstance(s, float) for s in res.scores.values())
    again = client.query(QUERY)  # cached, like any model
    assert again.scores == res.scores and again.timings.score_ms < res.timings.score_ms
    assert client.doctor().ok

    # the embedding is the torch model's pre-logits vector
    import onnxruntime as ort

    net = tvm.mobilenet_v3_small()
    net.load_state_dict(torch.load(weight_files[MNV3], weights_only=True))
    net.classifier[-1] = torch.nn.Identity()
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    path = client.registry.model_file(client.model(MNV3))
    got = ort.InferenceSession(str(path)).run(["embedding"], {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_weights_that_do_not_fit_are_refused(
    client: shift.Client, weight_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError, match="do not fit torchvision's mobilenet_v3_small"):
        client.add_weights(MNV3, weight_files[R18])
    with pytest.raises(ModelFileError, match="no mobilenet_v3_small-047dcff4.pth in it"):
        client.add_weights(MNV3, tmp_path)
    with pytest.raises(ShiftError, match="no such file or folder"):
        client.add_weights(MNV3, tmp_path / "nope.pth")
    assert client.model(MNV3).weights == "missing"


@pytest.mark.slow  # ~7 s: real torchvision weights converted twice
def test_rerunning_weights_replaces_the_model_cleanly(
    client: shift.Client,
    weight_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20, item 4: `models weights NAME --weights FILE` run again with other weights left
    the previous ONNX file in models/ and the scores cached under it, so `doctor` exited 1 on a
    healthy home. The registry moves to the new file, then the old one and its scores go; a
    re-run that fails leaves the model as it was."""
    from cli_runner import cli

    torch.manual_seed(1)
    other = tmp_path / "mnv3-other.pth"
    torch.save(tvm.mobilenet_v3_small().state_dict(), other)
    query = "SELECT top 1 FROM models WHERE task=toy AND weights = 'present' RANK BY knn"

    def files() -> list[str]:
        return sorted(p.name for p in client.home.models_dir.iterdir())

    first = client.add_weights(MNV3, weight_files[MNV3])
    client.query(query)  # an index and a cached score under the first weights
    second = client.add_weights(MNV3, other)
    assert second.sha256 != first.sha256
    assert files() == [f"{second.sha256}.onnx"]
    r = cli(client.home.registry_dir, "doctor")
    assert r.exit_code == 0, r.output  # no orphan file, no orphan scores
    assert client.query(query).scores[MNV3] is not None  # the new weights index and score

    assert client.add_weights(MNV3, other).sha256 == second.sha256  # the same again: kept
    assert files() == [f"{second.sha256}.onnx"]

    import shift.catalog.onnx_import as onnx_import
    from shift.errors import ModelFileError as Refused

    def refuse(*a: object, **k: object) -> None:
        raise Refused("model cannot run")

    monkeypatch.setattr(onnx_import, "check_runs", refuse)
    with pytest.raises(Refused):
        client.add_weights(MNV3, weight_files[MNV3])
    assert client.model(MNV3).sha256 == second.sha256 and files() == [f"{second.sha256}.onnx"]
    assert client.registry.model_file(client.model(MNV3)).is_file()
    r = cli(client.home.registry_dir, "doctor")
    assert r.exit_code == 0, r.output


def test_cli_ranks_what_can_run_and_names_what_was_left_out(
    client: shift.Client, weight_files: dict[str, Path]
) -> None:
    """Issue 21, item 4: a task-aware query over a pool with weightless models ranks the
    others (exit 0) and says which were left out, in the table's notes and in --json."""
    import json

    from cli_runner import cli

    client.add_weights(MNV3, weight_files[MNV3])
    res = cli(client.home.registry_dir, "query", QUERY, "--format", "table")
    assert res.exit_code == 0, res.output
    assert "left out (1, no weights" in res.output and R18 in res.output
    out = json.loads(cli(client.home.registry_dir, "query", QUERY, "--json").stdout)
    assert [r["name"] for r in out["rows"]] == [MNV3] and list(out["skipped"]) == [R18]
