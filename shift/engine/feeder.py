"""The feeder: batches read ahead of the model on a thread, through a bounded queue.

While the model runs batch k, batches k+1..k+depth are read (memory-mapped prepared images,
gathered) on a background thread; numpy and file reads release the GIL. Order is kept, an error
in the reader is raised where the batch would have been taken, and closing the generator early
(a failed model, an interrupt) stops the reader within one queue timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

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
