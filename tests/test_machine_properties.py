"""Property tests: random sequences of facts against the real machines and the real ledgers.

Nothing here re-implements a machine or a ledger. The tests record which facts they
reported and what happened to each frame or message, and check the decisions against the
contract: the close code follows from the facts (CONTRACT §4), a close is forced exactly
when a deadline cut the drain, a receipt never covers an unconfirmed frame or a rejection
the client has not been told of, no message is acked without delivery, and the supervisor
finishes only with no connection left. Every (state, event) pair is tried too: an event
the machine does not declare in a state raises and changes nothing.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from statemachine.exceptions import TransitionNotAllowed

from quiesce.core.errors import InvalidAck
from quiesce.core.protocol import Backpressure, CloseCode, ErrorCode
from quiesce.machines import (
    BrokerMachine,
    ConnectionMachine,
    DeliveryLedger,
    Lifecycle,
    ReceiptLedger,
    SupervisorMachine,
    WorkerMachine,
)

PROPERTY_SETTINGS = settings(max_examples=300, stateful_step_count=60, deadline=None)

INTAKE_FACTS = ("client_closed", "peer_lost", "frame_too_big", "failed", "finished",
                "server_drain", "deadline", "quiet", "stalled")


def declared_events(machine: Lifecycle) -> set[str]:
    """Events with a transition out of the current state (guards aside), from the class."""
    return {event.id for event in machine.allowed_events}


def all_events(machine: Lifecycle) -> set[str]:
    """Every event the machine's class declares."""
    return {event.id for event in type(machine).events}


# ------------------------------------------------ every (state, event) pair


@st.composite
def machine_and_path(draw: st.DrawFn) -> tuple[Lifecycle, list[str]]:
    """A machine driven through a random sequence of its own legal events."""
    machine: Lifecycle = draw(st.sampled_from([
        SupervisorMachine(),
        ConnectionMachine(WorkerMachine(ReceiptLedger(receipts=True, failure_cap=3))),
        WorkerMachine(ReceiptLedger(receipts=False, failure_cap=3)),
        BrokerMachine(),
    ]))
    path = []
    for _ in range(draw(st.integers(0, 8))):
        legal = sorted(declared_events(machine))
        if not legal:
            break
        event = draw(st.sampled_from(legal))
        if isinstance(machine, ConnectionMachine) and event == "drained":
            worker = machine.worker
            if worker.running.is_active:
                worker.drain()
            if worker.draining.is_active:
                worker.conclude()
        before = machine.state
        try:
            machine.send(event)
        except TransitionNotAllowed:  # declared, but its guard does not hold here
            assert machine.state == before
            continue
        path.append(event)
    return machine, path


@PROPERTY_SETTINGS
@given(machine_and_path(), st.data())
def test_an_undeclared_event_raises_and_changes_nothing(
    walked: tuple[Lifecycle, list[str]], data: st.DataObject
) -> None:
    """In every reachable state, each event the machine does not declare there is refused."""
    machine, _ = walked
    undeclared = sorted(all_events(machine) - declared_events(machine))
    if not undeclared:
        return
    event = data.draw(st.sampled_from(undeclared))
    before = machine.state
    try:
        machine.send(event)
    except TransitionNotAllowed:
        assert machine.state == before
    else:
        raise AssertionError(f"{event} was accepted in {before}")


# ------------------------------------------------ connection decisions

Fate = str  # "confirm", "reject", "fail", "pending" (never came back)


@st.composite
def import_story(draw: st.DrawFn) -> dict[str, Any]:
    """What happened on one import connection: frames' fates, facts, the last flush."""
    return {
        "receipts": draw(st.booleans()),
        "grace": draw(st.booleans()),
        "drain_before_open": draw(st.booleans()),
        "open_failed": draw(st.booleans()),
        "fates": draw(st.lists(st.sampled_from(["confirm", "reject", "fail", "pending"]),
                               max_size=8)),
        "facts": draw(st.lists(st.sampled_from(INTAKE_FACTS), max_size=4)),
        "flushed": draw(st.booleans()),
        "late_facts": draw(st.lists(st.sampled_from(("client_closed", "peer_lost", "failed",
                                                     "server_drain", "deadline")),
                                    max_size=2)),
    }


