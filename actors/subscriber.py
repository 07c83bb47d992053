"""The subscriber actor: one Pulsar consumer per export connection, bridged to Trio.

Receiving. ``serve_receiving`` runs in the export actor's nursery and takes messages from the
consumer a burst at a time: ``batch_receive`` (up to ``RECEIVE_BATCH`` messages, or what
arrived within ``RECEIVE_BATCH_MS``) in a worker thread, one thread hop per burst. When a
burst comes back empty it waits for the next message with a blocking ``receive`` of
``IDLE_RECEIVE_MS``, so an idle connection costs ten wake-ups a second, not a hundred.

Why not a ``message_listener``: it calls Python on pulsar-client's listener thread once per
message, and that thread then competes with the Trio thread for the GIL on every message.
Measured on the export bench (20,000 messages, one socket), the listener version peaked at
~39k msg/s with 0.5 gateway CPU-seconds; batch receiving reached ~60k msg/s with 0.2.

Cancellation never strands a message: the receive runs with ``abandon_on_cancel=False``, so
a cancelled ``serve_receiving`` first gets the burst its thread was receiving and hands it to
the queue (where the drain nacks it) before the cancellation lands. Every message that
reaches this process is in ``queue``, in the export actor's hands, or already acked or nacked.

Backpressure on ``queue`` (``subscriber_max_queue_size``): ``block`` stops receiving while
the queue is full (the broker then holds the messages); ``drop_new`` nacks the message that
would not fit; ``drop_oldest`` nacks the oldest queued one to make room. A nacked message
comes back after ``nack_redelivery_delay_ms``. Nothing here acks a message: acks happen only
through ``ack``, which the export actor calls after the frame was written (``ack=auto``) or
the client acked it (``ack=client``); the machine refuses an ack without a delivery.
"""

from __future__ import annotations

import collections
import logging
import uuid
from typing import TYPE_CHECKING, Any

import pulsar
import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors._pulsar_fast import acknowledge_async
from quiesce.core.errors import BrokerError
from quiesce.machines.subscriber import SubscriberMachine

