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
    )
}

#: ``task`` is not a model column: ``task = NAME`` selects the dataset to rank for.
TASK_COLUMN = "task"

#: columns shown in result tables, in order
DISPLAY_COLUMNS = ["name", "params", "dim", "imagenet_top1", "upstream_dataset"]
