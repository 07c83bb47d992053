"""Stateful property tests: random event sequences against hand-written models of the machines.

Each model keeps its own transition table and its own counts, drives the real machine, and
checks that legal steps succeed, illegal ones raise and change nothing, and the invariants in
the machines' docstrings hold after every step. The two compositions (connection + publisher,
connection + subscriber) add a socket, a client and a broker around the machines and check the
no-loss rules end to end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from statemachine.exceptions import TransitionNotAllowed

from quiesce.machines import (
    ConnectionMachine,
    PublisherMachine,
    SubscriberMachine,
    SupervisorMachine,
)

PROPERTY_SETTINGS = settings(max_examples=200, stateful_step_count=50, deadline=None)

# The models' own transition tables: (state, event) -> target, guards left to each model.
WORKER_TABLE = {
    ("running", "drain"): "draining",
    ("running", "abandon"): "abandoned",
    ("draining", "stop"): "stopped",
    ("draining", "abandon"): "abandoned",
}
WORKER_EVENTS = ("drain", "stop", "abandon")
WORKER_FINAL = frozenset({"stopped", "abandoned"})

SUPERVISOR_TABLE = {
    ("starting", "ready"): "serving",
    ("starting", "drain"): "draining",
    ("serving", "drain"): "draining",
    ("starting", "fail"): "failed",
    ("serving", "fail"): "failed",
    ("draining", "force"): "forcing",
    ("draining", "finish"): "stopped",
    ("forcing", "finish"): "stopped",
}
SUPERVISOR_EVENTS = ("ready", "drain", "force", "finish", "fail")
SUPERVISOR_FINAL = frozenset({"stopped", "failed"})

CONNECTION_TABLE = {
    ("handshake", "open"): "running",
    ("handshake", "reject"): "closed",
    ("running", "drain"): "draining",
    ("draining", "close"): "closing",
    ("draining", "force"): "closing",
    ("closing", "finish"): "closed",
}
CONNECTION_EVENTS = ("open", "reject", "drain", "close", "force", "finish")

SOCKET_CLOSED = frozenset({"closing", "closed"})


def illegal_events(
    table: dict[tuple[str, str], str], events: tuple[str, ...], state: str
) -> list[str]:
    """Events the model's table has no transition for out of ``state``."""
    return [event for event in events if (state, event) not in table]


def assert_refused(
    call: Callable[[], object],
    snapshot: Callable[[], Hashable],
    error: type[Exception] = TransitionNotAllowed,
) -> None:
    """``call`` raises ``error`` and leaves ``snapshot()`` exactly as it was."""
    before = snapshot()
    with pytest.raises(error):
        call()
    assert snapshot() == before


class FinalStateTracker:
    """Records the first final state a machine reaches and checks it is never left."""

    def __init__(self) -> None:
        self.reached: str | None = None

    def check(self, state: str, is_final: bool) -> None:
        """Call after every step with the machine's state and ``is_final``."""
        if self.reached is not None:
            assert state == self.reached, f"left final state {self.reached} for {state}"
            assert is_final
        elif is_final:
            self.reached = state


# --- publisher ---------------------------------------------------------------------------------