if TYPE_CHECKING:
    from quiesce.actors.broker import Broker
    from quiesce.actors.http import Route
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings

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
    """Owns one consumer, its ``SubscriberMachine`` and the per-connection queue.

    Resource handling: ``open`` subscribes; ``aclose`` is always called at the end and closes
    the consumer (a fresh per-connection subscription is deleted instead, so its backlog does
    not outlive the connection). Before ``aclose``, the export actor must have acked or
    nacked every message it took: ``settle_remaining`` nacks whatever is left.

    Args:
        broker: the process's broker.
        route: topic, subscription, position, backpressure.
        settings: queue size, nack delay.
        metrics: where to count.
        actor_id: the owning connection's id, for logs.
    """

    def __init__(
        self, broker: Broker, route: Route, settings: Settings, metrics: Metrics, actor_id: str
    ) -> None:
        self.route = route
        self.machine = SubscriberMachine()
        self.machine.observe(TransitionLog(LOGGER, "subscriber", actor_id,
                                                topic=route.topic))
        self.named = route.subscription is not None
        self.subscription = route.subscription or f"quiesce-{actor_id}-{uuid.uuid4().hex[:8]}"
        self.queue: collections.deque[Any] = collections.deque()
        self.max_queue = settings.subscriber_max_queue_size
        self._broker = broker
        self._settings = settings
        self._metrics = metrics
        self._consumer: pulsar.Consumer | None = None
        self.ack_failures = 0
        # Ids of messages nacked by backpressure and not yet seen again: until=end must wait
        # for their redelivery before it may call the backlog delivered.
        self.owed: set[tuple[int, int, int, int]] = set()
        self._arrival = trio.Event()
        self._room = trio.Event()  # set while receiving may go on (not paused)
        self._room.set()
        # One receiving thread at a time per subscriber, outside Trio's default limiter (40
        # threads for the whole process would cap the number of export connections).
        self._limiter = trio.CapacityLimiter(1)
        self._receiving = trio.CancelScope()
        self._received_all = trio.Event()
        kind = route.kind
        self._nacked_dropped = metrics.subscriber_messages_nacked.labels(kind, "backpressure")
        self._nacked_end = metrics.subscriber_messages_nacked.labels(kind, "undelivered")
        self._acked = metrics.acknowledged.labels(kind)

    async def open(self) -> None:
        """Subscribe (a broker round trip, in a worker thread).

        Raises:
            BrokerError: the broker refused or did not answer.
        """
        route = self.route
        position = (pulsar.InitialPosition.Earliest if route.position == "earliest"
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

    async def serve_receiving(self) -> None:
        """Move messages from the consumer to ``queue`` until ``stop_receiving``."""
        consumer = self._consumer
        assert consumer is not None
        try:
            with self._receiving:
                while True:
                    await self._room.wait()
                    try:
                        batch = await trio.to_thread.run_sync(
                            _receive_burst, consumer, limiter=self._limiter
                        )
                    except pulsar.PulsarException as exc:
                        raise BrokerError(f"receiving from {self.route.topic}: {exc}") from exc
                    if batch:
                        self._arrived(batch)
        finally:
            self._received_all.set()

    async def stop_receiving(self) -> None:
        """Stop ``serve_receiving`` and wait for the burst its thread may still bring."""
        self._receiving.cancel(reason="intake stopped")
        if self._consumer is not None:
            await self._received_all.wait()

    async def last_message_id(self) -> Any:
        """The id of the topic's last message now (for ``until=end``), or None if empty."""
        assert self._consumer is not None
        consumer = self._consumer
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
        return message_id

    def _arrived(self, batch: list[Any]) -> None:
        machine, queue = self.machine, self.queue
        if machine.is_final:
            # The consumer is closed or closing: the broker redelivers these anyway.
            return
        machine.take(len(batch))
        strategy = self.route.backpressure
        running = machine.running.is_active
        owed = self.owed
        for message in batch:
            if owed:
                owed.discard(message_key(message))
            if not running:
                self._nack_undelivered(message, self._nacked_end)
            elif len(queue) < self.max_queue or strategy == "block":
                queue.append(message)
            elif strategy == "drop_new":
                self._nack_undelivered(message, self._nacked_dropped)
                owed.add(message_key(message))
            else:  # drop_oldest
                oldest = queue.popleft()
                self._nack_undelivered(oldest, self._nacked_dropped)
                owed.add(message_key(oldest))
                queue.append(message)
        self._pause_if_full()
        self._arrival.set()

    def _pause_if_full(self) -> None:
        if self.route.backpressure == "block" and len(self.queue) >= self.max_queue:
            self._room = trio.Event()

    def _nack_undelivered(self, message: Any, counter: Any) -> None:
        assert self._consumer is not None
        self._consumer.negative_acknowledge(message)
        self.machine.drop()
        counter.inc()
        if self.machine.draining.is_active:
            self._metrics.shutdown_drops.inc()

    async def get_batch(self, limit: int) -> list[Any]:
        """Wait for queued messages and take up to ``limit`` of them out of the queue (FIFO)."""
        queue = self.queue
        while not queue:
            self._arrival = trio.Event()
            await self._arrival.wait()
        batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
        # Resume at a low-water mark, not at the first free slot: a thread hop per freed slot
        # around a full queue would cost more than the messages.
        if len(queue) <= self.max_queue // 2:
            self._room.set()
        return batch

    async def wait_arrival(self) -> None:
        """Wait until the next batch of messages arrives from the consumer."""
        self._arrival = trio.Event()
        await self._arrival.wait()

    def unget(self, messages: list[Any]) -> None:
        """Put back messages taken with ``get_batch`` that could not be delivered."""
        self.queue.extendleft(reversed(messages))

    def delivered(self, count: int) -> None:
        """Count messages written to the socket (not yet acked)."""
        self.machine.deliver(count)

    def ack(self, messages: list[Any]) -> None:
        """Acknowledge delivered messages in Pulsar (the machine refuses it otherwise).

        Acks are sent without waiting (the wrapper's ``acknowledge`` blocks the event loop
        for a broker round trip); a failed ack only means the broker redelivers the message,
        so failures are counted and logged, not retried.
        """
        consumer = self._consumer
        assert consumer is not None
        self.machine.ack(len(messages))
        for message in messages:
            acknowledge_async(consumer, message, self._ack_result)
        self._acked.inc(len(messages))

    def _ack_result(self, result: Any) -> None:
        # On a pulsar-client thread: count only (an int increment under the GIL).
        if result != pulsar.Result.Ok:
            self.ack_failures += 1

    def nack_delivered(self, message: Any) -> None:
        """Negatively acknowledge a delivered message the client never acked."""
        assert self._consumer is not None
        self.machine.nack_delivered()
        self._consumer.negative_acknowledge(message)
        self._nacked_end.inc()
        if self.machine.draining.is_active:
            self._metrics.shutdown_drops.inc()

    def pause(self) -> None:
        """Enter draining: later arrivals are nacked (call ``stop_receiving`` next)."""
        if self.machine.running.is_active:
            self.machine.drain()

    def settle_remaining(self) -> None:
        """Nack every queued (undelivered) message."""
        while self.queue:
            self._nack_undelivered(self.queue.popleft(), self._nacked_end)

    def finish(self, graceful: bool) -> None:
        """End the lifecycle: ``stop`` if graceful and everything was settled, else ``abandon``.

        Later arrivals are discarded (the consumer's close makes the broker redeliver them).
        Call ``aclose`` next to close the consumer.
        """
        if self.machine.running.is_active:
            self.machine.drain()
        if not self.machine.is_final:
            if graceful and self.machine.all_settled():
                self.machine.stop()
            else:
                self.machine.abandon()

    async def aclose(self) -> None:
        """Close the consumer (a fresh per-connection subscription is deleted instead)."""
        self.finish(graceful=False)  # no-op after finish(); the forced path otherwise
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


def message_key(message: Any) -> tuple[int, int, int, int]:
    """A message's full id as a hashable tuple (ledger, entry, batch index, partition)."""
    mid = message.message_id()
    return (mid.ledger_id(), mid.entry_id(), mid.batch_index(), mid.partition())
