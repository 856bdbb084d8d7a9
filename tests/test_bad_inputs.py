"""A catalogue of bad inputs, counted per category, each with the error it must produce:

* generated queries → only ``QueryError`` escapes ``parse`` / ``plan_text``; the SQL of every
  plan that succeeds runs or is refused as a ``ShiftError`` (SQLite's parser stack overflows
  beyond ~45 nested NOT);
* ONNX files truncated / not ONNX / with a dynamic input size / of the wrong input rank →
  ``ModelFileError`` naming the file, registry unchanged; NaN or Inf outputs → the failure report
  names the model, no index or score recorded for it;
* images truncated, empty or not images → ``TaskDataError`` naming the file; grayscale, RGBA,
  palette, CMYK and misnamed images load as RGB;
* tasks with one class, an empty validation split, unseen validation labels, non-integer or
  negative labels → ``TaskDataError``, nothing stored;
* registry names with path separators, SQL metacharacters, control characters... →
  ``InvalidNameError``, nothing stored or created; the same strings inside queries are data.
"""

from __future__ import annotations

import io
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx_factory import build_tiny_cnn, tiny_torch_model
from PIL import Image
from torch import nn

import shift
from shift.catalog.onnx_import import register_onnx
from shift.config import Home
from shift.errors import InvalidNameError, ModelFileError, QueryError, ShiftError, TaskDataError
from shift.query.parser import parse
from shift.query.planner import plan_text
from shift.records import Samples
from shift.store.readers import read_image_folder, read_npz
from shift.store.registry import Registry
from shift.store.tasks import TaskStore

TALLY: dict[str, Counter[str]] = {}


