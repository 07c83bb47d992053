"""Example tests for machines/: each lifecycle's paths, its decisions, and refused events."""

from __future__ import annotations

from typing import Any

import pytest
from statemachine.exceptions import TransitionNotAllowed

from quiesce.core.errors import InvalidAck
from quiesce.core.protocol import Backpressure, CloseCode, ErrorCode
from quiesce.machines import (
    ALL_MACHINES,
    BrokerMachine,
    ConnectionMachine,
    DeliveryLedger,
    Lifecycle,
    PoolMachine,
    ReceiptLedger,
    SupervisorMachine,
    WorkerMachine,
)


class Settled:
    """A ledger stand-in whose answers the test sets (for the lifecycles' guards)."""

    def __init__(self, settled: bool = True, informed: bool = True) -> None:
        self.settled = settled
        self.informed = informed

    def all_settled(self) -> bool:
        """What the test says."""
        return self.settled

    def client_informed(self) -> bool:
        """What the test says."""
        return self.informed


def refused(machine: Lifecycle, event: str) -> None:
    """Firing ``event`` raises TransitionNotAllowed and leaves the state as it was."""
    before = machine.state
    with pytest.raises(TransitionNotAllowed):
        machine.send(event)
    assert machine.state == before


def connection(settled: bool = True, informed: bool = True) -> ConnectionMachine:
    """A connection over a worker whose ledger answers as given, opened."""
    machine = ConnectionMachine(WorkerMachine(Settled(settled, informed)))
    machine.opened()
    return machine


def drain_and_close(machine: ConnectionMachine) -> None:
    """The actor's line after intake: the worker drains and concludes, then ``drained``."""
    machine.worker.drain()
    machine.worker.conclude()
    machine.drained()


# ------------------------------------------------------------------ worker


def test_a_worker_with_everything_settled_concludes_stopped() -> None:
    """``conclude`` takes the graceful edge when the ledger has nothing unsettled."""
    worker = WorkerMachine(Settled(settled=True))
    worker.drain()
    worker.conclude()
    assert worker.state == "stopped" and worker.done


def test_a_worker_with_something_unsettled_concludes_abandoned() -> None:
    """``conclude`` takes the abandon edge when the ledger still owes a settlement."""
    worker = WorkerMachine(Settled(settled=False))
    worker.drain()
    worker.conclude()
    assert worker.state == "abandoned" and not worker.done


def test_a_worker_refuses_to_conclude_before_draining_and_to_drain_twice() -> None:
    """Impossible worker events raise and change nothing."""
    worker = WorkerMachine(Settled())
    refused(worker, "conclude")
    worker.drain()
    refused(worker, "drain")
    worker.conclude()
    refused(worker, "drain")
    refused(worker, "conclude")


# -------------------------------------------------------------- connection


@pytest.mark.parametrize(
    ("fact", "code"),
    [
        ("client_closed", None),
        ("server_drain", CloseCode.GOING_AWAY),
        ("failed", CloseCode.INTERNAL),
        ("frame_too_big", CloseCode.TOO_BIG),
        ("finished", CloseCode.DONE),
        ("stalled", CloseCode.POLICY),
        ("peer_lost", CloseCode.DONE),
    ],
)
def test_the_fact_that_ends_intake_decides_the_close_code(fact: str, code: CloseCode | None
                                                          ) -> None:
    """Each fact that ends a running connection leads to its CONTRACT §4 close code."""
    machine = connection()
    machine.send(fact)
    assert machine.state == "draining" and not machine.intake_open
    drain_and_close(machine)
    assert machine.state == "closing"
    assert machine.close_code == code
    assert not machine.forced


def test_a_client_close_during_a_server_drain_is_echoed() -> None:
    """The client's own close code wins over 1001 when it closed first or during the drain."""
    machine = connection()
    machine.server_drain()
    machine.client_closed()
    drain_and_close(machine)
    assert machine.close_code is None


def test_a_failure_wins_over_the_clients_close() -> None:
    """A broker failure closes with 1011 even when the client also closed."""
    machine = connection()
    machine.client_closed()
    machine.failed()
    drain_and_close(machine)
    assert machine.close_code is CloseCode.INTERNAL


def test_an_abandoned_worker_forces_the_close() -> None:
    """``drained`` takes the forced edge when the worker could not settle everything."""
    machine = connection(settled=False)
    machine.client_closed()
    drain_and_close(machine)
    assert machine.forced and machine.close_code is CloseCode.INTERNAL


