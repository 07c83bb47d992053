"""WebSocket routes: a request path and query resolved to what a connection actor needs.

Pure: no sockets, no HTTP library. ``resolve_route`` is called by the HTTP front before the
handshake, so everything that can be refused with a status (404, 400) is refused there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlsplit

from quiesce.core.errors import BadRequest, RouteError
from quiesce.core.profiles import DEFAULT_WORKSPACE, Profile
from quiesce.core.protocol import AckMode, Backpressure, Direction, Position

if TYPE_CHECKING:
    from quiesce.core.config import Settings

# Every WebSocket route starts with this.
API_PREFIX = "/api/v1/flow/"
# Bounds of ?window= (unacked ack=client frames in flight).
MAX_WINDOW = 1_000_000
# Longest accepted ?subscription= name.
MAX_SUBSCRIPTION_LENGTH = 200


@dataclass(frozen=True)
class Route:
    """A WebSocket request resolved to what the connection actor needs.

    Attributes:
        direction: import or export.
        flow, kind, topic: where the data goes or comes from.
        profile: the flow's TrustGraph generation (the Pulsar payload's encoding).
        workspace: the 2.x workspace (``?workspace=``; ``default``, and always that for tg1).
        fmt: export: the wire format written to the client (``?format=``, else the profile's).
        receipts: import: send ``{"ack": N}`` receipts.
        subscription: export: the subscription name, or None for a fresh one per connection.
        position: export: where a new named subscription starts.
        ack_mode: export: when a message is acknowledged in Pulsar.
        window: export, ack=client: unacked frames in flight.
        backpressure: export: what to do with a message that does not fit the queue.
        until_end: export: stop after the backlog present at connect time (``until=end``).
    """

    direction: Direction
    flow: str
    kind: str
    topic: str
    profile: Profile = Profile.TG1
    workspace: str = DEFAULT_WORKSPACE
    fmt: Profile = Profile.TG1
    receipts: bool = False
    subscription: str | None = None
    position: Position = Position.LATEST
    ack_mode: AckMode = AckMode.AUTO
    window: int = 1000
    backpressure: Backpressure = Backpressure.BLOCK
    until_end: bool = False


def _one(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    if not values:
        return default
    return values[-1]


# One of the query parameters' enums.
_E = TypeVar("_E", AckMode, Backpressure, Position, Profile)


def _choice(
    query: dict[str, list[str]], name: str, default: str, enum: type[_E]
) -> _E:
    value = _one(query, name, default)
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise BadRequest(f"{name} must be one of {choices}, got '{value[:40]}'") from None


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
    directions = tuple(d.value for d in Direction)
    if len(pieces) != 3 or pieces[1] not in directions:
        raise RouteError(
            f"no such path '{parts.path[:80]}': "
            f"expected {API_PREFIX}{{flow}}/import|export/{{kind}}"
        )
    flow, direction, kind = pieces
    query = parse_qs(parts.query, keep_blank_values=True)
    profile = settings.profile_for(flow)
    # tg1 has no workspaces: TrustGraph 2.x clients send ?workspace= anyway; it is ignored.
    workspace = _one(query, "workspace", DEFAULT_WORKSPACE) if profile.has_workspaces else (
        DEFAULT_WORKSPACE)
    topic = settings.topic_for(flow, kind, workspace)
    if direction == Direction.IMPORT:
        return Route(Direction.IMPORT, flow, kind, topic, profile=profile, workspace=workspace,
                     fmt=profile, receipts=_bool(query, "receipts"))
    window_text = _one(query, "window", str(settings.export_window))
    if not window_text.isdigit() or not 1 <= int(window_text) <= MAX_WINDOW:
        raise BadRequest(
            f"window must be an integer between 1 and {MAX_WINDOW}, got '{window_text[:40]}'"
        )
    subscription = _one(query, "subscription", "") or None
    if subscription is not None and (
        len(subscription) > MAX_SUBSCRIPTION_LENGTH or not subscription.isprintable()
    ):
        raise BadRequest(
            f"subscription must be 1 to {MAX_SUBSCRIPTION_LENGTH} printable characters"
        )
    until = _one(query, "until", "")
    if until not in ("", "end"):
        raise BadRequest(f"until must be one of end, got '{until[:40]}'")
    return Route(
        Direction.EXPORT, flow, kind, topic,
        profile=profile, workspace=workspace,
        fmt=_choice(query, "format", profile, Profile),
        subscription=subscription,
        position=_choice(query, "position", Position.LATEST, Position),
        ack_mode=_choice(query, "ack", AckMode.AUTO, AckMode),
        window=int(window_text),
        backpressure=_choice(query, "backpressure", settings.default_backpressure,
                             Backpressure),
        until_end=until == "end",
    )
