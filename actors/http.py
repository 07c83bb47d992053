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
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.trio.server import ServerConnection

from quiesce.actors.connection import GatewayConnection
from quiesce.actors.metrics import CONTENT_TYPE_LATEST
from quiesce.core.config import BACKPRESSURE
from quiesce.core.errors import RouteError

if TYPE_CHECKING:
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings
    from quiesce.machines.supervisor import SupervisorMachine

API_PREFIX = "/api/v1/flow/"
DIRECTIONS = ("import", "export")


@dataclass(frozen=True)
class Route:
    """A WebSocket request resolved to what the connection actor needs.

    Attributes:
        direction: ``import`` or ``export``.
        flow, kind, topic: where the data goes or comes from.
        receipts: import: send ``{"ack": N}`` receipts.
        subscription: export: the subscription name, or None for a fresh one per connection.
        position: export: where a new named subscription starts (``latest``/``earliest``).
        ack_mode: export: ``auto`` or ``client``.
        window: export, ack=client: unacked frames in flight.
        backpressure: export: ``block``, ``drop_oldest`` or ``drop_new``.
        until_end: export: stop after the backlog present at connect time (``until=end``).
    """

    direction: str
    flow: str
    kind: str
    topic: str
    receipts: bool = False
    subscription: str | None = None
    position: str = "latest"
    ack_mode: str = "auto"
    window: int = 1000
    backpressure: str = "block"
    until_end: bool = False


class BadRequest(Exception):
    """A query parameter with a value the route cannot use (HTTP 400)."""


def _one(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    if not values:
        return default
    return values[-1]


def _choice(query: dict[str, list[str]], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _one(query, name, default)
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, got '{value[:40]}'")
    return value


def _bool(query: dict[str, list[str]], name: str) -> bool:
    value = _one(query, name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{name} must be true or false, got '{value[:40]}'")


def resolve_route(path: str, settings: Settings) -> Route:
    """Turn a request path (with its query string) into a ``Route``.

    Raises:
        RouteError: unknown path, direction, flow or kind (HTTP 404).
        BadRequest: a query parameter has a bad value (HTTP 400).
    """
    parts = urlsplit(path)
    if not parts.path.startswith(API_PREFIX):
        raise RouteError(f"no such path '{parts.path[:80]}'")
    pieces = parts.path[len(API_PREFIX):].split("/")
    if len(pieces) != 3 or pieces[1] not in DIRECTIONS:
        raise RouteError(
            f"no such path '{parts.path[:80]}': "
            f"expected {API_PREFIX}{{flow}}/import|export/{{kind}}"
        )
    flow, direction, kind = pieces
    topic = settings.topic_for(flow, kind)
    query = parse_qs(parts.query, keep_blank_values=True)
    if direction == "import":
        return Route("import", flow, kind, topic, receipts=_bool(query, "receipts"))
    window_text = _one(query, "window", str(settings.export_window))
    if not window_text.isdigit() or not 1 <= int(window_text) <= 1_000_000:
        raise BadRequest(
            f"window must be an integer between 1 and 1000000, got '{window_text[:40]}'"
        )
    subscription = _one(query, "subscription", "") or None
    if subscription is not None and (len(subscription) > 200 or not subscription.isprintable()):
        raise BadRequest("subscription must be 1 to 200 printable characters")
    until = _choice(query, "until", "", ("", "end"))
    return Route(
        "export", flow, kind, topic,
        subscription=subscription,
        position=_choice(query, "position", "latest", ("latest", "earliest")),
        ack_mode=_choice(query, "ack", "auto", ("auto", "client")),
        window=int(window_text),
        backpressure=_choice(query, "backpressure", settings.default_backpressure, BACKPRESSURE),
        until_end=until == "end",
    )


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

    def __init__(self, settings: Settings, machine: SupervisorMachine, metrics: Metrics) -> None:
        self.settings = settings
        self.machine = machine
        self.metrics = metrics
        self.bound_url = ""

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the request, or return None to go on with the WebSocket handshake."""
        parts = urlsplit(request.path)
        path = parts.path
        if path == "/healthz":
            return text_response(200, "ok")
        if path == "/readyz":
            if self.machine.accepting:
                return text_response(200, f"ready {self.bound_url}")
            return text_response(503, f"not ready: {self.machine.state}")
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
