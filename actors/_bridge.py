"""Handing results from pulsar-client's threads to Trio, without blocking either side.

pulsar-client calls ``send_async`` callbacks and message listeners on its own C++ threads.
Those threads must not block and must not touch Trio objects. ``Handoff.put`` appends to a
deque (thread-safe) and schedules one ``run_sync_soon`` for a whole burst of items: under
load a single wake-up of the Trio thread delivers hundreds of confirmations, instead of one
wake-up (a lock and a write to the wake-up socket) per message.

Why the ``_scheduled`` flag is race-free: the Trio side clears it *before* it empties the
deque. An item appended after the clear either sees the flag down and schedules another flush,
or sees it up because another thread just scheduled one; an item appended before the clear is
taken by the flush running now. At worst a flush finds the deque empty, and does nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Handoff(Generic[T]):
    """A one-way, batching pipe from foreign threads into the Trio thread.

    Args:
        deliver: called in the Trio thread with a non-empty list of items, in the order
            they were put. It must not block.
        token: the Trio run to deliver into (default: the current one).
    """

    def __init__(
        self, deliver: Callable[[list[T]], None], token: trio.lowlevel.TrioToken | None = None
    ) -> None:
        self._deliver = deliver
        self._token = token or trio.lowlevel.current_trio_token()
        self._items: collections.deque[T] = collections.deque()
        self._scheduled = False
        self.closed = False

    def put(self, item: T) -> None:
        """Queue ``item`` for the Trio thread. Safe from any thread; never blocks."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._token.run_sync_soon(self._flush)
            except trio.RunFinishedError:
                # Trio has exited: the process is going away and nobody is left to tell.
                self.closed = True

    def _flush(self) -> None:
        self._scheduled = False
        items = self._items
        batch = [items.popleft() for _ in range(len(items))]
        if batch:
            self._deliver(batch)
