"""Exceptions of the ``quiesce import`` / ``quiesce export`` clients.

Hierarchy (under `quiesce.core.errors.QuiesceError`)::

    ClientError              the command cannot do what it was asked; the message says why
    ├── UsageError           bad arguments, or input the client cannot read (exit 2)
    │   └── CannotCarry      RDF that the 1.x wire format cannot carry (``--wire tg1``)
    ├── Refused              the gateway refused the handshake with an HTTP status (exit 3):
    │                        401 (token), 404 (flow or kind), 400 (a query parameter);
    │                        never retried
    ├── Unreachable          nothing answered at the URL, or reconnecting failed for longer
    │                        than ``--retry-for`` seconds (exit 3)
    └── ClosedFatal          the gateway closed with a code that a retry cannot fix: 1008
                             (policy), 1009 (frame too big), 1002/1003/1007 (exit 3)

Each carries what the command line prints; `Refused.status` and `ClosedFatal.code` let a
caller branch on the cause.
"""

from __future__ import annotations

from quiesce.core.errors import QuiesceError


class ClientError(QuiesceError):
    """Base class of every error the import and export commands raise on purpose."""


class UsageError(ClientError):
    """An argument or an input file the command cannot use; the message names which."""


class CannotCarry(UsageError):
    """RDF that ``--wire tg1`` cannot carry: the message names the first such triple."""


class Refused(ClientError):
    """The gateway answered the WebSocket handshake with an HTTP error status.

    Args:
        status: the HTTP status (401, 404, 400, ...).
        reason: the gateway's one-line reason (the response body), possibly empty.
        message: what the command prints.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Unreachable(ClientError):
    """No connection could be made (at first, or again within ``--retry-for`` seconds)."""


class ClosedFatal(ClientError):
    """The gateway closed the connection with a code that asks the client not to retry.

    Args:
        code: the WebSocket close code.
        message: what the command prints.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
