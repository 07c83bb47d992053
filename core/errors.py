"""Exceptions raised by quiesce.

Hierarchy::

    QuiesceError
    ├── ConfigError          a setting is missing, malformed or out of range (CLI exits 2)
    ├── RouteError           a request names an unknown flow or kind (HTTP 404)
    ├── BadRequest           a request's query parameter has a bad value (HTTP 400)
    ├── InvalidMessage       a client frame breaks the wire format (error frame, code
    │                        ``invalid-message``; the connection stays open)
    ├── InvalidAck           an export client's ack is malformed or out of range (error
    │                        frame, code ``invalid-ack``)
    └── BrokerError          the broker cannot be started or reached
        └── BrokerUnavailable  nothing answers at the broker URL

Each carries what its handler needs: ``InvalidMessage.code`` and ``detail`` become the error
frame; ``RouteError.status`` the HTTP status.
"""

from __future__ import annotations

from quiesce.core.protocol import ErrorCode


class QuiesceError(Exception):
    """Base class of every error quiesce raises on purpose."""


class ConfigError(QuiesceError):
    """A setting has a value quiesce cannot use; the message names the key and the rule."""


class RouteError(QuiesceError):
    """A request path names no known flow or kind."""

    status = 404


class BadRequest(QuiesceError):
    """A query parameter with a value the route cannot use."""

    status = 400


class InvalidMessage(QuiesceError):
    """A client frame that quiesce will not publish.

    Args:
        detail: what is wrong, naming the field (``triples[0].s.v: expected a string``).
        code: the error frame's ``code``: ``invalid-message`` or ``unsupported-frame``.
    """

    def __init__(self, detail: str, code: ErrorCode = ErrorCode.INVALID_MESSAGE) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


class InvalidAck(QuiesceError):
    """An export client's ``{"ack": N}`` frame that quiesce cannot apply."""

    code = ErrorCode.INVALID_ACK


class BrokerError(QuiesceError):
    """The broker could not be started, reached or used."""


class BrokerUnavailable(BrokerError):
    """Nothing answers at the configured broker URL."""
