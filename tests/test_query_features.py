"""Issue 15's query-language features, end to end with real tiny ONNX models, a real SQLite
registry and real indexes (in-process executor):

1. proxy arguments (``RANK BY knn(k=3, metric=cosine)``): checked, positioned errors, part of
   the score-cache key;
2. several tasks (``WHERE task IN (a, b) RANK BY avg(knn)``): per-task scores and the aggregate;
3. the task-similarity ranker (``RANK BY similar(k=1)``) over recorded fine-tuning results;
4. ``SELECT * FROM finetunes`` / ``FROM scores`` over what was measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx_factory import build_tiny_cnn
from records import fake_model
from typer.testing import CliRunner

import shift
from shift.catalog.onnx_import import register_onnx
from shift.engine.engine import proxy_params_key
from shift.engine.multitask import aggregate, task_ranks
from shift.errors import QueryError
from shift.query import ast
from shift.query.builder import ranker, select, table
from shift.query.format import to_text
from shift.query.parser import parse
from shift.records import Samples, utcnow
from shift.scoring.args import ArgError
from shift.scoring.knn import k_nearest, knn_accuracy
from shift.scoring.linear import linear_probe_scores
from shift.scoring.proxies import get_proxy
from shift.scoring.task_similarity import task_distance, task_vector
from shift.store.tasks import TaskStore


def _err(text: str, fn: Any = parse) -> QueryError:
    with pytest.raises(QueryError) as info:
        fn(text)
    return info.value


# ---- 1. proxy arguments: syntax ------------------------------------------------------------------


def test_named_and_nested_arguments_parse() -> None:
    q = parse("SELECT top 2 FROM models WHERE task=t RANK BY knn(k=5, metric=cosine)")
    assert q.rank == ast.Ranker("knn", (), (("k", 5), ("metric", "cosine")))
    assert q.rank.kwarg_span("metric") == ast.Span(1, 56, 13)
    q = parse("SELECT * FROM models RANK BY avg(linear(lr=0.01, epochs=400))")
    assert q.rank == ast.Ranker("avg", (ast.Ranker("linear", (), (("lr", 0.01), ("epochs", 400))),))
    # a nested name without parentheses stays a name (hybrid(linear) as before)
    assert parse("SELECT * FROM models RANK BY hybrid(linear)").rank == ast.Ranker(
        "hybrid", ("linear",)
    )


@pytest.mark.parametrize(
    "text",
    [
        "SELECT top 2 FROM pool all WHERE task=t RANK BY knn(k=5, metric=cosine)",
        "SELECT * FROM models WHERE task IN (a, b) RANK BY avg(linear(lr=0.01, epochs=400))",
        "SELECT * FROM models WHERE task=t RANK BY similar(k=3, probe=m1)",
        "SELECT * FROM models RANK BY hybrid(knn(metric='cosine'))",
        "SELECT * FROM finetunes WHERE task=t AND accuracy > 0.5 ORDER BY accuracy DESC LIMIT 3",
        "EXPLAIN SELECT top 4 FROM scores WHERE proxy IN (knn, linear)",
    ],
)
def test_round_trip(text: str) -> None:
    q = parse(text)
    assert parse(to_text(q)) == q


def test_builder_matches_text() -> None:
    b = select(2).where(task=["a", "b"]).rank("avg", ranker("knn", k=3, metric="cosine"))
    assert b.to_ast() == parse(
        "SELECT top 2 FROM pool all WHERE task IN ('a', 'b') RANK BY avg(knn(k=3, metric=cosine))"
    )
    assert select(1).where(task="t").rank("knn", k=5).to_ast().rank == ast.Ranker(
        "knn", (), (("k", 5),)
    )
    t = table("finetunes").where(task="t").order_by("accuracy", descending=True).to_ast()
    assert t == parse("SELECT * FROM finetunes WHERE task = 't' ORDER BY accuracy DESC")


@pytest.mark.parametrize(
    ("text", "column", "message", "hint"),
    [
        ("SELECT * FROM models RANK BY knn(k<5)", 35, "unexpected '<'", "name=value"),
        ("SELECT * FROM models RANK BY knn(k=5, k=3)", 39, "k is given twice", "once"),
        ("SELECT * FROM models RANK BY knn(k=5, 3)", 39, "positional argument", "first"),
        ("SELECT * FROM models RANK BY knn(k=)", 36, "unexpected ')'", "a number"),
        ("SELECT * FROM models RANK BY knn(k=5", 37, "end of query", ")"),
        ("SELECT * FROM fine_tunes", 15, "unknown source 'fine_tunes'", "finetunes, scores"),
        ("SELECT * FROM", 14, "end of query", "FROM finetunes"),
    ],
)
def test_malformed_arguments_and_sources(text: str, column: int, message: str, hint: str) -> None:
    e = _err(text)
    assert (e.line, e.column) == (1, column), str(e)
    assert message in e.message and e.hint and hint in e.hint, (e.message, e.hint)


# ---- 1. proxy arguments: semantics ---------------------------------------------------------------


def test_bind_canonical_keys() -> None:
    knn = get_proxy("knn")

    def key(**v: Any) -> str:
        return proxy_params_key(knn.bind(v).settings)

    assert key(k=5, metric="cosine") == key(metric="COSINE", k=5.0)  # order, case, 5 vs 5.0
    assert key(k=1) == key() == proxy_params_key(knn.settings)  # the default is the default
    assert key(k=5) != key(k=3) != key()
    lin = get_proxy("linear")
    a = proxy_params_key(lin.bind({"lr": 0.01, "epochs": 400}).settings)
    assert a == proxy_params_key(lin.bind({"epochs": 400, "lr": 1e-2}).settings)
    assert json.loads(a)["lrs"] == [0.01] and json.loads(a)["epochs"] == 400
    shift_ql = lin.bind({"learning_rate": 0.01, "num_epochs": 400})  # SHiFT's spelling
    assert proxy_params_key(shift_ql.settings) == a
    assert knn.bind({"k": 5}).from_index is None  # k > 1: always exact
    assert knn.bind({"metric": "cosine"}).from_index.metric == "cosine"
    logme = get_proxy("logme").bind({"max_iter": 50})
    assert logme.settings["max_iter"] == 50


@pytest.mark.parametrize(
    ("proxy", "values", "arg", "hint"),
    [
        ("knn", {"k": 0}, "k", "k (int ≥ 1, ≤ 1000)"),
        ("knn", {"k": 2.5}, "k", "int"),
        ("knn", {"metric": "manhattan"}, "metric", "metric=euclidean"),
        ("knn", {"kk": 3}, "kk", "did you mean 'k'?"),
        ("linear", {"lr": -1}, "lr", "float > 0"),
        ("linear", {"lr": "fast"}, "lr", "float"),
        ("logme", {"max_iter": 0}, "max_iter", "int ≥ 1"),
        ("ncti", {"pca_dim": 8}, "pca_dim", "takes no parameters"),
        ("linear", {"lr": 0.1, "learning_rate": 0.1}, "lr", "one of them"),
    ],
)
def test_bind_refuses(proxy: str, values: dict, arg: str, hint: str) -> None:
    with pytest.raises(ArgError) as info:
        get_proxy(proxy).bind(values)
    assert info.value.arg == arg and hint in info.value.hint, info.value.hint


def test_knn_k_votes_by_hand() -> None:
    train = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    ty = np.array([0, 1, 1, 2, 2])
    val = np.array([[0.1], [10.4], [1.6]])
    assert k_nearest(train, val, 3).tolist() == [[0, 1, 2], [3, 4, 2], [2, 1, 0]]
    # k=3: [0,1,1] -> 1; [2,2,1] -> 2; [1,1,0] -> 1
    assert knn_accuracy(train, ty, val, np.array([1, 2, 1]), k=3) == 1.0
    assert knn_accuracy(train, ty, val, np.array([0, 2, 1])) == 1.0  # 1-NN unchanged
    # a 1-1 tie goes to the label of the nearest member
    assert knn_accuracy(train[:2], ty[:2], np.array([[0.9]]), np.array([1]), k=2) == 1.0
    # k beyond the training rows: all of them vote; labels 1 and 2 tie (2 votes each) and the
    # tied label with the nearest member wins
    assert knn_accuracy(train, ty, val, np.array([1, 2, 1]), k=50) == 1.0


def test_linear_epochs_are_passes() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    prob = [(x, y, x, y)]
    # 40 rows at batch 16: 3 steps per epoch, so 2 epochs = 6 steps
    by_epochs = linear_probe_scores(prob, (0.1,), epochs=2, batch_size=16)
    assert np.array_equal(by_epochs, linear_probe_scores(prob, (0.1,), steps=6, batch_size=16))
    assert not np.array_equal(by_epochs, linear_probe_scores(prob, (0.1,), steps=1, batch_size=16))


# ---- 2. several tasks: the aggregates ------------------------------------------------------------


def test_aggregates_by_hand() -> None:
    ms = [
        fake_model("a", imagenet_top1=80.0, imagenet_source="t"),
        fake_model("b", imagenet_top1=70.0, imagenet_source="t"),
    ]
    ms.append(fake_model("c", imagenet_top1=60.0, imagenet_source="t"))
    per = {"t1": {"a": 0.2, "b": 0.9, "c": 0.5}, "t2": {"a": 0.6, "b": 0.1, "c": None}}
    assert task_ranks(ms, per["t2"]) == {"a": 1, "b": 2, "c": 3}
    assert aggregate(ms, per, "avg_rank") == {"a": 2.0, "b": 1.5, "c": 2.5}
    assert aggregate(ms, per, "avg") == pytest.approx({"a": 0.4, "b": 0.5, "c": None})
    assert aggregate(ms, per, "min") == {"a": 0.2, "b": 0.1, "c": None}
    assert aggregate(ms, per, "max") == {"a": 0.6, "b": 0.9, "c": None}
    # equal scores: the task-agnostic order decides
    assert task_ranks(ms, {"a": 0.5, "b": 0.5, "c": 0.5}) == {"a": 1, "b": 2, "c": 3}


# ---- 3. task similarity: the embedding ---------------------------------------------------------


def test_task_vector_is_label_permutation_invariant() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 4, 20, axis=0)
    y = np.repeat([0, 1, 2], 20)
    v = task_vector(x, y)
    assert v.shape == (24,) and np.linalg.norm(v) == pytest.approx(1.0)
    assert np.allclose(task_vector(x, np.array([2, 0, 1])[y]), v)  # renumbered labels
    assert task_distance(v, task_vector(x[::-1], y[::-1])) == pytest.approx(0.0, abs=1e-12)
    far = task_vector(rng.normal(size=(60, 8)) - 5, y)
    assert task_distance(v, far) > 0.1


# ---- end to end ----------------------------------------------------------------------------------

N = 80


def samples(seed: int, offset: int = 0, classes: int = 4, spread: int = 40) -> Samples:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), N // classes)
    x = rng.random((len(y), 32, 32, 3)) * 60 + y[:, None, None, None] * spread + offset
    return Samples(
        np.clip(x, 0, 255).astype(np.uint8), y, None, [f"c{i}" for i in range(classes)], []
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three tiny models; tasks ``toy`` and ``near`` (same kind of data, other draws) and
    ``far`` (two classes, other intensities); recorded fine-tuning results on near and far."""
    d = tmp_path_factory.mktemp("features")
    c = shift.connect(d / "home", executor="inprocess")
    for i in range(3):
        path = build_tiny_cnn(d / f"m{i}.onnx", seed=i).path
        register_onnx(
            c.registry, Path(path), f"tiny{i}", imagenet_top1=50.0 + i, imagenet_source="test"
        )
    ts = TaskStore(c.registry)
    ts.add("toy", samples(0), kind="npz", source="gen")
    ts.add("near", samples(1), kind="npz", source="gen")
    ts.add("far", samples(2, offset=150, classes=2, spread=5), kind="npz", source="gen")
    acc = {"near": {"tiny0": 0.9, "tiny1": 0.5}, "far": {"tiny0": 0.2, "tiny1": 0.8}}
    rows = [
        {
            "task_hash": c.registry.get_task(t).content_hash,
            "model_sha": c.registry.get_model(m).sha256,
            "protocol": '{"epochs": 2}',
            "accuracy": a,
            "seconds": 1.0,
            "epochs": 2,
            "details": "{}",
            "computed_at": utcnow(),
        }
        for t, row in acc.items()
        for m, a in row.items()
    ]
    c.registry.db["finetune_results"].insert_all(rows)
    c.close()
    yield d / "home"


