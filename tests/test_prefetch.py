"""Export prefetch is sized by bytes (core/prefetch.py): pure rules, no broker."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quiesce.core.config import Settings
from quiesce.core.prefetch import (
    MAX_RECEIVER_QUEUE,
    UNKNOWN_MESSAGE_BYTES,
    MessageSizes,
    receiver_queue_size,
)

MIB = 1024 * 1024


def test_small_messages_keep_the_full_queue_and_large_ones_get_a_few() -> None:
    """~1.2 KB messages prefetch 1000; 1 MB messages 2 with the default 2 MiB budget."""
    budget = Settings().subscriber_prefetch_bytes
    assert budget == 2 * MIB
    assert receiver_queue_size(budget, 1_200) == MAX_RECEIVER_QUEUE == 1000
    assert receiver_queue_size(budget, 16 * 1024) == 128
    assert receiver_queue_size(budget, MIB) == 2
    assert receiver_queue_size(budget, 50 * MIB) == 1


def test_an_unknown_size_prefetches_what_the_budget_holds_of_the_assumed_size() -> None:
    """A topic nothing is known of gets budget / UNKNOWN_MESSAGE_BYTES (32 by default)."""
    assert receiver_queue_size(2 * MIB, None) == 2 * MIB // UNKNOWN_MESSAGE_BYTES == 32


@given(st.integers(1024, 1 << 40), st.one_of(st.none(), st.integers(0, 1 << 40)))
def test_the_queue_is_between_1_and_1000_and_within_budget_unless_one_message_exceeds_it(
    budget: int, size: int | None
) -> None:
    """Never 0 (that is pulsar-client's zero-queue mode), never above 1000, and queue x size
    stays within the budget whenever a single message fits in it."""
    queue = receiver_queue_size(budget, size)
    assert 1 <= queue <= MAX_RECEIVER_QUEUE
    expected = UNKNOWN_MESSAGE_BYTES if size is None else max(1, size)
    if expected <= budget:
        assert queue * expected <= budget


def test_sizes_remember_the_largest_message_and_forget_it_as_small_ones_pass() -> None:
    """A large message sets the estimate; a run of small ones brings it back down."""
    sizes = MessageSizes()
    assert sizes.expected("t") is None
    sizes.observe("t", 1_000)
    sizes.observe("t", MIB)
    sizes.observe("t", 1_000)
    assert sizes.expected("t") == int(MIB * 0.9)
    for _ in range(100):
        sizes.observe("t", 1_000)
    assert sizes.expected("t") == 1_000
    assert sizes.expected("other") is None


def test_sizes_remember_a_bounded_number_of_topics() -> None:
    """Past the bound, the topic first seen longest ago is forgotten (flows are unbounded)."""
    sizes = MessageSizes(max_topics=2)
    sizes.observe("a", 1)
    sizes.observe("b", 2)
    sizes.observe("a", 3)
    sizes.observe("c", 4)
    assert [sizes.expected(t) for t in "abc"] == [None, 2, 4]
