"""Lifecycle of a worker: the publisher of an import, the subscriber of an export.

Theory of operation. Both workers take things in (frames from the client, messages from the
broker), pass them on, and must *settle* each one before they may say they stopped: an
import frame is settled when the broker confirmed or refused it, an export message when it
was acked or nacked in Pulsar. What "settled" means is the worker's ledger's business
(``ReceiptLedger``, ``DeliveryLedger``); the lifecycle is the same declaration for both::

    running --drain--> draining --conclude [all settled]--> stopped
                       draining --conclude [otherwise]----> abandoned

``drain`` closes intake. ``conclude`` is the fact "the drain's wait is over" — because
everything settled or because its deadline passed — and the machine chooses the edge: the
graceful ``stopped`` only when the ledger says every item is settled, ``abandoned``
otherwise (the connection above must then close with 1011, and what was abandoned is never
receipted or acked, so it comes again).
"""

from __future__ import annotations

from typing import Protocol

from statemachine import State

from quiesce.machines._base import Lifecycle


class Ledger(Protocol):
    """What a worker's lifecycle and its connection's close need from a ledger."""

    def all_settled(self) -> bool:
        """Every item taken in was settled (confirmed/refused, or acked/nacked)."""

    def client_informed(self) -> bool:
        """The client was told everything it is owed (receipts, error frames)."""


class WorkerMachine(Lifecycle):
    """running → draining → stopped | abandoned, guarded by the worker's ledger."""

    running = State(initial=True)
    draining = State()
    stopped = State(final=True)
    abandoned = State(final=True)

    drain = running.to(draining)
    conclude = draining.to(stopped, cond="all_settled") | draining.to(
        abandoned, unless="all_settled"
    )

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        super().__init__()

    def all_settled(self) -> bool:
        """Guard of the graceful ``conclude``: the ledger has nothing unsettled."""
        return self.ledger.all_settled()

    @property
    def done(self) -> bool:
        """Outcome: the worker stopped gracefully (everything it took is settled)."""
        return bool(self.stopped.is_active)
