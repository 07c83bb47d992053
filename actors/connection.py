"""The connection actor: one skeleton for every WebSocket, import or export.

Theory of operation. A connection is a socket (``GatewayConnection``), a *worker* that does
the direction's work (``ImportWorker``: frames to a producer; ``ExportWorker``: a consumer to
frames) and a ``ConnectionMachine`` that decides. ``run`` is the same straight line for both
directions, whatever ends the connection::

    open the worker          opened | open_failed          (the machine: running or draining)
    take, while running      the worker reports what ended intake: the client's close,
                             a lost peer, a frame too big, a failure, the end of a dump;
                             the supervisor reports a server drain
    drain the worker         its machine concludes: stopped (all settled) | abandoned
    last words               the final receipt, or {"end": true}
    drained                  the machine chooses graceful or forced, and the close code
    close the socket         answer or send the close frame (bounded)
    close the worker         producer/consumer, bounded; then socket_closed

Deadlines: every wait after intake runs inside ``Deadlines.within`` — bounded by its own
timeout and by the server's drain deadline. ``force_now`` (the supervisor's deadline has
passed) cuts them all at once, so the same straight line runs to its end in no time: the
worker concludes ``abandoned`` and the machine closes with 1011. Nothing is cancelled
half-way except waits.

Errors: anything a worker raises while taking, and any failure of its background tasks, is
logged once here with the connection id and reported as ``failed``: the connection drains
and closes with 1011 like any other, so whatever it holds is settled (nacked, or left
unreceipted) and nothing is stranded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.websocket import Ending, GatewayConnection
from quiesce.core.errors import BrokerError
from quiesce.core.protocol import CloseCode, Direction
from quiesce.machines.connection import ConnectionMachine

if TYPE_CHECKING:
    from quiesce.actors.broker import Broker
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings
    from quiesce.machines.worker import WorkerMachine

LOGGER = logging.getLogger("quiesce.connection")


@dataclass
class Services:
    """What every connection actor gets from the supervisor."""

    settings: Settings
    broker: Broker
    metrics: Metrics


class Deadlines:
    """The absolute deadlines of one connection's waits, cut short together by ``cut``."""

    def __init__(self) -> None:
        self.limit = math.inf
        self._scopes: set[trio.CancelScope] = set()

    @contextlib.contextmanager
    def within(self, timeout: float, *, shield: bool = False) -> Iterator[trio.CancelScope]:
        """A cancel scope ending after ``timeout`` seconds, or at the limit if sooner."""
        deadline = min(trio.current_time() + timeout, self.limit)
        scope = trio.CancelScope(deadline=deadline, shield=shield)
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def renew(self, scope: trio.CancelScope, timeout: float) -> None:
        """Move ``scope``'s deadline to ``timeout`` seconds from now, never past the limit."""
        scope.deadline = min(trio.current_time() + timeout, self.limit)

    def cap(self, deadline: float) -> None:
        """No wait may go on past ``deadline`` (those running now included)."""
        self.limit = min(self.limit, deadline)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, deadline)


class Worker(Protocol):
    """The direction's half of a connection; the actor drives it through ``run``.

    Attributes:
        machine: its lifecycle (a ``WorkerMachine`` over its ledger).
        name: ``publisher`` or ``subscriber`` (logs).
    """

    machine: WorkerMachine
    name: str

    @property
    def depth(self) -> int:
        """Items waiting: frames unconfirmed (import), messages not yet written (export)."""

    async def open(self, nursery: trio.Nursery) -> None:
        """Open the producer/consumer; start background tasks in ``nursery`` (guarded).

        Raises:
            BrokerError: the broker refused or did not answer (the worker has queued the
                error frame for the client).
        """

    async def take(self) -> None:
        """Take frames or messages until something ends intake (reported to the actor)."""

    async def drain(self) -> None:
        """Stop intake, settle everything it can within its deadline, conclude its machine."""

    async def finish(self) -> None:
        """Last words before the close (final receipt, end frame), bounded."""

    async def aclose(self) -> None:
        """Close the producer/consumer (bounded, shielded)."""

    def intake_stopping(self) -> None:
        """Intake is being cancelled: bound any write that must not be cut half-way."""

    def grace(self, until: float) -> None:
        """The server drains but intake may go on until ``until`` or the client goes quiet."""


