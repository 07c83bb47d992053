"""The HTTP side of the listener: health, readiness, metrics, and the WebSocket routes.

``process_request`` runs for every request before the WebSocket handshake (websockets'
hook). It answers ``/healthz``, ``/readyz`` and ``/metrics`` itself, and for the two
WebSocket routes decides everything that can be refused with an HTTP status, so a handler
only ever starts on a connection it can serve:

- 401 without the secret (when one is configured), compared in constant time;
- 503 once the supervisor is draining;
- 404 for an unknown flow, kind or path, with a one-line reason;
- 400 for a query parameter with a bad value.
"""

from __future__ import annotations

import email.utils
import hmac
import http
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import ServerConnection

from quiesce.actors.metrics import CONTENT_TYPE_LATEST
from quiesce.actors.websocket import GatewayConnection
from quiesce.core.errors import BadRequest, RouteError
from quiesce.core.routes import API_PREFIX, resolve_route

if TYPE_CHECKING:
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings
    from quiesce.machines.broker import BrokerMachine
    from quiesce.machines.supervisor import SupervisorMachine

def _token_ok(request: Request, query: str, secret: str) -> bool:
    expected = secret.encode()
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), expected):
        return True
    for token in parse_qs(query).get("token", []):
        if hmac.compare_digest(token.encode(), expected):
            return True
    return False


def _response(
    status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> Response:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
    ])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def text_response(status: int, text: str) -> Response:
    """A plain-text HTTP response ending with a newline."""
    return _response(status, (text + "\n").encode())


class HttpFront:
    """The ``process_request`` hook of one supervisor.

    Args:
        settings: the effective settings (secret, flows).
        machine: the supervisor's machine (is it serving?).
        metrics: what ``/metrics`` renders.
        bound_url: filled in once the listener is bound (``/readyz`` reports it).
    """

    def __init__(self, settings: Settings, machine: SupervisorMachine, metrics: Metrics,
                 broker: BrokerMachine) -> None:
        self.settings = settings
        self.machine = machine
        self.metrics = metrics
        self.broker = broker
        self.bound_url = ""

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the request, or return None to go on with the WebSocket handshake."""
        parts = urlsplit(request.path)
        path = parts.path
        if path == "/healthz":
            return text_response(200, "ok")
        if path == "/readyz":
            if not self.machine.accepting:
                return text_response(503, f"not ready: {self.machine.state}")
            if not self.broker.ready:
                return text_response(503, "not ready: the broker has been unreachable for "
                                     f"over {self.settings.broker_unready_after:g}s")
            return text_response(200, f"ready {self.bound_url}")
        secret = self.settings.secret
        if path == "/metrics" or path.startswith(API_PREFIX):
            if secret is not None and not _token_ok(request, parts.query, secret):
                return text_response(401, "unauthorized: give ?token= or Authorization: Bearer")
        if path == "/metrics":
            if not self.settings.metrics_enabled:
                return text_response(404, "metrics are disabled (metrics_enabled = false)")
            return _response(200, self.metrics.render(), CONTENT_TYPE_LATEST)
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
        return None
