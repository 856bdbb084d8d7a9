"""The index checks of ``shift doctor`` (see :mod:`shift.tools.doctor`): index entries against
the registry, index folders (unknown, locked, stray files), each index's files and checksums,
and the stored batches of unfinished builds. Mixed into the doctor of
:mod:`shift.tools.doctor_checks`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shift.tools.doctor_files import (
    LOCK_FILES,
    Recorder,
    child_kind,
    foreign,
    is_temp_file,
    owned,
    remove_known,
)


def _clear_dir(root: Path) -> None:
    """Delete the files of an index directory except its lock files (which a waiting builder
    may hold open: deleting them would let a second builder in) and anything foreign."""
    remove_known(root, "index", keep=LOCK_FILES)


class IndexChecks(Recorder):
    # ---- indexes ----------------------------------------------------------------------------
    def indexes(self, reg: Any, tasks: dict[str, Any]) -> None:

        models = {m.name: m for m in reg.models()}
        entries: dict[tuple[str, str], dict[str, Any]] = {
            (r["task"], r["model"]): r for r in reg.db.query("SELECT * FROM index_entries")
        }
        for task, model in sorted(entries):
            if task not in tasks or model not in models:
                self.find(
                    "orphan",
                    "index_entry",
                    None,
                    f"index entry ({task}, {model}) names an unknown "
                    + ("task" if task not in tasks else "model"),
                )
        root = self.home.index_dir
        seen: set[tuple[str, str]] = set()
        for tdir in sorted(root.iterdir()) if root.is_dir() else []:
            kind = child_kind("indexes", tdir)
            if kind == "file":
                self.stray(tdir, "files", "temp file")
                continue
            if kind is None:
                if not tdir.name.startswith("."):  # e.g. a checkout's indexes/.gitkeep
                    self.alien(tdir, "files")
                continue
            if tdir.name not in tasks:
                what = f"indexes of task {tdir.name!r}, which is not registered"
                self.unknown_dir(tdir, what, "index_task")
                continue
            for mdir in sorted(tdir.iterdir()):
                kind = child_kind("index_task", mdir)
                if kind != "index":
                    if kind == "file":
                        self.stray(mdir, "files", "temp file")
                    else:
                        self.alien(mdir, "files")
                    continue
                if mdir.name not in models:
                    what = f"index of model {mdir.name!r}, which is not registered"
                    self.unknown_dir(mdir, what, "index")
                    continue
                seen.add((tdir.name, mdir.name))
                with self.lock(mdir) as mine:
                    if not mine:
                        self.find(
                            "resumable",
                            "index",
                            mdir,
                            "being built by another process right now: skipped",
                        )
                        continue
                    self.index(reg, tasks[tdir.name], models[mdir.name], mdir, entries)
        for task, model in sorted(set(entries) - seen):
            if task in tasks and model in models:
                self.find(
                    "resumable",
                    "index_entry",
                    entries[task, model]["path"],
                    f"index entry ({task}, {model}) but no index directory: rebuilt on the next "
                    "query",
                )

    @contextlib.contextmanager
    def lock(self, d: Path) -> Iterator[bool]:
        """``build_lock(d, blocking=False)``; where the lock file cannot be opened for writing
        (a read-only home, a full disk: nobody can be building there) a lock that is ours."""
        from shift.fsutil import write_error
        from shift.store.index.lock import build_lock
        from shift.store.registry import writable

        if not writable(self.home):
            yield True
            return
        try:
            cm = build_lock(d, blocking=False, tidy_on_release=False)
            mine = cm.__enter__()
        except OSError as e:
            if write_error(e, d) is None:
                raise
            yield True
            return
        try:
            yield mine
        finally:
            cm.__exit__(None, None, None)

    def unknown_dir(self, path: Path, what: str, kind: str) -> None:
        """An index folder (``kind``: index_task or index) of an unknown task or model."""

        for d in [path, *path.glob("*")]:
            if not (d / ".build.lock").is_file():  # the engine creates it before building
                continue
            with self.lock(d) as mine:
                if not mine:
                    self.find("orphan", "index", path, what + " (in use: left alone)")
                    return
        self.dispose("orphan", "index", path, what, kind)

    def index(
        self,
        reg: Any,
        task: tuple[Any, list[dict[str, Any]]],
        model: Any,
        mdir: Path,
        entries: dict[tuple[str, str], dict[str, Any]],
    ) -> None:
        from shift.store.index.meta import (
            DEFAULT_BACKEND,
            FORMAT_VERSION,
            IndexCorruptError,
            IndexKey,
        )
        from shift.store.index.store import IndexStore

        rec, rows = task
        self.checked["index_dirs"] = self.checked.get("index_dirs", 0) + 1
        store = IndexStore(mdir)
        label = f"index ({rec.name}, {model.name})"
        for alien in foreign(mdir, "index"):  # first: what follows removes only shift's files
            self.alien(alien, "index", f"{label}: not a file shift writes in an index")
        drop = (lambda: _clear_dir(mdir)), "delete it (rebuilt on the next query)"
        meta = None
        try:
            meta = store.read_meta()
        except IndexCorruptError as e:
            self.find("corrupt", "index", e.path or mdir, f"{label}: {e.message}", *drop)
        backend = meta.key.backend if meta is not None else DEFAULT_BACKEND  # whichever built it
        want = IndexKey.of(rec.data_hash, model, backend)
        idx = None
        if meta is not None and meta.complete:
            try:
                idx = store.open(meta.key, verify=True)
                if idx is None and meta.format != FORMAT_VERSION:
                    self.find(
                        "resumable",
                        "index",
                        mdir,
                        f"{label}: format {meta.format}, rebuilt on the next query",
                    )
            except IndexCorruptError as e:
                self.find("corrupt", "index", e.path or mdir, f"{label}: {e.message}", *drop)
        elif meta is not None:
            self.find(
                "resumable",
                "index",
                mdir,
                f"{label}: incomplete (a commit was interrupted): rebuilt on the next query",
            )
        if idx is not None:
            self.checked["indexes"] = self.checked.get("indexes", 0) + 1
            ids = [r["sample_id"] for r in rows]
            if idx.key == want and (len(idx) != len(ids) or set(idx.sample_ids) != set(ids)):
                self.find(
                    "corrupt",
                    "index",
                    mdir,
                    f"{label}: holds {len(idx)} samples, the task has {len(ids)}",
                    *drop,
                )
            elif idx.key != want:
                self.find(
                    "resumable",
                    "index",
                    mdir,
                    f"{label}: built for an older version of the task or model: updated on the "
                    "next query",
                )
            else:
                entry = entries.get((rec.name, model.name))
                got = None if entry is None else (entry["key_digest"], entry["count"], entry["dim"])
                if got != (idx.key.digest(), len(idx), idx.dim):
                    self.find(
                        "resumable",
                        "index_entry",
                        mdir,
                        f"{label}: "
                        + ("no registry entry" if entry is None else "registry entry out of date")
                        + " (a run was killed before recording it): rewritten by the next index",
                        functools.partial(_put_entry, reg, rec.name, model.name, idx),
                        "rewrite the entry from the verified index",
                    )
        self.parts(mdir, meta if idx is not None else None, want, label)
        for f in sorted(mdir.iterdir()):
            if is_temp_file(f.name):
                self.find(
                    "leftover",
                    "index",
                    f,
                    f"{label}: temp file of an interrupted write",
                    functools.partial(f.unlink, missing_ok=True),
                    "remove",
                )

    def parts(self, mdir: Path, meta: Any, want: Any, label: str) -> None:
        """``parts-<digest>/`` folders: the current unfinished build is resumable; parts of a
        finished build or of a key that is no longer wanted are leftovers."""
        current_done = meta is not None and meta.key == want
        for p in sorted(mdir.glob("parts-*")):
            digest = p.name[len("parts-") :]
            batches = len(list(p.glob("b-*.json")))
            temps = [f for f in p.iterdir() if is_temp_file(f.name)] if p.is_dir() else []
            if digest == want.digest() and not current_done:
                self.find(
                    "resumable",
                    "index",
                    p,
                    f"{label}: unfinished build, {batches} batches stored: the next query "
                    "resumes it",
                )
                for f in temps:
                    self.find(
                        "leftover",
                        "index",
                        f,
                        f"{label}: temp file of an interrupted batch write",
                        functools.partial(f.unlink, missing_ok=True),
                        "remove",
                    )
                continue
            if foreign(p, "parts") and not owned(p, "parts"):
                continue  # only files shift never writes there: listed by index(), left alone
            why = (
                "of a finished build"
                if meta is not None and digest == meta.key.digest()
                else "of an abandoned build (task or model changed)"
            )
            self.find(
                "leftover",
                "index",
                p,
                f"{label}: {batches} stored batches {why}",
                functools.partial(remove_known, p, "parts"),
                "remove",
            )


def _put_entry(reg: Any, task: str, model: str, idx: Any) -> None:
    from shift.store.index.reader import index_entry

    reg.put_index_entry(index_entry(task, model, idx))
