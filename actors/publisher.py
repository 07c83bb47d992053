"""The publisher: one Pulsar producer per import connection, driven without blocking Trio.

Frames go out with ``producer.send_async``; the producer's callback runs on a pulsar-client
thread and only appends to a ``Handoff``, which delivers confirmations to Trio in batches,
in send order, to the import worker. The publisher keeps no counts: the import's
``ReceiptLedger`` is their one home. Nothing here waits with a timeout that could drop a
frame: the only deadline is the drain's, and what it leaves unconfirmed is never receipted,
so the client resends it.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pulsar
import trio

from quiesce.actors._bridge import Handoff
from quiesce.actors._pulsar_fast import send_async
from quiesce.core.errors import BrokerError

if TYPE_CHECKING:
    from quiesce.actors.broker import Broker
    from quiesce.core.config import Settings

LOGGER = logging.getLogger("quiesce.publisher")

# Called in Trio with a batch of (sequence number, None if persisted else why not).
SettledBatch = Callable[[list[tuple[int, str | None]]], None]


class Publisher:
    """Owns one producer.

    Resource handling: ``open`` creates the producer; ``aclose`` closes it (always called).

    Args:
        broker: the process's broker.
        topic: the topic to publish to.
        settings: queue size, batching, flush timeout.
        on_settled: told in Trio of every confirmation or refusal, in send order.
    """

    def __init__(
        self, broker: Broker, topic: str, settings: Settings, on_settled: SettledBatch
    ) -> None:
        self.topic = topic
        self._broker = broker
        self._settings = settings
        self._on_settled = on_settled
        self._handoff: Handoff[tuple[int, Any]] = Handoff(self._settle_batch)
        self._producer: pulsar.Producer | None = None
        self._largest = 0  # the largest payload published so far (it sizes export prefetch)

    async def open(self) -> None:
        """Create the producer (a broker round trip, done in a worker thread).

        Raises:
            BrokerError: the broker refused or did not answer.
        """
        settings = self._settings

        def create() -> pulsar.Producer:
            return self._broker.client.create_producer(
                self.topic,
                producer_name=f"quiesce-{uuid.uuid4().hex[:12]}",
                batching_enabled=settings.producer_batching,
                # Pulsar's own default (10 ms): measured here, 1 ms cost the gateway 40 % more
                # CPU per frame than 10 ms for the same 20,000 frames (more, smaller batches).
                batching_max_publish_delay_ms=settings.producer_batch_delay_ms,
                batching_max_messages=1000,
                max_pending_messages=settings.publisher_max_queue_size + 1,
                block_if_queue_full=False,
                # No send timeout: the drain deadline is the only one, and a frame it leaves
                # unconfirmed is simply never receipted.
                send_timeout_millis=0,
            )

        try:
            self._producer = await trio.to_thread.run_sync(create, abandon_on_cancel=True)
        except Exception as exc:
            raise BrokerError(f"cannot create a producer on {self.topic}: {exc}") from exc

    def publish_nowait(self, seq: int, payload: bytes) -> None:
        """Hand frame ``seq`` to the producer; its fate arrives later through ``on_settled``."""
        assert self._producer is not None, "publish before open"
        if len(payload) > self._largest:
            # Exports of this topic size their prefetch by what goes by (core/prefetch.py).
            self._largest = len(payload)
            self._broker.message_sizes.observe(self.topic, self._largest)
        send_async(self._producer, payload, functools.partial(self._sent, seq))

    def _sent(self, seq: int, result: Any, _msg_id: Any) -> None:
        # On a pulsar-client thread: hand over and return at once.
        self._handoff.put((seq, result))

    def _settle_batch(self, batch: list[tuple[int, Any]]) -> None:
        ok = pulsar.Result.Ok
        self._on_settled([
            (seq, None if result == ok else f"broker refused the message: {result}")
            for seq, result in batch
        ])

    async def aclose(self) -> None:
        """Close the producer (bounded, shielded: it runs on every way out)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # Closing flushes the producer: bounded by producer_flush_timeout, shielded because it
        # runs on every way out, cancellation included.
        with trio.move_on_after(self._settings.producer_flush_timeout, shield=True):
            try:
                await trio.to_thread.run_sync(producer.close, abandon_on_cancel=True)
            except Exception:
                LOGGER.warning("producer close failed", exc_info=True,
                               extra={"topic": self.topic})