@pytest.fixture
def client(home: Path) -> Iterator[shift.Client]:
    c = shift.connect(home, executor="inprocess")
    yield c
    c.close()


def n_scores(c: shift.Client, proxy: str) -> int:
    return c.registry.db.execute("SELECT count(*) FROM scores WHERE proxy = ?", [proxy]).fetchone()[
        0
    ]


def test_proxy_arguments_are_cached_apart(client: shift.Client) -> None:
    q = "SELECT top 3 FROM models WHERE task=toy RANK BY knn(k=3, metric=cosine)"
    res = client.query(q)
    assert res.plan["ranker"] == "knn(k=3, metric=cosine)" and len(res.rows) == 3
    before = n_scores(client, "knn")
    again = client.query(
        "SELECT top 3 FROM models WHERE task=toy RANK BY knn(metric=COSINE, k=3.0)"
    )
    assert again.scores == res.scores and n_scores(client, "knn") == before  # same key
    built = client.select(3).where(task="toy").rank("knn", k=3, metric="cosine").run()
    assert built.scores == res.scores
    client.query("SELECT top 3 FROM models WHERE task=toy RANK BY knn(k=1)")
    assert n_scores(client, "knn") == before + 3  # another k, another key
    exp = client.explain(q)
    assert (
        "3 cached, 0 to compute"
        in [s["detail"] for s in exp.rows if s["step"].startswith("score")][0]
    )
    bad = "SELECT * FROM models WHERE task=toy RANK BY linear(rate=0.1)"
    e = _err(bad, client.query)
    assert (e.line, e.column) == (1, bad.index("rate=") + 1) and "lr (float > 0" in (e.hint or "")