def expected_close_code(facts: set[str], forced: bool) -> CloseCode | None:
    """CONTRACT §4: 1011 forced or failed, 1009 too big, 1008 policy (a stalled client),
    the client's own code when it closed, 1001 for a server drain, 1000 when done."""
    if forced or "failed" in facts or "open_failed" in facts:
        return CloseCode.INTERNAL
    if "frame_too_big" in facts:
        return CloseCode.TOO_BIG
    if "stalled" in facts:
        return CloseCode.POLICY
    if "client_closed" in facts:
        return None
    if "server_drain" in facts:
        return CloseCode.GOING_AWAY
    return CloseCode.DONE


@PROPERTY_SETTINGS
@given(import_story())
def test_the_close_follows_from_the_facts(story: dict[str, Any]) -> None:
    """Close code, forced or graceful, and the worker's end follow from what happened."""
    ledger = ReceiptLedger(receipts=story["receipts"], failure_cap=1000)
    worker = WorkerMachine(ledger)
    machine = ConnectionMachine(worker, grace=story["grace"])
    reported: set[str] = set()
    if story["drain_before_open"]:
        machine.server_drain()
        reported.add("server_drain")
    if story["open_failed"]:
        machine.open_failed()
        reported.add("open_failed")
    else:
        machine.opened()
        assert machine.intake_open == (not story["drain_before_open"])
    fates: list[Fate] = story["fates"] if machine.intake_open else []
    for fate in fates:
        seq = ledger.receive()
        if fate == "reject":
            ledger.reject(seq, ErrorCode.INVALID_MESSAGE, "bad")
        else:
            ledger.publish()
    for seq, fate in enumerate(fates, start=1):
        if fate == "confirm":
            ledger.confirm(seq)
        elif fate == "fail":
            ledger.fail(seq, "refused")
    for fact in story["facts"]:
        before, declared = machine.state, fact in declared_events(machine)
        try:
            machine.send(fact)
        except TransitionNotAllowed:
            # Undeclared here, or declared with a guard that does not hold (quiet without a
            # server drain): refused, and nothing changed.
            assert machine.state == before
            assert not declared or fact == "quiet", (fact, before)
            continue
        assert declared, (fact, before)
        reported.add(fact)
        if fact == "server_drain" and before == "running":
            # The grace: an import keeps taking frames; anything else stops at once.
            assert machine.intake_open == story["grace"]
    if machine.running.is_active:
        machine.client_closed()  # the actor's intake always ends with a fact
        reported.add("client_closed")
    worker.drain()
    worker.conclude()
    pending = "pending" in fates
    assert worker.done == (not pending)
    if story["flushed"]:
        _, ack = ledger.take_flush()
        if ack is not None:
            ledger.receipted(ack)
    for fact in story["late_facts"][:1]:
        machine.send(fact)
        reported.add(fact)
    machine.drained()
    peer_gone = bool(reported & {"peer_lost", "frame_too_big"})
    told_nothing_owed = not fates or (
        "reject" not in fates and "fail" not in fates and not story["receipts"])
    informed = (story["flushed"] and not pending) or told_nothing_owed
    expect_forced = "deadline" in reported or pending or (not peer_gone and not informed)
    assert machine.forced == expect_forced, (story, reported)
    assert machine.close_code == expected_close_code(reported, expect_forced)
    assert machine.state == "closing"
    machine.socket_closed()
    assert machine.is_final


# ------------------------------------------------ receipt ledger