def tally(category: str, outcome: str) -> None:
    TALLY.setdefault(category, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def print_catalogue() -> Iterator[None]:
    yield
    width = max((len(c) for c in TALLY), default=10)
    lines = [f"{c:<{width}}  {sum(n.values()):>6}  {dict(n)}" for c, n in sorted(TALLY.items())]
    total = sum(sum(n.values()) for n in TALLY.values())
    print("\nbad-input catalogue (category, inputs, outcomes):\n" + "\n".join(lines))
    print(f"{total} inputs in {len(TALLY)} categories")


def snapshot(reg: Registry) -> tuple[Any, ...]:
    """Everything a refused input must leave unchanged."""
    tables = ("models", "tasks", "samples", "pools", "scores", "index_entries")
    counts = [reg.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
    home = reg.home
    files = sorted(
        str(p.relative_to(home.registry_dir))
        for p in home.registry_dir.rglob("*")
        if p.is_file() and "registry.db" not in p.name
    )
    return reg.model_names(), reg.task_names(), counts, files


# ---- queries ------------------------------------------------------------------------------

KEYWORDS = [
    "SELECT",
    "select",
    "SeLeCt",
    "top",
    "TOP",
    "*",
    "FROM",
    "from",
    "pool",
    "models",
    "WHERE",
    "where",
    "AND",
    "and",
    "OR",
    "or",
    "NOT",
    "not",
    "IN",
    "LIKE",
    "IS",
    "NULL",
    "true",
    "false",
    "RANK",
    "BY",
    "ORDER",
    "ASC",
    "DESC",
    "LIMIT",
    "EXPLAIN",
    "hybrid",
    "knn",
    "knn_cosine",
    "linear",
    "agnostic",
    "all",
    "resnet50",
    "dim2048",
    "expert",
    "imagenet",
]
COLUMNS = [
    "name",
    "family",
    "params",
    "dim",
    "input_size",
    "upstream_dataset",
    "upstream_size",
    "imagenet_top1",
    "has_head",
    "source",
    "tag",
    "license",
    "date_added",
    "task",
    "nosuchcol",
    "m.name",
    "rowid",
    "sqlite_master",
]
OPERATORS = [
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "(",
    ")",
    ",",
    ";",
    ".",
    "*",
    "+",
    "-",
    "/",
    "%",
    "||",
    "!",
    "~",
    "&",
    "|",
    "^",
    "@",
    "#",
    "$",
    "?",
    ":",
    "[",
    "]",
    "{",
    "}",
    "\\",
    "`",
]
NUMBERS = [
    "0",
    "1",
    "2",
    "-1",
    "+3",
    "007",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "1E-3",
    "30M",
    "1.5G",
    "2k",
    "1e309",
    "-1e309",
    "1e-400",
    "99999999999999999999999999",
    "18446744073709551616",
    "9223372036854775808",
    "nan",
    "inf",
    "0x10",
    "1_000",
]
STRINGS = [
    "'x'",
    "'tiny0'",
    "''",
    "'it''s'",
    "'a\\'b'",
    '"double"',
    "'unterminated",
    '"unterminated',
    "'%'",
    "'_'",
    "'x'; DROP TABLE models; --'",
    "'\\'",
    "'\u00e9\u00e8'",
    "'\U0001f642'",
    "'line\nbreak'",
    "'../../etc/passwd'",
]
GARBAGE = [
    "\x00",
    "\n",
    "\t",
    "\r\n",
    "\u202e",
    "\ufeff",
    "\u00a0",
    "\U0001f642",
    "é",
    "--",
    "/*",
    "*/",
    ";DROP TABLE models;--",
    "' OR '1'='1",
    "\\x00",
    "a" * 200,
    "_",
    "-",
    "__",
    "9a",
]
VALID = [
    "SELECT top 2 FROM pool all WHERE task=toy",
    "SELECT top 3 FROM pool all WHERE task=toy AND params < 30M RANK BY hybrid(linear)",
    "SELECT * FROM models WHERE source='test' ORDER BY imagenet_top1 DESC LIMIT 5",
    "EXPLAIN SELECT top 2 FROM pool resnet50 WHERE task=toy RANK BY knn",
    "SELECT * FROM models WHERE NOT (dim <= 1024 OR tag = 'expert') AND name LIKE 'ti%'",
    "SELECT * FROM models WHERE family IN ('a', 'b', 'tiny-cnn') AND license IS NOT NULL",
    "SELECT top 1 FROM pool all WHERE task = 'toy' AND has_head = true RANK BY knn_cosine",
]
TOKENS = KEYWORDS + COLUMNS + OPERATORS + NUMBERS + STRINGS + GARBAGE


def _soup(rng: random.Random) -> str:
    n = rng.randint(0, 30)
    return rng.choice(["", " ", "\n"]).join(rng.choice(TOKENS) for _ in range(n))


def _prefixed_soup(rng: random.Random) -> str:
    head = rng.choice(["SELECT top 2 FROM pool all WHERE ", "SELECT * FROM models WHERE ", ""])
    return head + " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 15)))


def _mutated(rng: random.Random) -> str:
    toks = rng.choice(VALID).split(" ")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(toks) + 1)
        if op == 0 and toks:
            del toks[min(i, len(toks) - 1)]
        elif op == 1:
            toks.insert(i, rng.choice(TOKENS))
        elif op == 2 and len(toks) > 1:
            j = rng.randrange(len(toks))
            toks[min(i, len(toks) - 1)], toks[j] = toks[j], toks[min(i, len(toks) - 1)]
        elif op == 3 and toks:
            toks.insert(i, toks[min(i, len(toks) - 1)])
        else:
            text = " ".join(toks)
            k = rng.randrange(len(text) + 1)
            toks = (text[:k] + rng.choice(GARBAGE + OPERATORS) + text[k:]).split(" ")
    return " ".join(toks)


def _truncated(rng: random.Random) -> str:
    text = rng.choice(VALID)
    return text[: rng.randrange(len(text) + 1)]


def _chars(rng: random.Random) -> str:
    alphabet = "SELECTtopFROMpolWHERAND()=<>!,'\"*0123456789 \n\t_-.%\\;\x00\u00e9\U0001f642"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))


