"""Example tests for the pure lifecycles in machines/: paths, illegal events, guards, counters."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from statemachine.exceptions import TransitionNotAllowed

from quiesce.machines import (
    ALL_MACHINES,
    ConnectionMachine,
    Lifecycle,
    PublisherMachine,
    SubscriberMachine,
    SupervisorMachine,
)


def new_connection() -> ConnectionMachine:
    """A connection over a fresh publisher, receipts off."""
    return ConnectionMachine(PublisherMachine())


FACTORIES: dict[type[Lifecycle], Callable[[], Lifecycle]] = {
    SupervisorMachine: SupervisorMachine,
    ConnectionMachine: new_connection,
    PublisherMachine: PublisherMachine,
    SubscriberMachine: SubscriberMachine,
}

# One known path of events from the initial state to every state of every machine. Every event
# on these paths is legal with all counters at zero (guards included).
PATHS: dict[type[Lifecycle], dict[str, tuple[str, ...]]] = {
    SupervisorMachine: {
        "starting": (),
        "serving": ("ready",),
        "draining": ("ready", "drain"),
        "forcing": ("ready", "drain", "force"),
        "stopped": ("ready", "drain", "finish"),
        "failed": ("fail",),
    },
    ConnectionMachine: {
        "handshake": (),
        "running": ("open",),
        "draining": ("open", "drain"),
        "closing": ("open", "drain", "force"),
        "closed": ("reject",),
    },
    PublisherMachine: {
        "running": (),
        "draining": ("drain",),
        "stopped": ("drain", "stop"),
        "abandoned": ("abandon",),
    },
    SubscriberMachine: {
        "running": (),
        "draining": ("drain",),
        "stopped": ("drain", "stop"),
        "abandoned": ("abandon",),
    },
}


def reach(cls: type[Lifecycle], state: str) -> Lifecycle:
    """A fresh ``cls`` driven along its known path into ``state``."""
    machine = FACTORIES[cls]()
    for event in PATHS[cls][state]:
        machine.send(event)
    assert machine.state == state
    return machine


def declared_events(cls: type[Lifecycle], state: str) -> set[str]:
    """Events the class declares a transition for out of ``state`` (guards ignored)."""
    source = next(s for s in cls.states if s.id == state)
    return {str(event) for transition in source.transitions for event in transition.events}


def illegal_cases() -> list[tuple[type[Lifecycle], str, str]]:
    """Every (machine, state, event) where the class declares no transition for the event."""
    cases = []
    for cls in ALL_MACHINES:
        events = [e.id for e in cls.events]
        for state in (s.id for s in cls.states):
            legal = declared_events(cls, state)
            cases.extend((cls, state, event) for event in events if event not in legal)
    return cases


def case_id(case: tuple[type[Lifecycle], str, str]) -> str:
    """A readable test id: ``Publisher-stopped-drain``."""
    cls, state, event = case
    return f"{cls.__name__.removesuffix('Machine')}-{state}-{event}"


ILLEGAL = illegal_cases()


# --- paths -------------------------------------------------------------------------------------


def test_every_state_of_every_machine_has_a_known_path() -> None:
    """The path table reaches every declared state, so the illegal-event sweep misses none."""
    for cls in ALL_MACHINES:
        assert set(PATHS[cls]) == {s.id for s in cls.states}
        for state in PATHS[cls]:
            reach(cls, state)


def test_supervisor_happy_path_goes_starting_serving_draining_stopped() -> None:
    """A supervisor serves, drains its connections and stops."""
    sup = SupervisorMachine()
    assert sup.state == "starting"
    assert not sup.accepting
    sup.ready()
    assert sup.state == "serving"
    assert sup.accepting
    sup.connection_opened()
    sup.drain()
    assert sup.state == "draining"
    assert not sup.accepting
    sup.connection_closed()
    sup.finish()
    assert sup.state == "stopped"
    assert sup.is_final


def test_supervisor_forced_path_goes_through_forcing_to_stopped() -> None:
    """After ``force`` a supervisor still stops once its last connection closes."""
    sup = SupervisorMachine()
    sup.ready()
    sup.connection_opened()
    sup.drain()
    sup.force()
    assert sup.state == "forcing"
    assert not sup.accepting
    sup.connection_closed()
    sup.finish()
    assert sup.state == "stopped"


def test_supervisor_can_drain_before_it_was_ever_ready() -> None:
    """A signal during start-up drains straight from starting."""
    sup = SupervisorMachine()
    sup.drain()
    assert sup.state == "draining"
    sup.finish()
    assert sup.state == "stopped"


@pytest.mark.parametrize("path", [(), ("ready",)])
def test_supervisor_fails_from_starting_or_serving(path: tuple[str, ...]) -> None:
    """``fail`` ends a supervisor from starting or serving in the final state failed."""
    sup = SupervisorMachine()
    for event in path:
        sup.send(event)
    sup.fail()
    assert sup.state == "failed"
    assert sup.is_final


def test_connection_happy_path_closes_gracefully_once_its_publisher_stopped() -> None:
    """An import connection runs, drains, closes gracefully and ends closed, not forced."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=True)
    assert conn.state == "handshake"
    conn.open()
    assert conn.state == "running"
    assert conn.receive_frame() == 1
    pub.accept()
    assert conn.receive_frame() == 2
    conn.reject_frame()
    pub.settle()
    conn.record_ack(2)
    conn.drain()
    pub.drain()
    assert conn.state == "draining"
    pub.stop()
    conn.close()
    assert conn.state == "closing"
    conn.finish()
    assert conn.state == "closed"
    assert conn.is_final
    assert not conn.forced
    assert (conn.received, conn.rejected, conn.last_ack) == (2, 1, 2)


