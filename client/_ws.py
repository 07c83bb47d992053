"""The client side of a gateway WebSocket: its URL, opening it, and what each failure means.

Both commands reconnect the same way, so the rules live here once:

- a handshake refused with 401/403, 404, 400 (any 4xx) is final: `Refused`, never retried,
  with the gateway's one-line reason;
- 502/503/504 (a gateway draining or starting), a refused TCP connection, a timeout, and a
  connection that ends with 1001 (server draining), 1011 (forced or internal error), 1012,
  1013, 1014 or without a close frame (1006) are retried with `Backoff`;
- 1008 (policy), 1009 (frame too big), 1002, 1003, 1007, 1010 are final: `ClosedFatal`.

The very first connection is not retried when nothing listens (`Unreachable` at once: a
wrong URL should say so now, not after a minute); once connected, reconnecting goes on for
``retry_for`` seconds (`Reconnect`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.trio.client import connect

from quiesce import __version__
from quiesce.client.errors import ClosedFatal, Refused, Unreachable, UsageError

if TYPE_CHECKING:
    from websockets.exceptions import ConnectionClosed

# Seconds to open a connection (TCP + handshake) before the attempt counts as failed.
OPEN_TIMEOUT = 10.0
# Seconds the client waits for the gateway's close frame after its own: the gateway first
# persists (import) or settles (export) everything, bounded by its own drain timeouts.
CLOSE_TIMEOUT = 60.0
# Reconnect delays: the first, the factor between two, and the longest.
BACKOFF_FIRST = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 2.0
# HTTP statuses of a handshake worth retrying: a gateway draining, starting, or behind a proxy.
RETRY_STATUSES = frozenset({502, 503, 504})
# Close codes that ask the client not to come back with the same frames.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
# What each close code means, for messages.
CLOSE_MEANINGS = {
    1000: "done",
    1001: "server draining",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "connection lost",
    1007: "invalid data",
    1008: "policy violation",
    1009: "frame too big",
    1011: "forced or internal error",
    1012: "service restart",
    1013: "try again later",
}


def api_url(base: str, flow: str, direction: str, kind: str, query: dict[str, str]) -> str:
    """The WebSocket URL of (flow, direction, kind) on the gateway at ``base``.

    Args:
        base: ``ws://HOST:PORT`` (``wss://``, and ``http(s)://`` meaning the same, accepted;
            a path prefix is kept, for a gateway behind a reverse proxy).
        flow, direction, kind: the route.
        query: query parameters.

    Raises:
        UsageError: ``base`` is not a ws, wss, http or https URL with a host.
    """
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(f"--url must look like ws://HOST:PORT, got {base!r}")
    path = (parts.path.rstrip("/") + f"/api/v1/flow/{quote(flow, safe='')}/{direction}/"
            f"{quote(kind, safe='')}")
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def where(url: str) -> str:
    """``HOST:PORT/path`` of ``url`` without its query (which may hold a token), for messages."""
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}"


def open_connection(url: str, token: str | None, *, max_size: int | None = None) -> connect:
    """`websockets.trio.client.connect` with the settings both commands use.

    No compression (the gateway offers none), the token as ``Authorization: Bearer`` (not in
    the URL, where logs would keep it), and no frame size limit on what the gateway sends
    unless ``max_size`` is given (exported messages may be as large as the gateway allows).
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(url, additional_headers=headers, compression=None,
                   open_timeout=OPEN_TIMEOUT, close_timeout=CLOSE_TIMEOUT, max_size=max_size,
                   user_agent_header=f"quiesce/{__version__}")


def refusal(exc: InvalidStatus, url: str, token: str | None) -> Refused | None:
    """What a handshake answered with an HTTP error means: `Refused`, or None to retry."""
    status = exc.response.status_code
    reason = exc.response.body.decode(errors="replace").strip().splitlines()
    text = reason[0][:300] if reason else ""
    if status in RETRY_STATUSES:
        return None
    at = where(url)
    if status in (401, 403):
        hint = ("the gateway refused the token given" if token
                else "the gateway needs a token: give --token or set QUIESCE_TOKEN")
        phrase = "unauthorized" if status == 401 else "forbidden"
        return Refused(status, text, f"HTTP {status} {phrase} at {at}: {hint}")
    if status == 404:
        return Refused(status, text, f"HTTP 404 at {at}: {text or 'not found'}")
    if 400 <= status < 500:
        return Refused(status, text, f"HTTP {status} at {at}: {text or 'bad request'}")
    return None


def unreachable(exc: BaseException, url: str) -> Unreachable:
    """`Unreachable` naming the address and the cause of a failed connection attempt."""
    return Unreachable(f"cannot reach {where(url)}: {failure_cause(exc)} (is the gateway "
                       "running?)")


def failure_cause(exc: BaseException) -> str:
    """The root cause of a failed attempt: ``Connection refused`` rather than trio's "all
    attempts to connect to … failed", which wraps one error per address it tried."""
    inner = exc.__cause__
    if isinstance(inner, BaseExceptionGroup):
        causes = {failure_cause(e) for e in inner.exceptions}
        return "; ".join(sorted(causes))
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def connect_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a connection attempt raises when it fails in a retryable way.

    `InvalidStatus` is among them (an `InvalidHandshake`): check `refusal` first.
    """
    return (OSError, TimeoutError, InvalidHandshake)


def close_code(exc: ConnectionClosed) -> int:
    """The close code the gateway sent, or 1006 when the connection ended without one."""
    if exc.rcvd is not None:
        return int(exc.rcvd.code)
    return 1006


def describe_close(exc: ConnectionClosed) -> str:
    """``1001 (server draining: shutting down)``: a close code, its meaning and its reason."""
    code = close_code(exc)
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    meaning = CLOSE_MEANINGS.get(code, "closed")
    return f"{code} ({meaning}{': ' + reason if reason else ''})"


def fatal_close(exc: ConnectionClosed, what: str) -> ClosedFatal | None:
    """`ClosedFatal` when the close code asks not to retry, else None.

    Args:
        exc: how the connection ended.
        what: a phrase for the message (``"import"``, ``"export"``).
    """
    code = close_code(exc)
    if code not in FATAL_CLOSE_CODES:
        return None
    hint = ""
    if code == 1009:
        hint = ": a message is larger than the gateway's max_message_bytes"
    elif code == 1008:
        hint = (": a token no longer valid, or (export) a client that took nothing for the "
                "gateway's export_stall_timeout (an output that blocked?)")
    return ClosedFatal(code, f"the gateway ended the {what} with {describe_close(exc)}{hint}")


class Backoff:
    """Reconnect delays: `BACKOFF_FIRST`, doubling up to `BACKOFF_MAX`, within a budget.

    Pure: the caller passes the clock's readings in. ``retry_for`` seconds after the first
    failure of a run of failures, `delay` returns None: give up.

    Args:
        retry_for: seconds to keep trying after a failure; ``math.inf`` never gives up.
    """

    def __init__(self, retry_for: float = math.inf) -> None:
        self.retry_for = retry_for
        self.attempts = 0
        self._since: float | None = None

    def delay(self, now: float) -> float | None:
        """The seconds to wait before the next attempt, or None once the budget is spent."""
        if self._since is None:
            self._since = now
        if now - self._since >= self.retry_for:
            return None
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * BACKOFF_FACTOR ** self.attempts)
        self.attempts += 1
        return min(delay, max(0.0, self._since + self.retry_for - now))

    def reset(self) -> None:
        """A connection worked: the next failure starts a new budget and the shortest delay."""
        self.attempts = 0
        self._since = None
