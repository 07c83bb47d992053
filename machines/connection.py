"""Lifecycle of one WebSocket connection, and the rule that holds its close until drained.

Theory of operation::

    handshake --open--> running --drain--> draining
    draining --close [worker stopped, receipts sent]--> closing --finish--> closed
    handshake --reject--> closed                      (HTTP error at the handshake)
    draining --force--> closing                       (the deadline passed: close code 1011)

A connection owns one worker machine: a ``PublisherMachine`` (import) or a
``SubscriberMachine`` (export). Whatever ends a connection — the client's close frame, a TCP
abort, a server drain, an error — first takes ``drain``, which passes to the worker. The
graceful ``close`` edge is guarded by ``drained``: the worker has reached ``stopped`` (every
frame confirmed by the broker, or every message taken acked or nacked) and, on an import with
receipts, the last ``{"ack": N}`` sent covers every frame received (unless the client is gone:
``peer_lost``). ``force`` is the only
other way into ``closing``, and the actor takes it only when the drain deadline has passed;
``forced`` then records it so the close code is 1011 and the forced shutdown is counted.

Frame and receipt counts are attributes (``receive_frame``, ``record_ack``): they change once
per message, the lifecycle a handful of times per connection.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle
from quiesce.machines.publisher import PublisherMachine
from quiesce.machines.subscriber import SubscriberMachine


class ConnectionMachine(Lifecycle):
    """handshake → running → draining → closing → closed; ``force`` is the deadline's edge."""

    handshake = State(initial=True)
    running = State()
    draining = State()
    closing = State()
    closed = State(final=True)

    open = handshake.to(running)
    reject = handshake.to(closed)
    drain = running.to(draining)
    close = draining.to(closing, cond="drained")
    force = draining.to(closing, on="mark_forced")
    finish = closing.to(closed)

    def __init__(
        self, worker: PublisherMachine | SubscriberMachine, *, receipts: bool = False
    ) -> None:
        self.worker = worker
        self.receipts = receipts
        self.forced = False
        self.peer_gone = False
        # Mirrors "running is active" for the per-frame check: reading the configuration
        # costs microseconds, a bool nanoseconds. Kept by the state's enter/exit callbacks.
        self.taking_frames = False
        self.received = 0
        self.rejected = 0
        self.last_ack = 0
        super().__init__()

    def drained(self) -> bool:
        """Guard of ``close``: the worker stopped and the last receipt covers every frame."""
        if not self.worker.stopped.is_active:
            return False
        return not self.receipts or self.peer_gone or self.last_ack == self.received

    def on_enter_running(self) -> None:
        """Open intake (python-statemachine callback)."""
        self.taking_frames = True

    def on_exit_running(self) -> None:
        """Close intake (python-statemachine callback)."""
        self.taking_frames = False

    def peer_lost(self) -> None:
        """Record that the client is gone: no receipt can reach it any more.

        Its frames are still drained to the broker; the close just cannot wait for an ack
        that has nowhere to go.
        """
        self.peer_gone = True

    def mark_forced(self) -> None:
        """Record that the connection left draining by the deadline's edge."""
        self.forced = True

    def receive_frame(self) -> int:
        """Number the next frame from the client (1, 2, 3 …) and return its sequence number.

        Raises:
            RuntimeError: if the connection no longer takes frames (it is not running).
        """
        if not self.taking_frames:
            raise RuntimeError(f"connection is {self.state}: not taking frames")
        self.received += 1
        return self.received

    def reject_frame(self) -> None:
        """Count a received frame answered with an error frame instead of being published."""
        self.rejected += 1

    def record_ack(self, seq: int) -> None:
        """Record that ``{"ack": seq}`` was sent to the client.

        Raises:
            ValueError: if ``seq`` goes backwards or covers frames not yet received.
        """
        if seq < self.last_ack or seq > self.received:
            raise ValueError(
                f"ack {seq} must be between {self.last_ack} and {self.received}"
            )
        self.last_ack = seq
