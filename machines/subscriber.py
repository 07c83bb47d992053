"""Lifecycle of a subscriber: the export side's path from broker messages to acknowledgements.

Theory of operation. The subscriber actor takes messages from a Pulsar consumer, delivers them
to the client, and settles each one exactly once in Pulsar: an *ack* (the client has it) or a
*nack* (it must come again). This machine holds the counts and refuses any step that would
break the one rule that matters, **no ack without delivery**::

    taken     = delivered + dropped + undelivered-but-queued
    acked    <= delivered - nacked_delivered
    settled   = acked + nacked_delivered + dropped

    running --drain--> draining --stop [every taken message settled]--> stopped
    running/draining --abandon--> abandoned     (a deadline passed; the forced path)

Draining pauses intake, but messages already on their way from the client library still
arrive: ``take`` stays legal while draining so that they are counted, and therefore settled
(nacked), before the subscriber may stop; it is refused once stopped. ``stop`` is guarded by
``all_settled``: the consumer may close gracefully only once nothing it took is left
unacknowledged and un-nacked, so the broker will redeliver everything the client lacks.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle


class SubscriberMachine(Lifecycle):
    """running → draining → stopped, with ``abandon`` as the forced exit."""

    running = State(initial=True)
    draining = State()
    stopped = State(final=True)
    abandoned = State(final=True)

    drain = running.to(draining)
    stop = draining.to(stopped, cond="all_settled")
    abandon = running.to(abandoned) | draining.to(abandoned)

    def __init__(self) -> None:
        self.taken = 0
        self.delivered = 0
        self.dropped = 0
        self.acked = 0
        self.nacked_delivered = 0
        super().__init__()

    @property
    def undelivered(self) -> int:
        """Messages taken from the broker, neither delivered nor dropped."""
        return self.taken - self.delivered - self.dropped

    @property
    def unacked(self) -> int:
        """Messages delivered to the client and neither acked nor nacked in Pulsar."""
        return self.delivered - self.acked - self.nacked_delivered

    @property
    def nacked(self) -> int:
        """Every negative acknowledgement: dropped messages and delivered-but-unacked ones."""
        return self.dropped + self.nacked_delivered

    def all_settled(self) -> bool:
        """Guard of ``stop``: every taken message was acked or nacked."""
        return self.undelivered == 0 and self.unacked == 0

    def take(self, count: int = 1) -> None:
        """Count messages received from the consumer.

        Raises:
            RuntimeError: if the subscriber has stopped (or was abandoned).
        """
        if self.is_final:
            raise RuntimeError(f"subscriber is {self.state}: intake closed")
        if count < 0:
            raise ValueError(f"cannot take {count} messages")
        self.taken += count

    def deliver(self, count: int = 1) -> None:
        """Count messages written to the client's socket.

        Raises:
            ValueError: if more would be delivered than were taken.
        """
        if count < 0 or count > self.undelivered:
            raise ValueError(f"cannot deliver {count}: {self.undelivered} undelivered")
        self.delivered += count

    def drop(self, count: int = 1) -> None:
        """Count undelivered messages nacked instead (backpressure, or the end of the run).

        Raises:
            ValueError: if more would be dropped than are undelivered.
        """
        if count < 0 or count > self.undelivered:
            raise ValueError(f"cannot drop {count}: {self.undelivered} undelivered")
        self.dropped += count

    def ack(self, count: int = 1) -> None:
        """Count delivered messages acknowledged in Pulsar.

        Raises:
            ValueError: "no ack without delivery": more acks than unacked deliveries.
        """
        if count < 0 or count > self.unacked:
            raise ValueError(f"cannot ack {count}: only {self.unacked} delivered and unacked")
        self.acked += count

    def nack_delivered(self, count: int = 1) -> None:
        """Count delivered messages the client never acked, nacked for redelivery.

        Raises:
            ValueError: if more would be nacked than are delivered and unacked.
        """
        if count < 0 or count > self.unacked:
            raise ValueError(f"cannot nack {count}: only {self.unacked} delivered and unacked")
        self.nacked_delivered += count