def _extreme(rng: random.Random) -> str:
    kind = rng.randrange(6)
    depth = rng.choice([10, 40, 63, 64, 65, 200, 2000])
    if kind == 0:  # deep nesting
        return f"SELECT * FROM models WHERE {'(' * depth}dim > 1{')' * depth}"
    if kind == 1:  # unbalanced nesting
        return f"SELECT * FROM models WHERE {'(' * depth}dim > 1"
    if kind == 2:  # long chains of OR / NOT
        n = rng.choice([10, 500, 3000])
        return "SELECT * FROM models WHERE " + " OR ".join(f"dim = {i}" for i in range(n))
    if kind == 3:
        return "SELECT * FROM models WHERE " + "NOT " * depth + "dim > 1"
    if kind == 4:  # huge IN list / long string / over the length limit
        n = rng.choice([10, 1000, 5000])
        return f"SELECT * FROM models WHERE dim IN ({', '.join(map(str, range(n)))})"
    return "SELECT * FROM models WHERE name = '" + "x" * rng.choice([100, 19_900, 30_000]) + "'"


GENERATORS: dict[str, tuple[Callable[[random.Random], str], int]] = {
    "query: token soup": (_soup, 3500),
    "query: soup after a valid prefix": (_prefixed_soup, 2000),
    "query: mutated valid query": (_mutated, 2500),
    "query: truncated valid query": (_truncated, 800),
    "query: random characters": (_chars, 1500),
    "query: extreme size or nesting": (_extreme, 200),
}


