"""Work that runs in a child process and streams events back (benchmarks, sweeps).

`EventStream` carries the events from the reader thread to any number of consumers: iterate it
(blocking) or `drain()` it (for a UI timer); `close()` ends every iteration, now and later.
"""

from __future__ import annotations

import queue
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

_END = object()


class EventStream(Generic[T]):
    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()

    def put(self, item: T) -> None:
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_END)

    def iter(self, timeout: float | None = None) -> Iterator[T]:
        """Events until the stream is closed, or until none arrives for `timeout` seconds."""
        while True:
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                self._q.put(_END)  # later consumers see the end too
                return
            yield item

    def drain(self) -> list[T]:
        """What has arrived so far, without blocking."""
        out: list[T] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item is _END:
                self._q.put(_END)
                return out
            out.append(item)
