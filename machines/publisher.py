"""Lifecycle of a publisher: the import side's path from frames to broker confirmations.

Theory of operation. The publisher actor hands each valid frame to a Pulsar producer with
``send_async`` and learns later, from the producer's callback, that the broker persisted it
(or refused it). This machine keeps the two counts that matter, ``accepted`` (handed to the
producer) and ``settled`` (confirmed or refused), and the lifecycle::

    running --drain--> draining --stop [nothing unconfirmed]--> stopped
    running/draining --abandon--> abandoned        (a deadline passed; only the forced path)

Intake closes when draining starts: ``accept()`` is only legal while running. The graceful
end, ``stop``, is guarded by ``nothing_unconfirmed``: a publisher cannot say it stopped while
the broker still owes it a confirmation. ``abandon`` is the one exit that may leave
confirmations outstanding; the connection above it must then close with 1011.

The counters are plain attributes, not events, because they change once per message and an
event costs tens of microseconds; the lifecycle changes a handful of times per connection.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle


class PublisherMachine(Lifecycle):
    """running → draining → stopped, with ``abandon`` as the forced exit."""

    running = State(initial=True)
    draining = State()
    stopped = State(final=True)
    abandoned = State(final=True)

    drain = running.to(draining)
    stop = draining.to(stopped, cond="nothing_unconfirmed")
    abandon = running.to(abandoned) | draining.to(abandoned)

    def __init__(self) -> None:
        self.accepted = 0
        self.settled = 0
        # Mirrors "running is active" for the per-frame check in accept() (a bool is ~100x
        # cheaper than reading the configuration). Kept by the enter/exit callbacks.
        self.intake_open = False
        super().__init__()

    def on_enter_running(self) -> None:
        """Open intake (python-statemachine callback)."""
        self.intake_open = True

    def on_exit_running(self) -> None:
        """Close intake (python-statemachine callback)."""
        self.intake_open = False

    @property
    def unconfirmed(self) -> int:
        """Frames handed to the producer whose confirmation has not arrived."""
        return self.accepted - self.settled

    def nothing_unconfirmed(self) -> bool:
        """Guard of ``stop``: every accepted frame is settled."""
        return self.accepted == self.settled

    def accept(self) -> None:
        """Count one frame handed to the producer.

        Raises:
            RuntimeError: if intake is closed (the publisher is no longer running).
        """
        if not self.intake_open:
            raise RuntimeError(f"publisher is {self.state}: intake closed")
        self.accepted += 1

    def settle(self, count: int = 1) -> None:
        """Count ``count`` frames confirmed or refused by the broker.

        Raises:
            ValueError: if that would settle more frames than were accepted.
        """
        if count < 0 or self.settled + count > self.accepted:
            raise ValueError(
                f"cannot settle {count} frames: {self.unconfirmed} unconfirmed"
            )
        self.settled += count