@pytest.fixture(scope="module")
def query_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Two registered (fake-file) models and a task ``toy``: enough to plan every query."""
    from shift.records import InputSpec, ModelRecord, TaskRecord

    r = Registry.open(tmp_path_factory.mktemp("qhome"))
    for i, name in enumerate(["tiny0", "tiny1"]):
        r.add_model(
            ModelRecord(
                name=name,
                path=f"/nowhere/{name}.onnx",
                sha256=f"{i}" * 64,
                params=1000,
                dim=16,
                output="embedding",
                input_name="input",
                input=InputSpec(height=32, width=32),
                family="tiny-cnn",
                source="test",
            )
        )
    r.put_task(
        TaskRecord(
            name="toy",
            content_hash="c",
            data_hash="d",
            kind="npz",
            source="gen",
            num_samples=0,
            num_train=0,
            num_val=0,
            num_classes=2,
        )
    )
    yield r
    r.close()


def test_generated_queries_only_raise_query_error(query_registry: Registry) -> None:
    rng = random.Random(20240601)
    t0 = time.perf_counter()
    escaped: list[tuple[str, str]] = []
    total = 0
    for category, (gen, n) in GENERATORS.items():
        for _ in range(n):
            text = gen(rng)
            total += 1
            try:
                p = plan_text(text, query_registry)
            except QueryError as e:
                assert e.line >= 1 and e.column >= 1 and e.message
                tally(category, "QueryError")
                continue
            except Exception as e:  # noqa: BLE001 - anything else is the bug we look for
                escaped.append((text[:200], f"{type(e).__name__}: {e}"))
                tally(category, type(e).__name__)
                continue
            try:  # the compiled SQL runs, or is refused as a ShiftError (never a traceback)
                query_registry.models(*p.where_sql)
                tally(category, "planned and ran")
            except ShiftError as e:
                assert "too complex" in e.message
                tally(category, "planned, SQLite refused (ShiftError)")
            except Exception as e:  # noqa: BLE001
                escaped.append((text[:200], f"running it: {type(e).__name__}: {e}"))
                tally(category, type(e).__name__)
    elapsed = time.perf_counter() - t0
    assert total >= 10_000
    assert escaped == [], escaped[:5]
    assert elapsed < 30, f"{total} queries took {elapsed:.1f} s"
    # parse alone: also only QueryError, for non-text too
    for bad in (None, 3, b"SELECT", ["SELECT"], 1.5):
        with pytest.raises(QueryError):
            parse(bad)  # type: ignore[arg-type]
        tally("query: not text", "QueryError")


def test_names_inside_queries_are_data(query_registry: Registry) -> None:
    before = snapshot(query_registry)
    for s in BAD_NAMES:
        if "\n" in s or "\x00" in s:
            continue
        quoted = "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
        try:
            p = plan_text(f"SELECT * FROM models WHERE name = {quoted}", query_registry)
            assert query_registry.models(*p.where_sql) == []
            tally("query: bad name as a string", "no rows")
        except QueryError:
            tally("query: bad name as a string", "QueryError")
        with pytest.raises(QueryError, match="unknown task|unexpected|malformed"):
            plan_text(f"SELECT top 2 FROM pool all WHERE task = {quoted}", query_registry)
        tally("query: bad task name", "QueryError")
    assert snapshot(query_registry) == before


# ---- ONNX files ---------------------------------------------------------------------------


def _export(model: nn.Module, path: Path, example: torch.Tensor, axes: dict[str, Any]) -> Path:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


class _Scale(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[0] * self.factor


@pytest.fixture(scope="module")
def bad_onnx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Bad model files by category (the file stem is the name they are registered under)."""
    d = tmp_path_factory.mktemp("bad_onnx")
    good = build_tiny_cnn(d / "good.onnx", seed=0)
    data = Path(good.path).read_bytes()
    out: dict[str, list[Path]] = {"truncated": [], "not-onnx": [], "dynamic": [], "rank": []}
    for frac in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        p = d / f"trunc-{int(frac * 100)}.onnx"
        p.write_bytes(data[: int(len(data) * frac)])
        out["truncated"].append(p)
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    junk = {
        "empty": b"",
        "text": b"this is not a model\n",
        "json": b'{"graph": {"node": []}}',
        "png": png.getvalue(),
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "zeros": bytes(1024),
    }
    for name, blob in junk.items():
        p = d / f"junk-{name}.onnx"
        p.write_bytes(blob)
        out["not-onnx"].append(p)
    cnn = tiny_torch_model(seed=0, classes=None)
    x = torch.zeros(1, 3, 32, 32)
    out["dynamic"] += [
        _export(cnn, d / "dyn-hw.onnx", x, {"input": {0: "b", 2: "h", 3: "w"}}),
        _export(cnn, d / "dyn-w.onnx", x, {"input": {0: "b", 3: "w"}}),
    ]
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16))
    out["rank"] += [
        _export(flat, d / "rank2.onnx", torch.zeros(1, 3 * 32 * 32), {"input": {0: "b"}}),
        _export(flat, d / "rank3.onnx", torch.zeros(1, 3, 32 * 32), {"input": {0: "b"}}),
        _export(flat, d / "rank5.onnx", torch.zeros(1, 1, 3, 32, 32), {"input": {0: "b"}}),
    ]
    return out


@pytest.mark.parametrize("category", ["truncated", "not-onnx", "dynamic", "rank"])
def test_bad_onnx_files_are_refused_by_name(
    reg: Registry, bad_onnx: dict[str, list[Path]], category: str
) -> None:
    before = snapshot(reg)
    for path in bad_onnx[category]:
        with pytest.raises(ModelFileError) as err:
            register_onnx(reg, path, path.stem.replace(".", "-"))
        assert path.name in str(err.value), str(err.value)
        tally(f"onnx: {category}", "ModelFileError")
        assert snapshot(reg) == before