def test_receipts_not_all_sent_force_the_close_unless_the_peer_is_gone() -> None:
    """A client still there must have every receipt before a graceful close."""
    machine = connection(informed=False)
    machine.client_closed()
    drain_and_close(machine)
    assert machine.forced
    gone = connection(informed=False)
    gone.peer_lost()
    drain_and_close(gone)
    assert not gone.forced


def test_the_shutdown_deadline_forces_the_close_even_with_the_worker_done() -> None:
    """A drain cut by the supervisor's deadline is forced (1011), whatever the worker did."""
    machine = connection()
    machine.server_drain()
    machine.deadline()
    drain_and_close(machine)
    assert machine.forced and machine.close_code is CloseCode.INTERNAL


def test_a_server_drain_gives_an_import_a_grace_until_its_client_goes_quiet() -> None:
    """With ``grace``, a server drain leaves intake open; ``quiet`` then ends it with 1001."""
    machine = ConnectionMachine(WorkerMachine(Settled()), grace=True)
    machine.opened()
    refused(machine, "quiet")  # no drain asked for: the fact cannot be
    machine.server_drain()
    assert machine.state == "running" and machine.intake_open
    machine.quiet()
    assert machine.state == "draining"
    drain_and_close(machine)
    assert machine.close_code is CloseCode.GOING_AWAY and not machine.forced


def test_a_client_close_during_the_grace_is_echoed() -> None:
    """A client that finishes and closes within the grace gets its own close code back."""
    machine = ConnectionMachine(WorkerMachine(Settled()), grace=True)
    machine.opened()
    machine.server_drain()
    machine.client_closed()
    drain_and_close(machine)
    assert machine.close_code is None


def test_a_drain_requested_while_opening_skips_running() -> None:
    """``opened`` goes straight to draining when the server drained during the open."""
    machine = ConnectionMachine(WorkerMachine(Settled()))
    machine.server_drain()
    machine.opened()
    assert machine.state == "draining"
    drain_and_close(machine)
    assert machine.close_code is CloseCode.GOING_AWAY


def test_a_failed_open_drains_and_closes_with_1011() -> None:
    """No producer or consumer: the connection drains (nothing) and closes with 1011."""
    machine = ConnectionMachine(WorkerMachine(Settled()))
    machine.open_failed()
    drain_and_close(machine)
    machine.socket_closed()
    assert machine.state == "closed" and machine.close_code is CloseCode.INTERNAL


def test_a_connection_refuses_impossible_events() -> None:
    """Closing before draining, a second open, intake facts while closing: refused."""
    machine = connection()
    refused(machine, "drained")
    refused(machine, "socket_closed")
    refused(machine, "opened")
    machine.client_closed()
    refused(machine, "finished")
    refused(machine, "frame_too_big")
    drain_and_close(machine)
    refused(machine, "drained")
    machine.peer_lost()  # a background task may still report it: declared, changes nothing
    assert machine.state == "closing"
    machine.socket_closed()
    refused(machine, "server_drain")


# -------------------------------------------------------------- supervisor


def test_the_supervisor_admits_only_while_serving() -> None:
    """``admit`` counts a connection in while serving and turns it away once draining."""
    machine = SupervisorMachine()
    machine.ready()
    machine.admit()
    assert machine.admitted and machine.connections == 1 and machine.accepting
    machine.drain()
    assert machine.state == "draining" and not machine.accepting
    machine.admit()
    assert not machine.admitted and machine.connections == 1
    machine.release()
    assert machine.state == "stopped" and machine.finished
    machine.exit()
    assert machine.state == "exited"


def test_a_drain_with_no_connection_stops_at_once() -> None:
    """``drain`` in serving with nothing open goes straight to stopped."""
    machine = SupervisorMachine()
    machine.ready()
    machine.drain()
    assert machine.state == "stopped"


def test_a_signal_during_start_up_means_the_gateway_never_serves() -> None:
    """A drain asked for while starting makes ``ready`` go to stopped, not serving."""
    machine = SupervisorMachine()
    machine.drain()
    assert machine.state == "starting"
    machine.ready()
    assert machine.state == "stopped" and not machine.accepting


def test_the_deadline_forces_and_the_last_release_stops() -> None:
    """Past the deadline the supervisor forces; it stops only when the last one is gone."""
    machine = SupervisorMachine()
    machine.ready()
    machine.admit()
    machine.admit()
    machine.drain()
    machine.deadline()
    assert machine.state == "forcing"
    machine.release()
    assert machine.state == "forcing"
    machine.release()
    assert machine.state == "stopped"


@pytest.mark.parametrize("path", [[], ["ready"], ["ready", "admit", "drain"],
                                  ["ready", "admit", "drain", "deadline"], ["ready", "drain"]])
