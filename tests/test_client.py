"""The Python client: text queries and the fluent builder give the same Result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from records import fake_model as model

import shift
from shift.client import Client
from shift.errors import QueryError
from shift.records import Result


def top1(v: float) -> dict[str, object]:
    return {"imagenet_top1": v, "imagenet_source": "paper", "source": "torchvision"}


MODELS = [
    model(
        "r50", params=25_557_032, dim=2048, family="resnet", architecture="resnet50", **top1(76.1)
    ),
    model("r101", params=44_549_160, dim=2048, family="resnet", **top1(77.4)),
    model("vit-b16", params=86_567_656, dim=768, family="vit", **top1(81.1)),
    model("mobilenet", params=3_504_872, dim=1280, family="mobilenet", **top1(71.9)),
    model(
        "birds",
        params=5_000_000,
        dim=256,
        tags=["expert"],
        upstream_size=50_000,
        upstream_dataset="inat-birds",
    ),
    model("clip", params=150_000_000, dim=512, upstream_size=400_000_000, upstream_dataset="laion"),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = shift.connect(tmp_path)
    for m in MODELS:
        c.registry.add_model(m)
    yield c
    c.close()


def test_connect_and_query(client: Client, tmp_path: Path) -> None:
    assert isinstance(client, Client)
    assert client.registry.home.registry_dir == tmp_path.resolve()
    res = client.query("SELECT top 3 FROM pool all")
    assert isinstance(res, Result)
    assert res.names == ["vit-b16", "r101", "r50"]
    assert [r["rank"] for r in res.rows] == [1, 2, 3]
    assert [r["agnostic_rank"] for r in res.rows] == [1, 2, 3]
    assert res.rows[0]["why"] == "task-agnostic: ImageNet top-1 81.1%"
    assert res.rows[0]["params"] == 86_567_656 and res.rows[0]["family"] == "vit"
    assert res.columns[:3] == ["rank", "name", "params"] and "score" not in res.columns
    assert res.scores == {}
    assert res.query == "SELECT top 3 FROM pool all"
    assert res.plan == {
        "pool": "all",
        "ranker": "agnostic",
        "budget": 3,
        "task": None,
        "filters": [],
    }
    t = res.timings
    assert t.parse_ms > 0 and t.plan_ms > 0 and t.total_ms >= t.parse_ms + t.plan_ms
    assert t.score_ms == 0
    # a Result is a pydantic model that survives JSON
    assert Result.model_validate_json(res.model_dump_json()) == res


def test_query_filters_and_pools(client: Client) -> None:
    res = client.query("SELECT * FROM pool resnet50 WHERE dim > 300")
    assert res.names == ["r50"]  # the pool is ResNet-50s, by architecture
    assert res.plan["filters"] == ["pool resnet50: architecture = 'resnet50'", "dim > 300"]
    res = client.query("SELECT * FROM pool dim2048 WHERE params < 26M")
    # models without an ImageNet figure come after, by upstream size
    assert res.names == ["r50", "mobilenet", "birds"]
    res = client.query("SELECT * FROM models WHERE upstream_size IS NOT NULL")
    assert res.names == ["clip", "birds"]
    res = client.query(
        "SELECT * FROM models WHERE family IN ('resnet', 'vit') AND NOT name LIKE 'r1%'"
    )
    assert res.names == ["vit-b16", "r50"]
    assert client.query("SELECT top 5 FROM pool expert").names == ["birds"]


def test_builder_matches_text(client: Client) -> None:
    cases = [
        (
            client.select(2).pool("resnet50").where("dim >= 1024"),
            "SELECT top 2 FROM pool resnet50 WHERE dim >= 1024",
        ),
        (
            client.select().models().where(source="torchvision").order_by("params").limit(3),
            "SELECT * FROM models WHERE source = 'torchvision' ORDER BY params ASC LIMIT 3",
        ),
        (
            client.select(10).where(family=["resnet", "vit"]).rank("agnostic"),
            "SELECT top 10 FROM models WHERE family IN ('resnet', 'vit') RANK BY agnostic",
        ),
    ]
    for built, text in cases:
        by_builder = built.run()
        by_text = client.query(text)
        assert by_builder.rows == by_text.rows
        assert by_builder.columns == by_text.columns
        assert by_builder.plan == by_text.plan
        assert by_builder.names  # not trivially empty
    assert cases[0][0].run().names == ["r50"]
    assert cases[1][0].run().names == ["mobilenet", "r50", "r101"]
    assert cases[2][0].run().names == ["vit-b16", "r101", "r50"]


def test_builder_order_by_on_imagenet_pool(client: Client) -> None:
    res = client.select().pool("imagenet").order_by("imagenet_top1", descending=True).limit(2).run()
    assert res.names == ["vit-b16", "r101"]
    assert [r["imagenet_top1"] for r in res.rows] == [81.1, 77.4]
    assert res.plan["ranker"] == "ORDER BY imagenet_top1 DESC"
    assert res.plan["budget"] == 2
    asc = client.select().pool("imagenet").order_by("imagenet_top1").run()
    assert asc.names == ["mobilenet", "r50", "r101", "vit-b16"]


def test_order_by_puts_nulls_last(client: Client) -> None:
    for direction in ("ASC", "DESC"):
        res = client.query(f"SELECT * FROM models ORDER BY imagenet_top1 {direction}")
        assert res.names[-2:] == ["birds", "clip"]  # no figure: last, then by name


def test_explain(client: Client) -> None:
    res = client.explain("SELECT top 2 FROM pool resnet50 WHERE dim > 300")
    assert res.columns == ["step", "detail", "models"]
    assert [(s["step"], s["models"]) for s in res.rows] == [
        ("all models", 6),
        ("filter", 1),
        ("filter", 1),
        ("rank", None),
    ]
    assert res.rows[1]["detail"] == "pool resnet50: architecture = 'resnet50'"
    assert res.rows[2]["detail"] == "dim > 300"
    assert res.plan["ranker"] == "agnostic"
    # an explicit EXPLAIN is not doubled
    again = client.explain("EXPLAIN SELECT top 2 FROM pool resnet50 WHERE dim > 300")
    assert again.rows == res.rows
    assert client.select(2).pool("resnet50").where("dim > 300").explain().run().rows == res.rows


def test_errors(client: Client) -> None:
    with pytest.raises(QueryError) as info:
        client.query("SELECT top 2 FROM pool resnet5")
    assert (info.value.line, info.value.column) == (1, 24)
    assert "did you mean 'resnet50'" in (info.value.hint or "")
    with pytest.raises(QueryError):
        client.select(2).pool("nope").run()
    with pytest.raises(QueryError):
        client.select(2).where("parms < 3").run()


def test_listing(client: Client) -> None:
    assert [m.name for m in client.models()] == sorted(m.name for m in MODELS)
    assert [p.name for p in client.pools()] == ["all", "resnet50", "dim2048", "expert", "imagenet"]
    assert client.tasks() == []


def test_context_manager(tmp_path: Path) -> None:
    with shift.connect(tmp_path) as c:
        c.registry.add_model(MODELS[0])
        assert c.query("SELECT * FROM models").names == ["r50"]
    with shift.connect(tmp_path) as c:
        assert c.query("SELECT * FROM models").names == ["r50"]


def test_builder_hands_its_ast_to_the_client(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shift.engine.execute

    def no_parse(text: str) -> None:
        raise AssertionError(f"re-parsed {text!r}")

    monkeypatch.setattr(shift.engine.execute, "parse", no_parse)
    res = client.select(2).pool("resnet50").where("dim >= 1024").run()
    assert res.names == ["r50"]
    assert res.query == "SELECT top 2 FROM pool resnet50 WHERE dim >= 1024"


def test_result_to_pandas(client: Client) -> None:
    pd = pytest.importorskip("pandas")
    res = client.query("SELECT top 3 FROM pool all")
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns[: len(res.columns)]) == res.columns
    assert set(df.columns) == set(res.rows[0])  # every field, displayed ones first
    assert list(df["name"]) == ["vit-b16", "r101", "r50"]
    assert list(df["rank"]) == [1, 2, 3]
    assert df.loc[0, "why"] == "task-agnostic: ImageNet top-1 81.1%"
    empty = client.query("SELECT * FROM models WHERE dim > 100000").to_pandas()
    assert list(empty.columns) == client.query("SELECT * FROM models").columns and empty.empty


def test_result_to_pandas_without_pandas(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from shift.errors import ShiftError

    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ShiftError, match="needs pandas") as e:
        client.query("SELECT top 1 FROM pool all").to_pandas()
    assert e.value.hint == "pip install pandas"


def test_home_is_opened_on_first_use(tmp_path: Path) -> None:
    c = shift.connect(tmp_path / "later")
    assert not (tmp_path / "later").exists()
    assert c.tasks() == []
    assert (tmp_path / "later").is_dir()
    c.close()


def test_shift_client_is_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, shift\n"
        "assert 'shift.client' not in sys.modules\n"
        "import shift.client\n"
        "assert shift.Client is shift.client.Client\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
