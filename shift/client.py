"""The Python client: everything the CLI does, as methods (each ``shift`` command is one call).

>>> import shift
>>> c = shift.connect()
>>> c.query("SELECT top 2 FROM pool all WHERE task=digits").names

Models, pools and tasks are registered and dropped here, tasks indexed, catalog models fine-tuned
and a home checked; results are the pydantic records of :mod:`shift.records`. The heavy parts
(inference, torch) load inside the methods that need them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shift.config import Home, validate_name
from shift.engine.execute import ScoreSource, run
from shift.errors import NotFoundError, ShiftError
from shift.query.ast import Select
from shift.query.builder import QueryBuilder
from shift.query.builder import select as _select
from shift.query.builder import table as _table
from shift.query.planner import check_condition, pool_filter
from shift.records import ModelRecord, PoolRecord, Result, Samples, TaskRecord

if TYPE_CHECKING:
    import numpy as np

    from shift.catalog.importer import ImportResult
    from shift.catalog.sources import SourceImport
    from shift.engine.indexing import IndexReport
    from shift.store.registry import Registry
    from shift.tools.doctor import DoctorReport
    from shift.tools.finetune import FinetuneProtocol, FinetuneResult

#: where a task's samples come from: an image folder, an ``.npz`` file, or samples in memory
TaskData = str | Path | Samples
DataKind = Literal["images", "npz"]


class Client:
    """One shift home. ``executor`` ("auto": in process for a single small model, else Ray;
    "ray"; "inprocess"; see ``shift.inference.executors``), ``ray_address``, ``progress``,
    ``backend`` ("onnxruntime", "torch" or "auto": see ``shift.inference.backend_auto``),
    ``batch_timeout_s`` (per inference batch; ``$SHIFT_BATCH_TIMEOUT_S``, else 600)
    and ``lock_timeout_s`` (wait for another build of an index; ``$SHIFT_LOCK_TIMEOUT_S``, else
    1800) configure the engine, made on the first query that needs embeddings. ``create``: the
    home is created on first use where there is none yet, in a folder that does not exist or is
    empty (or shift's default one); False: ``NotAHomeError`` there instead, nothing written. A
    folder that holds other files becomes a home only through :func:`init` with ``force``."""

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        executor: str = "auto",
        ray_address: str | None = None,
        progress: bool = False,
        backend: str = "onnxruntime",
        batch_timeout_s: float | None = None,
        lock_timeout_s: float | None = None,
        create: bool = True,
    ) -> None:
        self.home = Home.resolve(home)
        self.create = create
        self.progress = progress
        self._engine_opts: dict[str, Any] = {
            "executor": executor,
            "ray_address": ray_address,
            "progress": progress,
            "backend": backend,
            "batch_timeout_s": batch_timeout_s,
            "lock_timeout_s": lock_timeout_s,
        }
        self._engine: ScoreSource | None = None
        self.created = False  # set by init(): the home was created by that call

    @cached_property
    def registry(self) -> Registry:
        """The home's registry, opened (and created, where ``create`` allows) on first use."""
        from shift.store.registry import Registry

        return Registry(self.home, create=self.create)

    @property
    def engine(self) -> Any:
        """The embedding/scoring engine, created on first use (imports the heavy parts then)."""
        if self._engine is None:
            from shift.engine.engine import Engine

            self._engine = Engine(self.registry, **self._engine_opts)
        return self._engine

    # ---- queries ------------------------------------------------------------------------------
    def query(self, query: str | Select, *, explain: bool = False) -> Result:
        """Parse, plan and run one query, given as text or as its AST (the fluent builder's
        output, never re-parsed); ``explain=True``: its plan. Raises ``QueryError`` on
        a malformed query (before the home is opened: also where there is none)."""
        if isinstance(query, str) and "registry" not in self.__dict__:
            from shift.query.parser import parse

            parse(query)  # a typo is named first, whatever the state of the home
        return run(query, self.registry, lambda: self.engine, explain=explain)

    def explain(self, query: str | Select) -> Result:
        """The plan of ``query``: pool size after each filter, cached vs to-compute work."""
        return self.query(query, explain=True)

    def select(self, top: int | str | None = None) -> QueryBuilder:
        """A fluent query bound to this client: ``c.select(2).where(task="x").run()``."""
        return _select(top, client=self)

    def table(self, name: str) -> QueryBuilder:
        """What was measured, as a fluent query: ``c.table("finetunes").where(task="x")
        .order_by("accuracy", descending=True).run()`` (tables ``finetunes`` and ``scores``)."""
        return _table(name, client=self)

    # ---- models -------------------------------------------------------------------------------
    def add_model(
        self,
        path: str | Path,
        name: str,
        *,
        output: str | None = None,
        head_output: str | None = None,
        input_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        color: str | None = None,
        resize: str | None = None,
        replace: bool = False,
        **meta: Any,
    ) -> ModelRecord:
        """Register the ONNX file ``path`` as ``name``; parameters, outputs and input size are
        read from the graph. ``meta``: the fields the graph cannot tell (``imagenet_top1`` with
        ``imagenet_source``, ``family``, ``upstream_dataset``, ``upstream_size``, ``source``,
        ``tags``, ``license``)."""
        from shift.catalog.onnx_import import register_onnx

        overrides = {"mean": mean, "std": std, "color": color, "resize": resize}
        return register_onnx(
            self.registry,
            path,
            name,
            output=output,
            head_output=head_output,
            input_size=input_size,
            input_overrides=overrides,
            replace=replace,
            **meta,
        )

    def import_catalog(
        self,
        names: list[str] | None = None,
        *,
        catalog: str | Path | None = None,
        force: bool = False,
    ) -> list[ImportResult]:
        """Export the catalog's real models (default: the home's or the shipped one) to ONNX and
        register them; registered entries are kept unless ``force``. Failures are reported in
        the results, not raised."""
        from shift.catalog.importer import import_catalog

        return import_catalog(self.registry, catalog, names, force=force, progress=self.progress)

    def import_models(
        self,
        source: str,
        names: list[str] | None = None,
        *,
        all: bool = False,
        replace: bool = False,
    ) -> list[SourceImport]:
        """Register models of a source (``torchvision``, ``timm``, ``hf``, ``vtab1k``) from its
        metadata, without weights (``all``: every model it knows; ``vtab1k`` imports the table's
        291 by default). Unknown names fail before anything is registered; a model that has
        weights keeps them unless ``replace``. Hugging Face local folders get their weights."""
        from shift.catalog.sources import import_models

        return import_models(self.registry, source, names, all=all, replace=replace)[0]

    def add_weights(
        self, name: str, weights: str | Path | None = None, *, download: bool = False
    ) -> ModelRecord:
        """Give a model registered without weights its weights (a local file, or a folder in the
        source's cache layout: torch hub's, a Hugging Face folder; or ``download`` through the
        source's own loader when online), export it to ONNX (opset 17) and register it."""
        from shift.catalog.sources.weights import attach_weights

        return attach_weights(self.registry, name, weights, download=download)

    def model(self, name: str) -> ModelRecord:
        """One model by name (``NotFoundError`` naming the registered ones otherwise)."""
        return self.registry.get_model(name)

    def models(self, pool: str | None = None) -> list[ModelRecord]:
        """Every registered model, or the members of ``pool``."""
        if pool is None:
            return self.registry.models()
        term = pool_filter(self.pool(pool))
        if term is None:
            return self.registry.models()
        return self.registry.models(term.sql, term.binds)

    def drop_model(self, name: str) -> ModelRecord:
        """Remove a model (its file too, unless another entry uses the same weights)."""
        return self.registry.remove_model(name)

    # ---- pools --------------------------------------------------------------------------------
    def pools(self) -> list[PoolRecord]:
        """Built-in pools, then saved ones by name."""
        return self.registry.pools()

    def pool(self, name: str) -> PoolRecord:
        """One pool by name (``NotFoundError`` naming the pools otherwise)."""
        validate_name(name, "pool name")
        found = self.registry.get_pool(name)
        if found is None:
            names = ", ".join(p.name for p in self.registry.pools())
            raise NotFoundError(f"no pool named {name!r}", hint=f"pools: {names}")
        return found

    def pool_size(self, name: str) -> int:
        """How many registered models ``name`` holds."""
        term = pool_filter(self.pool(name))
        if term is None:
            return self.registry.count_models()
        return self.registry.count_models(term.sql, term.binds)

    def add_pool(
        self, name: str, condition: str, description: str = "", *, replace: bool = False
    ) -> PoolRecord:
        """Save a pool as a named condition (``"WHERE dim <= 1024"``): the name and then the
        condition are checked first (the store saves a checked condition)."""
        self.registry.check_new_pool(name, replace)
        text = check_condition(condition)
        return self.registry.add_pool(name, text, description, replace=replace)

    def drop_pool(self, name: str) -> None:
        """Remove a saved pool (built-in ones cannot be removed)."""
        self.registry.remove_pool(name)

    # ---- tasks --------------------------------------------------------------------------------
    def tasks(self) -> list[TaskRecord]:
        return self.registry.tasks()

    def task(self, name: str) -> TaskRecord:
        """One task by name (``NotFoundError`` naming the registered ones otherwise)."""
        return self.registry.get_task(name)

    def add_task(
        self,
        name: str,
        data: TaskData,
        *,
        kind: DataKind | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        store_size: int | None = None,
        replace: bool = False,
        source: str | None = None,
    ) -> TaskRecord:
        """Register a labelled dataset as task ``name``: an image folder (``<class>/*`` or
        ``train/<class>/*`` + ``val/<class>/*``), an ``.npz`` (arrays ``x``, ``y``, optional
        ``split``) or :class:`~shift.records.Samples`. Without a given split, a seeded hash puts
        ``val_fraction`` of the samples in validation."""
        samples, read_kind, origin = _read(data, kind, store_size)
        return self._tasks.add(
            name,
            samples,
            kind=read_kind,
            source=source or origin,
            val_fraction=val_fraction,
            seed=seed,
            replace=replace,
        )

    def task_is_current(
        self, name: str, samples: Samples, *, val_fraction: float = 0.2, seed: int = 0
    ) -> bool:
        """Whether task ``name`` already holds exactly these samples, labels and splits."""
        return self._tasks.is_current(name, samples, val_fraction, seed)

    def append(
        self,
        name: str,
        data: TaskData,
        *,
        kind: DataKind | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> tuple[TaskRecord, int]:
        """Add samples to a task (an image folder's new classes extend its class list); returns
        the new record and how many samples were new. The next query embeds only those."""
        old = self.registry.get_task(name)
        samples, _, _ = _read(data, kind, None, old.classes)
        return self._tasks.append(name, samples, val_fraction=val_fraction, seed=seed)

    def relabel(self, name: str, labels: np.ndarray | str | Path) -> TaskRecord:
        """Replace a task's labels (one per sample, task order; or an ``.npz`` with array
        ``y``). Indexes are reused; only scores are recomputed."""
        if isinstance(labels, str | Path):
            labels = _read_labels(Path(labels))
        return self._tasks.relabel(name, labels)

    def drop_task(self, name: str) -> None:
        """Remove a task and its stored data."""
        self._tasks.remove(name)

    @property
    def _tasks(self) -> Any:
        from shift.store.tasks import TaskStore

        return TaskStore(self.registry)

    # ---- work ---------------------------------------------------------------------------------
    def index(
        self, task: str, *, pool: str = "all", models: list[str] | None = None
    ) -> IndexReport:
        """Build (or reuse) the embedding indexes of ``task`` for every model in ``pool`` (or
        the named ``models``); returns what was embedded, kept, reused, relabelled and failed.
        Models registered without weights are left out of a pool (``report.skipped``); named,
        they are refused at once."""
        validate_name(task, "task name")
        self.task(task)  # a clear error for an unknown task, before any model is touched
        if models:
            recs = [self.model(m) for m in models]
            missing = [m.name for m in recs if not m.has_weights]
            if missing:
                raise ShiftError(
                    f"no weights yet for {', '.join(missing)}: nothing to embed with",
                    hint="give them with `shift-cli models weights NAME --weights FILE|DIR`",
                )
            skipped: dict[str, str] = {}
        else:
            recs = self.models(pool)
            skipped = {m.name: "no weights" for m in recs if not m.has_weights}
            recs = [m for m in recs if m.has_weights]
        self.engine.index(task, recs)
        report = self.engine.last_report
        report.skipped = skipped
        return report

    def finetune(
        self,
        task: str,
        models: list[str] | None = None,
        *,
        pool: str = "all",
        epochs: int = 2,
        max_train: int | None = None,
        force: bool = False,
        protocol: FinetuneProtocol | None = None,
    ) -> list[FinetuneResult]:
        """Fine-tune ``models`` (default: the models in ``pool``; catalog models from their
        torch definition, others converted from ONNX by onnx2torch; CUDA when present) on ``task``
        with the scaled-down protocol (``epochs`` per lr, at most ``max_train`` training
        samples) and return their best validation accuracies; cached unless ``force``."""
        from shift.tools.finetune import FinetuneProtocol, finetune_many

        self.task(task)
        names = models or [
            m.name for m in self.models(pool) if getattr(m, "weights", "present") == "present"
        ]
        proto = protocol or FinetuneProtocol(epochs=epochs, max_train=max_train)
        return finetune_many(self.registry, task, names, proto, force=force, progress=self.progress)

    def doctor(self, *, repair: bool = False, grace_s: float | None = None) -> DoctorReport:
        """Check this home (registry, model and task files, indexes, leftovers); ``repair``
        removes what is safe to remove. ``NotAHomeError`` where there is no registry."""
        from shift.tools.doctor import DEFAULT_GRACE_S, doctor

        grace = DEFAULT_GRACE_S if grace_s is None else grace_s
        return doctor(self.home, repair=repair, grace_s=grace)

    # ---- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._engine is not None and hasattr(self._engine, "close"):
            self._engine.close()
        if "registry" in self.__dict__:
            self.registry.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(
    data: TaskData, kind: DataKind | None, store_size: int | None, classes: list[str] | None = None
) -> tuple[Samples, str, str]:
    """Samples, record kind and source text for ``data``; ``kind`` defaults to "images" for a
    folder and "npz" for a file; ``classes`` extends an existing class list (image folders)."""
    from shift.store.readers import path_text, read_image_folder, read_npz

    if isinstance(data, Samples):
        return data, "generated", "python"
    path = Path(data)
    if kind is None:
        if not path.exists():
            raise NotFoundError(f"{path}: no such file or folder")
        kind = "images" if path.is_dir() else "npz"
    if kind == "images":
        return read_image_folder(path, store_size, classes), "images", path_text(path)
    if kind == "npz":
        return read_npz(path, classes), "npz", path_text(path)
    raise ShiftError(f"unknown task data kind {kind!r}", hint="images or npz")


def _read_labels(path: Path) -> np.ndarray:
    """Array ``y`` of an ``.npz`` file, never unpickled, its header checked before loading."""
    from shift.store.readers import read_labels

    return read_labels(path)


def connect(home: str | Path | None = None, **options: Any) -> Client:
    """Open the shift home at ``home`` (default: ``$SHIFT_HOME``, the checkout, or ``~/.shift``).
    Where there is none yet, it is created on first use in a folder that does not exist or is
    empty; a folder holding other files is refused (``NotAHomeError``: see :func:`init`)."""
    return Client(home, **options)


def init(home: str | Path | None = None, *, force: bool = False, **options: Any) -> Client:
    """Create a shift home at ``home`` (``shift-cli init``) and return a client of it; a home
    already there is kept as it is. A folder that is not empty and not a home needs ``force``
    (shift adds its marker, ``registry.db``, ``models/``, ``tasks/`` and ``indexes/`` beside the
    folder's own files, which it never moves); another program's ``registry.db`` is refused.
    ``client.created`` says whether it was created now."""
    from shift.store.registry import Registry

    h = Home.resolve(home)
    created = h.init(force=force)
    Registry(h).close()  # the registry file, migrated
    c = Client(home, **options)
    c.created = created
    return c
