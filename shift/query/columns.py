"""The columns a query can filter and sort on, their types and the SQL they read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColType = Literal["text", "int", "real", "bool", "tags"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColType
    sql: str
    help: str


COLUMNS: dict[str, Column] = {
    c.name: c
    for c in (
        Column("name", "text", "m.name", "model name"),
        Column("family", "text", "m.family", "architecture family"),
        Column("params", "int", "m.params", "number of parameters (30M = 30,000,000)"),
        Column("dim", "int", "m.dim", "embedding dimension"),
        Column("input_size", "int", "m.input_height", "input height in pixels"),
        Column(
            "upstream_dataset", "text", "m.upstream_dataset", "dataset the model was trained on"
        ),
        Column("upstream_size", "int", "m.upstream_size", "number of upstream training samples"),
        Column("imagenet_top1", "real", "m.imagenet_top1", "ImageNet top-1 accuracy, percent"),
        Column("has_head", "bool", "(m.head_output IS NOT NULL)", "has a source-classifier head"),
        Column("source", "text", "m.source", "where the model comes from"),
        Column("tag", "tags", "m.tags", "one of the model's tags (e.g. tag = 'expert')"),
        Column("license", "text", "m.license", "licence of the weights"),
        Column("date_added", "text", "m.date_added", "when it was registered (ISO 8601)"),
        Column("architecture", "text", "m.architecture", "architecture, e.g. resnet50, vit_b_16"),
        Column("weights", "text", "m.weights", "present, or missing (metadata only)"),
        Column("source_id", "text", "m.source_id", "the source's id, e.g. timm:resnet50.a1_in1k"),
        Column("imagenet_top5", "real", "m.imagenet_top5", "ImageNet top-5 accuracy, percent"),
        Column("gflops", "real", "m.gflops", "GFLOPS per image"),
    )
}

#: ``task`` is not a model column: ``task = NAME`` selects the dataset to rank for.
TASK_COLUMN = "task"

#: columns shown in result tables, in order
DISPLAY_COLUMNS = ["name", "params", "dim", "imagenet_top1", "upstream_dataset"]


#: the tables of measurements a query can read with ``SELECT ... FROM <table>``: each column's
#: SQL reads the table joined to the task and the model it belongs to (current content only:
#: a result keyed by an older task or model hash is not shown). ``accuracy``/``score`` are what
#: was measured; ``protocol``/``params`` the canonical JSON that keys the result.
FINETUNE_COLUMNS: dict[str, Column] = {
    c.name: c
    for c in (
        Column("task", "text", "t.name", "task name"),
        Column("model", "text", "m.name", "model name"),
        Column("accuracy", "real", "r.accuracy", "best validation accuracy after fine-tuning"),
        Column("epochs", "int", "r.epochs", "fine-tuning epochs"),
        Column("seconds", "real", "r.seconds", "wall-clock seconds of the run"),
        Column("protocol", "text", "r.protocol", "the fine-tuning protocol (JSON)"),
        Column("computed_at", "text", "r.computed_at", "when it was measured (ISO 8601)"),
    )
}
SCORE_COLUMNS: dict[str, Column] = {
    c.name: c
    for c in (
        Column("task", "text", "t.name", "task name"),
        Column("model", "text", "m.name", "model name"),
        Column("proxy", "text", "r.proxy", "proxy name"),
        Column("params", "text", "r.params", "the proxy's parameters (JSON)"),
        Column("score", "real", "r.score", "the proxy's score"),
        Column("n_train", "int", "r.n_train", "training samples scored"),
        Column("n_val", "int", "r.n_val", "validation samples scored"),
        Column("seconds", "real", "r.seconds", "seconds to score the model"),
        Column("computed_at", "text", "r.computed_at", "when it was scored (ISO 8601)"),
    )
}


@dataclass(frozen=True)
class Table:
    """A table of measurements: its columns and the FROM clause (``r`` the results, ``t`` the
    task, ``m`` the model) that gives them."""

    name: str
    columns: dict[str, Column]
    sql_from: str
    default_order: str


TABLES: dict[str, Table] = {
    "finetunes": Table(
        "finetunes",
        FINETUNE_COLUMNS,
        "finetune_results r JOIN tasks t ON t.content_hash = r.task_hash "
        "JOIN models m ON m.sha256 = r.model_sha",
        "t.name, r.accuracy DESC, m.name",
    ),
    "scores": Table(
        "scores",
        SCORE_COLUMNS,
        # a score's model key is '<sha256>+<digest of preprocessing and backend>'
        "scores r JOIN tasks t ON t.content_hash = r.task_hash "
        "JOIN models m ON r.model_sha LIKE m.sha256 || '+%'",
        "t.name, r.proxy, r.params, r.score DESC, m.name",
    ),
}
