"""The trimmer: freed heap goes back to the system after connections close (core/memory.py).

A connection that closes frees what it held (socket buffers, frames, payloads); glibc keeps
free pages in the middle of its heap until ``malloc_trim``. The supervisor tells the trimmer
of every close (``connection_closed``); the trimmer waits ``malloc_trim_interval`` seconds,
so a burst of closes costs one trim and the closed handlers have let go of their objects,
then trims in a worker thread (it takes each arena's lock in turn, a few milliseconds for a
heap of 100 MB). A close during the wait or the trim leads to one more trim an interval
later: the last close is always followed by a trim, and there is at most one per interval.

An idle process wakes for nothing: the trimmer waits on an event, never on a timer, except
for the one interval after a close.
"""

from __future__ import annotations

import logging
import time

import trio

from quiesce.core.memory import Glibc, rss_bytes

LOGGER = logging.getLogger("quiesce.memory")

MB = 1024 * 1024


class Trimmer:
    """Trims the heap after connections close, at most once per ``interval`` seconds.

    Run ``serve`` in a nursery (it runs until cancelled) and call ``connection_closed``.

    Args:
        allocator: glibc's calls; None (not glibc) makes ``serve`` return at once.
        interval: seconds from a close to the trim; 0 disables trimming.
    """

    def __init__(self, allocator: Glibc | None, interval: float) -> None:
        self._allocator = allocator
        self._interval = interval
        self._due = trio.Event()
        self.trims = 0  # trims done so far
        self._trimmed = trio.Event()  # set (and replaced) after each trim

    def connection_closed(self) -> None:
        """A connection has closed: trim within an interval. Never blocks."""
        self._due.set()

    async def wait_trimmed(self, count: int) -> None:
        """Wait until ``count`` trims have been done; bound it with ``trio.fail_after``."""
        while self.trims < count:
            await self._trimmed.wait()

    async def serve(self) -> None:
        """Trim an interval after each burst of closes, until cancelled."""
        allocator = self._allocator
        if allocator is None or self._interval <= 0:
            return
        while True:
            await self._due.wait()
            self._due = trio.Event()  # a close from now on asks for the next trim
            await trio.sleep(self._interval)
            before = rss_bytes()
            started = time.perf_counter()
            released = await trio.to_thread.run_sync(allocator.trim)
            took = time.perf_counter() - started
            after = rss_bytes()
            self.trims += 1
            self._trimmed.set()
            self._trimmed = trio.Event()
            if before is not None and after is not None:
                LOGGER.debug("heap trimmed in %.1f ms: RSS %.1f -> %.1f MB%s", took * 1000,
                             before / MB, after / MB, "" if released else " (nothing freed)",
                             extra={"rss_before": before, "rss_after": after})