class Receipts(RuleBasedStateMachine):
    """Random intake, settlement and flushes: a receipt never covers what it must not."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = ReceiptLedger(receipts=True, failure_cap=3)
        self.published: list[int] = []  # in flight, in any order
        self.confirmed: set[int] = set()
        self.rejected: set[int] = set()
        self.told: set[int] = set()  # rejections whose error frame was sent
        self.acks: list[int] = []
        self.streak = 0  # consecutive failures since the last confirmation

    @rule(valid=st.booleans())
    def receive(self, valid: bool) -> None:
        """A frame arrives: published, or rejected at once."""
        seq = self.ledger.receive()
        if valid:
            self.ledger.publish()
            self.published.append(seq)
        else:
            self.ledger.reject(seq, ErrorCode.INVALID_MESSAGE, "bad")
            self.rejected.add(seq)

    @precondition(lambda self: self.published)
    @rule(data=st.data(), ok=st.booleans())
    def settle(self, data: st.DataObject, ok: bool) -> None:
        """The broker answers for one frame in flight (in any order)."""
        seq = data.draw(st.sampled_from(self.published))
        self.published.remove(seq)
        if ok:
            self.ledger.confirm(seq)
            self.confirmed.add(seq)
            self.streak = 0
        else:
            self.streak += 1
            assert self.ledger.fail(seq, "refused") == (self.streak == 3)
            self.rejected.add(seq)

    @rule(sent_all=st.booleans())
    def flush(self, sent_all: bool) -> None:
        """The sender flushes; the socket may fail before the receipt goes out."""
        owed, ack = self.ledger.take_flush()
        for rejection in owed:
            assert rejection.seq is not None
            self.told.add(rejection.seq)
        if ack is not None and sent_all:
            for seq in range(1, ack + 1):
                assert seq in self.confirmed or seq in self.told, (seq, ack)
            self.ledger.receipted(ack)
            self.acks.append(ack)

    @invariant()
    def receipts_only_go_forward(self) -> None:
        """Each receipt is higher than the one before."""
        assert self.acks == sorted(set(self.acks))

    @invariant()
    def in_flight_is_what_the_broker_still_owes(self) -> None:
        """Frames in flight are those published and not answered."""
        assert self.ledger.in_flight == len(self.published)
        assert self.ledger.all_settled() == (not self.published)


TestReceipts = Receipts.TestCase
TestReceipts.settings = PROPERTY_SETTINGS


# ------------------------------------------------ delivery ledger


class Message:
    """A broker message handle; a redelivery is a new handle with the same place."""

    def __init__(self, place: int, size: int = 1) -> None:
        self.place = place
        self.size = size


def message_size(message: Message) -> int:
    """The message's payload size."""
    return message.size


def message_key(message: Message) -> tuple[int, int, int, int]:
    """The message's id: entry ``place`` of ledger 0."""
    return (0, message.place, -1, -1)


class Delivery(RuleBasedStateMachine):
    """Random arrivals, writes, client acks and endings: no ack without delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger: DeliveryLedger[Message] | None = None
        self.places = itertools.count()
        self.delivered: set[int] = set()  # ids of handles written to the socket
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.taken: set[int] = set()
        self.alive: list[Message] = []  # keeps every handle alive, so ids stay unique

    @precondition(lambda self: self.ledger is None)
    @rule(client=st.booleans(), window=st.integers(1, 4), queue=st.integers(1, 4),
          strategy=st.sampled_from(list(Backpressure)),
          window_bytes=st.integers(1, 40), queue_bytes=st.integers(1, 40))
    def start(self, client: bool, window: int, queue: int, strategy: Backpressure,
              window_bytes: int, queue_bytes: int) -> None:
        """An export connection opens."""
        self.ledger = DeliveryLedger(client_acks=client, window=window, max_queue=queue,
                                     backpressure=strategy, key=message_key,
                                     size=message_size, window_bytes=window_bytes,
                                     max_queue_bytes=queue_bytes)

    def _nack(self, messages: list[Message]) -> None:
        for message in messages:
            assert id(message) not in self.acked
            self.nacked.add(id(message))

    @precondition(lambda self: self.ledger is not None)
    @rule(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=5))
    def arrive(self, sizes: list[int]) -> None:
        """A burst arrives from the consumer."""
        assert self.ledger is not None
        batch = [Message(next(self.places), size) for size in sizes]
        self.alive.extend(batch)
        self.taken.update(id(m) for m in batch)
        dropped, refused = self.ledger.arrive(batch)
        self._nack(dropped + refused)

    @precondition(lambda self: self.ledger is not None)
    @rule(limit=st.integers(1, 5), written=st.booleans())
    def write(self, limit: int, written: bool) -> None:
        """The writer takes a batch and writes it (or the socket fails and it is put back)."""
        assert self.ledger is not None
        batch = self.ledger.next_batch(limit)
        if not written:
            self.ledger.unget(batch)
            return
        _, to_ack = self.ledger.delivered_batch(batch)
        self.delivered.update(id(m) for m in batch)
        for message in to_ack:
            self.acked.add(id(message))

    @precondition(lambda self: self.ledger is not None)
    @rule(n=st.integers(-2, 12))
    def client_ack(self, n: int) -> None:
        """The client sends ``{"ack": n}``, valid or not."""
        assert self.ledger is not None
        before = self.ledger.acked
        try:
            released = self.ledger.apply_ack(f'{{"ack": {n}}}')
        except InvalidAck:
            assert self.ledger.acked == before
            return
        for message in released:
            self.acked.add(id(message))

    @precondition(lambda self: self.ledger is not None)
    @rule()
    def end(self) -> None:
        """The connection ends: intake closes and everything left is nacked."""
        assert self.ledger is not None
        self.ledger.close_intake()
        undelivered, unacked = self.ledger.settle_remaining()
        self._nack(undelivered + unacked)
        assert self.ledger.all_settled()
        assert self.acked | self.nacked == self.taken

    @invariant()
    def nothing_is_acked_without_delivery(self) -> None:
        """Every acked message was delivered; none is both acked and nacked."""
        assert self.acked <= self.delivered
        assert not self.acked & self.nacked

    @invariant()
    def the_counts_are_the_handles(self) -> None:
        """The ledger's counts match what happened to the handles."""
        if self.ledger is not None:
            assert self.ledger.acked == len(self.acked)
            assert self.ledger.nacked == len(self.nacked)
            assert self.ledger.taken == len(self.taken)
            assert len(self.ledger.inflight) <= self.ledger.window or not self.ledger.client_acks

    @invariant()
    def the_byte_bounds_hold(self) -> None:
        """Bytes queued and in flight are counted exactly and stay within their bounds.

        In flight: at most ``window_bytes``, or one message alone. Queued, with a drop
        strategy: at most ``max_queue_bytes``, or one message alone (``block`` may overshoot
        by a burst; it pauses receiving instead).
        """
        ledger = self.ledger
        if ledger is None:
            return
        inflight = [m for _, m in ledger.inflight]
        assert ledger.inflight_bytes == sum(m.size for m in inflight)
        assert ledger.queue_bytes == sum(m.size for m in ledger.queue)
        if ledger.client_acks and len(inflight) > 1:
            assert ledger.inflight_bytes <= ledger.window_bytes
        if ledger.backpressure is not Backpressure.BLOCK and len(ledger.queue) > 1:
            assert ledger.queue_bytes <= ledger.max_queue_bytes


