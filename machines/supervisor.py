"""Lifecycle of the supervisor: the whole process.

Theory of operation::

    starting --ready [no signal yet]--> serving --drain [connections open]--> draining
    starting --ready [a signal came during start-up]--> stopped   (it never serves)
    serving --drain [no connection open]--> stopped
    draining --release [the last one]--> stopped
    draining --deadline--> forcing --release [the last one]--> stopped
    stopped --exit--> exited                        (listener and broker closed)
    any state but the final ones --fail--> failed   (port taken, broker gone…)

The supervisor actor reports facts: the listener and broker are ready, a signal asked for a
drain (legal in every state but the final ones: signals come when they come), a handshake
wants in (``admit``), a connection has closed (``release``), the shutdown deadline passed.
The machine keeps the count of open connections and decides:
whether a handshake is admitted (only while serving: ``admitted``), and when the drain is
over (``finished``: the last connection is gone). ``/readyz`` answers 200 only while
serving (``accepting``).
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle, stays


class SupervisorMachine(Lifecycle):
    """starting → serving → draining (→ forcing) → stopped → exited; ``failed`` on errors."""

    starting = State(initial=True)
    serving = State()
    draining = State()
    forcing = State()
    stopped = State()
    exited = State(final=True)
    failed = State(final=True)

    ready = starting.to(stopped, cond="stop_requested") | starting.to(
        serving, unless="stop_requested"
    )
    drain = (
        stays(starting, on="note_stop")
        | serving.to(stopped, cond="no_connections", on="note_stop")
        | serving.to(draining, unless="no_connections", on="note_stop")
        | stays(draining)
        | stays(forcing)
        | stays(stopped)
    )
    admit = (
        stays(serving, on="count_in")
        | stays(draining, on="turn_away")
        | stays(forcing, on="turn_away")
        | stays(stopped, on="turn_away")
    )
    release = (
        stays(serving, on="count_out")
        | draining.to(stopped, cond="last_connection", on="count_out")
        | stays(draining, unless="last_connection", on="count_out")
        | forcing.to(stopped, cond="last_connection", on="count_out")
        | stays(forcing, unless="last_connection", on="count_out")
    )
    deadline = draining.to(forcing) | stays(forcing) | stays(stopped)
    exit = stopped.to(exited)
    fail = (
        starting.to(failed)
        | serving.to(failed)
        | draining.to(failed)
        | forcing.to(failed)
        | stopped.to(failed)
    )

    def __init__(self) -> None:
        self.connections = 0
        self.admitted = False  # outcome of the last ``admit``
        self.stop_requested = False  # a signal asked for a drain
        super().__init__()

    def note_stop(self) -> None:
        """Record that a drain was asked for."""
        self.stop_requested = True

    def no_connections(self) -> bool:
        """Guard: no connection is open."""
        return self.connections == 0

    def last_connection(self) -> bool:
        """Guard of ``release``: the connection closing now is the last one open."""
        return self.connections == 1

    def count_in(self) -> None:
        """Admit a connection that completed its handshake."""
        self.connections += 1
        self.admitted = True

    def turn_away(self) -> None:
        """Refuse a handshake that completed after the drain began."""
        self.admitted = False

    def count_out(self) -> None:
        """Count a connection that has closed."""
        self.connections -= 1

    @property
    def accepting(self) -> bool:
        """Outcome: new WebSocket handshakes are welcome (``/readyz`` is 200)."""
        return bool(self.serving.is_active)

    @property
    def finished(self) -> bool:
        """Outcome: the drain is over, no connection is left (stopped or exited)."""
        return bool(self.stopped.is_active or self.exited.is_active)
