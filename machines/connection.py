"""Lifecycle of one WebSocket connection: what ends it, and how it closes.

Theory of operation. The actor reports *facts* as events; the machine chooses the edge and
records what the close must be::

    opening --opened [no drain requested]--> running
    opening --opened [drain requested]-----> draining
    opening --open_failed--> draining                      (no producer/consumer: 1011)
    running --client_closed | peer_lost | frame_too_big | failed | stalled
              | server_drain [no grace] | finished--> draining
    running --server_drain [grace]--> running         (an import keeps taking frames…)
    running --quiet [drain requested]--> draining      (…until its client goes quiet)
    running | draining --deadline--> draining          (the supervisor's deadline passed)
    draining --drained [worker done, client informed, no deadline]--> closing   (graceful)
    draining --drained [otherwise]--> closing                      (forced: 1011)
    closing --socket_closed--> closed                  (socket and producer/consumer closed)

Facts that may arrive again while draining (the client's close, a lost peer, another
failure, a server drain) are declared as internal transitions there, and so are those a
background task may still report while the socket is closing (they change nothing then):
reporting a fact is always legal and never probed for. ``drained`` is the fact "the
worker's drain and the last words to the client are over, by completion or by deadline";
the machine takes the graceful edge only when the worker stopped with everything settled,
the client was told everything it is owed (unless the peer is gone) and no shutdown
deadline cut the drain (``deadline``). A close counts as forced exactly when it took the
other edge.

The grace: most TrustGraph clients never read replies, so an import whose client is still
sending when the server drains keeps taking frames (``grace``, given to import connections)
until the client closes or goes quiet (``quiet``: nothing for a moment, or the grace ran
out); every frame taken is then drained as usual. An export stops at once.

Outcomes read by the actor: ``intake_open``, ``close_code`` (None: answer the client's own
close frame with its code), ``forced``, and ``client_may_ack`` (a server drain with the
client still there: an ``ack=client`` export waits for its acks).
"""

from __future__ import annotations

from statemachine import State

from quiesce.core.protocol import CloseCode
from quiesce.machines._base import Lifecycle, stays
from quiesce.machines.worker import WorkerMachine


class ConnectionMachine(Lifecycle):
    """opening → running → draining → closing → closed; ``drained`` chooses graceful/forced."""

    opening = State(initial=True)
    running = State()
    draining = State()
    closing = State()
    closed = State(final=True)

    opened = opening.to(draining, cond="stop_requested") | opening.to(
        running, unless="stop_requested"
    )
    open_failed = opening.to(draining, on="note_failure")
    client_closed = (
        running.to(draining, on="note_client_closed")
        | stays(draining, on="note_client_closed")
        | stays(closing)
    )
    peer_lost = (
        running.to(draining, on="note_peer_lost")
        | stays(draining, on="note_peer_lost")
        | stays(closing)
    )
    frame_too_big = running.to(draining, on="note_too_big")
    failed = (
        running.to(draining, on="note_failure")
        | stays(draining, on="note_failure")
        | stays(closing)
    )
    finished = running.to(draining, on="note_finished")
    stalled = running.to(draining, on="note_stalled")
    quiet = running.to(draining, cond="stop_requested")
    server_drain = (
        stays(opening, on="note_server_drain")
        | running.to(draining, unless="grace", on="note_server_drain")
        | stays(running, cond="grace", on="note_server_drain")
        | stays(draining, on="note_server_drain")
        | stays(closing, on="note_server_drain")
    )
    deadline = (
        stays(opening, on="note_cut")
        | running.to(draining, on="note_cut")
        | stays(draining, on="note_cut")
        | stays(closing)
    )
    drained = draining.to(closing, cond="worker_done") | draining.to(
        closing, unless="worker_done", on="note_forced"
    )
    socket_closed = closing.to(closed)

    def __init__(self, worker: WorkerMachine, *, grace: bool = False) -> None:
        self.worker = worker
        self.grace = grace  # a server drain lets intake go on until the client goes quiet
        self.stop_requested = False  # the server drains
        self.client_gone = False  # the client sent its close frame
        self.peer_gone = False  # the socket is gone: nothing more can be sent
        self.too_big = False  # a frame over the size limit (the library closed with 1009)
        self.failure = False  # broker or internal error
        self.complete = False  # until=end: the backlog was delivered
        self.stall = False  # an export client stopped taking what it was sent
        self.cut = False  # the supervisor's shutdown deadline passed
        self.forced = False  # the close is forced: a deadline cut the drain
        super().__init__()

    # ----------------------------------------------------------------- guards

    def worker_done(self) -> bool:
        """Guard of the graceful ``drained``: worker stopped, client told all it is owed, and
        no shutdown deadline cut the drain short."""
        if self.cut or not self.worker.done:
            return False
        return self.peer_gone or self.worker.ledger.client_informed()

    # ------------------------------------------------------------- the facts

    def note_client_closed(self) -> None:
        """The client sent its close frame (held until the drain is done)."""
        self.client_gone = True

    def note_peer_lost(self) -> None:
        """The socket is gone: frames still drain to the broker, but nothing can be sent."""
        self.peer_gone = True

    def note_too_big(self) -> None:
        """The client sent a frame over the size limit; the library closed with 1009."""
        self.too_big = True
        self.peer_gone = True

    def note_failure(self) -> None:
        """The broker or the actor failed this connection."""
        self.failure = True

    def note_finished(self) -> None:
        """An ``until=end`` export delivered its backlog."""
        self.complete = True

    def note_stalled(self) -> None:
        """An export client took nothing (no write went through, no ack came) for too long."""
        self.stall = True

    def note_server_drain(self) -> None:
        """The server is draining (SIGTERM/SIGINT)."""
        self.stop_requested = True

    def note_cut(self) -> None:
        """The supervisor's shutdown deadline passed before this connection closed."""
        self.cut = True

    def note_forced(self) -> None:
        """The drain ended without the worker done: the close is forced."""
        self.forced = True

    # -------------------------------------------------------------- outcomes

    @property
    def intake_open(self) -> bool:
        """Outcome: frames or messages are taken in (the connection is running).

        After ``server_drain`` this is the machine's answer to "is there a grace?".
        """
        return bool(self.running.is_active)

    @property
    def client_may_ack(self) -> bool:
        """Outcome: a server drain, with a client still there to ack what it was sent."""
        return self.stop_requested and not (self.client_gone or self.peer_gone)

    @property
    def close_code(self) -> CloseCode | None:
        """Outcome: the close code to send; None means echo the client's own close frame.

        1011 when forced or failed, 1009 after a frame too big, 1008 for a stalled export
        client, the client's own code when it closed first, 1001 when the server drains,
        1000 otherwise (finished, or done).
        """
        if self.forced or self.failure:
            return CloseCode.INTERNAL
        if self.too_big:
            return CloseCode.TOO_BIG
        if self.stall:
            return CloseCode.POLICY
        if self.client_gone:
            return None
        if self.stop_requested:
            return CloseCode.GOING_AWAY
        return CloseCode.DONE
