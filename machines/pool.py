"""Lifecycle of the worker pool: the parent process of ``quiesce serve --workers N``.

Theory of operation. The parent spawns N worker processes (each a whole gateway sharing the
port through SO_REUSEPORT), forwards signals to them and restarts one that dies while no
shutdown was asked for. The pool actor (``actors/pool.py``) reports facts: a worker was
spawned, said it is ready, exited (with its index and exit code); a signal asked for a
drain. The machine keeps the count of live workers and decides::

    starting --ready [the last one to be ready for the first time]--> serving
    starting | serving --exited [it had been ready]--> (same state)   restart it (restart_due)
    starting --exited [never ready: start-up failed]--> aborting     stop the others
    starting | serving --drain--> draining  (stopped at once if no worker is alive)
    draining --exited [the last one]--> stopped
    aborting --exited [the last one]--> failed
    starting --fail--> failed               (the parent itself could not start)

Only an exit 0 of every worker during a drain makes the drain ``clean`` (the parent exits 0
only then). A worker that exits while the pool serves is restarted and counted (``restarts``);
how long to wait before the restart (the backoff) is the actor's business: it keeps clocks.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle, stays


class PoolMachine(Lifecycle):
    """starting → serving → draining → stopped; aborting → failed when a worker cannot start."""

    starting = State(initial=True)
    serving = State()
    draining = State()
    aborting = State()
    stopped = State(final=True)
    failed = State(final=True)

    # Spawning takes a moment: a drain (or an abort) may come while a worker is being
    # spawned; it is counted all the same, and the actor stops it (``accepting_restarts``).
    spawned = (
        stays(starting, on="count_spawn")
        | stays(serving, on="count_spawn")
        | stays(draining, on="count_spawn")
        | stays(aborting, on="count_spawn")
    )
    ready = (
        starting.to(serving, cond="last_to_be_ready", on="note_ready")
        | stays(starting, unless="last_to_be_ready", on="note_ready")
        | stays(serving, on="note_ready")
        | stays(draining, on="note_ready")
        | stays(aborting, on="note_ready")
    )
    exited = (
        starting.to(aborting, unless="had_been_ready", on="note_failed_start")
        | stays(starting, on="note_crash")
        | stays(serving, on="note_crash")
        | draining.to(stopped, cond="last_alive", on="note_drained")
        | stays(draining, on="note_drained")
        | aborting.to(failed, cond="last_alive", on="count_exit")
        | stays(aborting, on="count_exit")
    )
    drain = (
        starting.to(draining)
        | serving.to(stopped, cond="none_alive")
        | serving.to(draining, unless="none_alive")
        | stays(draining)
        | stays(aborting)
    )
    fail = starting.to(failed, cond="none_alive")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, not {size}")
        self.size = size
        self.alive = 0  # workers spawned and not yet exited
        self.been_ready: set[int] = set()  # indexes that said ready at least once
        self.restarts = 0
        self.restart_due = False  # outcome of the last ``exited``
        self.clean = True  # every worker that exited during the drain exited 0
        self.start_failure: tuple[int, int] | None = None  # (index, code) that aborted
        super().__init__()

    # ---- guards

    def last_to_be_ready(self, index: int) -> bool:
        """Guard of ``ready``: with ``index``, every worker has been ready once."""
        return len(self.been_ready | {index}) == self.size

    def had_been_ready(self, index: int) -> bool:
        """Guard of ``exited`` in starting: the worker had started (it crashed later)."""
        return index in self.been_ready

    def last_alive(self) -> bool:
        """Guard of ``exited``: the worker exiting now is the last one alive."""
        return self.alive == 1

    def none_alive(self) -> bool:
        """Guard: no worker is alive (all crashed and wait for their restart)."""
        return self.alive == 0

    # ---- records

    def count_spawn(self) -> None:
        """Count a worker process just started."""
        self.alive += 1
        self.restart_due = False

    def note_ready(self, index: int) -> None:
        """Record that worker ``index`` serves."""
        self.been_ready.add(index)

    def count_exit(self) -> None:
        """Count a worker process that exited; nothing is restarted."""
        self.alive -= 1
        self.restart_due = False

    def note_crash(self) -> None:
        """A worker exited though no drain was asked for: it is restarted and counted."""
        self.alive -= 1
        self.restarts += 1
        self.restart_due = True

    def note_failed_start(self, index: int, code: int) -> None:
        """A worker exited before it was ever ready: the pool cannot start."""
        self.count_exit()
        self.start_failure = (index, code)

    def note_drained(self, code: int) -> None:
        """A worker exited during the drain; only exit 0 keeps the drain clean."""
        self.count_exit()
        if code != 0:
            self.clean = False

    # ---- outcomes

    @property
    def accepting_restarts(self) -> bool:
        """Outcome: a worker whose restart is due may be spawned now (no drain asked)."""
        return bool(self.starting.is_active or self.serving.is_active)

    @property
    def finished(self) -> bool:
        """Outcome: every worker has exited and none will be started again."""
        return self.is_final