def test_several_tasks(client: shift.Client) -> None:
    one = {
        t: client.query(f"SELECT * FROM models WHERE task={t} RANK BY knn").scores
        for t in ("toy", "near")
    }
    res = client.query("SELECT * FROM models WHERE task IN (toy, near) RANK BY avg(knn)")
    assert res.columns[-4:] == ["score:toy", "score:near", "score", "why"]
    for r in res.rows:
        assert r["score:toy"] == one["toy"][r["name"]]
        assert r["score"] == pytest.approx((one["toy"][r["name"]] + one["near"][r["name"]]) / 2)
    assert [r["score"] for r in res.rows] == sorted((r["score"] for r in res.rows), reverse=True)
    default = client.query("SELECT * FROM models WHERE task IN (toy, near) RANK BY knn")
    assert default.plan["ranker"] == "avg_rank(knn)" and "mean_rank" in default.columns
    exp = client.explain("SELECT * FROM models WHERE task IN (toy, near) RANK BY min(knn(k=3))")
    steps = [s["step"] for s in exp.rows]
    assert "score knn(k=3) on toy" in steps and "score knn(k=3) on near" in steps
    assert set(exp.plan["work"]["tasks"]) == {"toy", "near"}
    bad = "SELECT * FROM models WHERE task IN (toy, near) RANK BY hybrid(knn)"
    e = _err(bad, client.query)
    assert e.column == bad.index("hybrid") + 1 and "avg(PROXY)" in (e.hint or "")


