"""How many messages an export consumer may prefetch: a byte budget over a size estimate.

A Pulsar consumer's receiver queue is counted in messages: the broker pushes up to that many
ahead of the application, whatever their size. 1000 messages of ~1 KB are ~1 MB; 1000 of
1 MB are 1 GB per connection, and pulsar-lite 0.2.0 stops dispatching to a consumer whose
prefetch is that large (it delivered 20 of 600 messages of 1 MB, then nothing: see
docs/performance.md). So the queue is sized by bytes: ``subscriber_prefetch_bytes`` divided
by the size the topic's messages are expected to have, between 1 and ``MAX_RECEIVER_QUEUE``.

The expected size comes from ``MessageSizes``: the gateway's running record, per topic, of
the largest message it has recently seen there (exported, imported, or read by a probe when
a consumer is about to subscribe to a topic it knows nothing of). Pure bookkeeping: no I/O.
"""

from __future__ import annotations

# Most messages one consumer prefetches, whatever their size (pulsar-client's own default).
MAX_RECEIVER_QUEUE = 1000
# Size assumed for a topic the gateway knows nothing of (empty, or the probe failed): the
# queue is then 32 messages with the default budget, which pulsar-lite never stalled on in
# our measurements whatever the size (it dispatches at most 20 entries per round).
UNKNOWN_MESSAGE_BYTES = 64 * 1024
# How fast a large size is forgotten: each observation keeps this share of the estimate
# before taking the max with what it saw (after ~50 observations of small messages, 0.5 %
# of a one-off large one is left).
DECAY = 0.9
# Most topics remembered (flow names come from clients): past it, the oldest entry goes.
MAX_TOPICS = 10_000


def receiver_queue_size(budget: int, expected_bytes: int | None) -> int:
    """The receiver queue for a consumer whose messages are expected to be this large.

    Args:
        budget: the bytes the consumer may hold prefetched (``subscriber_prefetch_bytes``).
        expected_bytes: the expected message size, None if unknown.

    Returns:
        ``budget // expected_bytes`` between 1 and ``MAX_RECEIVER_QUEUE``.
    """
    size = UNKNOWN_MESSAGE_BYTES if expected_bytes is None else max(1, expected_bytes)
    return max(1, min(MAX_RECEIVER_QUEUE, budget // size))


class MessageSizes:
    """The largest message recently seen per topic, decaying as smaller ones are seen."""

    def __init__(self, max_topics: int = MAX_TOPICS) -> None:
        self._largest: dict[str, float] = {}
        self._max_topics = max_topics

    def observe(self, topic: str, size: int) -> None:
        """Record that a message (or a burst whose largest message is) ``size`` bytes went by."""
        largest = self._largest
        before = largest.get(topic)
        if before is None and len(largest) >= self._max_topics:
            del largest[next(iter(largest))]  # the topic first seen longest ago
        largest[topic] = max(float(size), (before or 0.0) * DECAY)

    def expected(self, topic: str) -> int | None:
        """The size to expect on ``topic``; None if nothing was seen there."""
        value = self._largest.get(topic)
        return None if value is None else int(value)
