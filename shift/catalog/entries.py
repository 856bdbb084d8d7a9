"""Catalog entries: the YAML schema, validated with pydantic."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shift.config import validate_name
from shift.data import path as data_path
from shift.errors import ShiftError
from shift.records import InputSpec


class WeightsFile(BaseModel):
    """A weight file inside an installed package (found without importing the package)."""

    model_config = ConfigDict(extra="forbid")
    module: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ShiftError(
                f"package module {self.module!r} is not installed",
                hint="install the catalog extra: pip install -e '.[catalog]'",
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.file


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    builder: Literal["efficientnet_lite", "mobilenet_v2", "expert"]
    variant: str | None = None
    weights: WeightsFile | None = None
    expert: str | None = Field(None, description="key of shift.catalog.experts.EXPERTS")
    family: str
    input: InputSpec
    imagenet_top1: float | None = Field(None, ge=0, le=100)
    imagenet_source: str | None = None
    upstream_dataset: str
    upstream_size: int | None = Field(None, gt=0)
    source: str
    license: str
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> CatalogEntry:
        validate_name(self.name, "model name")
        if self.imagenet_top1 is not None and not self.imagenet_source:
            raise ValueError(f"{self.name}: imagenet_top1 needs imagenet_source")
        if self.builder == "expert":
            if not self.expert:
                raise ValueError(f"{self.name}: an expert entry names its recipe in `expert`")
        elif self.weights is None:
            raise ValueError(f"{self.name}: a pre-trained entry needs `weights`")
        return self


#: the catalog shipped with shift (package data: ``shift/data/catalog.yaml``)
SHIPPED_CATALOG = data_path("catalog.yaml")


def catalog_path(home_catalog: Path, catalog: str | Path | None = None) -> Path:
    """Which catalog file to read: ``catalog`` if given, else the home's own ``catalog.yaml``
    if it has one, else the shipped catalog."""
    if catalog is not None:
        return Path(catalog)
    return home_catalog if home_catalog.is_file() else SHIPPED_CATALOG


def load_catalog(path: str | Path) -> list[CatalogEntry]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ShiftError(f"cannot read the catalog {path}: {e}") from None
    try:
        entries = [CatalogEntry.model_validate(e) for e in (data or {}).get("models", [])]
    except ValidationError as e:
        raise ShiftError(f"invalid catalog {path}: {e}") from None
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ShiftError(f"catalog {path}: duplicate names {dupes}")
    return entries
