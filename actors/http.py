"""The HTTP side of the listener: health, readiness, metrics, and the WebSocket routes.

``process_request`` runs for every request that parses, before the WebSocket handshake
(websockets' hook; a request that does not parse is answered by ``AnsweringProtocol``,
``actors/_request.py``). It answers ``/healthz``, ``/readyz`` and ``/metrics`` itself, and for
the WebSocket routes decides everything that can be refused with an HTTP status, so a
handler only ever starts on a connection it can serve. In order:

- 400 for a malformed target or a missing or repeated ``Host`` (HTTP/1.1);
- 405 (``Allow: GET``) for another method on a known path; 404 for any unknown path;
- on a WebSocket route, 426 without an upgrade, 505 for HTTP/1.0, 400 for a bad
  ``Sec-WebSocket-Key`` or ``Sec-WebSocket-Version``;
- 401 without a known credential (when a secret or a tokens file is configured), 403 for a
  known token not allowed this flow, direction, workspace (or ``/metrics``);
- 404 for an unknown flow or kind, 400 for a query parameter with a bad value;
- 503 once the supervisor is draining.

Credentials (``?token=`` or ``Authorization: Bearer``) are matched in constant time by
``core/tokens.py``; only a token's name is ever logged.
"""

from __future__ import annotations

import email.utils
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import ServerConnection

from quiesce.actors._request import (
    handshake_refusal,
    method_refusal,
    printable,
    request_problem,
    text_response,
)
from quiesce.actors.metrics import CONTENT_TYPE_LATEST
from quiesce.actors.websocket import GatewayConnection
from quiesce.core.errors import BadRequest, RouteError
from quiesce.core.profiles import DEFAULT_WORKSPACE
from quiesce.core.protocol import Direction
from quiesce.core.routes import API_PREFIX, resolve_route
from quiesce.core.tokens import Access, TokenSet

if TYPE_CHECKING:
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings
    from quiesce.machines.broker import BrokerMachine
    from quiesce.machines.supervisor import SupervisorMachine

__all__ = ["HttpFront"]

LOGGER = logging.getLogger("quiesce.http")

# Most credentials one request may present (one Bearer header, ?token= values): each costs
# a hash and a comparison with every token.
MAX_CREDENTIALS = 4
UNAUTHORIZED = "unauthorized: give ?token= or Authorization: Bearer"


def _credentials(request: Request, query: dict[str, list[str]]) -> list[str]:
    # RFC 9110 §11.1: the scheme is case-insensitive.
    found = [value[7:].strip() for value in request.headers.get_all("Authorization")
             if value[:7].lower() == "bearer "]
    found += query.get("token", [])
    return found[:MAX_CREDENTIALS]


def _workspace(query: dict[str, list[str]]) -> str:
    """The workspace a request names (``?workspace=``, its last value), ``default`` if none.

    Only ``tg2`` flows have workspaces; for a ``tg1`` flow the workspace is ``default``
    whatever the request names.
    """
    values = query.get("workspace")
    return values[-1] if values and values[-1] else DEFAULT_WORKSPACE


class HttpFront:
    """The ``process_request`` hook of one supervisor.

    Args:
        settings: the effective settings (flows, metrics).
        machine: the supervisor's machine (is it serving?).
        metrics: what ``/metrics`` renders.
        tokens: the secret and scoped tokens; replaced whole on a reload (``tokens``).

    Attributes:
        bound_url: filled in once the listener is bound (``/readyz`` reports it).
    """

    def __init__(self, settings: Settings, machine: SupervisorMachine, metrics: Metrics,
                 broker: BrokerMachine, tokens: TokenSet | None = None) -> None:
        self.settings = settings
        self.machine = machine
        self.metrics = metrics
        self.broker = broker
        self.tokens = tokens if tokens is not None else TokenSet().with_secret(settings.secret)
        self.bound_url = ""

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the request, or return None to go on with the WebSocket handshake."""
        problem = request_problem(request)
        if problem is not None:
            return text_response(400, f"bad request: {problem}")
        parts = urlsplit(request.path)
        path = parts.path
        if request.method != "GET":
            return method_refusal(request.method, path)
        if path == "/healthz":
            return text_response(200, "ok")
        if path == "/readyz":
            if not self.machine.accepting:
                return text_response(503, f"not ready: {self.machine.state}")
            if not self.broker.ready:
                return text_response(503, "not ready: the broker has been unreachable for "
                                     f"over {self.settings.broker_unready_after:g}s")
            return text_response(200, f"ready {self.bound_url}")
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == "/metrics":
            return self._metrics(request, query)
        if not path.startswith(API_PREFIX):
            return text_response(404, f"no such path '{printable(path, 80)}'")
        refusal = handshake_refusal(connection.protocol, request)
        if refusal is not None:
            return refusal
        tokens = self.tokens
        access = tokens.identify(_credentials(request, query)) if tokens.required else None
        if tokens.required and access is None:
            return text_response(401, UNAUTHORIZED)
        if access is not None and access.token is not None:
            refusal = self._scope_refusal(access, path, query)
            if refusal is not None:
                return refusal
        try:
            route = resolve_route(request.path, self.settings)
        except RouteError as exc:
            return text_response(404, str(exc))
        except BadRequest as exc:
            return text_response(400, str(exc))
        if not self.machine.accepting:
            return text_response(503, f"server is {self.machine.state}: retry elsewhere or later")
        assert isinstance(connection, GatewayConnection)  # serve(create_connection=...)
        connection.route = route
        connection.credential = None if access is None else access.name
        return None

    def _scope_refusal(self, access: Access, path: str, query: dict[str, list[str]]
                       ) -> Response | None:
        """403 if the token may not use this route's flow, direction or workspace."""
        token = access.token
        assert token is not None
        pieces = path[len(API_PREFIX):].split("/")
        if len(pieces) != 3 or pieces[1] not in set(Direction):
            return None  # not a route at all: resolve_route answers 404
        flow, direction = pieces[0], Direction(pieces[1])
        # A tg1 flow has no workspaces: whatever ?workspace= says, it is ``default`` there.
        workspace = (_workspace(query) if self.settings.profile_for(flow).has_workspaces
                     else DEFAULT_WORKSPACE)
        reason = token.refusal(flow, direction, workspace)
        if reason is None:
            return None
        LOGGER.info("refused: %s", reason,
                    extra={"token": token.name, "flow": printable(flow, 64),
                           "direction": str(direction)})
        return text_response(403, f"forbidden: {reason}")

    def _metrics(self, request: Request, query: dict[str, list[str]]) -> Response:
        tokens = self.tokens
        access = tokens.identify(_credentials(request, query)) if tokens.required else None
        if tokens.required and access is None:
            return text_response(401, UNAUTHORIZED)
        if access is not None and access.token is not None and not access.token.metrics:
            return text_response(403, f"forbidden: token '{access.token.name}' may not read "
                                      "/metrics (metrics = true)")
        if not self.settings.metrics_enabled:
            return text_response(404, "metrics are disabled (metrics_enabled = false)")
        body = self.metrics.render()
        return Response(200, "OK", Headers([
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", CONTENT_TYPE_LATEST),
        ]), body)
