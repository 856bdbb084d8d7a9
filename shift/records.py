"""Pydantic records at shift's boundaries: what the registry stores and what a query returns."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shift.config import validate_name
from shift.errors import ShiftError

if TYPE_CHECKING:  # numpy is not imported where no array is made (listings, cached queries)
    import numpy as np


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class InputSpec(BaseModel):
    """How an image becomes the model's input tensor:
    ``x = (resize(img, size) / 255 - mean) / std``, in ``layout`` and ``color`` order.

    ``mean``/``std`` are on the 0..1 pixel scale (ImageNet: 0.485.../0.229...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: cache keys memoise it

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 3
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: Literal["squash", "center_crop"] = "center_crop"

    @model_validator(mode="after")
    def _check_norm(self) -> InputSpec:
        for field in ("mean", "std"):
            vals = getattr(self, field)
            if len(vals) not in (1, self.channels):
                raise ValueError(f"{field} needs 1 or {self.channels} values, got {len(vals)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    def key(self) -> str:
        """A stable string identifying this preprocessing (part of every cache key)."""
        return self.model_dump_json()


class ModelRecord(BaseModel):
    """One registered model: ``name`` is what users type, ``sha256`` identifies the weights."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(
        description="ONNX file, relative to the registry home or absolute ('' without weights)"
    )
    sha256: str = Field(pattern=r"^([0-9a-f]{64})?$", description="'' without weights")
    family: str = "unknown"
    params: int | None = Field(None, ge=0, description="None: unknown (metadata-only rows)")
    dim: int | None = Field(None, gt=0, description="embedding dimension; None: unknown")
    output: str = Field(description="graph output the embedding is read from")
    head_output: str | None = Field(None, description="graph output with source-classifier logits")
    head_classes: int | None = Field(None, gt=0)
    input_name: str
    input: InputSpec
    upstream_dataset: str | None = None
    upstream_size: int | None = Field(None, ge=0)
    imagenet_top1: float | None = Field(None, ge=0, le=100, description="ImageNet top-1, percent")
    imagenet_source: str | None = None
    source: str = "user"
    tags: list[str] = Field(default_factory=list)
    license: str | None = None
    date_added: str = Field(default_factory=utcnow)
    # model sources (shift.catalog.sources): weights are a state, not a precondition
    weights: Literal["present", "missing"] = Field(
        "present", description="missing: metadata only, no ONNX file yet (task-aware work refused)"
    )
    architecture: str | None = Field(None, description="e.g. resnet50, vit_b_16 (the source's)")
    source_id: str | None = Field(None, description="the source's id, e.g. torchvision:resnet50.V2")
    provenance: str | None = Field(None, description="recipe, hub id: where the figures come from")
    weights_url: str | None = Field(None, description="where the source downloads the weights")
    imagenet_top5: float | None = Field(None, ge=0, le=100)
    gflops: float | None = Field(None, ge=0, description="GFLOPS per image at the input size")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "model name")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return sorted({validate_name(t, "tag") for t in v})

    @model_validator(mode="after")
    def _provenance(self) -> ModelRecord:
        if self.imagenet_top1 is not None and not self.imagenet_source:
            raise ValueError("imagenet_top1 needs imagenet_source (where the number comes from)")
        if self.head_output is not None and self.head_output == self.output:
            raise ValueError("head_output must differ from the embedding output")
        if self.weights == "present" and (
            not self.path or not self.sha256 or self.params is None or self.dim is None
        ):
            raise ValueError("a model with weights needs path, sha256, params and dim")
        return self

    @property
    def has_head(self) -> bool:
        return self.head_output is not None

    @property
    def has_weights(self) -> bool:
        return self.weights == "present"


class TaskRecord(BaseModel):
    """A labelled dataset registered as a task."""

    model_config = ConfigDict(extra="forbid")

    name: str
    content_hash: str = Field(description="hash of samples, labels and splits (keys scores)")
    data_hash: str = Field(description="hash of the samples alone (keys embedding indexes)")
    kind: Literal["images", "npz", "generated"]
    source: str
    num_samples: int = Field(ge=0)
    num_train: int = Field(ge=0)
    num_val: int = Field(ge=0)
    num_classes: int = Field(ge=0)
    classes: list[str] = Field(default_factory=list, description="class name of each label")
    date_added: str = Field(default_factory=utcnow)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "task name", queryable=True)

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v


class PoolRecord(BaseModel):
    name: str
    filter: str = Field(description="a WHERE clause in the query language, '' for all models")
    builtin: bool = False
    description: str = ""


class Timings(BaseModel):
    parse_ms: float = 0.0
    plan_ms: float = 0.0
    index_ms: float = 0.0
    score_ms: float = 0.0
    total_ms: float = 0.0


class Result(BaseModel):
    """What a query returns: rows in rank order, the per-model scores, the plan, and timings.
    ``failed``: the models that failed (could not be loaded, embedded or scored), each with the
    reason; they are left out of the rows and the scores (the CLI then exits 1). ``skipped``:
    the models a task-aware ranking left out before any work because they cannot run (no
    weights), each with the reason; not a failure."""

    query: str
    columns: list[str]
    rows: list[dict[str, Any]]
    scores: dict[str, float | None] = Field(default_factory=dict)
    failed: dict[str, str] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)
    timings: Timings = Field(default_factory=Timings)

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self.rows if "name" in r]

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame, in rank order: the displayed ``columns`` first, then
        every other field the rows hold. Needs pandas (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ShiftError(
                "Result.to_pandas() needs pandas, which is not installed",
                hint="pip install pandas",
            ) from None
        extra = [k for r in self.rows for k in r if k not in self.columns]
        return pd.DataFrame(self.rows, columns=[*self.columns, *dict.fromkeys(extra)])


@dataclass
class Samples:
    """In-memory samples before they are stored: images uint8 (N, H, W, C), int labels, splits."""

    images: np.ndarray
    labels: np.ndarray
    splits: list[str] | None  # None → assign by hash
    classes: list[str]
    origin: list[str]  # file names or "npz[i]" for error messages
    skipped: list[str] = dataclass_field(default_factory=list)  # files read past: not images