class ConnectionActor:
    """One WebSocket, its worker and its connection machine (see the module docstring).

    The supervisor calls ``request_drain(deadline)`` when it drains and ``force_now()``
    when its own deadline has passed. ``run`` returns once the socket is closed.

    Args:
        ws: the accepted WebSocket (its ``route`` is set).
        services: settings, broker, metrics.
        make_worker: builds the direction's worker for this actor.
    """

    def __init__(
        self,
        ws: GatewayConnection,
        services: Services,
        make_worker: Callable[[ConnectionActor], Worker],
    ) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.ws = ws
        self.route = ws.route
        self.direction: Direction = self.route.direction
        self.services = services
        self.settings = services.settings
        self.metrics = services.metrics
        self.log_fields = {"conn": self.id, "flow": self.route.flow, "kind": self.route.kind}
        if ws.credential is not None:
            self.log_fields["token"] = ws.credential  # a token's name, never the token
        ws.log_fields = self.log_fields  # the socket's own lines (keepalive) name the connection
        self.deadlines = Deadlines()
        # Cancelled to stop taking frames/messages: the first step of every drain.
        self.intake_scope = trio.CancelScope()
        self.worker = make_worker(self)
        self.machine = ConnectionMachine(self.worker.machine,
                                         grace=self.direction is Direction.IMPORT)
        self.machine.observe(TransitionLog(LOGGER, "connection", self.id,
                                           direction=str(self.direction), **self.log_fields))

    # ------------------------------------------------ facts from outside

    def request_drain(self, deadline: float) -> None:
        """The server drains: stop intake (or let it finish within the grace); done by
        ``deadline``."""
        self.deadlines.cap(deadline)
        self.machine.server_drain()
        if not self.machine.intake_open:
            self._stop_intake("server draining")
            return
        # The machine granted a grace: intake goes on until the client closes or goes quiet,
        # within import_drain_grace and leaving the publisher's drain its time before the
        # deadline.
        now = trio.current_time()
        room = max(0.0, deadline - now - self.settings.publisher_drain_timeout)
        self.worker.grace(now + min(self.settings.import_drain_grace, room))

    def report_quiet(self) -> None:
        """During a server drain's grace, the client went quiet (or the grace ran out)."""
        self.machine.quiet()
        self._stop_intake("client quiet during the drain")

    def force_now(self) -> None:
        """The shutdown deadline has passed: every wait ends now (close with 1011)."""
        self.deadlines.cap(-math.inf)
        self.machine.deadline()
        self._stop_intake("shutdown deadline")

    # ------------------------------------------------ facts from the worker

    def report_ending(self, ending: Ending) -> None:
        """The client's stream of frames ended (``receive_frame`` returned None)."""
        if ending is Ending.CLIENT_CLOSED:
            self.machine.client_closed()
        elif ending is Ending.TOO_BIG:
            self.machine.frame_too_big()
        else:
            self.machine.peer_lost()
        self._stop_intake(ending.value)

    def report_failure(self, reason: str) -> None:
        """The broker (or a bug) failed this connection: drain, then close with 1011."""
        self.machine.failed()
        self._stop_intake(reason)

    def report_stalled(self) -> None:
        """An export client took nothing for export_stall_timeout: let it go (1008)."""
        self.machine.stalled()
        self._stop_intake("client stalled")

    def report_finished(self) -> None:
        """The worker's job is done (an until=end export delivered its backlog)."""
        self.machine.finished()
        self._stop_intake("finished")

    def _stop_intake(self, reason: str) -> None:
        self.worker.intake_stopping()
        self.intake_scope.cancel(reason=reason)

    async def guard(self, task: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a worker's background task; a failure becomes a logged ``failed`` fact."""
        try:
            await task()
        except Exception:
            LOGGER.error("%s failed", name, exc_info=True, extra=self.log_fields)
            self.report_failure(f"{name} failed")

    # --------------------------------------------------------- the line

    async def run(self) -> None:
        """Serve the connection until its socket is closed (see the module docstring)."""
        machine, worker = self.machine, self.worker
        async with trio.open_nursery() as nursery:
            await self._open(nursery)
            if machine.intake_open:
                with self.intake_scope:
                    try:
                        await worker.take()
                    except Exception:
                        LOGGER.error("%s failed while taking", worker.name, exc_info=True,
                                     extra=self.log_fields)
                        self.machine.failed()
            started = trio.current_time()
            await worker.drain()
            await worker.finish()
            if not self.ws.is_open:
                machine.peer_lost()
            machine.drained()
            await self._close()
            self.metrics.drain_seconds.labels(self.direction).observe(
                trio.current_time() - started)
            nursery.cancel_scope.cancel(reason="connection closed")
        await worker.aclose()
        machine.socket_closed()

    async def _open(self, nursery: trio.Nursery) -> None:
        with self.deadlines.within(math.inf) as scope:
            try:
                await self.worker.open(nursery)
            except BrokerError as exc:
                LOGGER.error("%s cannot start: %s", self.direction, exc, extra=self.log_fields)
                self.machine.open_failed()
                return
            self.machine.opened()
        if scope.cancelled_caught:  # forced while the broker kept us waiting
            self.machine.open_failed()

    async def _close(self) -> None:
        machine = self.machine
        if machine.forced:
            self.metrics.forced_shutdowns.labels(self.direction).inc()
        else:
            self.metrics.graceful_shutdowns.labels(self.direction).inc()
        code = machine.close_code
        reason = "drain incomplete" if machine.forced else ""
        if code is CloseCode.INTERNAL and not machine.forced:
            reason = "internal error"
        # Shielded, with its own bound: it runs on every way out, a forced one included.
        with trio.move_on_after(self.settings.socket_grace_period, shield=True) as scope:
            await self.ws.close_after_drain(code, reason)
        if scope.cancelled_caught:
            await self.ws.abort()
