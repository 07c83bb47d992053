"""The delivery ledger of one export connection: queue, window, client acks, until=end.

Pure bookkeeping, no I/O; messages are opaque handles (``M``), identified by ``key``.
Every count of an export lives here and only here. A message taken from the broker is,
at any moment, in exactly one place::

    taken = queued + in the writer's hands + in flight (ack=client) + acked + nacked

- ``arrive`` takes a burst from the consumer and applies backpressure (``block`` keeps it,
  ``drop_new``/``drop_oldest`` hand back the message to nack, remembering it as *owed*
  until it comes back); after ``close_intake`` every arrival is handed back to nack;
- ``next_batch``/``unget`` move messages to and from the writer (bounded by the window);
- ``delivered`` records messages written to the socket: with ``ack=auto`` they are to be
  acked now, with ``ack=client`` they are numbered and kept in flight until the client's
  cumulative ``{"ack": N}`` (parsed and checked by ``apply_ack``) releases them;
- ``settle_remaining`` hands back everything queued or in flight, to nack, at the end.

Nothing here ever returns a message to ack that was not delivered: that is the one rule.

until=end: ``expect_end`` records the topic's last position when the connection opened.
The backlog is delivered once a message at or past that position was delivered (or the
subscription has stayed quiet: it had nothing left) and nothing at or before it is still
queued or owed; with ``ack=client`` the end also waits for the client's acks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import orjson

from quiesce.core.errors import InvalidAck, InvalidMessage
from quiesce.core.protocol import Backpressure
from quiesce.core.wire import loads_strict

M = TypeVar("M")
# A message's full id: (ledger, entry, batch index, partition).
Key = tuple[int, int, int, int]
# A place in the topic: (ledger, entry). A batched entry holds several messages.
Place = tuple[int, int]

# Longest client frame parsed as an ack; anything longer is refused unread.
MAX_ACK_FRAME = 1024


class DeliveryLedger(Generic[M]):
    """Queue, window, client acks and until=end bookkeeping of one export connection.

    Args:
        client_acks: ``ack=client``: messages wait in flight for the client's ack.
        window: ``ack=client``: most messages in flight.
        max_queue: most messages queued for the writer.
        backpressure: what to do with an arrival that does not fit the queue.
        key: a message's full id.
        size: a message's size in bytes (for the byte bounds).
        window_bytes: ``ack=client``: most bytes in flight (at least one message goes).
        max_queue_bytes: most bytes queued (at least one message fits).
    """

    def __init__(
        self,
        *,
        client_acks: bool,
        window: int,
        max_queue: int,
        backpressure: Backpressure,
        key: Callable[[M], Key],
        size: Callable[[M], int] = lambda message: 0,
        window_bytes: float = math.inf,
        max_queue_bytes: float = math.inf,
    ) -> None:
        self.client_acks = client_acks
        self.window = window
        self.max_queue = max_queue
        self.backpressure = backpressure
        self.key = key
        self.size = size
        self.window_bytes = window_bytes
        self.max_queue_bytes = max_queue_bytes
        self.queue: deque[M] = deque()
        self.queue_bytes = 0
        self.inflight: deque[tuple[int, M]] = deque()  # (seq, message), ack=client
        self.inflight_bytes = 0
        self.taken = 0
        self.delivered = 0
        self.acked = 0
        self.nacked = 0
        self.sent = 0  # the last seq written
        self.client_acked = 0  # the client's cumulative ack
        self.intake_open = True
        # Keys nacked by backpressure and not seen again: until=end waits for them.
        self.owed: set[Key] = set()
        self.until_end = False
        self.end: Place | None = None
        self.end_seen = False

    # -------------------------------------------------------------- intake

    def arrive(self, batch: list[M]) -> tuple[list[M], list[M]]:
        """Take a burst from the consumer.

        Returns:
            (dropped, refused): messages to nack now, dropped by backpressure or refused
            because intake is closed.
        """
        self.taken += len(batch)
        queue, owed, key, size = self.queue, self.owed, self.key, self.size
        dropped: list[M] = []
        refused: list[M] = []
        for message in batch:
            if owed:
                owed.discard(key(message))
            if not self.intake_open:
                refused.append(message)
                continue
            length = size(message)
            if self.backpressure is Backpressure.BLOCK or self._fits(length):
                queue.append(message)
                self.queue_bytes += length
            elif self.backpressure is Backpressure.DROP_NEW:
                dropped.append(message)
                owed.add(key(message))
            else:  # drop_oldest: as many of the oldest as it takes to fit
                while queue and not self._fits(length):
                    oldest = queue.popleft()
                    self.queue_bytes -= size(oldest)
                    dropped.append(oldest)
                    owed.add(key(oldest))
                queue.append(message)
                self.queue_bytes += length
        self.nacked += len(dropped) + len(refused)
        return dropped, refused

    def _fits(self, length: int) -> bool:
        """One more message of ``length`` bytes fits the queue (an empty queue takes any)."""
        queue = self.queue
        return not queue or (len(queue) < self.max_queue
                             and self.queue_bytes + length <= self.max_queue_bytes)

    def close_intake(self) -> None:
        """From now on every arrival is refused (handed back to nack)."""
        self.intake_open = False

    @property
    def full(self) -> bool:
        """``block``: the queue is full, receiving must pause."""
        return self.backpressure is Backpressure.BLOCK and (
            len(self.queue) >= self.max_queue or self.queue_bytes >= self.max_queue_bytes)

    @property
    def low(self) -> bool:
        """The queue is at or below its low-water marks: receiving may resume."""
        return (len(self.queue) <= self.max_queue // 2
                and self.queue_bytes <= self.max_queue_bytes / 2)

    # -------------------------------------------------------------- writer

    @property
    def window_room(self) -> int:
        """How many more messages may be written now (``ack=client``: the window's room)."""
        if not self.client_acks:
            return self.max_queue + 1
        return self.window - len(self.inflight)

    def next_batch(self, limit: int) -> list[M]:
        """Take up to ``limit`` queued messages (and no more than the window allows)."""
        queue, size = self.queue, self.size
        count = min(limit, self.window_room, len(queue))
        if self.client_acks:
            # The window in bytes too; one message always goes when none is in flight.
            room = self.window_bytes - self.inflight_bytes
            taken = 0
            for i in range(count):
                length = size(queue[i])
                if taken + length > room and (i or self.inflight):
                    count = i
                    break
                taken += length
        batch = [queue.popleft() for _ in range(count)]
        self.queue_bytes -= sum(map(size, batch))
        return batch

    def unget(self, batch: list[M]) -> None:
        """Put back messages the writer could not deliver (they are nacked at the end)."""
        self.queue.extendleft(reversed(batch))
        self.queue_bytes += sum(map(self.size, batch))

    def delivered_batch(self, batch: list[M]) -> tuple[int, list[M]]:
        """Record ``batch`` written to the socket.

        Returns:
            (first seq, messages to ack now): ``ack=auto`` acks them all now; with
            ``ack=client`` they wait in flight and the list is empty.
        """
        count = len(batch)
        first = self.sent + 1
        self.sent += count
        self.delivered += count
        if self.until_end and not self.end_seen and self.end is not None:
            end, key = self.end, self.key
            # Delivery order may differ from topic order (redeliveries): any will do.
            self.end_seen = any(key(m)[:2] >= end for m in batch)
        if self.client_acks:
            self.inflight.extend(zip(range(first, first + count), batch, strict=True))
            self.inflight_bytes += sum(map(self.size, batch))
            return first, []
        self.acked += count
        return first, batch

    # ---------------------------------------------------------- client acks

    def apply_ack(self, frame: str | bytes) -> list[M]:
        """Apply a client frame ``{"ack": N}``: the messages it acks, to ack in Pulsar.

        Raises:
            InvalidAck: the frame is not a well-formed ack, or N goes backwards or beyond
                the last seq sent. Nothing changes then.
        """
        if not self.client_acks:
            raise InvalidAck("ack=auto: this connection expects no frames from the client")
        if len(frame) > MAX_ACK_FRAME:
            raise InvalidAck(f"frame of {len(frame)} bytes: an ack is at most {MAX_ACK_FRAME}")
        try:
            # Strict, as import frames: {"ack": 1, "ack": 9} is refused, not read as 9.
            obj = loads_strict(frame)
        except InvalidMessage as exc:
            raise InvalidAck(exc.detail) from None
        if type(obj) is not dict or "ack" not in obj:
            raise InvalidAck('expected {"ack": N}')
        n = obj["ack"]
        if type(n) is not int:
            raise InvalidAck(f"ack must be an integer, got {orjson.dumps(n).decode()[:40]}")
        if n < self.client_acked:
            raise InvalidAck(f"ack {n} goes backwards: already acked {self.client_acked}")
        if n > self.sent:
            raise InvalidAck(f"ack {n} is beyond the last seq sent ({self.sent})")
        inflight = self.inflight
        acked = []
        while inflight and inflight[0][0] <= n:
            acked.append(inflight.popleft()[1])
        self.inflight_bytes -= sum(map(self.size, acked))
        self.acked += len(acked)
        self.client_acked = n
        return acked

    # ----------------------------------------------------------------- end

    def settle_queued(self) -> list[M]:
        """Hand back, to nack, every queued message; those in flight stay for client acks."""
        undelivered = list(self.queue)
        self.queue.clear()
        self.queue_bytes = 0
        self.nacked += len(undelivered)
        return undelivered

    def settle_remaining(self) -> tuple[list[M], list[M]]:
        """Hand back, to nack, every message queued and every one in flight.

        Returns:
            (undelivered, unacked): the queued ones and the delivered-but-unacked ones.
        """
        undelivered = self.settle_queued()
        unacked = [message for _, message in self.inflight]
        self.inflight.clear()
        self.inflight_bytes = 0
        self.nacked += len(unacked)
        return undelivered, unacked

    def all_settled(self) -> bool:
        """Every message taken was acked or nacked (the subscriber may stop)."""
        return self.taken == self.acked + self.nacked

    def client_informed(self) -> bool:
        """An export owes its client nothing before the close."""
        return True

    # ------------------------------------------------------------ until=end

    def expect_end(self, end: Place | None) -> None:
        """until=end: the topic's last position when the connection opened (None: empty)."""
        self.until_end = True
        self.end = end

    def end_due(self, quiet: bool) -> bool:
        """until=end: the backlog is delivered (and, with ``ack=client``, acked).

        Args:
            quiet: nothing has arrived for a while: the subscription had nothing more
                before the end position (e.g. an earlier dump acked it all).
        """
        if not self.until_end:
            return False
        end = self.end
        if end is None:
            return not self.inflight
        if not (self.end_seen or quiet):
            return False
        key = self.key
        backlog_queued = any(key(m)[:2] <= end for m in self.queue)
        backlog_owed = any(k[:2] <= end for k in self.owed)
        return not backlog_queued and not backlog_owed and not self.inflight