def test_the_supervisor_can_fail_from_every_state_but_the_final_ones(path: list[str]) -> None:
    """``fail`` is legal until the process has exited or failed."""
    machine = SupervisorMachine()
    for event in path:
        machine.send(event)
    machine.fail()
    assert machine.state == "failed"
    refused(machine, "fail")
    refused(machine, "drain")


def test_the_supervisor_refuses_impossible_events() -> None:
    """A second ready, a release with nothing open in starting, exit before stopping."""
    machine = SupervisorMachine()
    refused(machine, "release")
    refused(machine, "exit")
    refused(machine, "deadline")
    machine.ready()
    refused(machine, "ready")
    refused(machine, "exit")


def test_a_broker_outage_turns_unready_only_when_it_lasts() -> None:
    """Failed probes make the broker lost; only ``outage_long`` makes the gateway unready."""
    machine = BrokerMachine()
    machine.probe_failed()
    machine.probe_failed()
    assert machine.state == "lost" and machine.ready and not machine.up
    machine.outage_long()
    assert machine.state == "unready" and not machine.ready
    refused(machine, "outage_long")
    machine.probe_ok()
    assert machine.state == "connected" and machine.ready and machine.up
    refused(machine, "outage_long")


def test_every_machine_class_is_strict() -> None:
    """Every lifecycle raises on an impossible event and lets callback errors propagate."""
    for cls in ALL_MACHINES:
        assert cls.allow_event_without_transition is False
        assert cls.catch_errors_as_events is False


# ---------------------------------------------------------- receipt ledger


def test_the_watermark_advances_over_frames_settled_out_of_order() -> None:
    """Confirmations out of order hold the watermark until the gap closes."""
    ledger = ReceiptLedger(receipts=True, failure_cap=10)
    seqs = [ledger.receive() for _ in range(4)]
    for _ in seqs:
        ledger.publish()
    ledger.confirm(2)
    ledger.confirm(3)
    assert ledger.watermark == 0 and ledger.in_flight == 2
    ledger.confirm(1)
    assert ledger.watermark == 3
    ledger.confirm(4)
    assert ledger.watermark == 4 and ledger.all_settled()


def test_a_flush_gives_the_error_frames_before_the_receipt_that_covers_them() -> None:
    """``take_flush`` returns owed error frames and a receipt no higher than the watermark."""
    ledger = ReceiptLedger(receipts=True, failure_cap=10)
    one, two = ledger.receive(), ledger.receive()
    ledger.reject(one, ErrorCode.INVALID_MESSAGE, "triples: missing")
    ledger.publish()
    owed, ack = ledger.take_flush()
    assert [(r.seq, r.code) for r in owed] == [(1, ErrorCode.INVALID_MESSAGE)]
    assert ack == 1
    ledger.receipted(1)
    assert not ledger.client_informed()
    ledger.confirm(two)
    assert ledger.take_flush() == ([], 2)
    ledger.receipted(2)
    assert ledger.client_informed()


def test_a_receipt_beyond_the_watermark_or_backwards_is_refused() -> None:
    """``receipted`` refuses an ack that would cover unsettled frames or go backwards."""
    ledger = ReceiptLedger(receipts=True, failure_cap=10)
    ledger.receive()
    with pytest.raises(ValueError, match=r"^ack 1 must be between 0 and 0$"):
        ledger.receipted(1)


def test_the_consecutive_failure_cap_is_reached_once_and_reset_by_a_success() -> None:
    """``fail`` says True exactly at the cap; a confirmation in between resets the count."""
    ledger = ReceiptLedger(receipts=False, failure_cap=2)
    for _ in range(5):
        ledger.receive()
        ledger.publish()
    assert ledger.fail(1, "refused") is False
    ledger.confirm(2)
    assert ledger.fail(3, "refused") is False
    assert ledger.fail(4, "refused") is True
    assert ledger.fail(5, "refused") is False
    assert ledger.rejected == 4 and ledger.persisted == 1 and ledger.all_settled()


# ---------------------------------------------------------- delivery ledger


def key(message: int) -> tuple[int, int, int, int]:
    """Message n sits at entry n of ledger 0."""
    return (0, message, -1, -1)


def delivery(**changes: Any) -> DeliveryLedger[int]:
    """A ledger over int messages: queue 4, window 3, ack=client, block."""
    options: dict[str, Any] = {"client_acks": True, "window": 3, "max_queue": 4,
                               "backpressure": Backpressure.BLOCK, "key": key}
    options.update(changes)
    return DeliveryLedger(**options)