def test_nan_and_inf_outputs_are_reported_by_name(tmp_path: Path) -> None:
    d = tmp_path / "onnx"
    d.mkdir()
    home = tmp_path / "home"
    with shift.connect(home, executor="inprocess") as c:
        reg = c.registry
        register_onnx(reg, build_tiny_cnn(d / "ok.onnx", seed=0).path, "ok")
        build_tiny_cnn(d / "nan.onnx", seed=1, nan=True)
        register_onnx(reg, d / "nan.onnx", "nan-out")
        inf = _Scale(tiny_torch_model(seed=2), 1e39)
        axes = {"input": {0: "b"}, "embedding": {0: "b"}}
        inf_file = _export(inf, d / "inf.onnx", torch.zeros(1, 3, 32, 32), axes)
        register_onnx(reg, inf_file, "inf-out")
        rng = np.random.default_rng(0)
        y = np.arange(40) % 2
        x = (rng.random((40, 32, 32, 3)) * 100 + y[:, None, None, None] * 100).astype(np.uint8)
        TaskStore(reg).add("toy", Samples(x, y, None, [], []), kind="npz", source="gen")
        res = c.query("SELECT top 3 FROM pool all WHERE task=toy RANK BY knn")
        rep = c.engine.last_report
        assert set(rep.failed) == {"nan-out", "inf-out"}
        for name in ("nan-out", "inf-out"):
            assert f"model {name!r}" in rep.failed[name] and "NaN/Inf" in rep.failed[name]
            assert name not in res.scores and res.failed[name] == rep.failed[name]
            tally("onnx: NaN/Inf output", "reported failure")
        assert isinstance(res.scores["ok"], float)
        assert set(reg.index_entries("toy")) == {"ok"}
        n_scores = reg.db.execute("SELECT count(*) FROM scores").fetchone()[0]
        assert n_scores == 1
        assert reg.model_names() == ["inf-out", "nan-out", "ok"]  # still registered


# ---- images -------------------------------------------------------------------------------


def _img(mode: str, color: Any, size: int = 16) -> Image.Image:
    return Image.new(mode, (size, size), color)


