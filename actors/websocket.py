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

Reading ahead, bounded in bytes. websockets' own flow control counts *frames* (``max_queue``)
and stops reading the socket when that many wait: while the worker waits for the broker
(an outage: no confirmations, so no room for more frames in flight), a close frame, a ping
or a pong behind those frames was never seen, the client timed out with 1006 and the
keepalive killed the connection. ``GatewayConnection`` turns that off (``serve`` gets
``max_queue=None``) and bounds what it has read but the worker has not taken in *bytes*
(``read_ahead_limit``, the setting ``import_buffer_bytes``; each frame also counts
``FRAME_OVERHEAD`` so empty frames are bounded too): it keeps reading — control frames are
handled as they come — until that much is buffered, and only then stops reading the socket
(TCP backpressure; a close behind more than that is seen once the worker takes frames again,
or the client's own close timeout ends it). It reads again once the buffer is down to half.
Nothing read is ever dropped. Reading stops only after a complete message, never inside a
fragmented one the worker is waiting for (that message is bounded by ``max_size``). The
keepalive (``keepalive``) does not count a pong as missing while reading was paused by this
bound, and a missing pong is a log line, not a traceback.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.frames import CLOSE, DATA_OPCODES, Close, Frame
from websockets.protocol import CLOSING, OPEN, State
from websockets.trio.server import ServerConnection

from quiesce.actors._request import AnsweringProtocol
from quiesce.core.errors import InvalidMessage
from quiesce.core.protocol import CloseCode

if TYPE_CHECKING:
    from quiesce.core.routes import Route

LOGGER = logging.getLogger("quiesce.websocket")

# Bytes one buffered frame costs besides its payload (the Frame object and its bytes object
# are about 90 on CPython 3.11, plus the queue's slot; counted generously): a flood of empty
# frames is bounded too.
FRAME_OVERHEAD = 200
# Reading ahead stays within this many bytes unless told otherwise (``import_buffer_bytes``).
DEFAULT_READ_AHEAD = 512 * 1024


def _nothing() -> None:
    pass


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
    # The bound on bytes read ahead of the worker (see the module docstring); ``connection_class``
    # sets it from the settings.
    read_ahead_limit: int = DEFAULT_READ_AHEAD

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes of frames read and not yet taken by the worker, the size of each complete
        # message among them (oldest first), and the part of the message being assembled.
        self._buffered = 0
        self._sizes: collections.deque[int] = collections.deque()
        self._partial = 0
        self._limit: int | None = self.read_ahead_limit
        self._pauses = 0  # times reading was paused by the bound (the keepalive reads it)
        # Called when the stream of frames ends (the client's close, or the socket's end):
        # a worker waiting for something else than a frame sets it to be woken.
        self.wake: Callable[[], None] = _nothing
        self.log_fields: dict[str, str] = {}
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
        """Hand data frames to the assembler (counting their bytes: reading stops past the
        bound); on a held close, end the stream of messages."""
        super().process_event(event)
        if not isinstance(event, Frame):
            return
        opcode = event.opcode
        if opcode in DATA_OPCODES:
            size = len(event.data) + FRAME_OVERHEAD
            self._buffered += size
            if not event.fin:
                self._partial += size
                return
            self._sizes.append(self._partial + size)
            self._partial = 0
            limit = self._limit
            if (limit is not None and self._buffered > limit
                    and self.recv_flow_control is None):
                self._pauses += 1
                self.pause_reading()
        elif opcode is CLOSE and getattr(self.protocol, "held_close", None) is not None:
            # Messages already queued stay readable; receive_frame() returns None after them.
            self.recv_messages.close()
            self.client_closed.set()
            self.wake()

    async def close_stream(self) -> None:
        """Close the TCP stream (websockets' own), then wake a worker waiting on something."""
        await super().close_stream()
        self.wake()

    @property
    def read_ahead_bytes(self) -> int:
        """Bytes of frames read and not yet taken by the worker (with ``FRAME_OVERHEAD``)."""
        return self._buffered

    @property
    def read_pauses(self) -> int:
        """How many times reading the socket was paused by the read-ahead bound."""
        return self._pauses

    @property
    def stream_ended(self) -> bool:
        """True once no more frames can come: the client's close arrived, or the socket is
        gone (frames read before may still be queued)."""
        return self.client_closed.is_set() or self.stream_closed.is_set()

    def _taken(self) -> None:
        """The worker took the oldest buffered message: read again once half the bound is free."""
        if self._sizes:
            self._buffered -= self._sizes.popleft()
        limit = self._limit
        if (self.recv_flow_control is not None and limit is not None
                and self._buffered <= limit // 2):
            self.resume_reading()

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
            message = await self.recv_messages.get()
        except EOFError:
            return None
        except UnicodeDecodeError as exc:
            self._taken()
            raise InvalidMessage(f"not UTF-8: {exc.reason} at position {exc.start}") from None
        self._taken()
        return message

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
        self._limit = None
        if self.recv_flow_control is not None:
            self.resume_reading()

    async def keepalive(self) -> None:
        """websockets' keepalive (a ping every ``ping_interval``, a pong due within
        ``ping_timeout``), with two changes.

        A pong is not counted as missing while reading was paused by the read-ahead bound
        since the ping was sent: the client proved alive by filling the buffer, and its pong
        is behind data the gateway chose not to read yet (it waits for the broker). And a
        missing pong closes the connection with 1011 and one log line, not a traceback.
        """
        interval, timeout = self.ping_interval, self.ping_timeout
        assert interval is not None
        try:
            while True:
                # A pong forgiven for coming late may make the latency exceed the interval.
                with trio.move_on_after(max(0.0, interval - self.latency)):
                    await self.stream_closed.wait()
                    return
                if self.client_closed.is_set():
                    return  # the close handshake is under way, bounded by the drain
                pauses = self._pauses
                pong_received = await self.ping(ack_on_close=True)
                if timeout is None:
                    continue
                while True:
                    with trio.move_on_after(timeout):
                        await pong_received.wait()
                        break
                    if self.client_closed.is_set():
                        return
                    if self.recv_flow_control is not None or self._pauses != pauses:
                        pauses = self._pauses  # behind unread data: wait on
                        continue
                    LOGGER.warning("no pong within %gs of a keepalive ping: closing with 1011",
                                   timeout, extra=self.log_fields)
                    async with self.send_context():
                        self.protocol.fail(CloseCode.INTERNAL, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            return  # the connection ended meanwhile: its end is logged where it is handled
        except Exception:  # a bug: say so, and leave the connection to its other bounds
            LOGGER.error("keepalive failed", exc_info=True, extra=self.log_fields)

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (the forced path)."""
        self.stop_flow_control()
        await trio.aclose_forcefully(self.stream)


def connection_class(read_ahead_limit: int) -> type[GatewayConnection]:
    """``GatewayConnection`` with its read-ahead bound set (``serve`` takes a class)."""

    class Configured(GatewayConnection):
        pass

    Configured.read_ahead_limit = read_ahead_limit
    Configured.__name__ = Configured.__qualname__ = "GatewayConnection"
    return Configured


def _text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 §5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        return b"\x81" + bytes((length,)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload
