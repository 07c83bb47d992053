"""The import worker: WebSocket frames in, Pulsar messages out, receipts back.

Theory of operation. Per connection, two tasks and one ledger:

- ``take`` (the intake) waits until fewer than ``publisher_max_queue_size`` frames, and
  fewer than ``publisher_max_queue_bytes`` bytes of payloads, are in flight (meanwhile the
  socket is still read, ahead, within ``import_buffer_bytes``: see ``actors/websocket.py``),
  then reads one frame; it numbers it in the ``ReceiptLedger``, parses it, detects its wire
  format (TrustGraph 1.x or 2.x), validates it and converts it into the flow's profile's
  Pulsar payload (``core/convert.py``), and hands that to the producer; or it rejects the
  frame at once (an error frame is owed), e.g. when the profile cannot carry it without
  losing something. Awaiting happens only where no frame is held, so cancelling intake —
  the first step of every drain — can never lose a received frame.
- the producer's confirmations arrive in batches (``_settled``) and settle frames in the
  ledger, which advances the watermark and counts consecutive failures.
- the receipt sender (``_send_receipts``, a background task) writes what the ledger says is
  owed: error frames first, then ``{"ack": watermark}`` (see ``ReceiptLedger.take_flush``
  for why that order keeps receipts honest), coalesced every ``RECEIPT_INTERVAL``.

The client's close while waiting for the broker: the wait for room also ends when the
stream of frames does (the socket keeps being read, so the close is seen at once); intake
reports the close, and the drain takes the frames read before it (CONTRACT §3: every frame
received before the close is persisted before the close handshake completes) as room frees,
under the same patience as the rest of the drain. If the broker does not come back in time,
those frames were never receipted and the close is forced (1011): the client resends.

``drain`` waits for every frame to be settled, then concludes the worker's machine. It waits
for as long as confirmations keep coming: ``publisher_drain_timeout`` bounds a silence, not
the whole wait (during a shutdown the server's deadline bounds that). ``finish`` has the
sender flush once more — the final receipt — and logs the connection's summary.

Refusals are logged, not only counted: most TrustGraph clients never read replies, so the
first rejected frame of a connection is logged with its detail, later ones as a running
count at most every ``REJECTION_LOG_INTERVAL``, and the close logs received, persisted and
rejected.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.publisher import Publisher
from quiesce.core.convert import convert_frame, dumps
from quiesce.core.errors import BrokerError, InvalidMessage
from quiesce.core.protocol import ErrorCode, ack_frame, draining_frame, error_frame
from quiesce.core.wire import loads_strict
from quiesce.machines.receipts import ReceiptLedger
from quiesce.machines.worker import WorkerMachine

if TYPE_CHECKING:
    from quiesce.actors.connection import ConnectionActor

LOGGER = logging.getLogger("quiesce.import")

# Receipts are coalesced: after sending one, the sender lets this much time pass before the
# next, so a fast stream gets a few hundred acks a second instead of one per broker batch.
RECEIPT_INTERVAL = 0.005
# During a server drain's grace, a client that sends nothing for this long is done (or idle):
# the drain goes on without waiting for the rest of the grace.
QUIET_PERIOD = 0.5
# After the first rejected frame of a connection, at most one log line per this many seconds.
REJECTION_LOG_INTERVAL = 5.0

BINARY_DETAIL = "binary frames are not supported: send each message as a JSON text frame"


class ImportWorker:
    """The import half of a connection: its publisher, receipt ledger and receipt sender."""

    name = "publisher"

    def __init__(self, conn: ConnectionActor) -> None:
        self.conn = conn
        route, settings = conn.route, conn.settings
        self.settings = settings
        self.ledger = ReceiptLedger(receipts=route.receipts,
                                    failure_cap=settings.max_consecutive_errors)
        self.machine = WorkerMachine(self.ledger)
        self.machine.observe(TransitionLog(LOGGER, "publisher", conn.id, topic=route.topic,
                                           **conn.log_fields))
        self.publisher = Publisher(conn.services.broker, route.topic, settings, self._settled)
        self._limit = settings.publisher_max_queue_size
        # Bytes of payloads in flight, and each frame's (by seq) until it settles.
        self._byte_limit = settings.publisher_max_queue_bytes
        self._in_flight_bytes = 0
        self._payload_sizes: dict[int, int] = {}
        self._room = trio.Event()  # set when a frame in flight settles
        self._news = trio.Event()  # set when the ledger owes the client something
        self._stop_sender = trio.Event()
        self._sender_done = trio.Event()
        self._last_words = False
        self._concluded = False
        self._capacity_counted = False
        self._grace_until: float | None = None  # set when a server drain grants a grace
        self._last_frame = 0.0
        self._usual = trio.CancelScope()  # the intake's usual loop; a grace cancels it
        self._wait: trio.CancelScope | None = None  # the intake's current wait in a grace
        self._notice: str | None = None  # {"draining": …}, sent before anything else
        self._next_rejection_log = 0.0
        # The client closed while intake waited for room: frames read before its close still
        # wait in the socket's buffer, and the drain takes them.
        self._rest_behind_close = False
        conn.ws.wake = self._wake
        metrics = conn.metrics
        self._imported = metrics.imported.labels(route.kind)
        self._rejected = {code: metrics.rejected.labels(route.kind, code)
                          for code in (ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_FRAME,
                                       ErrorCode.PUBLISH_FAILED)}

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of payloads handed to the producer and not yet confirmed."""
        return self._in_flight_bytes

    @property
    def depth(self) -> int:
        """Frames handed to the producer and not yet confirmed."""
        return self.ledger.in_flight

    async def open(self, nursery: trio.Nursery) -> None:
        """Start the receipt sender, then create the producer.

        Raises:
            BrokerError: no producer; a ``broker-unavailable`` error frame is owed.
        """
        nursery.start_soon(self.conn.guard, self._send_receipts, "receipt sender")
        try:
            await self.publisher.open()
        except BrokerError as exc:
            self.ledger.error(ErrorCode.BROKER_UNAVAILABLE, str(exc))
            self._news.set()
            raise
        self.conn.metrics.publisher_queue_capacity.inc(self._limit)
        self._capacity_counted = True

    async def take(self) -> None:
        """Read, number, validate and publish frames until the client's stream ends.

        Two loops: the usual one, with no cancel scope per frame (it is the hot path), and,
        once a server drain grants a grace (``grace`` cancels the first loop's scope, which
        holds no frame when cut), one whose every wait is bounded by the quiet rule.
        """
        with trio.CancelScope() as self._usual:
            while True:
                frame = await self._next_frame()
                if frame is None:
                    self.conn.report_ending(self.conn.ws.ending())
                    return
                self._last_frame = trio.current_time()  # for the quiet rule, if a grace comes
                self._take(frame)
        # A server drain granted a grace: take frames until the client closes or goes quiet.
        while True:
            with trio.CancelScope(deadline=self._quiet_deadline()) as wait:
                self._wait = wait
                frame = await self._next_frame()
            self._wait = None
            if wait.cancelled_caught:
                self.conn.report_quiet()
                return
            self._last_frame = trio.current_time()
            if frame is None:
                self.conn.report_ending(self.conn.ws.ending())
                return
            self._take(frame)

    async def _next_frame(self) -> str | bytes | InvalidMessage | None:
        """Wait for room for one more frame in flight, then for the frame (None: the end).

        Neither wait holds a frame when it is cancelled: cancelling loses nothing.
        """
        ledger, ws = self.ledger, self.conn.ws
        while self._full:
            if ws.stream_ended:
                # The client closed (or went) while the broker kept us waiting: the close is
                # reported now, not once room frees; the drain takes what was read before it.
                self._rest_behind_close = ws.client_closed.is_set()
                if self._rest_behind_close:
                    LOGGER.info("client closed while %d frames wait for the broker: draining",
                                ledger.in_flight, extra=self.conn.log_fields)
                return None
            self._room = trio.Event()
            await self._room.wait()
        try:
            return await ws.receive_frame()
        except InvalidMessage as exc:
            return exc

    @property
    def _full(self) -> bool:
        """No room for one more frame in flight, by count or by bytes. (Bytes are only ever
        counted with a frame in flight: one frame over the byte bound still goes.)"""
        return (self.ledger.in_flight >= self._limit
                or self._in_flight_bytes >= self._byte_limit)

    async def _settling(self, scope: trio.CancelScope) -> None:
        """Wait until a frame in flight settles; a confirmation renews the drain's ``scope``
        (its patience bounds the broker's silence, not the whole drain)."""
        before = self.ledger.in_flight
        self._room = trio.Event()
        await self._room.wait()
        if self.ledger.in_flight < before:
            self.conn.deadlines.renew(scope, self.settings.publisher_drain_timeout)

    def _wake(self) -> None:
        """The stream of frames ended: end a wait for room (``_next_frame`` looks why)."""
        self._room.set()

    async def _take_rest(self, scope: trio.CancelScope) -> None:
        """Take the frames read before the client's close, as room frees (each confirmation
        renews the drain's ``scope``; when it ends, what is left was never numbered, so never
        receipted)."""
        ws = self.conn.ws
        taken = 0
        while ws.is_open:
            while self._full and ws.is_open:
                await self._settling(scope)
            try:
                frame: str | bytes | InvalidMessage | None = await ws.receive_frame()
            except InvalidMessage as exc:
                frame = exc
            if frame is None:
                break
            self._take(frame)
            taken += 1
        LOGGER.info("took %d frames read before the client's close", taken,
                    extra=self.conn.log_fields)

    def _take(self, frame: str | bytes | InvalidMessage) -> None:
        """Number one frame and publish its payload, or reject it."""
        ledger, route = self.ledger, self.conn.route
        if isinstance(frame, InvalidMessage):
            self._reject(ledger.receive(), frame.code, frame.detail)
            return
        seq = ledger.receive()
        if type(frame) is not str:
            self._reject(seq, ErrorCode.UNSUPPORTED_FRAME, BINARY_DETAIL)
            return
        try:
            payload = dumps(convert_frame(route.kind, loads_strict(frame), route.profile,
                                          workspace=route.workspace))
        except InvalidMessage as exc:
            self._reject(seq, exc.code, exc.detail)
            return
        ledger.publish()
        size = len(payload)
        self._payload_sizes[seq] = size
        self._in_flight_bytes += size
        self.publisher.publish_nowait(seq, payload)

    def _quiet_deadline(self) -> float:
        if self._grace_until is None:
            return math.inf
        return min(self._grace_until, self._last_frame + QUIET_PERIOD)

    def grace(self, until: float) -> None:
        """A server drain lets intake go on until ``until`` or until the client goes quiet.

        A client with receipts is told at once (``{"draining": …}``) so it can stop early.
        """
        now = trio.current_time()
        self._grace_until = until
        self._usual.cancel(reason="server draining: the grace's quiet rule applies")
        if self._wait is not None:
            self._wait.deadline = self._quiet_deadline()
        if self.ledger.receipts:
            self._notice = draining_frame(until - now)
            self._news.set()
        LOGGER.info("server draining: taking frames for up to %.1fs while the client sends",
                    until - now, extra=self.conn.log_fields)

    def _reject(self, seq: int, code: ErrorCode, detail: str) -> None:
        self.ledger.reject(seq, code, detail)
        self._rejected[code].inc()
        self._news.set()  # the error frame goes out now, even if the watermark waits
        self._log_rejection(seq, code, detail)

    def _log_rejection(self, seq: int, code: ErrorCode, detail: str) -> None:
        now = trio.current_time()
        if now < self._next_rejection_log:
            return
        first = self.ledger.rejected == 1
        LOGGER.warning(
            "%s frame %d rejected (%s: %s); %d rejected so far",
            "first" if first else "latest", seq, code, detail[:200], self.ledger.rejected,
            extra={**self.conn.log_fields, "seq": seq, "code": str(code),
                   "rejected": self.ledger.rejected},
        )
        self._next_rejection_log = now + REJECTION_LOG_INTERVAL

    def _settled(self, batch: list[tuple[int, str | None]]) -> None:
        if self._concluded:
            # Late news for a publisher that gave up at its deadline: those frames were
            # never receipted, so the client resends them anyway.
            return
        ledger, sizes = self.ledger, self._payload_sizes
        persisted = 0
        for seq, failure in batch:
            self._in_flight_bytes -= sizes.pop(seq)
            if failure is None:
                ledger.confirm(seq)
                persisted += 1
                continue
            self._rejected[ErrorCode.PUBLISH_FAILED].inc()
            self._log_rejection(seq, ErrorCode.PUBLISH_FAILED, failure)
            if ledger.fail(seq, failure):
                # The spec's cap on consecutive send errors: stop taking frames, drain, 1011.
                LOGGER.error("closing after %d consecutive publish failures",
                             ledger.consecutive_failures, extra=self.conn.log_fields)
                self.conn.report_failure("too many consecutive publish failures")
        self._imported.inc(persisted)
        self._room.set()
        self._news.set()

    async def _send_receipts(self) -> None:
        # The only task that writes to the socket while the connection runs.
        try:
            while True:
                await self._news.wait()
                self._news = trio.Event()
                last_words = self._last_words  # read before the flush: a later stop flushes
                if not await self._flush() or last_words:
                    return
                with trio.move_on_after(RECEIPT_INTERVAL):
                    await self._stop_sender.wait()  # a stop request ends the pause at once
        finally:
            self._sender_done.set()

    async def _flush(self) -> bool:
        ws, ledger = self.conn.ws, self.ledger
        notice, self._notice = self._notice, None
        if notice is not None and not await ws.send_text(notice):
            return False
        owed, ack = ledger.take_flush()
        for rejection in owed:
            if not await ws.send_text(error_frame(rejection.code, rejection.detail,
                                                  rejection.seq)):
                return False
        if ack is not None:
            if not await ws.send_text(ack_frame(ack)):
                return False
            ledger.receipted(ack)
        return True

    async def drain(self) -> None:
        """Wait for every frame to be settled (bounded), then conclude the machine."""
        machine, ledger = self.machine, self.ledger
        machine.drain()
        deadlines, patience = self.conn.deadlines, self.settings.publisher_drain_timeout
        try:
            # The bound is on silence, not on the whole drain: while confirmations keep
            # coming (a busy broker, a slow link) the drain goes on, each one renewing the
            # patience; a broker that confirms nothing for that long ends it. The server's
            # own deadline (a shutdown) caps it either way.
            with deadlines.within(patience) as scope:
                if self._rest_behind_close:
                    await self._take_rest(scope)
                while not ledger.all_settled():
                    await self._settling(scope)
        finally:
            self._concluded = True
            unconfirmed = ledger.in_flight
            machine.conclude()
        if not machine.done:
            self.conn.metrics.publisher_messages_dropped.labels(self.conn.route.kind).inc(
                unconfirmed)

    async def finish(self) -> None:
        """Send the final receipt (and any error frame still owed), then log the summary."""
        self._last_words = True
        self._stop_sender.set()
        self._news.set()
        with self.conn.deadlines.within(self.settings.socket_grace_period):
            await self._sender_done.wait()
        ledger = self.ledger
        level = logging.WARNING if ledger.rejected or not self.machine.done else logging.INFO
        LOGGER.log(
            level, "import closed: %d frames received, %d persisted, %d rejected, %d receipted",
            ledger.received, ledger.persisted, ledger.rejected, ledger.acked,
            extra={**self.conn.log_fields, "received": ledger.received,
                   "persisted": ledger.persisted, "rejected": ledger.rejected,
                   "receipted": ledger.acked},
        )

    def intake_stopping(self) -> None:
        """Nothing to bound: the reader holds no frame across an await."""

    async def aclose(self) -> None:
        """Close the producer."""
        if self._capacity_counted:
            self.conn.metrics.publisher_queue_capacity.dec(self._limit)
            self._capacity_counted = False
        await self.publisher.aclose()
