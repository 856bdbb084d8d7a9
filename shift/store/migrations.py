"""Registry schema, versioned. Never edit an applied migration: append a new one."""

from __future__ import annotations

from shift.store.sqlite import Database, Migrations

migrations = Migrations("shift")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("models").create(
        {
            "name": str,
            "path": str,
            "sha256": str,
            "family": str,
            "params": int,
            "dim": int,
            "output": str,
            "head_output": str,
            "head_classes": int,
            "input_name": str,
            "input_json": str,
            "input_height": int,
            "upstream_dataset": str,
            "upstream_size": int,
            "imagenet_top1": float,
            "imagenet_source": str,
            "source": str,
            "tags": str,
            "license": str,
            "date_added": str,
        },
        pk="name",
        not_null={"path", "sha256", "params", "dim", "output", "input_name", "input_json"},
    )
    db.table("pools").create(
        {"name": str, "filter": str, "description": str, "date_added": str}, pk="name"
    )
    db.table("tasks").create(
        {
            "name": str,
            "content_hash": str,
            "data_hash": str,
            "kind": str,
            "source": str,
            "num_samples": int,
            "num_train": int,
            "num_val": int,
            "num_classes": int,
            "classes": str,
            "date_added": str,
        },
        pk="name",
    )
    db.table("samples").create(
        {
            "task": str,
            "sample_id": str,
            "content_hash": str,
            "label": int,
            "split": str,
            "chunk": str,
            "offset": int,
            "seq": int,
        },
        pk=("task", "sample_id"),
        foreign_keys=[("task", "tasks", "name")],
    )
    db.table("samples").create_index(["task", "seq"])
    db.table("scores").create(
        {
            "task_hash": str,
            "model_sha": str,
            "proxy": str,
            "params": str,
            "score": float,
            "n_train": int,
            "n_val": int,
            "seconds": float,
            "computed_at": str,
        },
        pk=("task_hash", "model_sha", "proxy", "params"),
    )
    db.table("index_entries").create(
        {
            "task": str,
            "model": str,
            "key_digest": str,
            "task_hash": str,
            "model_sha": str,
            "preprocess": str,
            "path": str,
            "count": int,
            "dim": int,
            "providers": str,
            "updated": str,
        },
        pk=("task", "model"),
    )


@migrations()
def m002_finetune(db: Database) -> None:
    """Ground-truth fine-tuning results (:mod:`shift.tools.finetune`), keyed by task content hash,
    model sha256 and the protocol's canonical JSON."""
    db.table("finetune_results").create(
        {
            "task_hash": str,
            "model_sha": str,
            "protocol": str,
            "accuracy": float,
            "seconds": float,
            "epochs": int,
            "details": str,
            "computed_at": str,
        },
        pk=("task_hash", "model_sha", "protocol"),
    )


@migrations()
def m003_index_backend(db: Database) -> None:
    """The inference backend that embedded each index (:mod:`shift.inference.embedder`); every
    index before this migration was embedded by ONNX Runtime."""
    db.table("index_entries").add_column("backend", str, not_null_default="onnxruntime")


@migrations()
def m004_unique_sample_seq(db: Database) -> None:
    """A task's sample order is unique: ``(task, seq)`` becomes a unique index, the backstop of
    serialised appends. Homes where racing appends left duplicate ``seq`` values (before writes
    were serialised) are renumbered first, keeping the order (ties by insertion)."""
    dup = "SELECT DISTINCT task FROM samples GROUP BY task, seq HAVING count(*) > 1"
    for (task,) in db.execute(dup).fetchall():
        order = "SELECT rowid FROM samples WHERE task = ? ORDER BY seq, rowid"
        ids = [r for (r,) in db.execute(order, [task]).fetchall()]
        db.conn.executemany(
            "UPDATE samples SET seq = ? WHERE rowid = ?", [(i, r) for i, r in enumerate(ids)]
        )
    db.execute("DROP INDEX IF EXISTS idx_samples_task_seq")
    db.table("samples").create_index(["task", "seq"], unique=True, index_name="samples_task_seq")


@migrations()
def m005_model_sources(db: Database) -> None:
    """Model sources (:mod:`shift.catalog.sources`): weights become a state (``present`` |
    ``missing``: a metadata-only row has no ONNX file, ``path`` and ``sha256`` are ''), with the
    architecture, the source's own id, provenance, the weights' URL, ImageNet top-5 and GFLOPS.
    ``params`` and ``dim`` may be unknown (NULL) for metadata-only rows, so the table is rebuilt
    without their NOT NULL (sqlite-utils ``transform``: copy, drop, rename, in one savepoint)."""
    models = db.table("models")
    models.add_column("weights", str, not_null_default="present")
    for col, kind in (
        ("architecture", str),
        ("source_id", str),
        ("provenance", str),
        ("weights_url", str),
        ("imagenet_top5", float),
        ("gflops", float),
    ):
        models.add_column(col, kind)
    models.transform(not_null={"params": False, "dim": False})
    models.create_index(["architecture"], index_name="models_architecture")
