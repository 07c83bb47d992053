"""Lifecycle of the broker as the gateway sees it: reachable, lost, or lost for too long.

Theory of operation. The broker monitor asks the broker one question every
``broker_probe_interval`` seconds (a topic lookup through the shared client) and reports the
answer as a fact; the machine keeps what it means::

    connected --probe_failed--> lost --outage_long--> unready
    lost | unready --probe_ok--> connected

``outage_long`` is the fact "lost for longer than ``broker_unready_after``" (the monitor
keeps the clock). ``/readyz`` answers 503 while ``unready`` (``ready`` is the outcome): a
short blip does not take the gateway out of a load balancer, a real outage does.
Connections are not closed by it: their producers and consumers reconnect by themselves,
and nothing they hold is settled until the broker has answered.
"""

from __future__ import annotations

from statemachine import State

from quiesce.machines._base import Lifecycle, stays


class BrokerMachine(Lifecycle):
    """connected → lost (→ unready) → connected, from the monitor's probes."""

    connected = State(initial=True)
    lost = State()
    unready = State()

    probe_ok = stays(connected) | lost.to(connected) | unready.to(connected)
    probe_failed = connected.to(lost) | stays(lost) | stays(unready)
    outage_long = lost.to(unready)

    @property
    def ready(self) -> bool:
        """Outcome: the broker has not been unreachable for too long (``/readyz`` may be 200)."""
        return not self.unready.is_active

    @property
    def up(self) -> bool:
        """Outcome: the last probe was answered."""
        return bool(self.connected.is_active)
