"""The export worker: Pulsar messages out to a WebSocket, acked only once delivered.

Theory of operation. Per connection, three tasks and one ledger (``DeliveryLedger``):

- the *receiver* (``Subscriber.serve_receiving``, background) hands bursts from the
  consumer to ``_arrived``; the ledger queues them or, by backpressure, hands back the ones
  to nack; ``block`` pauses receiving while the queue is full.
- the *writer* (``take``, the intake) writes every queued message the window allows in one
  socket write. With ``ack=auto`` the ledger releases them to be acked once written; with
  ``ack=client`` they are wrapped as ``{"seq": N, "message": …}`` and wait in flight.
- the *client reader* (``_read_client``, background) applies the client's cumulative
  ``{"ack": N}`` through the ledger and, at the end, reports its close frame (held).

``drain`` closes the ledger's intake, stops the receiver, nacks what is queued; a server
drain with ``ack=client`` then gives the client until the drain deadline to ack what it
was sent; everything still in flight is nacked, and the machine concludes. ``until=end``
ends the writer when the ledger says the backlog is delivered (see ``DeliveryLedger``):
once the end entry was delivered and nothing more arrives for ``END_QUIET_PERIOD``, or
when the topic was empty at the start.

pulsar-lite stalls (docs/architecture.md): pulsar-lite 0.2.0 can stop dispatching to a
consumer for good while it holds the consumer's permits and the subscription has a backlog.
The writer watches for it without waking idle exports: with ``until=end``, nothing arriving
for ``END_IDLE_PERIOD`` before the end entry was delivered is a stall, never an end; without
it, on a fresh subscription only (a named one may be shared, its later messages gone to
other consumers), the watch arms only after something arrived (or from the start of an
``earliest`` one) and, after ``STALL_CHECK_PERIOD`` with
nothing arriving and nothing held, asks the broker once whether the topic holds more than
was seen. A stall is cured by ``Subscriber.recover`` (a new consumer on the same
subscription), logged as one WARNING naming pulsar-lite and counted in
``export_stall_recoveries_total``. An ``until=end`` dump of a fresh subscription ends only
once its end entry was delivered: after ``END_RECOVERIES`` fruitless recoveries in a row it
fails (``broker-unavailable``, 1011) rather than claim an end it did not deliver. A named
subscription may have had its backlog acked by an earlier dump: nothing arriving after
``NAMED_END_RECOVERIES`` recovery counts as its end.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.subscriber import Subscriber, message_key, message_size
from quiesce.actors.websocket import Ending
from quiesce.core.convert import dumps, from_pulsar
from quiesce.core.errors import BrokerError, InvalidAck, InvalidMessage
from quiesce.core.protocol import (
    END_FRAME,
    AckMode,
    ErrorCode,
    Position,
    envelope,
    error_frame,
    invalid_payload,
)
from quiesce.machines.delivery import DeliveryLedger
from quiesce.machines.worker import WorkerMachine

if TYPE_CHECKING:
    from quiesce.actors.connection import ConnectionActor

LOGGER = logging.getLogger("quiesce.export")

# until=end: how long nothing may arrive after the end entry before the backlog counts as
# delivered (the rest of a batched entry may still be on its way from the receiving thread).
END_QUIET_PERIOD = 0.05
# until=end: how long nothing may arrive at all before the subscription counts as having had
# nothing left to deliver (e.g. a second dump after a complete one).
END_IDLE_PERIOD = 1.0
# Without until=end: how long nothing may arrive, after something did, before the broker is
# asked whether the topic holds more than was seen (a pulsar-lite stall).
STALL_CHECK_PERIOD = 5.0
# Checks whose answer was "cannot tell" asked again (after 10, 20, 40 s), per quiet spell.
STALL_CHECK_RETRIES = 3
# until=end: fruitless stall recoveries in a row before a fresh subscription's dump fails,
# and before a named subscription's counts as having had nothing left.
END_RECOVERIES = 5
NAMED_END_RECOVERIES = 1
# Most frames written to the socket in one write.
MAX_WRITE_BATCH = 256


class ExportWorker:
    """The export half of a connection: its subscriber, delivery ledger and writer."""

    name = "subscriber"

    def __init__(self, conn: ConnectionActor) -> None:
        self.conn = conn
        route, settings = conn.route, conn.settings
        self.settings = settings
        self.client_mode = route.ack_mode is AckMode.CLIENT
        self.ledger: DeliveryLedger[Any] = DeliveryLedger(
            client_acks=self.client_mode, window=route.window,
            max_queue=settings.subscriber_max_queue_size, backpressure=route.backpressure,
            key=message_key, size=message_size, window_bytes=settings.export_window_bytes,
            max_queue_bytes=settings.subscriber_max_queue_bytes,
        )
        self.machine = WorkerMachine(self.ledger)
        self.subscriber = Subscriber(conn.services.broker, route, settings, conn.id,
                                     self._arrived)
        self.machine.observe(TransitionLog(LOGGER, "subscriber", conn.id, topic=route.topic,
                                           subscription=self.subscriber.subscription,
                                           **conn.log_fields))
        self._wake = trio.Event()  # set on an arrival, a client ack, or the client's end
        self._write_scope: trio.CancelScope | None = None
        self._progress = 0.0  # when the client last took something (a write, an ack)
        self._concluded = False
        self._invalid_logged = False
        metrics, kind = conn.metrics, route.kind
        self._exported = metrics.exported.labels(kind)
        self._acknowledged = metrics.acknowledged.labels(kind)
        self._nacked_dropped = metrics.subscriber_messages_nacked.labels(kind, "backpressure")
        self._nacked_end = metrics.subscriber_messages_nacked.labels(kind, "undelivered")
        self._invalid = metrics.invalid_payloads.labels(kind)
        self._stall_recoveries = metrics.export_stall_recoveries.labels(kind)
        self._seen: tuple[int, int] | None = None  # the highest (ledger, entry) received
        # The stall watch (without until=end) is armed by an arrival; at the start (open)
        # only where a backlog may be owed: the topic has messages, and the subscription is
        # named or starts at the earliest (a fresh one at latest owes nothing).
        self._watch_armed = False
        self._sole_consumer = False  # set by open
        self._unsure = 0  # stall checks in a row the broker could not answer
        self._fruitless = 0  # stall recoveries since the last arrival
        self._end_rechecked = False  # until=end: the end was asked again after an arrival

    @property
    def depth(self) -> int:
        """Messages taken from Pulsar and not yet written to the socket."""
        return len(self.ledger.queue)

    async def open(self, nursery: trio.Nursery) -> None:
        """Subscribe (and, for until=end, read the topic's end); start receiving.

        Raises:
            BrokerError: no consumer, or no end position; the client got an error frame.
        """
        subscriber = self.subscriber
        try:
            await subscriber.open()
            if self.conn.route.until_end:
                self.ledger.expect_end(await subscriber.last_place())
        except BrokerError as exc:
            await self.conn.ws.send_text(error_frame(ErrorCode.BROKER_UNAVAILABLE, str(exc)))
            raise
        route = self.conn.route
        # The watch without until=end compares the topic's last message with what this
        # consumer saw, which means a stall only when it is the subscription's one consumer:
        # a fresh subscription. A named one may be shared (Pulsar Shared), the later messages
        # gone to the others: watching it would "cure" stalls that are not there.
        self._sole_consumer = route.subscription is None
        # At the start of an earliest one it arms whether or not the size probe saw
        # messages: under load pulsar-lite answers the probe "empty" for a full topic too,
        # and a stall at the first message would then go unwatched (one check, 5 s in).
        self._watch_armed = self._sole_consumer and route.position is Position.EARLIEST
        nursery.start_soon(self.conn.guard, self._receive, "receiver")
        nursery.start_soon(self.conn.guard, self._read_client, "client reader")

    # ---------------------------------------------------------- receiving

    async def _receive(self) -> None:
        try:
            await self.subscriber.serve_receiving()
        except BrokerError as exc:
            LOGGER.error("export stopped: %s", exc, extra=self.conn.log_fields)
            self.conn.report_failure("broker error")

    def _arrived(self, batch: list[Any]) -> None:
        if self._concluded:
            # The consumer is closing: the broker redelivers these anyway.
            return
        self._watch_armed = self._sole_consumer
        self._unsure = 0
        self._fruitless = 0
        for message in batch:
            place = message_key(message)[:2]
            if self._seen is None or place > self._seen:
                self._seen = place
        dropped, refused = self.ledger.arrive(batch)
        if dropped:
            self._nack(dropped, self._nacked_dropped)
        if refused:
            self._nack(refused, self._nacked_end)
        if self.ledger.full:
            self.subscriber.pause()
        self._wake.set()

    def _nack(self, messages: list[Any], counter: Any) -> None:
        self.subscriber.nack(messages)
        counter.inc(len(messages))
        if self.conn.machine.stop_requested:
            self.conn.metrics.shutdown_drops.inc(len(messages))

    # ------------------------------------------------------------- writer

    async def _wait_news(self) -> None:
        """Wait for an arrival, a client ack, or the client's end."""
        self._wake = trio.Event()
        await self._wake.wait()

    async def take(self) -> None:
        """Write queued messages until the socket is lost or an until=end dump is done."""
        conn, ws, ledger, subscriber = self.conn, self.conn.ws, self.ledger, self.subscriber
        until_end = conn.route.until_end
        # until=end on an empty topic ends after END_IDLE_PERIOD of quiet, not at once: a
        # message arriving meanwhile shows the broker's "empty" was wrong (end_check).
        stall = self.settings.export_stall_timeout
        self._progress = trio.current_time()
        while True:
            batch = ledger.next_batch(MAX_WRITE_BATCH)
            if not batch:
                if ledger.inflight:
                    # Frames wait for the client's acks: it must take something (ack) within
                    # export_stall_timeout, or it is let go and what it holds is nacked.
                    with trio.move_on_at(self._progress + stall) as scope:
                        await self._wait_news()
                    if scope.cancelled_caught:
                        self._stalled("no ack")
                        return
                    continue
                if not until_end:
                    await self._wait_idle()
                    continue
                quiet = END_QUIET_PERIOD if ledger.end_seen else END_IDLE_PERIOD
                with trio.move_on_after(quiet) as scope:
                    await self._wait_news()
                if not scope.cancelled_caught:
                    continue
                if ledger.end_seen or ledger.end is None:
                    if ledger.end_due(quiet=True):
                        conn.report_finished()
                        return
                    continue
                # Nothing arrived before the end entry: a stall, or nothing left for us.
                if self._nothing_owed() and not await self._end_stalled():
                    return
                continue
            if until_end and ledger.end is None and not self._end_rechecked:
                if not await self._recheck_end():
                    return
            # Resume at a low-water mark, not at the first free slot: a thread hop per freed
            # slot around a full queue would cost more than the messages.
            if ledger.low:
                subscriber.resume()
            payloads = [self._wire_payload(m) for m in batch]
            if self.client_mode:
                first = ledger.sent + 1
                payloads = [envelope(first + i, p) for i, p in enumerate(payloads)]
            # The write is shielded: a drain that cancelled it halfway would leave a half
            # frame on the wire and these messages neither delivered nor undelivered. It is
            # bounded by export_stall_timeout (a client that reads nothing); once intake ends
            # it gets the grace period (intake_stopping), and force_now cuts it.
            written = False
            with conn.deadlines.within(stall, shield=True) as scope:
                self._write_scope = scope
                written = await ws.send_texts(payloads)
            self._write_scope = None
            if scope.cancelled_caught:
                await ws.abort()  # a half-written frame: the stream is unusable
            if not written:
                ledger.unget(batch)  # not known to be written: nacked by the drain
                if scope.cancelled_caught and conn.machine.intake_open:
                    self._stalled("a write blocked")  # nothing else cut it: the stall bound
                else:
                    conn.report_ending(Ending.PEER_LOST)
                return
            self._progress = trio.current_time()
            _, to_ack = ledger.delivered_batch(batch)
            self._exported.inc(len(batch))
            if to_ack:
                self._ack(to_ack)

    async def _recheck_end(self) -> bool:
        """until=end, the topic was "empty" at the start and a message arrived: ask again.

        Returns:
            False when the export failed (no end could be read: error frame, 1011).
        """
        self._end_rechecked = True
        try:
            end = await self.subscriber.last_place(busy=True)
        except BrokerError as exc:
            LOGGER.error("until=end export failed: %s", exc, extra=self.conn.log_fields)
            await self.conn.ws.send_text(error_frame(ErrorCode.BROKER_UNAVAILABLE, str(exc)))
            self.conn.report_failure("broker error")
            return False
        LOGGER.info("until=end: the topic was not empty after all; its end is %s", end,
                    extra=self.conn.log_fields)
        self.ledger.expect_end(end)
        return True

    def _nothing_owed(self) -> bool:
        """The export holds no message of the consumer (none queued, in flight, or owed)."""
        ledger = self.ledger
        return not ledger.queue and not ledger.inflight and not ledger.owed

    async def _wait_idle(self) -> None:
        """Without until=end: wait for news; once, after arrivals, check for a stall."""
        if not (self._watch_armed and self._nothing_owed()):
            await self._wait_news()
            return
        with trio.move_on_after(STALL_CHECK_PERIOD * 2 ** self._unsure) as scope:
            await self._wait_news()
        if not scope.cancelled_caught:
            return
        self._watch_armed = False  # one check per quiet spell: an idle export sleeps
        if not self._nothing_owed():
            return
        verdict = await self.subscriber.backlog_left(self._seen)
        if verdict is None and self._unsure < STALL_CHECK_RETRIES:
            # The broker could not tell: ask again, later each time, a few times only (an
            # idle export on an empty topic then sleeps for good).
            self._unsure += 1
            self._watch_armed = True
        elif verdict:
            await self._recover(STALL_CHECK_PERIOD)

    async def _end_stalled(self) -> bool:
        """until=end, nothing arrived for END_IDLE_PERIOD before the end entry.

        Returns:
            False when the export is over (a named subscription had nothing left, or the
            broker could not be made to deliver: failed), True to go on waiting.
        """
        route, ledger = self.conn.route, self.ledger
        if route.subscription is None and route.position is Position.LATEST:
            # A fresh subscription at latest starts past the end: it owes nothing of it.
            self.conn.report_finished()
            return False
        limit = NAMED_END_RECOVERIES if route.subscription is not None else END_RECOVERIES
        if self._fruitless >= limit:
            if route.subscription is not None:
                LOGGER.info("nothing arrived after %d stall recoveries: the subscription had "
                            "nothing left before the end", self._fruitless,
                            extra=self.conn.log_fields)
                if ledger.end_due(quiet=True):
                    self.conn.report_finished()
                    return False
                return True
            detail = (f"pulsar-lite delivered nothing of {route.topic} for "
                      f"{self._fruitless} recoveries before its end {ledger.end}")
            LOGGER.error("until=end export failed: %s", detail, extra=self.conn.log_fields)
            await self.conn.ws.send_text(error_frame(ErrorCode.BROKER_UNAVAILABLE, detail))
            self.conn.report_failure("broker stalled")
            return False
        await self._recover(END_IDLE_PERIOD)
        return True

    async def _recover(self, quiet: float) -> None:
        """Cure a pulsar-lite stall: a new consumer on the subscription (one WARNING)."""
        self._fruitless += 1
        self._stall_recoveries.inc()
        LOGGER.warning("pulsar-lite stall: nothing received for %gs while the topic holds "
                       "more (seen up to %s, end %s); subscribing again (recovery %d)",
                       quiet, self._seen, self.ledger.end, self._fruitless,
                       extra=self.conn.log_fields)
        try:
            await self.subscriber.recover()
        except BrokerError as exc:
            LOGGER.error("export stopped: %s", exc, extra=self.conn.log_fields)
            self.conn.report_failure("broker error")

    def _wire_payload(self, message: Any) -> bytes:
        """The message as the client's wire format (``?format=``, else the profile's)."""
        route, data = self.conn.route, message.data()
        try:
            wire = from_pulsar(route.kind, orjson.loads(data), route.profile, route.fmt,
                               workspace=route.workspace)
        except (orjson.JSONDecodeError, InvalidMessage) as exc:
            detail = (f"not a {route.profile.value} {route.kind} payload, or not one "
                      f"{route.fmt.value} can carry: {exc}")
            self._invalid.inc()
            if not self._invalid_logged:  # the first per connection; the metric counts all
                self._invalid_logged = True
                LOGGER.warning("message %s delivered as invalid-payload: %s",
                               message.message_id(), detail[:200], extra=self.conn.log_fields)
            return invalid_payload(detail, str(message.message_id()), data)
        return dumps(wire)

    def _stalled(self, what: str) -> None:
        seconds = self.settings.export_stall_timeout
        LOGGER.warning("export client took nothing for %gs (%s): closing it, %d messages "
                       "it was sent and did not ack are nacked", seconds, what,
                       len(self.ledger.inflight), extra=self.conn.log_fields)
        self.conn.report_stalled()

    def intake_stopping(self) -> None:
        """Intake is ending: a write in progress gets the grace period to finish."""
        scope = self._write_scope
        if scope is not None:
            scope.deadline = min(scope.deadline,
                                 trio.current_time() + self.settings.socket_grace_period)

    def grace(self, until: float) -> None:
        """An export gets no grace (its connection machine stops it at once)."""
        raise AssertionError("export connections have no drain grace")

    def _ack(self, messages: list[Any]) -> None:
        self.subscriber.ack(messages)
        self._acknowledged.inc(len(messages))

    # -------------------------------------------------------- client reader

    async def _read_client(self) -> None:
        conn, ws, ledger = self.conn, self.conn.ws, self.ledger
        while True:
            try:
                frame = await ws.receive_frame()
            except InvalidMessage as exc:  # not UTF-8
                await ws.send_text(error_frame(ErrorCode.INVALID_ACK, exc.detail))
                continue
            if frame is None:
                self.intake_stopping()
                conn.report_ending(ws.ending())
                self._wake.set()
                return
            try:
                acked = ledger.apply_ack(frame)
            except InvalidAck as exc:
                await ws.send_text(error_frame(ErrorCode.INVALID_ACK, str(exc)))
                continue
            if acked:
                self._ack(acked)
                self._progress = trio.current_time()
            self._wake.set()

    # -------------------------------------------------------------- drain

    async def drain(self) -> None:
        """Stop receiving, nack what was not delivered (or not acked), conclude."""
        conn, ledger, machine = self.conn, self.ledger, self.machine
        machine.drain()
        ledger.close_intake()
        try:
            with conn.deadlines.within(self.settings.subscriber_drain_timeout):
                await self.subscriber.stop_receiving()
            undelivered = ledger.settle_queued()
            if undelivered:
                self._nack(undelivered, self._nacked_end)
            if ledger.inflight and conn.machine.client_may_ack:
                # CONTRACT §4: a server drain gives the client until the deadline to ack.
                with conn.deadlines.within(self.settings.subscriber_drain_timeout):
                    while ledger.inflight and conn.machine.client_may_ack:
                        await self._wait_news()
            undelivered, unacked = ledger.settle_remaining()
            if undelivered or unacked:
                self._nack(undelivered + unacked, self._nacked_end)
        finally:
            self._concluded = True
            machine.conclude()

    async def finish(self) -> None:
        """An until=end dump that delivered its backlog says so: ``{"end": true}``."""
        if self.conn.machine.complete:
            await self.conn.ws.send_text(END_FRAME)

    async def aclose(self) -> None:
        """Close the consumer (or delete a fresh subscription)."""
        await self.subscriber.aclose()