class PublisherModel(RuleBasedStateMachine):
    """A publisher accepting frames, settling them and draining, under random steps."""

    def __init__(self) -> None:
        super().__init__()
        self.pub = PublisherMachine()
        self.accepted = 0
        self.settled = 0
        self.final = FinalStateTracker()

    def snapshot(self) -> tuple[str, int, int]:
        return (self.pub.state, self.pub.accepted, self.pub.settled)

    @precondition(lambda self: self.pub.state == "running")
    @rule(count=st.integers(1, 3))
    def accept(self, count: int) -> None:
        for _ in range(count):
            self.pub.accept()
        self.accepted += count

    @precondition(lambda self: self.accepted > self.settled)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(0, self.accepted - self.settled), label="count")
        self.pub.settle(count)
        self.settled += count

    @rule(data=st.data())
    def counter_misuse_is_refused(self, data: st.DataObject) -> None:
        """Settling beyond accepted or a negative count, or accepting once intake closed."""
        pub = self.pub
        extra = data.draw(st.integers(1, 3), label="extra")
        misuses: list[tuple[Callable[[], object], type[Exception]]] = [
            (lambda: pub.settle(self.accepted - self.settled + extra), ValueError),
            (lambda: pub.settle(-extra), ValueError),
        ]
        if pub.state != "running":
            misuses.append((pub.accept, RuntimeError))
        call, error = data.draw(st.sampled_from(misuses), label="misuse")
        assert_refused(call, self.snapshot, error)

    @precondition(lambda self: self.pub.state == "running")
    @rule()
    def drain(self) -> None:
        self.pub.drain()
        assert self.pub.state == "draining"

    @precondition(lambda self: self.pub.state == "draining")
    @rule()
    def stop(self) -> None:
        if self.accepted == self.settled:
            self.pub.stop()
            assert self.pub.state == "stopped"
        else:
            assert_refused(self.pub.stop, self.snapshot)

    @precondition(lambda self: self.pub.state in ("running", "draining"))
    @rule()
    def abandon(self) -> None:
        self.pub.abandon()
        assert self.pub.state == "abandoned"

    @precondition(lambda self: illegal_events(WORKER_TABLE, WORKER_EVENTS, self.pub.state))
    @rule(data=st.data())
    def illegal_event_is_refused(self, data: st.DataObject) -> None:
        event = data.draw(
            st.sampled_from(illegal_events(WORKER_TABLE, WORKER_EVENTS, self.pub.state)),
            label="event",
        )
        assert_refused(lambda: self.pub.send(event), self.snapshot)

    @invariant()
    def counts_match_the_model(self) -> None:
        assert (self.pub.accepted, self.pub.settled) == (self.accepted, self.settled)
        assert self.pub.unconfirmed == self.accepted - self.settled

    @invariant()
    def settled_never_exceeds_accepted(self) -> None:
        assert 0 <= self.pub.settled <= self.pub.accepted

    @invariant()
    def stopped_implies_nothing_unconfirmed(self) -> None:
        if self.pub.state == "stopped":
            assert self.pub.unconfirmed == 0

    @invariant()
    def final_states_are_never_left(self) -> None:
        assert self.pub.is_final == (self.pub.state in WORKER_FINAL)
        self.final.check(self.pub.state, self.pub.is_final)


# --- subscriber --------------------------------------------------------------------------------


