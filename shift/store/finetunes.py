"""Fine-tuning results in the registry: the SQL of the ``finetune_results`` table, keyed by (task
content hash, model sha256, protocol JSON), and of the measured-result tables (``FROM finetunes``,
``FROM scores``) whose SQL the query compiler builds.

:mod:`shift.tools.finetune` stores and reads a result here, :mod:`shift.engine.similarity` reads
the best accuracy per task and model, :mod:`shift.engine.tables` runs its compiled SELECT here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shift.records import utcnow

if TYPE_CHECKING:
    from shift.store.registry import Registry

__all__ = [
    "best_accuracies",
    "count_rows",
    "get_result",
    "put_result",
    "select_rows",
]


def get_result(
    registry: Registry, task_hash: str, model_sha: str, protocol: str
) -> dict[str, Any] | None:
    """The stored result of ``protocol`` (its JSON key) for this task and model content, with
    ``details`` decoded; ``None`` when there is none."""
    rows = list(
        registry.db.query(
            "SELECT * FROM finetune_results WHERE task_hash = ? AND model_sha = ? AND protocol = ?",
            [task_hash, model_sha, protocol],
        )
    )
    if not rows:
        return None
    row = dict(rows[0])
    row["details"] = json.loads(row["details"] or "{}")
    return row


def put_result(
    registry: Registry,
    *,
    task_hash: str,
    model_sha: str,
    protocol: str,
    accuracy: float,
    seconds: float,
    epochs: int,
    details: dict[str, Any],
) -> None:
    """Store (or replace) a result, in one write transaction."""
    with registry.transaction():
        registry.db.table("finetune_results").upsert(
            {
                "task_hash": task_hash,
                "model_sha": model_sha,
                "protocol": protocol,
                "accuracy": accuracy,
                "seconds": seconds,
                "epochs": epochs,
                "details": json.dumps(details),
                "computed_at": utcnow(),
            },
            pk=("task_hash", "model_sha", "protocol"),
        )


def best_accuracies(registry: Registry) -> dict[str, dict[str, float]]:
    """``{task: {model sha256: best accuracy}}`` of the results for the current task content."""
    rows = registry.db.query(
        "SELECT t.name AS task, r.model_sha AS sha, max(r.accuracy) AS acc "
        "FROM finetune_results r JOIN tasks t ON t.content_hash = r.task_hash "
        "GROUP BY t.name, r.model_sha"
    )
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["task"], {})[r["sha"]] = float(r["acc"])
    return out


def select_rows(registry: Registry, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """The rows of a measured-result table's compiled SELECT (values bound as ``params``)."""
    return list(registry.db.query(sql, params))


def count_rows(registry: Registry, sql: str, params: list[Any]) -> int:
    """The count of a measured-result table's compiled ``SELECT count(*)``."""
    return int(registry.db.execute(sql, params).fetchone()[0])