TestDelivery = Delivery.TestCase
TestDelivery.settings = PROPERTY_SETTINGS


# ------------------------------------------------ supervisor


class Supervisor(RuleBasedStateMachine):
    """Random signals, handshakes and closes: the supervisor finishes only when all closed."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = SupervisorMachine()
        self.open = 0

    @precondition(lambda self: self.machine.starting.is_active)
    @rule()
    def ready(self) -> None:
        """The broker answers and the listener is bound."""
        signalled = self.machine.stop_requested
        self.machine.ready()
        assert self.machine.accepting == (not signalled)

    @precondition(lambda self: not self.machine.is_final)
    @rule()
    def signal(self) -> None:
        """SIGTERM: a drain is asked for (in any state until the end)."""
        self.machine.drain()
        assert not self.machine.accepting

    @precondition(lambda self: not self.machine.is_final and not self.machine.starting.is_active)
    @rule()
    def handshake(self) -> None:
        """A handshake completes and asks to be admitted."""
        serving = self.machine.accepting
        self.machine.admit()
        assert self.machine.admitted == serving
        self.open += self.machine.admitted

    @precondition(lambda self: self.open > 0)
    @rule()
    def close(self) -> None:
        """A connection closes."""
        self.machine.release()
        self.open -= 1

    @precondition(lambda self: self.machine.stop_requested and not self.machine.is_final
                  and not self.machine.starting.is_active)
    @rule()
    def deadline(self) -> None:
        """The shutdown deadline passes."""
        self.machine.deadline()

    @precondition(lambda self: self.machine.finished and not self.machine.is_final)
    @rule()
    def exit(self) -> None:
        """Listener and broker are closed."""
        self.machine.exit()

    @rule()
    def probe_readiness(self) -> None:
        """``/readyz`` asks: 200 exactly while serving."""
        assert self.machine.accepting == bool(self.machine.serving.is_active)

    @invariant()
    def finished_only_with_no_connection_left(self) -> None:
        """The drain is over only when nothing is open, and then it is over."""
        assert self.machine.connections == self.open
        if self.machine.finished:
            assert self.open == 0
        if self.machine.stop_requested and self.open == 0 and not self.machine.starting.is_active:
            assert self.machine.finished


TestSupervisor = Supervisor.TestCase
TestSupervisor.settings = PROPERTY_SETTINGS