def test_drop_new_and_drop_oldest_hand_back_the_message_to_nack() -> None:
    """A full queue drops the arrival (drop_new) or the oldest (drop_oldest), owed until seen."""
    new = delivery(backpressure=Backpressure.DROP_NEW)
    assert new.arrive([1, 2, 3, 4, 5]) == ([5], [])
    assert list(new.queue) == [1, 2, 3, 4] and new.owed == {key(5)}
    oldest = delivery(backpressure=Backpressure.DROP_OLDEST)
    assert oldest.arrive([1, 2, 3, 4, 5]) == ([1], [])
    assert list(oldest.queue) == [2, 3, 4, 5]
    block = delivery()
    assert block.arrive([1, 2, 3, 4, 5]) == ([], []) and block.full


def test_the_window_bounds_what_is_written_and_acks_release_it() -> None:
    """With ack=client, at most ``window`` messages are in flight; an ack frees them."""
    ledger = delivery()
    ledger.arrive([1, 2, 3, 4])
    batch = ledger.next_batch(10)
    assert batch == [1, 2, 3]
    assert ledger.delivered_batch(batch) == (1, [])
    assert ledger.next_batch(10) == []
    assert ledger.apply_ack('{"ack": 2}') == [1, 2]
    assert ledger.next_batch(10) == [4]


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ("nope", r"^not JSON: "),
        ("[" * 5000, r"^frame of 5000 bytes"),
        ("[" * 1000, r"^nested deeper than 254 levels$"),
        ('{"ack": 1, "ack": 2}', r"^duplicate key 'ack'$"),
        ('{"ack": NaN}', r"^ack: NaN is not JSON$"),
        ('{"\\ud800": 1}', r"^lone surrogate \\ud800 in key '\\ud800'$"),
        ('{"ack": 1.5}', r"^ack must be an integer, got 1\.5$"),
        ('{"ack": 9}', r"^ack 9 is beyond the last seq sent \(2\)$"),
        ('{"seq": 1}', r'^expected \{"ack": N\}$'),
    ],
)
def test_a_bad_client_ack_is_refused_and_changes_nothing(frame: str, detail: str) -> None:
    """A malformed, too deep, too long or out-of-range ack raises InvalidAck; nothing moves."""
    ledger = delivery()
    ledger.arrive([1, 2])
    ledger.delivered_batch(ledger.next_batch(10))
    with pytest.raises(InvalidAck, match=detail):
        ledger.apply_ack(frame)
    assert ledger.acked == 0 and len(ledger.inflight) == 2


def test_an_ack_that_goes_backwards_is_refused_and_repeating_one_is_not() -> None:
    """Acks are cumulative: repeating the current one is fine, going back is an error."""
    ledger = delivery()
    ledger.arrive([1, 2])
    ledger.delivered_batch(ledger.next_batch(10))
    assert ledger.apply_ack('{"ack": 2}') == [1, 2]
    assert ledger.apply_ack('{"ack": 2}') == []
    with pytest.raises(InvalidAck, match=r"^ack 1 goes backwards: already acked 2$"):
        ledger.apply_ack('{"ack": 1}')


def test_settling_the_rest_nacks_everything_queued_and_in_flight() -> None:
    """At the end every message taken is acked or nacked, never both."""
    ledger = delivery()
    ledger.arrive([1, 2, 3, 4])
    ledger.delivered_batch(ledger.next_batch(2))
    ledger.apply_ack('{"ack": 1}')
    ledger.close_intake()
    assert ledger.arrive([5]) == ([], [5])
    assert ledger.settle_remaining() == ([3, 4], [2])
    assert ledger.all_settled() and ledger.acked == 1 and ledger.nacked == 4


def test_until_end_on_an_empty_topic_is_due_at_once() -> None:
    """No end position: the dump is over before it began."""
    ledger = delivery()
    ledger.expect_end(None)
    assert ledger.end_due(quiet=False)


def test_until_end_waits_for_the_end_entry_or_a_quiet_subscription() -> None:
    """The end is due once the end entry was delivered, or nothing came for a while."""
    ledger = delivery(client_acks=False)
    ledger.expect_end((0, 3))
    assert not ledger.end_due(quiet=False)
    assert ledger.end_due(quiet=True)  # nothing arrived at all: nothing was left
    ledger.arrive([2, 3])
    assert not ledger.end_due(quiet=True)  # the backlog is still queued
    ledger.delivered_batch(ledger.next_batch(10))
    assert ledger.end_seen and ledger.end_due(quiet=False)


