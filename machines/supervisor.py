"""Lifecycle of the supervisor: the whole process.

Theory of operation::

    starting --ready--> serving --drain--> draining --finish [no connection open]--> stopped
    starting --drain--> draining                 (a signal before the broker answered)
    starting/serving --fail--> failed            (the broker could not start, the port is taken…)
    draining --force--> forcing --finish [no connection open]--> stopped
                                                 (shutdown deadline, or a second SIGINT)

``/readyz`` answers 200 only in ``serving``. Draining means: the listener refuses new
handshakes with 503, every connection drains in parallel, and the broker is stopped last.
``forcing`` force-closes what is still open (close code 1011, counted). Both ways end in
``stopped`` only once the last connection has closed: the guard ``no_connections``.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle


class SupervisorMachine(Lifecycle):
    """starting → serving → draining (→ forcing) → stopped; ``failed`` at start-up errors."""

    starting = State(initial=True)
    serving = State()
    draining = State()
    forcing = State()
    stopped = State(final=True)
    failed = State(final=True)

    ready = starting.to(serving)
    drain = starting.to(draining) | serving.to(draining)
    force = draining.to(forcing)
    finish = draining.to(stopped, cond="no_connections") | forcing.to(
        stopped, cond="no_connections"
    )
    fail = starting.to(failed) | serving.to(failed)

    def __init__(self) -> None:
        self.connections = 0
        super().__init__()

    def no_connections(self) -> bool:
        """Guard of ``finish``: every connection has closed."""
        return self.connections == 0

    @property
    def accepting(self) -> bool:
        """True while new WebSocket handshakes are welcome (``/readyz`` is 200)."""
        return bool(self.serving.is_active)

    def connection_opened(self) -> None:
        """Count a connection that completed its handshake.

        Raises:
            RuntimeError: if the supervisor is not serving (handshakes are refused then).
        """
        if not self.accepting:
            raise RuntimeError(f"supervisor is {self.state}: not accepting connections")
        self.connections += 1

    def connection_closed(self) -> None:
        """Count a connection that has closed."""
        if self.connections == 0:
            raise ValueError("no connection is open")
        self.connections -= 1
