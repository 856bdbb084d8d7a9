"""Pools: named model filters. The paper's pools are built in; users save their own."""

from __future__ import annotations

from shift.records import PoolRecord

#: ResNet-50-V2's parameter count (the bound the ``resnet50`` pool used before model sources
#: registered real ResNet-50s)
RESNET50_PARAMS = 25_600_000

BUILTIN_POOLS: dict[str, PoolRecord] = {
    p.name: p
    for p in (
        PoolRecord(name="all", filter="", builtin=True, description="every registered model"),
        PoolRecord(
            name="resnet50",
            filter="architecture = 'resnet50'",
            builtin=True,
            description="ResNet-50s trained on any upstream data (the paper's pool)",
        ),
        PoolRecord(
            name="dim2048",
            filter="dim <= 2048",
            builtin=True,
            description="models whose embedding has at most 2048 dimensions",
        ),
        PoolRecord(
            name="expert",
            filter="tag = 'expert'",
            builtin=True,
            description="models tagged expert (trained for a narrow domain)",
        ),
        PoolRecord(
            name="imagenet",
            filter="imagenet_top1 IS NOT NULL",
            builtin=True,
            description="models with a published ImageNet top-1 accuracy",
        ),
    )
}
