"""The export connection actor: Pulsar messages out to a WebSocket, acked only once delivered.

Theory of operation. Two tasks per connection:

- the *writer* (``_deliver``) takes the next queued message from the subscriber and writes
  it. With ``ack=auto`` the message is acked in Pulsar after ``send`` returned (the frame is
  in the socket); with ``ack=client`` it is wrapped as ``{"seq": N, "message": …}`` and kept
  in ``inflight`` until the client acks N, and the writer waits while ``window`` frames are
  unacked.
- the *reader* (``_read_client``) reads the client's frames: cumulative ``{"ack": N}``
  (``ack=client``) and, at the end, its close frame (held until the drain is done).

Whatever ends the connection — the client's close, a lost socket, the server's drain,
``until=end``, too many consecutive errors — the writer stops first, the subscriber pauses
intake, and then every message taken and not delivered (auto) or not client-acked (client) is
nacked before the consumer closes. A server drain with ``ack=client`` first gives the client
until the drain deadline to ack what it was sent.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from typing import Any

import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.connection import ConnectionActor, GatewayConnection, Services
from quiesce.actors.subscriber import Subscriber
from quiesce.core.errors import BrokerError, InvalidAck
from quiesce.machines.connection import ConnectionMachine

LOGGER = logging.getLogger("quiesce.export")

# until=end: how long the end entry must stay quiet before the backlog counts as delivered.
END_QUIET_PERIOD = 0.05
# Most frames written to the socket in one write.
MAX_WRITE_BATCH = 256


class ExportActor(ConnectionActor):
    """One export WebSocket, its subscriber and its connection machine."""

    direction = "export"

    def __init__(self, ws: GatewayConnection, services: Services) -> None:
        super().__init__(ws, services)
        route = self.route
        self.subscriber = Subscriber(services.broker, route, self.settings, self.metrics,
                                     self.id)
        self.machine = ConnectionMachine(self.subscriber.machine)
        self.machine.observe(TransitionLog(
            LOGGER, "connection", self.id, direction="export",
            subscription=self.subscriber.subscription, **self.log_fields))
        self.client_mode = route.ack_mode == "client"
        self.sent = 0                     # frames written (the last seq, with ack=client)
        self.client_acked = 0             # the client's cumulative ack
        self.inflight: collections.deque[tuple[int, Any]] = collections.deque()
        self._acked = trio.Event()
        self._exported = self.metrics.exported.labels(route.kind)
        self._end_id: Any = None          # until=end: the last message id at connect time
        self._reached_end = False
        self._end_seen = False            # until=end: a message of the end entry was delivered
        self._write_scope: trio.CancelScope | None = None
        self._write_deadline = math.inf

    def _bound_writes(self, seconds: float) -> None:
        """Give the socket write in progress (and any later one) ``seconds`` to finish."""
        self._write_deadline = min(self._write_deadline, trio.current_time() + seconds)
        if self._write_scope is not None:
            self._write_scope.deadline = self._write_deadline

    def request_drain(self, deadline: float) -> None:
        """Drain for the server; a write in progress gets the grace period to finish."""
        self._bound_writes(self.settings.socket_grace_period)
        super().request_drain(deadline)

    def force_now(self) -> None:
        """Stop at once, a write in progress included."""
        self._bound_writes(0)
        super().force_now()

    async def run(self) -> None:
        """Serve the connection until its socket is closed (see the module docstring)."""
        machine = self.machine
        machine.open()
        with self.run_scope:
            try:
                await self.subscriber.open()
                if self.route.until_end:
                    last = await self.subscriber.last_message_id()
                    self._end_id = None if last is None else _position(last)
            except BrokerError as exc:
                LOGGER.error("export cannot start: %s", exc, extra=self.log_fields)
                await self.ws.send_json({"error": {"code": "broker-unavailable",
                                                   "detail": str(exc)}})
                self.error_code = 1011
            async with trio.open_nursery() as nursery:
                if self.error_code is None:
                    nursery.start_soon(self._read_client)
                    nursery.start_soon(self._receive)
                    with self.intake_scope:
                        if self._end_id is None and self.route.until_end:
                            self._reached_end = True
                        else:
                            await self._deliver()
                started = trio.current_time()
                machine.drain()
                await self._drain()
                nursery.cancel_scope.cancel(reason="export drained")
            if not self.ws.is_open:
                machine.peer_lost()
            if self._reached_end and self.ws.is_open:
                await self.ws.send_json({"end": True})
            await self.close_socket(machine, started, self.error_code)
            await self.subscriber.aclose()
        if self.run_scope.cancelled_caught:
            await self._forced()

    async def _deliver(self) -> None:
        """The writer loop: returns at the end of the backlog (until=end) or a lost socket.

        Each turn writes every queued message (up to the window's room) in one socket
        write: one syscall and one scheduler pass per burst instead of per message.
        """
        subscriber, ws = self.subscriber, self.ws
        window = self.route.window
        client_mode = self.client_mode
        end = self._end_id
        while True:
            limit = MAX_WRITE_BATCH
            if client_mode:
                while len(self.inflight) >= window:
                    self._acked = trio.Event()
                    await self._acked.wait()
                limit = min(limit, window - len(self.inflight))
            messages = await subscriber.get_batch(limit)
            payloads = [_text_payload(m.data()) for m in messages]
            if client_mode:
                first = self.sent + 1
                payloads = [b'{"seq":%d,"message":%s}' % (first + i, p)
                            for i, p in enumerate(payloads)]
            # The write is shielded: a drain that cancelled it halfway would leave a half
            # frame on the wire and these messages neither delivered nor undelivered. Once
            # something asks the writer to stop, the write gets a deadline (_bound_writes).
            with trio.CancelScope(shield=True, deadline=self._write_deadline) as scope:
                self._write_scope = scope
                written = await ws.send_texts(payloads)
            self._write_scope = None
            if scope.cancelled_caught:
                await ws.abort()  # a half-written frame: the stream is unusable
            if not written or scope.cancelled_caught:
                subscriber.unget(messages)  # not known to be written: nacked by the drain
                return
            count = len(messages)
            subscriber.delivered(count)
            self._exported.inc(count)
            if client_mode:
                self.inflight.extend(zip(range(self.sent + 1, self.sent + count + 1),
                                         messages, strict=True))
            else:
                subscriber.ack(messages)
            self.sent += count
            if end is not None and not self._end_seen:
                # Seen the end entry (delivery order may differ from topic order: redeliveries).
                self._end_seen = any(_position(m.message_id()) >= end for m in messages)
            if self._end_seen and self._backlog_delivered():
                # The rest of a batched entry may still be on its way from the receiving
                # thread (the broker's last id names the entry, not its last message): give
                # it END_QUIET_PERIOD to show up before calling the backlog delivered.
                with trio.move_on_after(END_QUIET_PERIOD):
                    await subscriber.wait_arrival()
                if subscriber.queue:
                    continue
                # until=end: the backlog is delivered; with ack=client, wait for its acks.
                while self.inflight:
                    self._acked = trio.Event()
                    await self._acked.wait()
                self._reached_end = True
                return

    def _backlog_delivered(self) -> bool:
        # Called once the end entry was delivered. Positions compare as (ledger, entry): a
        # batched entry holds several messages, and the broker's last id names the entry
        # (batch index -1), not its last message. The backlog is delivered once nothing of it
        # is still queued, nor dropped by backpressure and waiting for its redelivery.
        end = self._end_id
        subscriber = self.subscriber
        return not any(_position(m.message_id()) <= end for m in subscriber.queue) and not any(
            key[:2] <= end for key in subscriber.owed
        )

    async def _read_client(self) -> None:
        ws = self.ws
        while True:
            frame = await ws.receive_frame()
            if frame is None:
                # The client closed (its close frame is held) or the socket is gone.
                self._bound_writes(self.settings.socket_grace_period)
                self.intake_scope.cancel(reason="client closed")
                return
            try:
                self._apply_ack(frame)
            except InvalidAck as exc:
                await ws.send_json({"error": {"code": InvalidAck.code, "detail": str(exc)}})

    def _apply_ack(self, frame: str | bytes) -> None:
        if not self.client_mode:
            raise InvalidAck("ack=auto: this connection expects no frames from the client")
        try:
            obj = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidAck(f"not JSON: {exc}") from None
        if type(obj) is not dict or "ack" not in obj:
            raise InvalidAck('expected {"ack": N}')
        n = obj["ack"]
        if type(n) is not int:
            raise InvalidAck(f"ack must be an integer, got {json.dumps(n)[:40]}")
        if n < self.client_acked:
            raise InvalidAck(f"ack {n} goes backwards: already acked {self.client_acked}")
        if n > self.sent:
            raise InvalidAck(f"ack {n} is beyond the last seq sent ({self.sent})")
        inflight = self.inflight
        acked = []
        while inflight and inflight[0][0] <= n:
            acked.append(inflight.popleft()[1])
        if acked:
            self.subscriber.ack(acked)
        self.client_acked = n
        self._acked.set()

    async def _receive(self) -> None:
        try:
            await self.subscriber.serve_receiving()
        except BrokerError as exc:
            LOGGER.error("export stopped: %s", exc, extra=self.log_fields)
            self.error_code = 1011
            self.intake_scope.cancel(reason="broker error")

    async def _drain(self) -> None:
        subscriber = self.subscriber
        subscriber.pause()
        await subscriber.stop_receiving()
        subscriber.settle_remaining()
        if (self.client_mode and self.inflight and self.server_draining
                and self.ws.is_open and not self.ws.client_closed.is_set()):
            # CONTRACT §4: a server drain gives the client until the deadline to ack.
            with trio.move_on_at(self.drain_deadline(self.settings.subscriber_drain_timeout)):
                while self.inflight and self.ws.is_open:
                    self._acked = trio.Event()
                    await self._acked.wait()
        while self.inflight:
            subscriber.nack_delivered(self.inflight.popleft()[1])
        subscriber.settle_remaining()  # messages that arrived while we waited
        subscriber.finish(graceful=True)

    async def _forced(self) -> None:
        # The supervisor's deadline cut the run short: nack what we hold, close with 1011.
        subscriber = self.subscriber
        if not subscriber.machine.is_final:
            subscriber.pause()
            await subscriber.stop_receiving()
            subscriber.settle_remaining()
            while self.inflight:
                subscriber.nack_delivered(self.inflight.popleft()[1])
        # The socket first: closing the consumer is a broker round trip a stuck broker can
        # stretch to its timeout, and the client should not wait for it.
        await self.close_forced(self.machine)
        await subscriber.aclose()



def _position(message_id: Any) -> tuple[int, int]:
    """A message id's (ledger, entry): its place in the topic, batch index aside."""
    return (message_id.ledger_id(), message_id.entry_id())


def _text_payload(data: bytes) -> bytes:
    """A message's bytes as the payload of a text frame (which must be UTF-8)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return data.decode(errors="replace").encode()
    return data