def test_connection_rejected_at_the_handshake_ends_closed() -> None:
    """``reject`` takes a handshake straight to closed."""
    conn = new_connection()
    conn.reject()
    assert conn.state == "closed"
    assert conn.is_final
    assert not conn.forced


def test_connection_over_a_subscriber_closes_once_the_subscriber_stopped() -> None:
    """An export connection closes gracefully once every message taken is settled."""
    sub = SubscriberMachine()
    conn = ConnectionMachine(sub)
    conn.open()
    sub.take(3)
    sub.deliver(2)
    sub.ack()
    conn.drain()
    sub.drain()
    sub.nack_delivered()
    sub.drop()
    sub.stop()
    conn.close()
    conn.finish()
    assert conn.state == "closed"
    assert not conn.forced


def test_publisher_happy_path_goes_running_draining_stopped() -> None:
    """A publisher accepts, settles, drains and stops."""
    pub = PublisherMachine()
    assert pub.state == "running"
    pub.accept()
    pub.accept()
    assert pub.unconfirmed == 2
    pub.drain()
    assert pub.state == "draining"
    pub.settle(2)
    assert pub.unconfirmed == 0
    pub.stop()
    assert pub.state == "stopped"
    assert pub.is_final


@pytest.mark.parametrize("path", [(), ("drain",)])
def test_publisher_abandons_from_running_or_draining(path: tuple[str, ...]) -> None:
    """``abandon`` ends a publisher even with confirmations outstanding."""
    pub = PublisherMachine()
    pub.accept()
    for event in path:
        pub.send(event)
    pub.abandon()
    assert pub.state == "abandoned"
    assert pub.is_final
    assert pub.unconfirmed == 1


def test_subscriber_happy_path_goes_running_draining_stopped() -> None:
    """A subscriber takes, delivers, acks, drains and stops."""
    sub = SubscriberMachine()
    assert sub.state == "running"
    sub.take(2)
    sub.deliver(2)
    sub.ack(2)
    sub.drain()
    assert sub.state == "draining"
    sub.stop()
    assert sub.state == "stopped"
    assert sub.is_final
    assert (sub.taken, sub.delivered, sub.acked, sub.nacked) == (2, 2, 2, 0)


