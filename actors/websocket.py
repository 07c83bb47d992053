"""The connection's WebSocket: websockets.trio, with the close handshake held until drained.

Why a protocol subclass: websockets answers a client's close frame at once, inside its
sans-I/O ``Protocol.recv_frame``, and then refuses to send anything. CONTRACT §3 wants the
final ``{"ack": N}`` *before* the server's close frame, and RFC 6455 §5.5.1 only asks for the
reply "as soon as practical". ``HeldCloseProtocol`` therefore records the client's close frame
and keeps the connection OPEN (so the actor can still send receipts) until the actor, its
drain complete, calls ``answer_close``. Data frames after a close frame are discarded, as
RFC 6455 §1.4 says.

``GatewayConnection`` is the ``create_connection`` factory given to ``websockets.trio.serve``.
It swaps the protocol's class in place (``serve`` builds a plain ``ServerProtocol`` and offers
no other hook) and gives the actors their socket operations: ``receive_frame``,
``send_text``/``send_texts``, ``ending`` (why the stream of frames ended),
``close_after_drain`` and ``abort``. ``HeldCloseProtocol`` is also an ``AnsweringProtocol``
(``actors/_request.py``): a request head that does not parse still gets an HTTP answer.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.frames import CLOSE, Close, Frame
from websockets.protocol import CLOSING, OPEN, State
from websockets.trio.server import ServerConnection

from quiesce.actors._request import AnsweringProtocol
from quiesce.core.errors import InvalidMessage
from quiesce.core.protocol import CloseCode

if TYPE_CHECKING:
    from quiesce.core.routes import Route


class Ending(enum.Enum):
    """Why a connection's stream of client frames ended."""

    CLIENT_CLOSED = "client closed"  # its close frame arrived (held)
    TOO_BIG = "frame too big"  # the library closed with 1009
    PEER_LOST = "peer lost"  # the socket is gone


class HeldCloseProtocol(AnsweringProtocol):
    """A ``ServerProtocol`` that lets the application choose when to answer a close frame
    (and answers every HTTP request, as an ``AnsweringProtocol``)."""

    held_close: Frame | None = None

    def recv_frame(self, frame: Frame) -> None:
        """Process an incoming frame, holding a close frame instead of echoing it."""
        if self.held_close is not None:
            return  # RFC 6455 §1.4: discard what follows a close frame
        if frame.opcode is CLOSE and self.state is OPEN and self.current_size is None:
            Close.parse(frame.data)  # a malformed close frame still fails the connection
            self.held_close = frame
            self.events.append(frame)
            return
        super().recv_frame(frame)

    def answer_close(self, code: int | None = None, reason: str = "") -> None:
        """Send the close frame owed for the held one: its echo, or ``code`` if given.

        After calling this method, send ``data_to_send()``; the connection is CLOSING.
        """
        frame = self.held_close
        assert frame is not None and self.state is OPEN
        self.held_close = None
        if code is None:
            super().recv_frame(frame)  # the library's own reply: echo, then half-close
            return
        self.close_rcvd = Close.parse(frame.data)
        self.close_sent = Close(code, reason)
        self.send_frame(Frame(CLOSE, self.close_sent.serialize()))
        self.close_rcvd_then_sent = True
        self.state = CLOSING
        self.send_eof()
        self.parser = self.discard()
        next(self.parser)


