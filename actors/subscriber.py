"""The subscriber: one Pulsar consumer per export connection, bridged to Trio.

Receiving. ``serve_receiving`` runs in the connection's nursery and takes messages from the
consumer a burst at a time: ``batch_receive`` (up to ``RECEIVE_BATCH`` messages, or what
arrived within ``RECEIVE_BATCH_MS``) in a worker thread, one thread hop per burst. When a
burst comes back empty it waits for the next message with a blocking ``receive`` of
``IDLE_RECEIVE_MS``, so an idle connection costs ten wake-ups a second, not a hundred.

Why not a ``message_listener``: it calls Python on pulsar-client's listener thread once per
message, and that thread then competes with the Trio thread for the GIL on every message.
Measured on the export bench (20,000 messages, one socket), the listener version peaked at
~39k msg/s with 0.5 gateway CPU-seconds; batch receiving reached ~60k msg/s with 0.2.

Cancellation never strands a message: the receive runs with ``abandon_on_cancel=False``, so
a cancelled ``serve_receiving`` first gets the burst its thread was receiving and hands it
on (``on_arrival``) before the cancellation lands. The subscriber keeps no counts and makes
no decisions: the export worker's ``DeliveryLedger`` says what to ack and what to nack, and
this class only does it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pulsar
import trio

from quiesce.actors._pulsar_fast import acknowledge_async
from quiesce.core.errors import BrokerError
from quiesce.core.protocol import Position

if TYPE_CHECKING:
    from quiesce.actors.broker import Broker
    from quiesce.core.config import Settings
    from quiesce.core.routes import Route
    from quiesce.machines.delivery import Key, Place

LOGGER = logging.getLogger("quiesce.subscriber")

# How long closing a consumer may take (a broker round trip).
CONSUMER_CLOSE_TIMEOUT = 5.0
# Messages the client library prefetches per consumer.
RECEIVER_QUEUE_SIZE = 1000
# Most messages taken from the consumer in one thread hop.
RECEIVE_BATCH = 256
# How long a batch_receive waits to fill a burst once messages flow (milliseconds).
RECEIVE_BATCH_MS = 10
# How long an idle consumer's blocking receive waits for the next message (milliseconds);
# it also bounds how long a drain waits for the receiving thread to come back.
IDLE_RECEIVE_MS = 100


class Subscriber:
    """Owns one consumer.

    Resource handling: ``open`` subscribes; ``aclose`` is always called at the end and closes
    the consumer (a fresh per-connection subscription is deleted instead, so its backlog does
    not outlive the connection). Before ``aclose``, the export worker must have acked or
    nacked every message it took.

    Args:
        broker: the process's broker.
        route: topic, subscription, position.
        settings: nack delay.
        actor_id: the owning connection's id (the fresh subscription's name).
        on_arrival: called in Trio with each non-empty burst received.
    """

    def __init__(self, broker: Broker, route: Route, settings: Settings, actor_id: str,
                 on_arrival: Callable[[list[Any]], None]) -> None:
        self.route = route
        self.named = route.subscription is not None
        self.subscription = route.subscription or f"quiesce-{actor_id}-{uuid.uuid4().hex[:8]}"
        self._broker = broker
        self._settings = settings
        self._on_arrival = on_arrival
        self._consumer: pulsar.Consumer | None = None
        self.ack_failures = 0
        self._resume = trio.Event()  # set while receiving may go on (not paused)
        self._resume.set()
        # One receiving thread at a time per subscriber, outside Trio's default limiter (40
        # threads for the whole process would cap the number of export connections).
        self._limiter = trio.CapacityLimiter(1)
        self._receiving = trio.CancelScope()
        self._receiving_started = False
        self._received_all = trio.Event()

    async def open(self) -> None:
        """Subscribe (a broker round trip, in a worker thread).

        Raises:
            BrokerError: the broker refused or did not answer.
        """
        route = self.route
        position = (pulsar.InitialPosition.Earliest if route.position is Position.EARLIEST
                    else pulsar.InitialPosition.Latest)

        def subscribe() -> pulsar.Consumer:
            return self._broker.client.subscribe(
                route.topic,
                self.subscription,
                consumer_type=pulsar.ConsumerType.Shared,
                batch_receive_policy=pulsar.ConsumerBatchReceivePolicy(
                    RECEIVE_BATCH, 0, RECEIVE_BATCH_MS
                ),
                receiver_queue_size=RECEIVER_QUEUE_SIZE,
                negative_ack_redelivery_delay_ms=self._settings.nack_redelivery_delay_ms,
                initial_position=position,
                consumer_name=f"quiesce-{uuid.uuid4().hex[:8]}",
            )

        try:
            self._consumer = await trio.to_thread.run_sync(subscribe, abandon_on_cancel=True)
        except Exception as exc:
            raise BrokerError(f"cannot subscribe to {route.topic}: {exc}") from exc

    async def last_place(self) -> Place | None:
        """The topic's last (ledger, entry) now, for ``until=end``; None if it is empty.

        Raises:
            BrokerError: the broker could not tell.
        """
        consumer = self._consumer
        assert consumer is not None
        try:
            message_id = await trio.to_thread.run_sync(consumer.get_last_message_id)
        except Exception as exc:
            # pulsar-lite answers an empty topic with an error instead of an earliest id.
            if "no messages" in str(exc).lower() or "UnknownError" in type(exc).__name__:
                return None
            raise BrokerError(f"cannot read the last message id of {self.route.topic}: {exc}"
                              ) from exc
        if message_id.ledger_id() < 0 or message_id.entry_id() < 0:
            return None
        return (message_id.ledger_id(), message_id.entry_id())

    async def serve_receiving(self) -> None:
        """Hand bursts from the consumer to ``on_arrival`` until ``stop_receiving``.

        Raises:
            BrokerError: receiving failed.
        """
        consumer = self._consumer
        assert consumer is not None
        self._receiving_started = True
        try:
            with self._receiving:
                while True:
                    await self._resume.wait()
                    try:
                        batch = await trio.to_thread.run_sync(
                            _receive_burst, consumer, limiter=self._limiter
                        )
                    except pulsar.PulsarException as exc:
                        raise BrokerError(f"receiving from {self.route.topic}: {exc}") from exc
                    if batch:
                        self._on_arrival(batch)
        finally:
            self._received_all.set()

    def pause(self) -> None:
        """Stop receiving after the burst in progress (backpressure: the queue is full)."""
        if self._resume.is_set():
            self._resume = trio.Event()

    def resume(self) -> None:
        """Receive again."""
        self._resume.set()

    async def stop_receiving(self) -> None:
        """Stop ``serve_receiving`` and wait for the burst its thread may still bring."""
        self._receiving.cancel(reason="intake stopped")
        # Not started yet (or never: the open failed): it will start cancelled and take
        # nothing, so there is no burst to wait for.
        if self._receiving_started:
            await self._received_all.wait()

    def ack(self, messages: list[Any]) -> None:
        """Acknowledge delivered messages in Pulsar, without waiting for the broker.

        The wrapper's ``acknowledge`` blocks the event loop for a broker round trip; a failed
        ack only means the broker redelivers the message, so failures are counted and
        logged at close, not retried.
        """
        consumer = self._consumer
        assert consumer is not None
        for message in messages:
            acknowledge_async(consumer, message, self._ack_result)

    def _ack_result(self, result: Any) -> None:
        # On a pulsar-client thread: count only (an int increment under the GIL).
        if result != pulsar.Result.Ok:
            self.ack_failures += 1

    def nack(self, messages: list[Any]) -> None:
        """Negatively acknowledge messages: the broker redelivers them after the nack delay."""
        consumer = self._consumer
        assert consumer is not None
        for message in messages:
            consumer.negative_acknowledge(message)

    async def aclose(self) -> None:
        """Close the consumer (a fresh per-connection subscription is deleted instead)."""
        consumer, self._consumer = self._consumer, None
        if self.ack_failures:
            LOGGER.warning("%d acks failed; the broker will redeliver those messages",
                           self.ack_failures, extra={"topic": self.route.topic})
        if consumer is None:
            return
        close = consumer.close if self.named else consumer.unsubscribe
        with trio.move_on_after(CONSUMER_CLOSE_TIMEOUT, shield=True):
            try:
                await trio.to_thread.run_sync(close, abandon_on_cancel=True)
            except Exception:
                LOGGER.warning("consumer close failed", exc_info=True,
                               extra={"topic": self.route.topic})
                if not self.named:
                    await trio.to_thread.run_sync(consumer.close, abandon_on_cancel=True)


def _receive_burst(consumer: pulsar.Consumer) -> list[Any]:
    """In a worker thread: the messages available now (a burst), else the next one, else []."""
    burst = consumer.batch_receive()
    if burst:
        return list(burst)
    try:
        return [consumer.receive(IDLE_RECEIVE_MS)]
    except pulsar.Timeout:
        return []


def message_key(message: Any) -> Key:
    """A message's full id as a hashable tuple (ledger, entry, batch index, partition)."""
    mid = message.message_id()
    return (mid.ledger_id(), mid.entry_id(), mid.batch_index(), mid.partition())