class SubscriberModel(RuleBasedStateMachine):
    """A subscriber taking, delivering, dropping, acking and nacking under random steps."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = SubscriberMachine()
        self.taken = 0
        self.delivered = 0
        self.dropped = 0
        self.acked = 0
        self.nacked_delivered = 0
        # Plain event logs, independent of the machine's arithmetic.
        self.deliveries_made = 0
        self.acks_applied = 0
        self.final = FinalStateTracker()

    @property
    def undelivered(self) -> int:
        return self.taken - self.delivered - self.dropped

    @property
    def unacked(self) -> int:
        return self.delivered - self.acked - self.nacked_delivered

    def snapshot(self) -> tuple[object, ...]:
        sub = self.sub
        return (sub.state, sub.taken, sub.delivered, sub.dropped, sub.acked, sub.nacked_delivered)

    @precondition(lambda self: self.sub.state in ("running", "draining"))
    @rule(count=st.integers(1, 3))
    def take(self, count: int) -> None:
        self.sub.take(count)
        self.taken += count

    @precondition(lambda self: self.undelivered > 0)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.undelivered), label="count")
        self.sub.deliver(count)
        self.delivered += count
        self.deliveries_made += count

    @precondition(lambda self: self.undelivered > 0)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.undelivered), label="count")
        self.sub.drop(count)
        self.dropped += count

    @precondition(lambda self: self.unacked > 0)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.unacked), label="count")
        self.sub.ack(count)
        self.acked += count
        self.acks_applied += count

    @precondition(lambda self: self.unacked > 0)
    @rule(data=st.data())
    def nack_delivered(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.unacked), label="count")
        self.sub.nack_delivered(count)
        self.nacked_delivered += count

    @rule(data=st.data())
    def ack_without_delivery_is_refused(self, data: st.DataObject) -> None:
        """No ack without delivery: acking more than is delivered and unacked raises."""
        count = self.unacked + data.draw(st.integers(1, 3), label="extra")
        assert_refused(lambda: self.sub.ack(count), self.snapshot, ValueError)

    @rule(data=st.data())
    def counter_misuse_is_refused(self, data: st.DataObject) -> None:
        """Counting beyond what is there, a negative count, or taking once stopped."""
        sub = self.sub
        extra = data.draw(st.integers(1, 3), label="extra")
        misuses: list[tuple[Callable[[], object], type[Exception]]] = [
            (lambda: sub.deliver(self.undelivered + extra), ValueError),
            (lambda: sub.drop(self.undelivered + extra), ValueError),
            (lambda: sub.nack_delivered(self.unacked + extra), ValueError),
            (lambda: sub.deliver(-extra), ValueError),
            (lambda: sub.drop(-extra), ValueError),
            (lambda: sub.ack(-extra), ValueError),
            (lambda: sub.nack_delivered(-extra), ValueError),
        ]
        if sub.is_final:
            misuses.append((sub.take, RuntimeError))
        call, error = data.draw(st.sampled_from(misuses), label="misuse")
        assert_refused(call, self.snapshot, error)

    @precondition(lambda self: self.sub.state == "running")
    @rule()
    def drain(self) -> None:
        self.sub.drain()
        assert self.sub.state == "draining"

    @precondition(lambda self: self.sub.state == "draining")
    @rule()
    def stop(self) -> None:
        if self.undelivered == 0 and self.unacked == 0:
            self.sub.stop()
            assert self.sub.state == "stopped"
        else:
            assert_refused(self.sub.stop, self.snapshot)

    @precondition(lambda self: self.sub.state in ("running", "draining"))
    @rule()
    def abandon(self) -> None:
        self.sub.abandon()
        assert self.sub.state == "abandoned"

    @precondition(lambda self: illegal_events(WORKER_TABLE, WORKER_EVENTS, self.sub.state))
    @rule(data=st.data())
    def illegal_event_is_refused(self, data: st.DataObject) -> None:
        event = data.draw(
            st.sampled_from(illegal_events(WORKER_TABLE, WORKER_EVENTS, self.sub.state)),
            label="event",
        )
        assert_refused(lambda: self.sub.send(event), self.snapshot)

    @invariant()
    def counts_match_the_model(self) -> None:
        assert self.snapshot()[1:] == (
            self.taken, self.delivered, self.dropped, self.acked, self.nacked_delivered
        )
        assert (self.sub.undelivered, self.sub.unacked) == (self.undelivered, self.unacked)
        assert self.sub.nacked == self.dropped + self.nacked_delivered

    @invariant()
    def settlements_never_exceed_deliveries(self) -> None:
        assert self.sub.acked + self.sub.nacked_delivered <= self.sub.delivered

    @invariant()
    def deliveries_and_drops_never_exceed_takes(self) -> None:
        assert self.sub.delivered + self.sub.dropped <= self.sub.taken

    @invariant()
    def stopped_implies_all_settled(self) -> None:
        if self.sub.state == "stopped":
            assert self.sub.all_settled()
            assert self.sub.taken == self.sub.acked + self.sub.nacked

    @invariant()
    def no_ack_without_delivery(self) -> None:
        assert self.acks_applied <= self.deliveries_made

    @invariant()
    def final_states_are_never_left(self) -> None:
        assert self.sub.is_final == (self.sub.state in WORKER_FINAL)
        self.final.check(self.sub.state, self.sub.is_final)


# --- supervisor --------------------------------------------------------------------------------


class SupervisorModel(RuleBasedStateMachine):
    """A supervisor starting, serving, draining and forcing while connections come and go."""

    def __init__(self) -> None:
        super().__init__()
        self.sup = SupervisorMachine()
        self.connections = 0
        self.final = FinalStateTracker()

    @initialize(serving=st.booleans(), connections=st.integers(0, 3))
    def start(self, serving: bool, connections: int) -> None:
        """Begin in starting, or already serving with a few connections open."""
        if serving:
            self.sup.ready()
            for _ in range(connections):
                self.sup.connection_opened()
            self.connections = connections

    def snapshot(self) -> tuple[str, int]:
        return (self.sup.state, self.sup.connections)

    def fire(self, event: str) -> None:
        """Send a declared event; the model's guard decides whether it may pass."""
        target = SUPERVISOR_TABLE[(self.sup.state, event)]
        if event == "finish" and self.connections > 0:
            assert_refused(lambda: self.sup.send(event), self.snapshot)
        else:
            self.sup.send(event)
            assert self.sup.state == target

    @precondition(lambda self: self.sup.state == "starting")
    @rule()
    def ready(self) -> None:
        self.fire("ready")

    @precondition(lambda self: self.sup.state in ("starting", "serving"))
    @rule()
    def drain(self) -> None:
        self.fire("drain")

    @precondition(lambda self: self.sup.state == "draining")
    @rule()
    def force(self) -> None:
        self.fire("force")

    @precondition(lambda self: self.sup.state in ("draining", "forcing"))
    @rule()
    def finish(self) -> None:
        self.fire("finish")

    @precondition(lambda self: self.sup.state in ("starting", "serving"))
    @rule()
    def fail(self) -> None:
        self.fire("fail")

    @precondition(lambda self: self.sup.state == "serving")
    @rule()
    def connection_opened(self) -> None:
        self.sup.connection_opened()
        self.connections += 1

    @precondition(lambda self: self.connections > 0)
    @rule()
    def connection_closed(self) -> None:
        self.sup.connection_closed()
        self.connections -= 1

    @precondition(lambda self: self.sup.state != "serving" or self.connections == 0)
    @rule(data=st.data())
    def counter_misuse_is_refused(self, data: st.DataObject) -> None:
        """Opening a connection when not serving, or closing one when none is open."""
        misuses: list[tuple[Callable[[], object], type[Exception]]] = []
        if self.sup.state != "serving":
            misuses.append((self.sup.connection_opened, RuntimeError))
        if self.connections == 0:
            misuses.append((self.sup.connection_closed, ValueError))
        call, error = data.draw(st.sampled_from(misuses), label="misuse")
        assert_refused(call, self.snapshot, error)

    @precondition(
        lambda self: illegal_events(SUPERVISOR_TABLE, SUPERVISOR_EVENTS, self.sup.state)
    )
    @rule(data=st.data())
    def illegal_event_is_refused(self, data: st.DataObject) -> None:
        event = data.draw(
            st.sampled_from(illegal_events(SUPERVISOR_TABLE, SUPERVISOR_EVENTS, self.sup.state)),
            label="event",
        )
        assert_refused(lambda: self.sup.send(event), self.snapshot)

    @invariant()
    def connections_match_the_model_and_never_go_negative(self) -> None:
        assert self.sup.connections == self.connections >= 0

    @invariant()
    def stopped_implies_no_connection_open(self) -> None:
        if self.sup.state == "stopped":
            assert self.sup.connections == 0

    @invariant()
    def only_serving_accepts(self) -> None:
        assert self.sup.accepting == (self.sup.state == "serving")

    @invariant()
    def final_states_are_never_left(self) -> None:
        assert self.sup.is_final == (self.sup.state in SUPERVISOR_FINAL)
        self.final.check(self.sup.state, self.sup.is_final)