def test_until_end_waits_for_messages_dropped_by_backpressure() -> None:
    """A backlog message nacked by backpressure must come back before the end."""
    ledger = delivery(client_acks=False, max_queue=1, backpressure=Backpressure.DROP_NEW)
    ledger.expect_end((0, 2))
    ledger.arrive([1, 2])
    ledger.delivered_batch(ledger.next_batch(10))
    assert not ledger.end_due(quiet=True)
    ledger.arrive([2])
    ledger.delivered_batch(ledger.next_batch(10))
    assert ledger.end_due(quiet=False)


def test_until_end_with_client_acks_waits_for_them() -> None:
    """With ack=client the end is due only once the client acked the backlog."""
    ledger = delivery()
    ledger.expect_end((0, 1))
    ledger.arrive([1])
    ledger.delivered_batch(ledger.next_batch(10))
    assert not ledger.end_due(quiet=True)
    ledger.apply_ack('{"ack": 1}')
    assert ledger.end_due(quiet=True)


# -------------------------------------------------------------- pool (--workers N)


def serving_pool(size: int = 2) -> PoolMachine:
    """A pool whose ``size`` workers were spawned and have all said ready."""
    machine = PoolMachine(size)
    for _ in range(size):
        machine.spawned()
    for index in range(size):
        machine.ready(index=index)
    return machine


def test_the_pool_serves_once_every_worker_has_been_ready() -> None:
    """``serving`` only when the last worker says ready; a repeated ready does not count."""
    machine = PoolMachine(2)
    machine.spawned()
    machine.spawned()
    machine.ready(index=0)
    machine.ready(index=0)
    assert machine.state == "starting"
    machine.ready(index=1)
    assert machine.state == "serving"


def test_a_worker_exiting_while_serving_is_restarted_and_counted() -> None:
    """An exit while serving is a crash: restart due, counted; the pool keeps serving."""
    machine = serving_pool()
    machine.exited(index=1, code=-9)
    assert machine.state == "serving" and machine.restart_due and machine.restarts == 1
    assert machine.accepting_restarts and machine.alive == 1
    machine.spawned()
    assert not machine.restart_due and machine.alive == 2
    machine.ready(index=1)
    assert machine.state == "serving"


def test_the_drain_ends_when_the_last_worker_exits_and_is_clean_only_with_exit_0() -> None:
    """During the drain no exit is restarted; a non-zero exit makes the drain unclean."""
    machine = serving_pool()
    machine.drain()
    assert machine.state == "draining" and not machine.accepting_restarts
    machine.exited(index=0, code=0)
    assert machine.state == "draining" and not machine.restart_due
    machine.exited(index=1, code=1)
    assert machine.state == "stopped" and machine.finished and not machine.clean
    assert machine.restarts == 0


def test_a_drain_while_every_worker_waits_for_its_restart_stops_at_once() -> None:
    """No worker alive (all crashed, restarts pending): the drain has nothing to wait for."""
    machine = PoolMachine(1)
    machine.spawned()
    machine.ready(index=0)
    machine.exited(index=0, code=-9)
    machine.drain()
    assert machine.state == "stopped" and machine.clean


def test_a_worker_that_dies_before_it_was_ever_ready_aborts_the_pool() -> None:
    """Start-up failure: the others are stopped, nothing restarts, the pool fails."""
    machine = PoolMachine(2)
    machine.spawned()
    machine.spawned()
    machine.ready(index=0)
    machine.exited(index=1, code=1)
    assert machine.state == "aborting" and machine.start_failure == (1, 1)
    assert not machine.restart_due and not machine.accepting_restarts
    machine.drain()
    assert machine.state == "aborting"
    machine.exited(index=0, code=0)
    assert machine.state == "failed" and machine.finished


def test_a_worker_that_crashes_after_its_ready_while_others_start_is_restarted() -> None:
    """In starting, an exit of a worker that had been ready is a crash, not a failed start."""
    machine = PoolMachine(2)
    machine.spawned()
    machine.spawned()
    machine.ready(index=0)
    machine.exited(index=0, code=-9)
    assert machine.state == "starting" and machine.restart_due and machine.restarts == 1


def test_the_pool_refuses_impossible_events() -> None:
    """No fail once a worker lives, nothing after the end."""
    with pytest.raises(ValueError, match=r"^size must be >= 1, not 0$"):
        PoolMachine(0)
    machine = PoolMachine(1)
    machine.spawned()
    refused(machine, "fail")
    machine.ready(index=0)
    machine.drain()
    machine.spawned()  # a spawn that raced the drain is counted (the actor stops it)
    machine.exited(index=0, code=0)
    assert machine.state == "draining"
    machine.exited(index=0, code=0)
    assert machine.state == "stopped"
    for event in ("drain", "spawned", "fail"):
        refused(machine, event)
    fresh = PoolMachine(1)
    fresh.fail()
    assert fresh.state == "failed"
