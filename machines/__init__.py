"""Declared lifecycles: pure python-statemachine classes, no I/O, no Trio, no clock.

Each actor in ``actors/`` owns one of these and is the only code that sends it events.
"""

from quiesce.machines._base import Lifecycle
from quiesce.machines.connection import ConnectionMachine
from quiesce.machines.publisher import PublisherMachine
from quiesce.machines.subscriber import SubscriberMachine
from quiesce.machines.supervisor import SupervisorMachine

__all__ = [
    "ALL_MACHINES",
    "ConnectionMachine",
    "Lifecycle",
    "PublisherMachine",
    "SubscriberMachine",
    "SupervisorMachine",
]

# Every machine, in the order the docs present them (diagrams are rendered from this).
ALL_MACHINES: tuple[type[Lifecycle], ...] = (
    SupervisorMachine,
    ConnectionMachine,
    PublisherMachine,
    SubscriberMachine,
)