def _save(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


RGB_PNG = _save(_img("RGB", (200, 30, 30)), "PNG")
RGB_JPG = _save(_img("RGB", (30, 200, 30)), "JPEG")
NOISE_PNG = _save(
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"
)

# category -> [(file name, bytes)]: each must load as RGB
LOADS = {
    "image: grayscale": [
        ("l.png", _save(_img("L", 90), "PNG")),
        ("l.jpg", _save(_img("L", 90), "JPEG")),
        ("one-bit.png", _save(_img("1", 1), "PNG")),
        ("la.png", _save(_img("LA", (90, 128)), "PNG")),
    ],
    "image: RGBA / palette": [
        ("rgba.png", _save(_img("RGBA", (10, 20, 30, 40)), "PNG")),
        ("rgba.webp", _save(_img("RGBA", (10, 20, 30, 255)), "WEBP")),
        ("palette.png", _save(_img("RGB", (5, 6, 7)).convert("P"), "PNG")),
        ("palette.gif", _save(_img("RGB", (5, 6, 7)).convert("P"), "GIF")),
    ],
    "image: CMYK JPEG": [
        ("cmyk.jpg", _save(_img("CMYK", (0, 255, 255, 0)), "JPEG")),
        ("cmyk2.jpeg", _save(_img("CMYK", (255, 0, 0, 50)), "JPEG")),
    ],
    "image: wrong extension": [
        ("png-named.jpg", RGB_PNG),
        ("jpeg-named.png", RGB_JPG),
        ("png-named.bmp", RGB_PNG),
        ("no-extension", RGB_PNG),
    ],
}
# category -> [(file name, bytes)]: each must fail with TaskDataError naming the file
FAILS = {
    "image: truncated": [
        ("half.png", NOISE_PNG[: len(NOISE_PNG) // 2]),
        ("quarter.png", NOISE_PNG[: len(NOISE_PNG) // 4]),
        ("header-only.png", NOISE_PNG[:40]),
        ("half.jpg", RGB_JPG[: len(RGB_JPG) // 2]),
    ],
    "image: zero bytes": [("empty.png", b""), ("empty.jpg", b"")],
    "image: not an image": [
        ("text.png", b"hello, I am text\n" * 10),
        ("html.jpg", b"<html><body>404</body></html>"),
        ("zeros.png", bytes(256)),
        ("script.gif", b"#!/bin/sh\nrm -rf /\n"),
    ],
}


def _folder(root: Path, extra: list[tuple[str, bytes]]) -> Path:
    """Two classes with good images; ``extra`` files go into class b."""
    for cls, blob in (("a", RGB_PNG), ("b", RGB_JPG)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"ok{i}.png").write_bytes(blob)
    for name, blob in extra:
        (root / "b" / name).write_bytes(blob)
    return root


@pytest.mark.parametrize("category", sorted(LOADS))
def test_odd_images_load_as_rgb(tmp_path: Path, category: str) -> None:
    for i, (name, blob) in enumerate(LOADS[category]):
        s = read_image_folder(_folder(tmp_path / str(i), [(name, blob)]))
        assert s.images.dtype == np.uint8 and s.images.shape[-1] == 3
        assert len(s.images) == 7
        got = s.images[[k for k, o in enumerate(s.origin) if o.endswith(name)][0]]
        if "grayscale" in category:
            assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(
                got[..., 1], got[..., 2]
            )
        tally(category, "loaded as RGB")


@pytest.mark.parametrize("category", sorted(FAILS))
def test_broken_images_are_refused_by_name(tmp_path: Path, reg: Registry, category: str) -> None:
    before = snapshot(reg)
    for i, (name, blob) in enumerate(FAILS[category]):
        root = _folder(tmp_path / str(i), [(name, blob)])
        with pytest.raises(TaskDataError) as err:
            s = read_image_folder(root)
            TaskStore(reg).add("imgs", s, kind="images", source=str(root))
        assert name in str(err.value), str(err.value)
        tally(category, "TaskDataError")
    assert snapshot(reg) == before


# ---- tasks --------------------------------------------------------------------------------


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)


TASKS: dict[str, list[dict[str, Any]]] = {
    "task: one class": [
        {"x": _x(10), "y": np.zeros(10, np.int64)},
        {"x": _x(10), "y": np.full(10, 3)},
        {"x": _x(6), "y": np.zeros(6, np.int64), "split": np.array(["train"] * 4 + ["val"] * 2)},
    ],
    "task: empty val split": [
        {"x": _x(10), "y": np.arange(10) % 2, "split": np.array(["train"] * 10)},
        {"x": _x(10), "y": np.arange(10) % 2, "split": np.zeros(10, np.int64)},
    ],
    "task: empty train split": [
        {"x": _x(10), "y": np.arange(10) % 2, "split": np.array(["val"] * 10)},
    ],
    "task: unseen val labels": [
        {"x": _x(8), "y": np.array([0, 0, 1, 1, 0, 2, 2, 3]), "split": np.array([0] * 4 + [1] * 4)},
        {"x": _x(6), "y": np.array([0, 1, 0, 1, 5, 0]), "split": np.array([0, 0, 0, 0, 1, 1])},
    ],
    "task: non-integer labels": [
        {"x": _x(6), "y": np.array([0.5, 1, 0, 1, 0, 1])},
        {"x": _x(6), "y": np.array(["a", "b", "a", "b", "a", "b"])},
        {"x": _x(6), "y": np.array([0, 1, np.nan, 1, 0, 1])},
        {"x": _x(6), "y": np.array([0, 1, np.inf, 1, 0, 1])},
        {"x": _x(6), "y": np.array([[0], [1], [0], [1], [0], [1]])},
    ],
    "task: negative labels": [{"x": _x(6), "y": np.array([0, -1, 0, 1, 0, 1])}],
    "task: mismatched arrays": [
        {"x": _x(6), "y": np.arange(5) % 2},
        {"x": _x(6), "y": np.arange(6) % 2, "split": np.array(["train", "val"])},
        {"x": _x(6), "y": np.arange(6) % 2, "split": np.array(["train"] * 5 + ["test"])},
        {"x": _x(6).astype(np.float32) * np.nan, "y": np.arange(6) % 2},
        {"x": np.zeros((6, 8, 8, 4), np.uint8), "y": np.arange(6) % 2},
        {"y": np.arange(6) % 2},
    ],
}


@pytest.mark.parametrize("category", sorted(TASKS))
def test_bad_tasks_are_refused(tmp_path: Path, reg: Registry, category: str) -> None:
    before = snapshot(reg)
    for i, arrays in enumerate(TASKS[category]):
        path = _npz(tmp_path / f"t{i}.npz", **arrays)
        with pytest.raises(TaskDataError):
            TaskStore(reg).add(f"bad{i}", read_npz(path), kind="npz", source=str(path))
        tally(category, "TaskDataError")
        assert snapshot(reg) == before
    assert not reg.task_names()


def test_object_arrays_are_never_unpickled(tmp_path: Path, reg: Registry) -> None:
    path = tmp_path / "pickle.npz"
    np.savez(path, x=_x(4), y=np.array([0, 1, "a", None], dtype=object))
    with pytest.raises(TaskDataError, match="refused"):
        read_npz(path)
    tally("task: pickled object labels", "TaskDataError")
    for name, blob in (("empty", b""), ("text", b"x, y\n1, 2\n"), ("npy", b"\x93NUMPY\x01")):
        (tmp_path / f"{name}.npz").write_bytes(blob)
        with pytest.raises(TaskDataError, match=name):
            read_npz(tmp_path / f"{name}.npz")
        tally("task: not an npz", "TaskDataError")


def test_fake_zip_npz_is_a_task_data_error(tmp_path: Path) -> None:
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(TaskDataError, match="fake"):
        read_npz(tmp_path / "fake.npz")


# ---- registry names -----------------------------------------------------------------------

BAD_NAMES = [
    "../evil",
    "a/b",
    "/abs",
    "a\\b",
    "..",
    ".",
    ".hidden",
    "",
    " ",
    "a b",
    "x'; DROP TABLE models; --",
    'x" OR "1"="1',
    "a;b",
    "a%",
    "a*",
    "name\x00null",
    "tab\tname",
    "new\nline",
    "ünïcode",
    "emoji\U0001f642",
    "-leading-dash",
    "_leading_underscore",
    "a" * 129,
    "C:\\windows",
    "~root",
    "$HOME",
]


def test_bad_registry_names_are_refused(
    tmp_path: Path, reg: Registry, bad_onnx: dict[str, list[Path]]
) -> None:
    good = bad_onnx["dynamic"][0].parent / "good.onnx"
    samples = Samples(_x(10), np.arange(10) % 2, None, ["a", "b"], [])
    before = snapshot(reg)
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    for name in BAD_NAMES:
        with pytest.raises(InvalidNameError):
            register_onnx(reg, good, name)
        tally("name: model", "InvalidNameError")
        with pytest.raises(InvalidNameError):
            TaskStore(reg).add(name, samples, kind="npz", source="gen")
        tally("name: task", "InvalidNameError")
        with pytest.raises(InvalidNameError):
            reg.add_pool(name, "dim > 1")
        tally("name: pool", "InvalidNameError")
        with pytest.raises(InvalidNameError):
            reg.home.index_path(name, "m")
        with pytest.raises(InvalidNameError):
            reg.home.index_path("t", name)
        tally("name: index path", "InvalidNameError")
        assert snapshot(reg) == before
    # nothing was created beside the home, and every table is still there
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == outside
    assert {"models", "tasks", "pools"} <= set(reg.db.table_names())
    # names that are fine are fine (the refusals above are not over-eager)
    for name in ("ok-name_1", "A", "9lives"):
        assert register_onnx(reg, good, name).name == name
    assert isinstance(Home.resolve(tmp_path / "x").index_path("t", "9lives"), Path)


def test_shift_error_is_the_only_user_facing_error(reg: Registry) -> None:
    """Every error class used above is a ShiftError (the CLI prints it without a traceback)."""
    for cls in (QueryError, ModelFileError, TaskDataError, InvalidNameError):
        assert issubclass(cls, ShiftError)