@pytest.mark.parametrize("path", [(), ("drain",)])
def test_subscriber_abandons_from_running_or_draining(path: tuple[str, ...]) -> None:
    """``abandon`` ends a subscriber even with messages unsettled."""
    sub = SubscriberMachine()
    sub.take()
    for event in path:
        sub.send(event)
    sub.abandon()
    assert sub.state == "abandoned"
    assert sub.is_final


# --- illegal events ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ILLEGAL, ids=case_id)
def test_an_illegal_event_raises_and_leaves_the_state_unchanged(
    case: tuple[type[Lifecycle], str, str],
) -> None:
    """An event with no transition out of the current state raises ``TransitionNotAllowed``."""
    cls, state, event = case
    machine = reach(cls, state)
    with pytest.raises(TransitionNotAllowed):
        machine.send(event)
    assert machine.state == state


@pytest.mark.parametrize("case", ILLEGAL, ids=case_id)
def test_an_illegal_event_called_as_a_method_raises_too(
    case: tuple[type[Lifecycle], str, str],
) -> None:
    """Calling the event as a method is as strict as ``send``."""
    cls, state, event = case
    machine = reach(cls, state)
    with pytest.raises(TransitionNotAllowed):
        getattr(machine, event)()
    assert machine.state == state


@pytest.mark.parametrize(
    ("cls", "state"),
    [(cls, s.id) for cls in ALL_MACHINES for s in cls.states if s.final],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_a_final_state_accepts_no_event(cls: type[Lifecycle], state: str) -> None:
    """A final state declares no transition and refuses every event of its machine."""
    assert declared_events(cls, state) == set()
    machine = reach(cls, state)
    assert machine.is_final
    for event in (e.id for e in cls.events):
        with pytest.raises(TransitionNotAllowed):
            machine.send(event)
        assert machine.state == state


def test_the_illegal_sweep_covers_a_known_number_of_cases() -> None:
    """The computed sweep is not empty by accident: events x states minus declared transitions."""
    expected = sum(
        len(cls.events) * len(cls.states)
        - sum(len(declared_events(cls, s.id)) for s in cls.states)
        for cls in ALL_MACHINES
    )
    assert len(ILLEGAL) == expected == 62


# --- guards ------------------------------------------------------------------------------------


def test_publisher_stop_is_refused_while_a_frame_is_unconfirmed() -> None:
    """``stop`` waits for the broker: the publisher stays draining until every frame settles."""
    pub = PublisherMachine()
    pub.accept()
    pub.accept()
    pub.drain()
    with pytest.raises(TransitionNotAllowed):
        pub.stop()
    assert pub.state == "draining"
    pub.settle()
    with pytest.raises(TransitionNotAllowed):
        pub.stop()
    assert pub.state == "draining"
    pub.settle()
    pub.stop()
    assert pub.state == "stopped"


def test_subscriber_stop_is_refused_while_a_message_is_undelivered() -> None:
    """A message taken but neither delivered nor dropped holds the subscriber in draining."""
    sub = SubscriberMachine()
    sub.take()
    sub.drain()
    with pytest.raises(TransitionNotAllowed):
        sub.stop()
    assert sub.state == "draining"
    sub.drop()
    sub.stop()
    assert sub.state == "stopped"


def test_subscriber_stop_is_refused_while_a_delivery_is_unacked() -> None:
    """A message delivered but neither acked nor nacked holds the subscriber in draining."""
    sub = SubscriberMachine()
    sub.take(2)
    sub.deliver(2)
    sub.ack()
    sub.drain()
    with pytest.raises(TransitionNotAllowed):
        sub.stop()
    assert sub.state == "draining"
    sub.nack_delivered()
    sub.stop()
    assert sub.state == "stopped"


@pytest.mark.parametrize("receipts", [False, True])
def test_connection_close_is_refused_until_the_worker_stopped(receipts: bool) -> None:
    """A draining connection cannot close gracefully while its publisher is still draining."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=receipts)
    conn.open()
    conn.drain()
    pub.drain()
    with pytest.raises(TransitionNotAllowed):
        conn.close()
    assert conn.state == "draining"
    pub.stop()
    conn.close()
    assert conn.state == "closing"


def test_connection_close_is_refused_when_the_worker_was_abandoned() -> None:
    """An abandoned worker never satisfies the graceful guard; only ``force`` remains."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub)
    conn.open()
    conn.drain()
    pub.abandon()
    with pytest.raises(TransitionNotAllowed):
        conn.close()
    assert conn.state == "draining"
    conn.force()
    assert conn.state == "closing"
    assert conn.forced


def test_connection_close_with_receipts_waits_for_the_last_ack() -> None:
    """With receipts on, ``close`` is refused until ``last_ack`` covers every received frame."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=True)
    conn.open()
    conn.receive_frame()
    pub.accept()
    conn.receive_frame()
    pub.accept()
    pub.settle(2)
    conn.record_ack(1)
    conn.drain()
    pub.drain()
    pub.stop()
    with pytest.raises(TransitionNotAllowed):
        conn.close()
    assert conn.state == "draining"
    conn.record_ack(2)
    conn.close()
    assert conn.state == "closing"
    assert not conn.forced


def test_connection_close_without_receipts_needs_no_ack() -> None:
    """With receipts off, a stopped worker is enough to close."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=False)
    conn.open()
    conn.receive_frame()
    pub.accept()
    pub.settle()
    conn.drain()
    pub.drain()
    pub.stop()
    conn.close()
    assert conn.state == "closing"
    assert conn.last_ack == 0


def test_connection_close_is_allowed_without_the_last_ack_once_the_peer_is_lost() -> None:
    """A lost peer cannot receive an ack, so the close does not wait for one."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=True)
    conn.open()
    conn.receive_frame()
    pub.accept()
    pub.settle()
    conn.drain()
    pub.drain()
    pub.stop()
    with pytest.raises(TransitionNotAllowed):
        conn.close()
    conn.peer_lost()
    assert conn.peer_gone
    conn.close()
    assert conn.state == "closing"


def test_connection_peer_lost_does_not_excuse_an_unstopped_worker() -> None:
    """``peer_lost`` relaxes only the receipt half of the guard, never the worker half."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=True)
    conn.open()
    conn.receive_frame()
    pub.accept()
    conn.peer_lost()
    conn.drain()
    pub.drain()
    with pytest.raises(TransitionNotAllowed):
        conn.close()
    assert conn.state == "draining"


def test_connection_force_from_draining_sets_forced() -> None:
    """``force`` leaves draining whatever the worker's state and records ``forced``."""
    pub = PublisherMachine()
    conn = ConnectionMachine(pub, receipts=True)
    conn.open()
    conn.receive_frame()
    pub.accept()
    conn.drain()
    assert not conn.forced
    conn.force()
    assert conn.state == "closing"
    assert conn.forced
    conn.finish()
    assert conn.state == "closed"
    assert conn.forced


@pytest.mark.parametrize("state", ["handshake", "running", "closing", "closed"])
def test_connection_force_is_refused_outside_draining(state: str) -> None:
    """``force`` is the deadline's edge out of draining and nowhere else."""
    conn = reach(ConnectionMachine, state)
    forced = conn.forced
    with pytest.raises(TransitionNotAllowed):
        conn.force()
    assert conn.state == state
    assert conn.forced is forced


@pytest.mark.parametrize("path", [("ready", "drain"), ("ready", "drain", "force")])
def test_supervisor_finish_is_refused_while_a_connection_is_open(path: tuple[str, ...]) -> None:
    """From draining or forcing, ``finish`` waits for the last connection to close."""
    sup = SupervisorMachine()
    sup.ready()
    sup.connection_opened()
    sup.connection_opened()
    for event in path[1:]:
        sup.send(event)
    state = sup.state
    with pytest.raises(TransitionNotAllowed):
        sup.finish()
    sup.connection_closed()
    with pytest.raises(TransitionNotAllowed):
        sup.finish()
    assert sup.state == state
    sup.connection_closed()
    sup.finish()
    assert sup.state == "stopped"


# --- counter misuse ----------------------------------------------------------------------------


def test_publisher_settle_beyond_accepted_raises() -> None:
    """Settling more frames than were accepted is refused and changes nothing."""
    pub = PublisherMachine()
    pub.accept()
    with pytest.raises(ValueError, match=r"^cannot settle 2 frames: 1 unconfirmed$"):
        pub.settle(2)
    assert (pub.accepted, pub.settled) == (1, 0)


def test_publisher_settle_of_a_negative_count_raises() -> None:
    """A negative settle would un-confirm frames and is refused."""
    pub = PublisherMachine()
    pub.accept()
    pub.settle()
    with pytest.raises(ValueError, match=r"^cannot settle -1 frames: 0 unconfirmed$"):
        pub.settle(-1)
    assert pub.settled == 1


@pytest.mark.parametrize(("path", "state"), [(("drain",), "draining"), (("abandon",), "abandoned"),
                                             (("drain", "stop"), "stopped")])
def test_publisher_accept_after_drain_raises(path: tuple[str, ...], state: str) -> None:
    """Intake closes when draining starts: ``accept`` outside running is a RuntimeError."""
    pub = PublisherMachine()
    for event in path:
        pub.send(event)
    with pytest.raises(RuntimeError, match=rf"^publisher is {state}: intake closed$"):
        pub.accept()
    assert pub.accepted == 0


def test_subscriber_ack_beyond_delivered_raises() -> None:
    """No ack without delivery: acking a message taken but not delivered is refused."""
    sub = SubscriberMachine()
    sub.take(2)
    with pytest.raises(ValueError, match=r"^cannot ack 1: only 0 delivered and unacked$"):
        sub.ack()
    sub.deliver()
    sub.ack()
    with pytest.raises(ValueError, match=r"^cannot ack 1: only 0 delivered and unacked$"):
        sub.ack()
    assert (sub.delivered, sub.acked) == (1, 1)


def test_subscriber_ack_of_a_message_already_nacked_raises() -> None:
    """A delivery nacked for redelivery can no longer be acked."""
    sub = SubscriberMachine()
    sub.take()
    sub.deliver()
    sub.nack_delivered()
    with pytest.raises(ValueError, match=r"^cannot ack 1: only 0 delivered and unacked$"):
        sub.ack()
    assert sub.acked == 0


def test_subscriber_nack_delivered_beyond_unacked_raises() -> None:
    """Nacking more deliveries than are unacked is refused."""
    sub = SubscriberMachine()
    sub.take(2)
    sub.deliver()
    with pytest.raises(ValueError, match=r"^cannot nack 2: only 1 delivered and unacked$"):
        sub.nack_delivered(2)
    assert sub.nacked_delivered == 0


def test_subscriber_deliver_beyond_taken_raises() -> None:
    """Delivering more than was taken (and not dropped) is refused."""
    sub = SubscriberMachine()
    sub.take(2)
    sub.drop()
    with pytest.raises(ValueError, match=r"^cannot deliver 2: 1 undelivered$"):
        sub.deliver(2)
    assert sub.delivered == 0


def test_subscriber_drop_beyond_undelivered_raises() -> None:
    """Dropping more than is undelivered is refused."""
    sub = SubscriberMachine()
    sub.take()
    sub.deliver()
    with pytest.raises(ValueError, match=r"^cannot drop 1: 0 undelivered$"):
        sub.drop()
    assert sub.dropped == 0


@pytest.mark.parametrize("method", ["deliver", "drop", "ack", "nack_delivered"])
def test_subscriber_counters_refuse_a_negative_count(method: str) -> None:
    """A negative count would undo a settlement and is refused by every counter."""
    sub = SubscriberMachine()
    sub.take(2)
    sub.deliver()
    before = (sub.taken, sub.delivered, sub.dropped, sub.acked, sub.nacked_delivered)
    with pytest.raises(ValueError, match=r"^cannot \w+ -1: "):
        getattr(sub, method)(-1)
    assert (sub.taken, sub.delivered, sub.dropped, sub.acked, sub.nacked_delivered) == before


def test_subscriber_take_while_draining_is_counted() -> None:
    """Messages already on their way still arrive while draining, and must be counted."""
    sub = SubscriberMachine()
    sub.drain()
    sub.take(2)
    assert sub.taken == 2
    with pytest.raises(TransitionNotAllowed):
        sub.stop()
    sub.drop(2)
    sub.stop()
    assert sub.state == "stopped"


@pytest.mark.parametrize(("path", "state"), [(("abandon",), "abandoned"),
                                             (("drain", "stop"), "stopped")])
def test_subscriber_take_after_stop_raises(path: tuple[str, ...], state: str) -> None:
    """Intake is closed in a final state: ``take`` there is a RuntimeError."""
    sub = SubscriberMachine()
    for event in path:
        sub.send(event)
    with pytest.raises(RuntimeError, match=rf"^subscriber is {state}: intake closed$"):
        sub.take()
    assert sub.taken == 0


def test_subscriber_take_of_a_negative_count_raises() -> None:
    """Like every other counter, ``take`` refuses a negative count."""
    sub = SubscriberMachine()
    sub.take(2)
    sub.deliver(2)
    with pytest.raises(ValueError, match=r"^cannot take -1 messages$"):
        sub.take(-1)
    assert sub.delivered + sub.dropped <= sub.taken


def test_connection_record_ack_going_backwards_raises() -> None:
    """A receipt never goes backwards."""
    conn = new_connection()
    conn.open()
    for _ in range(3):
        conn.receive_frame()
    conn.record_ack(2)
    with pytest.raises(ValueError, match=r"^ack 1 must be between 2 and 3$"):
        conn.record_ack(1)
    assert conn.last_ack == 2


def test_connection_record_ack_beyond_received_raises() -> None:
    """A receipt never covers a frame not yet received."""
    conn = new_connection()
    conn.open()
    for _ in range(3):
        conn.receive_frame()
    with pytest.raises(ValueError, match=r"^ack 4 must be between 0 and 3$"):
        conn.record_ack(4)
    assert conn.last_ack == 0


def test_connection_record_ack_may_repeat_the_last_ack() -> None:
    """Recording the same watermark twice is harmless."""
    conn = new_connection()
    conn.open()
    conn.receive_frame()
    conn.record_ack(1)
    conn.record_ack(1)
    assert conn.last_ack == 1


@pytest.mark.parametrize("state", ["handshake", "draining", "closing", "closed"])
def test_connection_receive_frame_outside_running_raises(state: str) -> None:
    """Frames are numbered only while the connection runs."""
    conn = reach(ConnectionMachine, state)
    with pytest.raises(RuntimeError, match=rf"^connection is {state}: not taking frames$"):
        conn.receive_frame()
    assert conn.received == 0


def test_supervisor_connection_closed_with_none_open_raises() -> None:
    """The connection count never goes below zero."""
    sup = SupervisorMachine()
    sup.ready()
    with pytest.raises(ValueError, match=r"^no connection is open$"):
        sup.connection_closed()
    assert sup.connections == 0


@pytest.mark.parametrize("state", ["starting", "draining", "forcing", "stopped", "failed"])
def test_supervisor_connection_opened_when_not_serving_raises(state: str) -> None:
    """Handshakes are counted only while serving."""
    sup = reach(SupervisorMachine, state)
    with pytest.raises(
        RuntimeError, match=rf"^supervisor is {state}: not accepting connections$"
    ):
        sup.connection_opened()
    assert sup.connections == 0
