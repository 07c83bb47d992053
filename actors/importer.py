"""The import connection actor: WebSocket frames in, Pulsar messages out, receipts back.

Theory of operation. Three things run per connection, in one nursery:

- the *reader* (``_read_frames``) takes a permit from the publisher (at most
  ``publisher_max_queue_size`` frames unconfirmed), then one frame; it numbers the frame,
  validates it and hands it to the producer, or settles it at once with an error frame.
  Awaiting happens only where no frame is held, so cancelling the reader — the first step of
  every drain — can never lose a received frame.
- the publisher's confirmations arrive in batches through ``_settled`` and advance the
  *watermark*: the highest N such that frames 1..N are all settled.
- the *sender* (``_send_receipts``) writes error frames, then ``{"ack": watermark}``. Taking
  the watermark before sending the error frames queued up to that moment guarantees that an
  ack never covers a rejected frame whose error frame has not been sent.

End of a connection, whatever the cause (client close frame, lost TCP, server drain):
stop the reader → drain the publisher (bounded) → stop the sender after a last flush (the
final ack) → the connection machine's ``close`` (or, past the deadline, ``force``) → answer
the close handshake.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.connection import ConnectionActor, GatewayConnection, Services
from quiesce.actors.publisher import Publisher
from quiesce.core.errors import BrokerError, InvalidMessage
from quiesce.core.wire import validate
from quiesce.machines.connection import ConnectionMachine

LOGGER = logging.getLogger("quiesce.import")

# Receipts are coalesced: after sending one, the sender lets this much time pass before the
# next, so a fast stream gets a few hundred acks a second instead of one per broker batch.
RECEIPT_INTERVAL = 0.005

BINARY_DETAIL = "binary frames are not supported: send each message as a JSON text frame"


class ImportActor(ConnectionActor):
    """One import WebSocket, its publisher and its connection machine."""

    direction = "import"

    def __init__(self, ws: GatewayConnection, services: Services) -> None:
        super().__init__(ws, services)
        route = self.route
        self.publisher = Publisher(
            services.broker, route.topic, route.kind, self.settings, self.metrics,
            self._settled, self.id,
        )
        self.machine = ConnectionMachine(self.publisher.machine, receipts=route.receipts)
        self.machine.observe(TransitionLog(LOGGER, "connection", self.id,
                                                direction="import", **self.log_fields))
        self.watermark = 0
        self._ahead: set[int] = set()
        self._errors: deque[dict[str, object]] = deque()
        self._dirty = trio.Event()
        self._closing = False
        self._consecutive_failures = 0
        self._stop_requested = trio.Event()
        self._sender_done = trio.Event()
        self._rejected = {
            code: self.metrics.rejected.labels(route.kind, code)
            for code in ("invalid-message", "unsupported-frame", "publish-failed")
        }

    async def run(self) -> None:
        """Serve the connection until its socket is closed (see the module docstring)."""
        machine = self.machine
        machine.open()
        with self.run_scope:
            try:
                await self.publisher.open()
            except BrokerError as exc:
                LOGGER.error("import cannot start: %s", exc, extra=self.log_fields)
                self._errors.append({"error": {"code": "broker-unavailable", "detail": str(exc)}})
                self._dirty.set()
                self.error_code = 1011
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_receipts)
                if self.publisher.is_open:
                    with self.intake_scope:
                        await self._read_frames()
                started = trio.current_time()
                machine.drain()
                await self.publisher.drain(
                    self.drain_deadline(self.settings.publisher_drain_timeout)
                )
                await self._stop_sender(self.drain_deadline(self.settings.socket_grace_period))
                nursery.cancel_scope.cancel(reason="sender outlived its deadline")
            if not self.ws.is_open:
                machine.peer_lost()
            await self.close_socket(machine, started, self.error_code)
            await self.publisher.aclose()
        if self.run_scope.cancelled_caught:
            await self._forced()

    async def _forced(self) -> None:
        # The supervisor's deadline cut the run short, wherever it was.
        if not self.publisher.machine.is_final:
            self.publisher.machine.abandon()
        await self.close_forced(self.machine)
        await self.publisher.aclose()

    async def _read_frames(self) -> None:
        ws, publisher, machine = self.ws, self.publisher, self.machine
        kind = self.route.kind
        while True:
            await publisher.wait_capacity()
            try:
                frame = await ws.receive_frame()
            except InvalidMessage as exc:
                publisher.release_capacity()
                self._reject(machine.receive_frame(), exc.code, exc.detail)
                continue
            except BaseException:
                publisher.release_capacity()
                raise
            if frame is None:
                publisher.release_capacity()
                return
            seq = machine.receive_frame()
            if type(frame) is str:
                try:
                    validate(kind, frame)
                except InvalidMessage as exc:
                    publisher.release_capacity()
                    self._reject(seq, exc.code, exc.detail)
                    continue
                publisher.publish_nowait(seq, frame.encode())
            else:
                publisher.release_capacity()
                self._reject(seq, "unsupported-frame", BINARY_DETAIL)

    def _reject(self, seq: int, code: str, detail: str) -> None:
        self.machine.reject_frame()
        self._rejected[code].inc()
        self._errors.append({"error": {"seq": seq, "code": code, "detail": detail}})
        self._settle(seq)
        self._dirty.set()  # the error frame goes out now, even if the watermark waits

    def _settled(self, seq: int, failure: str | None) -> None:
        if failure is None:
            self._consecutive_failures = 0
            self._settle(seq)
            return
        self._reject(seq, "publish-failed", failure)
        self._consecutive_failures += 1
        if self._consecutive_failures == self.settings.max_consecutive_errors:
            # The spec's cap on consecutive send errors: stop taking frames, drain, 1011.
            LOGGER.error("closing after %d consecutive publish failures",
                         self._consecutive_failures, extra=self.log_fields)
            self.error_code = 1011
            self.intake_scope.cancel(reason="too many consecutive publish failures")

    def _settle(self, seq: int) -> None:
        if seq != self.watermark + 1:
            self._ahead.add(seq)
            return
        ahead = self._ahead
        while seq + 1 in ahead:
            seq += 1
            ahead.remove(seq)
        self.watermark = seq
        self._dirty.set()

    async def _send_receipts(self) -> None:
        # The only task that writes to the socket while the connection runs.
        try:
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                closing = self._closing  # read before the flush: a later stop flushes again
                if not await self._flush() or closing:
                    return
                with trio.move_on_after(RECEIPT_INTERVAL):
                    while not self._closing:  # a stop request ends the pause at once
                        await self._stop_requested.wait()
        finally:
            self._sender_done.set()

    async def _flush(self) -> bool:
        watermark = self.watermark
        errors = self._errors
        for _ in range(len(errors)):
            if not await self.ws.send_json(errors.popleft()):
                return False
        if self.route.receipts and watermark > self.machine.last_ack:
            if not await self.ws.send_text(f'{{"ack":{watermark}}}'):
                return False
            self.machine.record_ack(watermark)
        return True

    async def _stop_sender(self, deadline: float) -> None:
        self._closing = True
        self._stop_requested.set()
        self._dirty.set()
        with trio.move_on_at(deadline):
            await self._sender_done.wait()
