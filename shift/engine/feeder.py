"""The feeder: batches read ahead of the model, and results written behind it, each on a thread
through a bounded queue.

``prefetched``: while the model runs batch k, batches k+1..k+depth are read (memory-mapped
prepared images, gathered) on a background thread; numpy and file reads release the GIL. Order is
kept, an error in the reader is raised where the batch would have been taken, and closing the
generator early (a failed model, an interrupt) stops the reader within one queue timeout.

``WriteBehind``: batch results are hashed and written on one thread, in order, while the model
runs the next batch; ``drain`` waits for every write and raises the first error, so a caller that
drains before returning (also on an interrupt) keeps every batch it was handed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")

_END = object()
_POLL_S = 0.1


@dataclass
class _Raised:
    error: BaseException


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, produced up to ``depth`` ahead on a daemon thread started at the
    first ``next``; at most ``depth`` items wait in memory."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x: object) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for x in items:
                if not put(x):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(e))

    worker = threading.Thread(target=fill, name="shift-feeder", daemon=True)
    worker.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, _Raised):
                raise x.error
            yield x  # type: ignore[misc]
    finally:
        stop.set()


class WriteBehind:
    """``submit(fn, *args)`` runs ``fn(*args)`` on one background thread, in submission order,
    with at most ``depth`` calls waiting (``submit`` blocks beyond that); ``drain()`` waits for
    all of them and raises the first error any raised (later calls are skipped after one)."""

    def __init__(self, depth: int = 4) -> None:
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="shift-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is _END:
                    return
                fn, args = cast(tuple[Callable[..., Any], tuple[Any, ...]], item)
                if self._error is None:
                    fn(*args)
            except BaseException as e:  # noqa: BLE001 - raised by drain() on the caller's thread
                self._error = e
            finally:
                self._q.task_done()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            self.drain()
        self._q.put((fn, args))

    def drain(self) -> None:
        """Wait until every submitted call has run; raise the first error one raised."""
        self._q.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Drain, then stop the thread (raising what ``drain`` raises)."""
        try:
            self.drain()
        finally:
            self._q.put(_END)
            self._thread.join()
