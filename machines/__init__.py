"""Declared lifecycles and ledgers: pure python-statemachine classes and bookkeeping.

No I/O, no Trio, no clock. Each actor in ``actors/`` owns its machine and ledger and is the
only code that reports facts to them; the machines choose the edges and the actors read
the outcomes (the close code, forced or graceful, finished or not).
"""

from quiesce.machines._base import Lifecycle
from quiesce.machines.broker import BrokerMachine
from quiesce.machines.connection import ConnectionMachine
from quiesce.machines.delivery import DeliveryLedger
from quiesce.machines.pool import PoolMachine
from quiesce.machines.receipts import ReceiptLedger, Rejection
from quiesce.machines.supervisor import SupervisorMachine
from quiesce.machines.worker import Ledger, WorkerMachine

__all__ = [
    "ALL_MACHINES",
    "BrokerMachine",
    "ConnectionMachine",
    "DeliveryLedger",
    "Ledger",
    "Lifecycle",
    "PoolMachine",
    "ReceiptLedger",
    "Rejection",
    "SupervisorMachine",
    "WorkerMachine",
]

# Every machine, in the order the docs present them (diagrams are rendered from this).
ALL_MACHINES: tuple[type[Lifecycle], ...] = (
    SupervisorMachine,
    ConnectionMachine,
    WorkerMachine,
    BrokerMachine,
    PoolMachine,
)