def test_similar_ranks_by_the_nearest_tasks(client: shift.Client) -> None:
    res = client.query("SELECT * FROM models WHERE task=toy RANK BY similar(k=1)")
    assert res.plan["probe"] == "tiny0"  # the smallest model, ties by name
    assert [n["task"] for n in res.plan["neighbours"]] == ["near"]
    assert res.names[:2] == ["tiny0", "tiny1"] and res.scores["tiny0"] == pytest.approx(0.9)
    assert res.scores["tiny2"] is None  # no fine-tuning result on the neighbour
    both = client.query("SELECT * FROM models WHERE task=toy RANK BY similar(k=2)")
    (n1, d1), (n2, d2) = [(n["task"], n["distance"]) for n in both.plan["neighbours"]]
    assert (n1, n2) == ("near", "far") and d1 < d2
    w1, w2 = 1 - d1, 1 - d2
    assert both.scores["tiny1"] == pytest.approx((w1 * 0.5 + w2 * 0.8) / (w1 + w2), abs=1e-5)
    exp = client.explain("SELECT * FROM models WHERE task=toy RANK BY similar(k=2)")
    near = [s for s in exp.rows if s["step"].startswith("neighbours")][0]
    assert near["detail"].startswith("near d=") and "far d=" in near["detail"]
    bad = "SELECT * FROM models WHERE task=toy RANK BY similar(k=2, probe=nope)"
    e = _err(bad, client.query)
    assert e.column == bad.index("probe=") + 1 and "registered model" in e.message