class GatewayConnection(ServerConnection):
    """A websockets.trio server connection carrying a route and a held close.

    Attributes:
        route: what ``process_request`` resolved for this request (flow, kind, topic,
            options); set before the handler runs.
        credential: the name of the token (or ``secret``) the handshake presented, for
            logs; None when no credential is required.
    """

    route: Route
    credential: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # serve() builds a plain ServerProtocol and has no hook for a subclass; the subclass
        # adds behaviour only (no state of its own besides a class-level default).
        protocol = self.protocol
        protocol.__class__ = HeldCloseProtocol
        # The request parser was started by ServerProtocol.__init__ as the plain class's
        # generator: start ours instead. Nothing was read yet (the reader task has not run).
        assert not protocol.reader.buffer and not protocol.reader.eof
        protocol.parser = protocol.parse()
        next(protocol.parser)
        self.client_closed = trio.Event()

    def process_event(self, event: Any) -> None:
        """Hand data frames to the assembler; on a held close, end the stream of messages."""
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode is CLOSE and (
            getattr(self.protocol, "held_close", None) is not None
        ):
            # Messages already queued stay readable; receive_frame() returns None after them.
            self.recv_messages.close()
            self.client_closed.set()

    @property
    def is_open(self) -> bool:
        """True while frames can still be sent to the client."""
        return self.protocol.state is OPEN

    def ending(self) -> Ending:
        """Why ``receive_frame`` returned None: the client's close, a frame too big, or a loss."""
        if self.client_closed.is_set():
            return Ending.CLIENT_CLOSED
        close_sent = self.protocol.close_sent
        if close_sent is not None and close_sent.code == CloseCode.TOO_BIG:
            return Ending.TOO_BIG
        return Ending.PEER_LOST

    async def receive_frame(self) -> str | bytes | None:
        """Return the next message (str for text, bytes for binary), or None at the end.

        The end is either the client's close frame (held: see ``close_after_drain``) or a
        connection that is gone. Cancelling is safe: no message is lost.

        Raises:
            InvalidMessage: a text frame that is not valid UTF-8 (it is consumed).
        """
        try:
            return await self.recv_messages.get()
        except EOFError:
            return None
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"not UTF-8: {exc.reason} at position {exc.start}") from None

    async def send_text(self, text: str) -> bool:
        """Send one text frame. Returns False if the connection is gone."""
        if self.protocol.state is not OPEN:
            return False
        try:
            await self.send(text)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def send_texts(self, payloads: list[bytes]) -> bool:
        """Send UTF-8 ``payloads`` as text frames in one socket write.

        ``send()`` writes each frame with its own ``send_all``; a burst of hundreds of small
        frames then costs hundreds of syscalls and scheduler passes. This serialises them
        all through the protocol and writes the bytes once, under the same lock.

        Returns:
            False if the connection is gone (nothing or not everything was written).
        """
        protocol = self.protocol
        try:
            async with self.send_lock:
                if protocol.state is not OPEN:
                    return False
                if protocol.extensions:
                    for payload in payloads:
                        protocol.send_text(payload)
                    data = b"".join(protocol.data_to_send())
                else:
                    # With no extension negotiated (the server offers none: compression is
                    # off) a server's text frame is a fixed header and the payload, and the
                    # protocol keeps no state for it: writing it here saves Frame.serialize
                    # per message (a fifth of the export path's time).
                    pending = protocol.data_to_send()  # pongs queued by the reader, if any
                    data = b"".join([*pending, *map(_text_frame, payloads)])
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        return True

    async def close_after_drain(self, code: int | None, reason: str = "") -> None:
        """Finish the close handshake: answer a held close, or start one with ``code``.

        With a held client close and ``code`` None, the client's own code is echoed.
        """
        protocol = self.protocol
        assert isinstance(protocol, HeldCloseProtocol)
        self.stop_flow_control()
        if protocol.state is not OPEN:
            await self.wait_closed_briefly()
            return
        if protocol.held_close is not None:
            try:
                async with self.send_context():
                    protocol.answer_close(code, reason)
            except ConnectionClosed:
                pass
            return
        await self.aclose(code if code is not None else CloseCode.DONE, reason)

    async def wait_closed_briefly(self) -> None:
        """Close the TCP stream once the protocol is closed (idempotent)."""
        if self.protocol.state is not State.CLOSED or not self.stream_closed.is_set():
            await self.close_stream()

    def stop_flow_control(self) -> None:
        """Let the reader task read the socket again, whatever is left unread.

        Once the actor stops reading messages, websockets' reader pauses when its buffer is
        full and no longer watches the socket: it would miss the client's close frame and
        even the socket's closing, and the connection handler would never return. Nothing
        will read those messages any more (they were never numbered, so never receipted),
        and the close is bounded by the grace period, so the buffer may grow until then.
        """
        self.recv_messages.high = self.recv_messages.low = None
        if self.recv_flow_control is not None:
            self.resume_reading()

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (the forced path)."""
        self.stop_flow_control()
        await trio.aclose_forcefully(self.stream)


def _text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 §5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        return b"\x81" + bytes((length,)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload
