"""The registry on a real SQLite file: schema, models, names, pools and ONNX registration."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from onnx_factory import build_tiny_cnn, tiny_torch_model
from pydantic import ValidationError
from records import fake_model as make_model
from records import fake_task as make_task

from shift.catalog.onnx_import import register_onnx
from shift.errors import (
    AlreadyExistsError,
    InvalidNameError,
    ModelFileError,
    NotFoundError,
    QueryError,
    ShiftError,
)
from shift.fsutil import sha256_file
from shift.query.planner import check_condition, plan_text
from shift.records import InputSpec, ModelRecord
from shift.store.migrations import migrations
from shift.store.pools import BUILTIN_POOLS, RESNET50_PARAMS
from shift.store.registry import Registry


def snapshot(r: Registry) -> tuple:
    """Everything a refused operation must leave unchanged."""
    files = sorted(p.name for p in r.home.models_dir.iterdir())
    return (
        r.model_names(),
        [p.model_dump() for p in r.pools()],
        r.task_names(),
        files,
    )


# ---- schema ----------------------------------------------------------------------------------


def test_migrations_applied_once_and_recorded(tmp_path: Path) -> None:
    expected = [m.name for m in migrations._migrations]
    assert expected and expected[0] == "m001_initial"
    with Registry.open(tmp_path) as r:
        assert r.schema_version() == expected
        assert {"models", "pools", "tasks", "samples", "scores", "index_entries"} <= set(
            r.db.table_names()
        )
        r.add_model(make_model("keep-me"))
    for _ in range(2):  # reopening applies nothing again and keeps the data
        with Registry.open(tmp_path) as r:
            assert r.schema_version() == expected
            assert migrations.pending(r.db) == []
            assert r.model_names() == ["keep-me"]
    conn = sqlite3.connect(tmp_path / "registry.db")
    rows = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    conn.close()
    assert rows == [("shift", n) for n in expected]


def test_wal_mode(reg: Registry) -> None:
    assert reg.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reg.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert reg.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    # WAL is a property of the file: a plain connection sees it too
    conn = sqlite3.connect(reg.home.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_home_layout(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "h") as r:
        assert r.home.db_path == (tmp_path / "h" / "registry.db").resolve()
        assert r.home.models_dir.is_dir() and r.home.tasks_dir.is_dir()
        assert r.home.index_dir == (tmp_path / "h" / "indexes").resolve()


# ---- models ----------------------------------------------------------------------------------


def test_add_get_list_remove(reg: Registry) -> None:
    a = make_model(
        "vit-b16",
        family="vit",
        params=86_000_000,
        dim=768,
        imagenet_top1=81.1,
        imagenet_source="torchvision docs",
        upstream_dataset="imagenet-21k",
        upstream_size=14_000_000,
        tags=["vision", "big", "big"],
        license="apache-2.0",
        head_output="logits",
        head_classes=1000,
        input=InputSpec(height=224, width=224, color="BGR", mean=(0.5,), std=(0.5,)),
    )
    b = make_model("alexnet", params=61_000_000)
    assert reg.add_model(a) == a
    reg.add_model(b)
    got = reg.get_model("vit-b16")
    assert got == a
    assert got.tags == ["big", "vision"]
    assert got.input.color == "BGR" and got.input.mean == (0.5,)
    assert got.has_head and got.head_classes == 1000
    assert reg.model_names() == ["alexnet", "vit-b16"]
    assert [m.name for m in reg.models()] == ["alexnet", "vit-b16"]
    assert reg.count_models() == 2
    assert reg.has_model("alexnet") and not reg.has_model("nope")

    removed = reg.remove_model("alexnet")
    assert removed == b
    assert reg.model_names() == ["vit-b16"]
    with pytest.raises(NotFoundError) as info:
        reg.get_model("alexnet")
    assert info.value.hint == "registered models: vit-b16"
    with pytest.raises(NotFoundError):
        reg.remove_model("alexnet")


def test_not_found_hint_when_empty(reg: Registry) -> None:
    with pytest.raises(NotFoundError) as info:
        reg.get_model("x")
    assert info.value.hint == "no models are registered yet"


def test_duplicate_name_refused(reg: Registry) -> None:
    reg.add_model(make_model("dup", params=5))
    with pytest.raises(ShiftError, match="already exists") as info:
        reg.add_model(make_model("dup", params=7))
    assert "replace" in (info.value.hint or "")
    assert reg.get_model("dup").params == 5
    reg.add_model(make_model("dup", params=7), replace=True)
    assert reg.get_model("dup").params == 7
    assert reg.model_names() == ["dup"]


BAD_NAMES = ["../x", "a/b", "x;DROP TABLE models", "", "a" * 200, ".hidden", "a b", "a\\b", "-x"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_names_refused(reg: Registry, tmp_path: Path, bad: str) -> None:
    reg.add_model(make_model("ok"))
    before = snapshot(reg)
    with pytest.raises(InvalidNameError):
        make_model(bad)
    with pytest.raises(InvalidNameError):
        reg.add_pool(bad, "dim < 5")
    with pytest.raises(InvalidNameError):
        make_task(bad)
    with pytest.raises(InvalidNameError):
        reg.home.index_path(bad, "ok")
    with pytest.raises(InvalidNameError):
        reg.home.index_path("ok", bad)
    assert snapshot(reg) == before


def test_invalid_name_through_register_onnx(reg: Registry, onnx_a: Path) -> None:
    before = snapshot(reg)
    for bad in ("../x", "a/b", "x;DROP TABLE models", ""):
        with pytest.raises(InvalidNameError):
            register_onnx(reg, onnx_a, bad)
    assert snapshot(reg) == before
    assert list(reg.home.models_dir.iterdir()) == []


def test_name_limits(reg: Registry) -> None:
    reg.add_model(make_model("a" * 128))
    reg.add_model(make_model("9lives_x-Y"))
    assert reg.model_names() == ["9lives_x-Y", "a" * 128]
    with pytest.raises(InvalidNameError):
        make_model("a" * 129)


def test_name_with_trailing_newline_refused() -> None:
    with pytest.raises(InvalidNameError):
        make_model("abc\n")


def test_sql_metacharacters_stored_verbatim(reg: Registry) -> None:
    evil = "'; DROP TABLE models; --"
    rec = make_model(
        "evil",
        source=evil,
        family='Robert"); DROP TABLE pools;--',
        license="x' OR '1'='1",
        upstream_dataset="%_%",
    )
    reg.add_model(rec)
    reg.add_model(make_model("plain"))
    got = reg.get_model("evil")
    assert got.source == evil
    assert got.family == 'Robert"); DROP TABLE pools;--'
    assert got.license == "x' OR '1'='1"
    assert set(reg.db.table_names()) >= {"models", "pools"}
    assert reg.model_names() == ["evil", "plain"]
    # the same values round-trip through the query language as parameters
    p = plan_text('SELECT * FROM models WHERE source = "\'; DROP TABLE models; --"', reg)
    assert [m.name for m in reg.models(*p.where_sql)] == ["evil"]
    p = plan_text("SELECT * FROM models WHERE license = 'x\\' OR \\'1\\'=\\'1'", reg)
    assert [m.name for m in reg.models(*p.where_sql)] == ["evil"]
    # a name that looks like SQL is looked up literally, not executed
    with pytest.raises(NotFoundError):
        reg.get_model("evil' OR '1'='1")
    assert reg.model_names() == ["evil", "plain"]


def test_imagenet_top1_needs_source(reg: Registry, onnx_a: Path) -> None:
    with pytest.raises(ValidationError, match="imagenet_source"):
        make_model("x", imagenet_top1=76.0)
    with pytest.raises(ValidationError):
        make_model("x", imagenet_top1=76.0, imagenet_source="")
    before = snapshot(reg)
    with pytest.raises(ShiftError, match="imagenet_source"):
        register_onnx(reg, onnx_a, "x", imagenet_top1=76.0)
    assert snapshot(reg) == before
    assert list(reg.home.models_dir.iterdir()) == []
    with pytest.raises(ValidationError):
        make_model("x", imagenet_top1=101.0, imagenet_source="s")


# ---- pools -----------------------------------------------------------------------------------


def eight_models() -> list[ModelRecord]:
    def top1(v: float) -> dict:
        return {"imagenet_top1": v, "imagenet_source": "paper"}

    return [
        make_model("r50", params=25_557_032, dim=2048, architecture="resnet50", **top1(76.1)),
        make_model(
            "r50-exact", params=RESNET50_PARAMS, dim=2048, architecture="resnet50", **top1(75.0)
        ),
        make_model("r101", params=44_549_160, dim=2048, **top1(77.4)),
        make_model("vit-l", params=304_000_000, dim=1024, **top1(85.2)),
        make_model("effnet-b7", params=66_000_000, dim=2560, **top1(84.3)),
        make_model("birds", params=10_000_000, dim=4096, tags=["expert", "birds"]),
        make_model("cars", params=25_600_001, dim=512, tags=["expert"]),
        make_model("clip", params=150_000_000, dim=768, tags=["multimodal"]),
    ]


@pytest.fixture
def pool_reg(reg: Registry) -> Registry:
    for m in eight_models():
        reg.add_model(m)
    return reg


def pool_members(r: Registry, pool: str) -> list[str]:
    return [m.name for m in r.models(*plan_text(f"SELECT * FROM pool {pool}", r).where_sql)]


def test_builtin_pools(pool_reg: Registry) -> None:
    assert [p.name for p in pool_reg.pools()] == list(BUILTIN_POOLS)
    assert all(p.builtin for p in pool_reg.pools())
    all_names = sorted(m.name for m in eight_models())
    assert pool_members(pool_reg, "all") == all_names
    assert pool_members(pool_reg, "resnet50") == ["r50", "r50-exact"]  # by architecture
    assert pool_members(pool_reg, "dim2048") == [
        "cars",
        "clip",
        "r101",
        "r50",
        "r50-exact",
        "vit-l",
    ]
    assert pool_members(pool_reg, "expert") == ["birds", "cars"]
    assert pool_members(pool_reg, "imagenet") == ["effnet-b7", "r101", "r50", "r50-exact", "vit-l"]


def test_user_pools(pool_reg: Registry) -> None:
    p = pool_reg.add_pool(
        "small-vit", check_condition("WHERE params < 100M AND dim <= 1024"), "small ones"
    )
    assert (p.name, p.filter, p.description, p.builtin) == (
        "small-vit",
        "params < 100M AND dim <= 1024",
        "small ones",
        False,
    )
    pool_reg.add_pool("a-experts", "tag = 'expert' OR tag = 'multimodal'")
    assert [x.name for x in pool_reg.pools()] == [*BUILTIN_POOLS, "a-experts", "small-vit"]
    assert pool_reg.get_pool("small-vit") == p
    assert pool_members(pool_reg, "small-vit") == ["cars"]
    assert pool_members(pool_reg, "a-experts") == ["birds", "cars", "clip"]
    # a pool combines with the query's own filters
    q = plan_text("SELECT * FROM pool a-experts WHERE params > 20M", pool_reg)
    assert [m.name for m in pool_reg.models(*q.where_sql)] == ["cars", "clip"]
    # a saved pool survives reopening
    home = pool_reg.home.registry_dir
    with Registry.open(home) as again:
        assert again.get_pool("small-vit") == p

    with pytest.raises(ShiftError, match="already exists"):
        pool_reg.add_pool("small-vit", "dim < 5")
    pool_reg.add_pool("small-vit", "dim < 600", replace=True)
    assert pool_members(pool_reg, "small-vit") == ["cars"]
    assert pool_reg.get_pool("small-vit").filter == "dim < 600"

    pool_reg.remove_pool("small-vit")
    assert pool_reg.get_pool("small-vit") is None
    assert [x.name for x in pool_reg.pools()] == [*BUILTIN_POOLS, "a-experts"]
    with pytest.raises(NotFoundError):
        pool_reg.remove_pool("small-vit")


@pytest.mark.parametrize(
    ("condition", "line", "column"),
    [
        ("params <", 1, 9),
        ("parms < 3", 1, 1),
        ("params = 'big'", 1, 10),
        ("dim < 5 ORDER BY dim", 1, 1),  # (the whole condition is blamed)
        ("dim < 5 garbage", 1, 9),
        ("(dim < 5", 1, 9),
    ],
)
def test_user_pool_bad_condition(reg: Registry, condition: str, line: int, column: int) -> None:
    before = snapshot(reg)
    with pytest.raises(QueryError) as info:
        reg.add_pool("bad", check_condition(condition))
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert snapshot(reg) == before


@pytest.mark.parametrize(
    "condition", ["task = flowers", "dim < 5 AND task = flowers", "task = flowers OR dim < 5"]
)
def test_pool_cannot_name_a_task(reg: Registry, condition: str) -> None:
    reg.put_task(make_task("flowers"))
    before = snapshot(reg)
    with pytest.raises(QueryError, match="task"):
        reg.add_pool("with-task", check_condition(condition))
    assert snapshot(reg) == before


@pytest.mark.parametrize("name", list(BUILTIN_POOLS))
def test_builtin_pools_cannot_be_redefined(reg: Registry, name: str) -> None:
    original = reg.get_pool(name)
    with pytest.raises(ShiftError, match="built-in"):
        reg.add_pool(name, "dim < 5")
    with pytest.raises(ShiftError, match="built-in"):
        reg.add_pool(name, "dim < 5", replace=True)
    with pytest.raises(ShiftError, match="built-in"):
        reg.remove_pool(name)
    assert reg.get_pool(name) == original
    assert not list(reg.db.query("SELECT * FROM pools"))


def test_every_saved_pool_can_be_queried(reg: Registry) -> None:
    with pytest.raises(InvalidNameError):  # `50m` would read as the number 50,000,000
        reg.add_pool("50m", "params < 50M")
    reg.add_pool("m50", "params < 50M")
    assert plan_text("SELECT * FROM pool m50", reg).pool == "m50"


# ---- tasks -----------------------------------------------------------------------------------


def test_tasks_put_list_remove(reg: Registry) -> None:
    reg.put_task(make_task("flowers"))
    reg.put_task(make_task("birds"))
    assert reg.task_names() == ["birds", "flowers"]
    assert reg.get_task("flowers") == make_task("flowers").model_copy(
        update={"date_added": reg.get_task("flowers").date_added}
    )
    reg.remove_task("birds")
    assert reg.task_names() == ["flowers"]
    with pytest.raises(NotFoundError) as info:
        reg.get_task("birds")
    assert info.value.hint == "registered tasks: flowers"


# ---- ONNX registration -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    build_tiny_cnn(d / "a.onnx", seed=0)
    build_tiny_cnn(d / "b.onnx", seed=1, dim=8, classes=None, size=40)
    return d


@pytest.fixture
def onnx_a(onnx_dir: Path) -> Path:
    return onnx_dir / "a.onnx"


def test_register_onnx(reg: Registry, onnx_dir: Path) -> None:
    src = onnx_dir / "a.onnx"
    sha = sha256_file(src)
    rec = register_onnx(
        reg,
        src,
        "tiny-a",
        imagenet_top1=12.5,
        imagenet_source="made up",
        tags=["expert"],
        family="tiny",
    )
    torch_params = sum(p.numel() for p in tiny_torch_model(seed=0).parameters())
    assert rec.params == torch_params
    assert rec.dim == 16
    assert (rec.output, rec.head_output, rec.head_classes) == ("embedding", "logits", 10)
    assert rec.input_name == "input"
    assert (rec.input.height, rec.input.width, rec.input.channels, rec.input.layout) == (
        32,
        32,
        3,
        "NCHW",
    )
    assert rec.sha256 == sha
    assert rec.path == f"models/{sha}.onnx"
    stored = reg.home.models_dir / f"{sha}.onnx"
    assert reg.model_file(rec) == stored
    assert stored.read_bytes() == src.read_bytes()
    assert reg.get_model("tiny-a") == rec
    assert (rec.imagenet_top1, rec.tags, rec.family) == (12.5, ["expert"], "tiny")
    # the copy is independent of the source file
    assert src.exists()

    b = register_onnx(reg, onnx_dir / "b.onnx", "tiny-b")
    assert b.params == sum(
        p.numel() for p in tiny_torch_model(seed=1, dim=8, classes=None).parameters()
    )
    assert (b.dim, b.head_output, b.head_classes, b.input.height) == (8, None, None, 40)
    assert sorted(p.name for p in reg.home.models_dir.iterdir()) == sorted(
        [f"{sha}.onnx", f"{b.sha256}.onnx"]
    )


def test_same_weights_share_one_file(reg: Registry, onnx_a: Path) -> None:
    one = register_onnx(reg, onnx_a, "one")
    two = register_onnx(reg, onnx_a, "two")
    assert one.path == two.path
    stored = reg.model_file(one)
    assert [p.name for p in reg.home.models_dir.iterdir()] == [stored.name]
    reg.remove_model("one")
    assert stored.exists()  # still used by "two"
    reg.remove_model("two")
    assert not stored.exists()
    assert reg.model_names() == []


def test_register_onnx_duplicate_refused(reg: Registry, onnx_dir: Path) -> None:
    register_onnx(reg, onnx_dir / "a.onnx", "m")
    with pytest.raises(ShiftError, match="already exists"):
        register_onnx(reg, onnx_dir / "b.onnx", "m")
    assert reg.get_model("m").dim == 16
    register_onnx(reg, onnx_dir / "b.onnx", "m", replace=True)
    assert reg.get_model("m").dim == 8


def test_register_unknown_output_refused(reg: Registry, onnx_a: Path) -> None:
    with pytest.raises(ModelFileError, match="no output named 'feats'") as info:
        register_onnx(reg, onnx_a, "m", output="feats")
    assert "embedding" in (info.value.hint or "") and "logits" in (info.value.hint or "")
    assert reg.model_names() == []


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "missing"])
def test_broken_onnx_refused(reg: Registry, onnx_a: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"broken-{kind}.onnx"
    if kind == "truncated":
        data = onnx_a.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        bad.write_bytes(os.urandom(4096))
    elif kind == "empty":
        bad.write_bytes(b"")
    reg.add_model(make_model("existing"))
    before = snapshot(reg)
    with pytest.raises(ModelFileError) as info:
        register_onnx(reg, bad, "broken")
    assert bad.name in info.value.message
    assert snapshot(reg) == before
    assert not reg.has_model("broken")


def test_register_from_copy_in_another_dir(reg: Registry, onnx_a: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "renamed.onnx"
    other.parent.mkdir()
    shutil.copy(onnx_a, other)
    rec = register_onnx(reg, other, "renamed")
    other.unlink()  # the registry keeps its own copy
    assert reg.model_file(rec).exists()
    assert reg.model_file(rec).read_bytes() == onnx_a.read_bytes()


def test_two_connections_see_each_others_changes(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as r1, Registry.open(tmp_path) as r2:
        assert r1.models() == r2.models() == []
        r1.add_model(make_model("a", params=1))
        assert [m.name for m in r2.models()] == ["a"]
        r2.add_model(make_model("a", params=2), replace=True)
        assert r1.get_model("a").params == 2
        assert [m.params for m in r1.models()] == [2]
        # a change from outside any Registry is seen too
        conn = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
        conn.execute("UPDATE models SET params = 3 WHERE name = 'a'")
        conn.close()
        assert r1.get_model("a").params == 3 and r2.models()[0].params == 3
        r2.remove_model("a")
        assert r1.models() == [] and r1.model_names() == []
        with pytest.raises(NotFoundError):
            r1.get_model("a")


# ---- one write transaction per check-and-insert; one read transaction per snapshot ----------


def test_already_exists_is_a_named_error(reg: Registry, onnx_a: Path) -> None:
    reg.add_model(make_model("m", params=5))
    reg.add_pool("p", "dim > 1")
    reg.put_task(make_task("t"))
    before = snapshot(reg)
    with pytest.raises(AlreadyExistsError, match="model 'm' already exists"):
        register_onnx(reg, onnx_a, "m")
    with pytest.raises(AlreadyExistsError, match="pool 'p' already exists"):
        reg.add_pool("p", "dim > 2")
    with pytest.raises(AlreadyExistsError, match="task 't' already exists"):
        reg.put_task(make_task("t"), create=True)
    assert snapshot(reg) == before  # no file copied for the refused model
    assert reg.get_pool("p").filter == "dim > 1" and reg.get_model("m").params == 5


def test_snapshot_reads_one_moment(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as r1, Registry.open(tmp_path) as r2:
        rows = [
            {"task": "t", "sample_id": f"s{i}", "content_hash": f"s{i}", "label": i % 2}
            | {"split": "train", "chunk": "c", "offset": i, "seq": i}
            for i in range(4)
        ]
        r1.put_task(make_task("t"), rows[:2])
        with r1.snapshot():
            rec, got = r1.task_snapshot("t")
            r2.put_task(make_task("t").model_copy(update={"content_hash": "c2"}), rows[2:])
            assert (r1.get_task("t").content_hash, len(r1.samples("t"))) == ("c-t", 2)
        assert (rec.content_hash, len(got)) == ("c-t", 2)
        assert r1.task_snapshot("t")[0].content_hash == "c2" and len(r1.samples("t")) == 4


def test_sample_seq_unique_and_old_duplicates_renumbered(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from shift.config import Home

    home = Home.resolve(tmp_path / "old").ensure()
    db = Database(home.db_path)  # a home from before m004, where racing appends left duplicates
    migrations.apply(db, stop_before="m004_unique_sample_seq")
    db["tasks"].insert(make_task("t").model_dump() | {"classes": "[]"})
    seqs = [0, 1, 1, 2, 2, 3]
    db["samples"].insert_all(
        {"task": "t", "sample_id": f"s{i}", "content_hash": f"s{i}", "label": 0, "split": "train"}
        | {"chunk": "c", "offset": i, "seq": q}
        for i, q in enumerate(seqs)
    )
    db.conn.close()
    with Registry.open(home.registry_dir) as reg:
        rows = reg.samples("t")
        assert [r["seq"] for r in rows] == list(range(6))
        assert [r["sample_id"] for r in rows] == [f"s{i}" for i in range(6)]  # order kept
        with pytest.raises(sqlite3.IntegrityError), reg.transaction():
            reg.db["samples"].insert({**rows[0], "sample_id": "dup"})