def test_tables_of_measurements(client: shift.Client) -> None:
    res = client.query("SELECT * FROM finetunes WHERE task=near ORDER BY accuracy DESC")
    assert [(r["model"], r["accuracy"]) for r in res.rows] == [("tiny0", 0.9), ("tiny1", 0.5)]
    assert res.columns[:3] == ["task", "model", "accuracy"]
    built = client.table("finetunes").where(task="near").order_by("accuracy", descending=True)
    assert built.run().rows == res.rows
    client.query("SELECT * FROM models WHERE task=toy RANK BY knn")
    sc = client.query("SELECT top 2 FROM scores WHERE task=toy AND proxy=knn ORDER BY score DESC")
    assert len(sc.rows) == 2 and sc.rows[0]["score"] >= sc.rows[1]["score"]
    assert all(json.loads(r["params"])["metric"] for r in sc.rows)
    exp = client.explain("SELECT * FROM finetunes WHERE accuracy > 0.6")
    assert [s["models"] for s in exp.rows[:2]] == [4, 2]
    e = _err("SELECT * FROM finetunes WHERE acc > 0.5", client.query)
    assert (e.column, e.message) == (31, "unknown column 'acc' in finetunes")
    assert "accuracy" in (e.hint or "")
    # values are parameters, never SQL
    assert client.query("SELECT * FROM scores WHERE task = 'x\\' OR 1=1 --'").rows == []


def test_cli_query_features(home: Path) -> None:
    from shift.cli import app

    runner = CliRunner()

    def run(*args: str) -> Any:
        out = runner.invoke(app, [*args, "--home", str(home)])
        assert "Traceback" not in out.output
        return out

    r = run("query", "SELECT * FROM finetunes ORDER BY accuracy DESC", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["rows"][0]["accuracy"] == 0.9
    r = run(
        "query",
        "SELECT top 2 FROM models WHERE task IN (toy, near) RANK BY max(knn)",
        "--executor",
        "inprocess",
    )
    assert r.exit_code == 0 and "score:toy" in r.output
    r = run(
        "query",
        "SELECT * FROM models WHERE task=toy RANK BY similar(k=1)",
        "--executor",
        "inprocess",
    )
    assert r.exit_code == 0 and "similar tasks (probe tiny0): near (distance" in r.output
    r = run("explain", "SELECT * FROM models WHERE task=toy RANK BY similar(k=1)")
    assert r.exit_code == 0 and "near d=" in r.output  # the probe has indexed every task
    r = run("query", "SELECT * FROM models WHERE task=toy RANK BY knn(k=0)")
    assert r.exit_code != 0 and "k=0 is out of range" in r.output and "^^^" in r.output


def test_explain_similar_before_the_probe_indexed(tmp_path: Path) -> None:
    c = shift.connect(tmp_path / "h", executor="inprocess")
    path = build_tiny_cnn(tmp_path / "m.onnx", seed=0).path
    register_onnx(c.registry, Path(path), "solo", imagenet_top1=50.0, imagenet_source="test")
    ts = TaskStore(c.registry)
    ts.add("a", samples(0), kind="npz", source="gen")
    ts.add("b", samples(1), kind="npz", source="gen")
    q = "SELECT * FROM models WHERE task=a RANK BY similar"
    e = _err(q, c.query)  # no fine-tuning history yet: said, before any work
    assert "but there are none" in e.message and "shift-cli finetune" in (e.hint or "")
    c.registry.db["finetune_results"].insert(
        {
            "task_hash": c.registry.get_task("b").content_hash,
            "model_sha": c.registry.get_model("solo").sha256,
            "protocol": "{}",
            "accuracy": 0.7,
            "seconds": 1.0,
            "epochs": 1,
            "details": "{}",
            "computed_at": utcnow(),
        }
    )
    exp = c.explain(q)
    probe = [s for s in exp.rows if s["step"] == "probe"][0]
    assert probe["detail"] == "solo embeds every task; to embed: a, b"
    assert exp.plan["neighbours"] is None and exp.plan["probe"] == "solo"
    assert c.query(q).scores == {"solo": pytest.approx(0.7)}  # the query embeds, then ranks
    c.close()
