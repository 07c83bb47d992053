"""A tiny WebSocket server that records exactly what a client sends (no broker, no gateway).

Used to pin down the wire behaviour of TrustGraph's released tools: the request path and
query, a few headers, every frame in order, and how the client ends the connection. On
export paths it plays a scripted feed (``feeds[kind]``: JSON messages sent as text frames)
and then waits for the client, so exporters can be observed reading.

Frames are recorded as the connection parses them, not by the connection handler: a client
that sends everything and its close frame right after the handshake (``tg-load-doc-embeds``
does) can have its close processed before websockets.trio's ``serve`` would call the
handler, and ``serve`` then never calls it (it checks the state is still OPEN). quiesce's
gateway holds the client's close frame, so the same race cannot lose a connection there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Event
from websockets.trio.server import ServerConnection, serve

__all__ = ["Capture", "Captured"]


@dataclass
class Captured:
    """One recorded WebSocket connection.

    Attributes:
        path: the request target's path (``/api/v1/flow/f/import/triples``).
        query: the parsed query string (``{"workspace": ["default"]}``).
        headers: the request headers of interest, lower-case names.
        frames: each data frame received, in order: ``str`` for text, ``bytes`` for binary.
        close_code: the client's close code (None: the TCP connection ended without one).
        sent: how many feed frames the server sent on this connection.
        done: set when the connection has ended.
    """

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    frames: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    sent: int = 0
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def kind(self) -> str:
        """The last path segment (the kind)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def messages(self) -> list[Any]:
        """The text frames parsed as JSON."""
        return [json.loads(f) for f in self.frames if isinstance(f, str)]


class Capture:
    """Records every WebSocket connection made to it; start with ``nursery.start(c.serve)``.

    Args:
        feeds: export kind -> JSON messages to send (as text frames) on an export path.
    """

    HEADERS = ("authorization", "user-agent", "sec-websocket-protocol", "origin")

    def __init__(self, feeds: dict[str, list[Any]] | None = None) -> None:
        self.feeds = feeds or {}
        self.connections: list[Captured] = []
        self.port = 0
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/`` (TrustGraph tools take the http form and convert it)."""
        return f"http://127.0.0.1:{self.port}/"

    def _connection(self, *args: Any, **kwargs: Any) -> ServerConnection:
        return _Recording(self, *args, **kwargs)

    def _register(self, ws: ServerConnection) -> Captured:
        request = ws.request
        assert request is not None
        target = urlsplit(request.path)
        captured = Captured(
            path=target.path,
            query=parse_qs(target.query, keep_blank_values=True),
            headers={h: request.headers[h] for h in self.HEADERS if h in request.headers},
        )
        self.connections.append(captured)
        self._notify()
        return captured

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _Recording)
        captured = ws.captured()
        try:
            async with trio.open_nursery() as nursery:
                if "/export/" in captured.path:
                    nursery.start_soon(self._feed, ws, captured)
                try:
                    async for _frame in ws:
                        pass  # recorded by _Recording as parsed
                except ConnectionClosed:
                    pass  # the client went away without a close frame
                nursery.cancel_scope.cancel()
        finally:
            captured.done.set()
            self._notify()

    async def _feed(self, ws: ServerConnection, captured: Captured) -> None:
        try:
            for message in self.feeds.get(captured.kind, []):
                await ws.send(json.dumps(message))
                captured.sent += 1
                self._notify()
        except ConnectionClosed:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Any, within: float) -> None:
        """Wait (at most ``within`` s) until ``predicate(self)`` holds."""
        with trio.fail_after(within):
            while not predicate(self):
                await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on a free loopback port until cancelled."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve(self._handler, 0, host="127.0.0.1",
                                          max_size=None, ping_interval=None,
                                          create_connection=self._connection,
                                          task_status=task_status))
            self.port = server.listeners[0].socket.getsockname()[1]
            task_status.started()


class _Recording(ServerConnection):
    """A server connection that records each data message and the close as it parses them."""

    def __init__(self, capture: Capture, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._capture = capture
        self._captured: Captured | None = None
        self._fragments: list[bytes] = []
        self._binary = False

    def captured(self) -> Captured:
        """This connection's record (made once the request is known)."""
        if self._captured is None:
            self._captured = self._capture._register(self)
        return self._captured

    def process_event(self, event: Event) -> None:
        """Record data messages and the client's close code, then process as usual."""
        super().process_event(event)
        if not isinstance(event, Frame) or self.request is None:
            return
        captured = self.captured()
        if event.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._binary = event.opcode is Opcode.BINARY
            self._fragments = []
        if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            self._fragments.append(bytes(event.data))
            if event.fin:
                payload = b"".join(self._fragments)
                captured.frames.append(payload if self._binary else payload.decode())
                self._capture._notify()
        elif event.opcode is Opcode.CLOSE:
            captured.close_code = Close.parse(event.data).code if event.data else None
            captured.done.set()
            self._capture._notify()