# --- connection + publisher (import) -----------------------------------------------------------


class ImportConnectionModel(RuleBasedStateMachine):
    """An import connection: a client sending frames, a broker confirming them, receipts back.

    The model keeps the socket (open until a graceful close or the deadline), the frames in
    flight at the broker in order, and the set of settled sequence numbers; receipts carry the
    contiguous watermark of that set, as the importer sends them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pub = PublisherMachine()
        self.conn = ConnectionMachine(self.pub)
        self.receipts = False
        self.received = 0
        self.invalid = 0
        self.refused = 0
        self.in_flight: deque[int] = deque()
        self.settled: set[int] = set()
        self.watermark = 0
        self.peer_lost = False
        self.socket_closed = False
        self.deadline_taken = False

    @initialize(receipts=st.booleans())
    def open_connection(self, receipts: bool) -> None:
        self.receipts = receipts
        self.conn = ConnectionMachine(self.pub, receipts=receipts)
        self.conn.open()

    def snapshot(self) -> tuple[object, ...]:
        conn, pub = self.conn, self.pub
        return (
            conn.state, pub.state, conn.received, conn.rejected, conn.last_ack, conn.forced,
            conn.peer_gone, pub.accepted, pub.settled,
        )

    def settle_seq(self, seq: int) -> None:
        """Mark ``seq`` settled and advance the contiguous watermark."""
        assert seq not in self.settled
        self.settled.add(seq)
        while self.watermark + 1 in self.settled:
            self.watermark += 1

    @precondition(lambda self: self.conn.state == "running" and not self.peer_lost)
    @rule(valid=st.booleans())
    def client_sends_a_frame(self, valid: bool) -> None:
        seq = self.conn.receive_frame()
        self.received += 1
        assert seq == self.received
        if valid:
            self.pub.accept()
            self.in_flight.append(seq)
        else:
            self.conn.reject_frame()
            self.invalid += 1
            self.settle_seq(seq)

    @precondition(lambda self: self.in_flight and self.pub.state in ("running", "draining"))
    @rule()
    def broker_confirms_the_oldest_frame(self) -> None:
        self.pub.settle()
        self.settle_seq(self.in_flight.popleft())

    @precondition(lambda self: self.in_flight and self.pub.state in ("running", "draining"))
    @rule()
    def broker_refuses_the_oldest_frame(self) -> None:
        # publish-failed: settled in the publisher, answered with an error frame.
        self.pub.settle()
        self.conn.reject_frame()
        self.refused += 1
        self.settle_seq(self.in_flight.popleft())

    @precondition(
        lambda self: self.receipts
        and not self.socket_closed
        and not self.peer_lost
        and self.watermark > self.conn.last_ack
    )
    @rule(data=st.data())
    def sender_acks_a_watermark(self, data: st.DataObject) -> None:
        # The sender flushes when it gets to run: the watermark it sends may lag the model's.
        seq = data.draw(st.integers(self.conn.last_ack + 1, self.watermark), label="seq")
        self.conn.record_ack(seq)
        assert self.conn.last_ack == seq

    @rule(data=st.data())
    def counter_misuse_is_refused(self, data: st.DataObject) -> None:
        """An ack going backwards or beyond received, or a frame once no longer running."""
        conn = self.conn
        beyond = conn.received + data.draw(st.integers(1, 3), label="beyond")
        misuses: list[tuple[Callable[[], object], type[Exception]]] = [
            (lambda: conn.record_ack(beyond), ValueError),
        ]
        if conn.last_ack > 0:
            misuses.append((lambda: conn.record_ack(conn.last_ack - 1), ValueError))
        if conn.state != "running":
            misuses.append((conn.receive_frame, RuntimeError))
        call, error = data.draw(st.sampled_from(misuses), label="misuse")
        assert_refused(call, self.snapshot, error)

    def drain_both(self) -> None:
        self.conn.drain()
        self.pub.drain()

    @precondition(lambda self: self.conn.state == "running")
    @rule()
    def client_closes_or_server_drains(self) -> None:
        self.drain_both()

    @precondition(lambda self: self.conn.state == "running")
    @rule()
    def client_aborts(self) -> None:
        self.conn.peer_lost()
        self.peer_lost = True
        self.drain_both()

    @precondition(lambda self: self.conn.state == "draining" and not self.peer_lost)
    @rule()
    def peer_is_lost_while_draining(self) -> None:
        self.conn.peer_lost()
        self.peer_lost = True

    @precondition(lambda self: self.pub.state == "draining")
    @rule()
    def try_stopping_the_publisher(self) -> None:
        if not self.in_flight:
            self.pub.stop()
            assert self.pub.state == "stopped"
        else:
            assert_refused(self.pub.stop, self.snapshot)

    @precondition(lambda self: self.conn.state == "draining")
    @rule()
    def try_closing_the_connection(self) -> None:
        receipts_done = (
            not self.receipts or self.peer_lost or self.conn.last_ack == self.received
        )
        if self.pub.state == "stopped" and receipts_done:
            self.conn.close()
            assert self.conn.state == "closing"
            self.socket_closed = True
        else:
            assert_refused(self.conn.close, self.snapshot)

    @precondition(lambda self: self.conn.state == "draining")
    @rule()
    def deadline_passes(self) -> None:
        if not self.pub.is_final:
            self.pub.abandon()
        self.conn.force()
        assert self.conn.state == "closing"
        self.socket_closed = True
        self.deadline_taken = True

    @precondition(lambda self: self.conn.state == "closing")
    @rule()
    def finish(self) -> None:
        self.conn.finish()
        assert self.conn.state == "closed"

    @rule(data=st.data())
    def illegal_event_is_refused(self, data: st.DataObject) -> None:
        """An event the connection or the publisher has no transition for raises."""
        candidates = [
            (self.conn, event)
            for event in illegal_events(CONNECTION_TABLE, CONNECTION_EVENTS, self.conn.state)
        ] + [
            (self.pub, event)
            for event in illegal_events(WORKER_TABLE, WORKER_EVENTS, self.pub.state)
        ]
        machine, event = data.draw(st.sampled_from(candidates), label="event")
        assert_refused(lambda: machine.send(event), self.snapshot)

    @invariant()
    def counts_match_the_model(self) -> None:
        assert self.conn.received == self.received
        assert self.conn.rejected == self.invalid + self.refused
        assert self.pub.accepted == self.received - self.invalid
        assert self.pub.unconfirmed == len(self.in_flight)

    @invariant()
    def a_graceful_close_leaves_nothing_unconfirmed(self) -> None:
        if self.conn.state in SOCKET_CLOSED and not self.conn.forced:
            assert self.pub.state == "stopped"
            assert self.pub.unconfirmed == 0
            assert not self.in_flight
            assert self.settled == set(range(1, self.conn.received + 1))

    @invariant()
    def a_graceful_close_with_receipts_acked_every_frame(self) -> None:
        if (
            self.conn.state in SOCKET_CLOSED
            and not self.conn.forced
            and self.receipts
            and not self.peer_lost
        ):
            assert self.conn.last_ack == self.conn.received

    @invariant()
    def no_receipt_covers_an_unsettled_frame(self) -> None:
        assert self.conn.last_ack <= self.watermark
        assert all(seq in self.settled for seq in range(1, self.conn.last_ack + 1))

    @invariant()
    def closing_only_once_the_publisher_is_final(self) -> None:
        if self.conn.state in SOCKET_CLOSED:
            assert self.pub.is_final

    @invariant()
    def forced_only_by_the_deadline(self) -> None:
        assert self.conn.forced == self.deadline_taken
        if self.pub.state == "abandoned":
            assert self.conn.forced


# --- connection + subscriber (export) ----------------------------------------------------------


class ExportConnectionModel(RuleBasedStateMachine):
    """An export connection: a broker pushing messages, a client acking, a drain settling all."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = SubscriberMachine()
        self.conn = ConnectionMachine(self.sub)
        self.peer_lost = False
        self.socket_closed = False
        self.deliveries_made = 0
        self.acks_applied = 0
        self.deadline_taken = False

    @initialize()
    def open_connection(self) -> None:
        self.conn.open()

    def snapshot(self) -> tuple[object, ...]:
        conn, sub = self.conn, self.sub
        return (
            conn.state, sub.state, conn.forced, conn.peer_gone, sub.taken, sub.delivered,
            sub.dropped, sub.acked, sub.nacked_delivered,
        )

    def socket_usable(self) -> bool:
        return not self.socket_closed and not self.peer_lost

    @precondition(lambda self: self.conn.state == "running" and self.sub.state == "running")
    @rule(count=st.integers(1, 3))
    def consumer_takes(self, count: int) -> None:
        self.sub.take(count)

    @precondition(lambda self: self.sub.state == "draining")
    @rule(count=st.integers(1, 2))
    def a_late_message_arrives_while_draining(self, count: int) -> None:
        self.sub.take(count)

    @precondition(lambda self: self.sub.is_final)
    @rule()
    def take_after_stop_is_refused(self) -> None:
        assert_refused(self.sub.take, self.snapshot, RuntimeError)

    @precondition(lambda self: self.sub.undelivered > 0 and self.socket_usable())
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.sub.undelivered), label="count")
        self.sub.deliver(count)
        self.deliveries_made += count

    @precondition(lambda self: self.sub.undelivered > 0)
    @rule(data=st.data())
    def drop_under_backpressure(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.sub.undelivered), label="count")
        self.sub.drop(count)

    @precondition(lambda self: self.sub.unacked > 0 and self.socket_usable())
    @rule(data=st.data())
    def client_acks(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, self.sub.unacked), label="count")
        self.sub.ack(count)
        self.acks_applied += count

    @rule(extra=st.integers(1, 3))
    def client_ack_of_an_undelivered_message_is_refused(self, extra: int) -> None:
        count = self.sub.unacked + extra
        assert_refused(lambda: self.sub.ack(count), self.snapshot, ValueError)

    def drain_both(self) -> None:
        self.conn.drain()
        self.sub.drain()

    @precondition(lambda self: self.conn.state == "running")
    @rule()
    def client_closes_or_server_drains(self) -> None:
        self.drain_both()

    @precondition(lambda self: self.conn.state == "running")
    @rule()
    def client_aborts(self) -> None:
        self.conn.peer_lost()
        self.peer_lost = True
        self.drain_both()

    @precondition(lambda self: self.sub.state == "draining")
    @rule()
    def end_of_run_settles_the_rest(self) -> None:
        self.sub.nack_delivered(self.sub.unacked)
        self.sub.drop(self.sub.undelivered)
        assert self.sub.all_settled()

    @precondition(lambda self: self.sub.state == "draining")
    @rule()
    def try_stopping_the_subscriber(self) -> None:
        if self.sub.undelivered == 0 and self.sub.unacked == 0:
            self.sub.stop()
            assert self.sub.state == "stopped"
        else:
            assert_refused(self.sub.stop, self.snapshot)

    @precondition(lambda self: self.conn.state == "draining")
    @rule()
    def try_closing_the_connection(self) -> None:
        if self.sub.state == "stopped":
            self.conn.close()
            assert self.conn.state == "closing"
            self.socket_closed = True
        else:
            assert_refused(self.conn.close, self.snapshot)

    @precondition(lambda self: self.conn.state == "draining")
    @rule()
    def deadline_passes(self) -> None:
        if not self.sub.is_final:
            self.sub.abandon()
        self.conn.force()
        assert self.conn.state == "closing"
        self.socket_closed = True
        self.deadline_taken = True

    @precondition(lambda self: self.conn.state == "closing")
    @rule()
    def finish(self) -> None:
        self.conn.finish()

    @rule(data=st.data())
    def illegal_event_is_refused(self, data: st.DataObject) -> None:
        """An event the connection or the subscriber has no transition for raises."""
        candidates = [
            (self.conn, event)
            for event in illegal_events(CONNECTION_TABLE, CONNECTION_EVENTS, self.conn.state)
        ] + [
            (self.sub, event)
            for event in illegal_events(WORKER_TABLE, WORKER_EVENTS, self.sub.state)
        ]
        machine, event = data.draw(st.sampled_from(candidates), label="event")
        assert_refused(lambda: machine.send(event), self.snapshot)

    @invariant()
    def no_ack_without_delivery(self) -> None:
        assert self.sub.acked <= self.sub.delivered
        assert self.acks_applied == self.sub.acked
        assert self.acks_applied <= self.deliveries_made == self.sub.delivered

    @invariant()
    def a_graceful_close_settled_every_message_taken(self) -> None:
        if self.conn.state in SOCKET_CLOSED and not self.conn.forced:
            sub = self.sub
            assert sub.state == "stopped"
            assert sub.taken == sub.acked + sub.nacked_delivered + sub.dropped

    @invariant()
    def closing_only_once_the_subscriber_is_final(self) -> None:
        if self.conn.state in SOCKET_CLOSED:
            assert self.sub.is_final

    @invariant()
    def forced_only_by_the_deadline(self) -> None:
        assert self.conn.forced == self.deadline_taken
        if self.sub.state == "abandoned":
            assert self.conn.forced


TestPublisherMachine = PublisherModel.TestCase
TestPublisherMachine.settings = PROPERTY_SETTINGS
TestSubscriberMachine = SubscriberModel.TestCase
TestSubscriberMachine.settings = PROPERTY_SETTINGS
TestSupervisorMachine = SupervisorModel.TestCase
TestSupervisorMachine.settings = PROPERTY_SETTINGS
TestImportConnection = ImportConnectionModel.TestCase
TestImportConnection.settings = PROPERTY_SETTINGS
TestExportConnection = ExportConnectionModel.TestCase
TestExportConnection.settings = PROPERTY_SETTINGS
