"""Every HTTP request gets an answer: the front's rules, and the requests websockets drops.

websockets parses a request head in its sans-I/O ``ServerProtocol.parse``. When that parse
fails, it answers only an over-long line (414) or too many headers (431); any other failure
— a malformed request line, LF-only line endings, a non-ASCII target, a body or a
``Transfer-Encoding`` (it reads no bodies), the HTTP/2 preface, garbage — half-closes the
connection with no response at all. ``AnsweringProtocol`` replaces that parse with one that
keeps the request line it read and answers every failure: 405 (``Allow: GET``) for another
method on a known path, 404 for another method elsewhere, 400 for everything malformed.
Bytes that cannot begin a request line (a TLS ClientHello on the plain port, binary noise)
are answered at once, without waiting for a line end that may never come.

A request that parses reaches ``process_request`` (``actors/http.py``), which applies the same
rules with `method_refusal`, `request_problem` and `handshake_refusal`. Every answer is a
status with a one-line plain-text body naming the problem, and ``Connection: close``.

The one deliberate exception: a connection that ends before its request is complete (the
client closed its side, or sent nothing for websockets' ``open_timeout``) is closed without a
response; there is no request to answer, and the reply would meet a closed socket.
"""

from __future__ import annotations

import email.utils
import http
import re
from collections.abc import Generator, Iterable
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidProtocol,
    InvalidUpgrade,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import MAX_LINE_LENGTH, Request, Response
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol

from quiesce.core.routes import API_PREFIX

__all__ = [
    "KNOWN_PATHS",
    "AnsweringProtocol",
    "handshake_refusal",
    "is_known_path",
    "malformed_response",
    "method_refusal",
    "printable",
    "request_problem",
    "text_response",
]

# Paths answered over plain HTTP; every path under API_PREFIX is a WebSocket route.
KNOWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# A method is an RFC 9110 token; a longer one than this is taken for garbage.
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
# An origin-form target (RFC 9112 §3.2.1), an absolute-form one, or "*" (OPTIONS): visible
# ASCII only. RFC 3986 allows fewer characters (no raw [ ] | ^ { } in a query), but clients
# send them and nothing here is confused by them; controls, spaces and non-ASCII are refused.
_TARGET = re.compile(r"(?:https?://[A-Za-z0-9.:\[\]@%-]+)?/[\x21-\x7e]*|\*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Longest excerpt of a client's bytes quoted back in an answer.
_EXCERPT = 60


def printable(text: str | bytes, limit: int = _EXCERPT) -> str:
    """``text`` as one printable line of at most ``limit`` characters, for an answer or a log."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    shown = "".join(c if c.isprintable() and c.isascii() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def text_response(status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A plain-text response: ``text`` (one line) and a newline, ``Connection: close``."""
    body = (text + "\n").encode()
    return Response(status, http.HTTPStatus(status).phrase, Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", "text/plain; charset=utf-8"),
        *headers,
    ]), body)


def is_known_path(path: str) -> bool:
    """Whether ``path`` (without its query) is one the gateway serves."""
    return path in KNOWN_PATHS or path.startswith(API_PREFIX)


def method_refusal(method: str, path: str) -> Response:
    """The answer to a method other than GET: 405 on a known path, 404 elsewhere."""
    if is_known_path(path):
        return text_response(405, f"method {printable(method)} not allowed: use GET",
                             [("Allow", "GET")])
    return text_response(404, f"no such path '{printable(path, 80)}'")


def request_problem(request: Request) -> str | None:
    """What makes a parsed request malformed (a 400), or None.

    Checks the target's characters and, for HTTP/1.1, exactly one ``Host`` header (RFC 9112
    §3.2: "A server MUST respond with a 400 … to any HTTP/1.1 request message that lacks a
    Host header field and to any that contains more than one").
    """
    target = request.path
    if not _TARGET.fullmatch(target) or _BAD_PERCENT.search(target):
        return f"invalid request target '{printable(target)}'"
    hosts = request.headers.get_all("Host")
    if request.protocol == "HTTP/1.1" and len(hosts) != 1:
        return "missing Host header" if not hosts else "more than one Host header"
    return None


def handshake_refusal(protocol: ServerProtocol, request: Request) -> Response | None:
    """Check a WebSocket handshake (RFC 6455 §4.2.1) as websockets will; the refusal or None.

    websockets' ``accept`` runs the same checks afterwards (they are deterministic, so it then
    succeeds); running them first gives its refusals our one-line bodies: 426 without an
    upgrade, 505 for HTTP/1.0, 400 for a missing or wrong key or version (with
    ``Sec-WebSocket-Version: 13``, RFC 6455 §4.4).
    """
    try:
        protocol.process_request(request)
    except InvalidUpgrade as exc:
        return text_response(
            426, f"upgrade required: this path is a WebSocket ({printable(str(exc), 120)})",
            [("Upgrade", "websocket")])
    except InvalidProtocol:
        return text_response(505, "a WebSocket handshake needs HTTP/1.1")
    except InvalidHandshake as exc:
        extra = [("Sec-WebSocket-Version", "13")] if (
            isinstance(exc, InvalidHeader) and exc.name == "Sec-WebSocket-Version") else []
        return text_response(400, f"bad request: {printable(str(exc), 120)}", extra)
    return None


class _NotHttp(Exception):
    """The first bytes (the argument) cannot begin an HTTP request line."""


def _could_begin_request(buffer: bytes | bytearray) -> bool:
    method, space, _ = bytes(buffer[:40]).partition(b" ")
    if space:
        return _METHOD.fullmatch(method) is not None
    return not method or _METHOD.fullmatch(method) is not None


def malformed_response(line: bytes | None, exc: Exception) -> Response:
    """The answer to a request head that failed to parse.

    Args:
        line: its request line as read (with its line end), or None if none was read.
        exc: why the parse failed.

    Returns:
        405/404 when the request line is sound and the method is not GET (whatever followed);
        otherwise 400 naming the problem.
    """
    if isinstance(exc, _NotHttp) or line is None:
        start = exc.args[0] if isinstance(exc, _NotHttp) else (line or b"")
        return text_response(400, f"bad request: not an HTTP request: '{printable(start, 24)}'")
    if not _could_begin_request(line):
        return text_response(400, f"bad request: not an HTTP request: '{printable(line, 24)}'")
    if not line.endswith(b"\r\n"):
        return text_response(400, "bad request: request line without CRLF")
    parts = line[:-2].split(b" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]):
        return text_response(400, f"bad request: invalid request line '{printable(line[:-2])}'")
    method, target, version = parts
    if version.startswith(b"HTTP/2") or version.startswith(b"HTTP/3"):
        return text_response(400, "bad request: HTTP/2 is not supported: use HTTP/1.1")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return text_response(400, f"bad request: unsupported protocol '{printable(version)}'")
    if not target.isascii():
        return text_response(400, "bad request: request target is not ASCII (percent-encode it)")
    if method != b"GET":
        return method_refusal(method.decode(), urlsplit(target.decode()).path)
    if isinstance(exc, NotImplementedError):
        return text_response(400, "bad request: Transfer-Encoding is not supported: "
                                  "a WebSocket handshake has no body")
    if isinstance(exc, EOFError):
        return text_response(400, "bad request: header line without CRLF")
    if str(exc) == "unsupported request body":
        return text_response(400, "bad request: a request body is not supported: "
                                  "a WebSocket handshake has none")
    return text_response(400, f"bad request: {printable(str(exc), 120)}")


class AnsweringProtocol(ServerProtocol):
    """A ``ServerProtocol`` that answers every request head it cannot parse (see above)."""

    def parse(self) -> Generator[None]:
        """Parse the request head, answering any failure, then WebSocket frames."""
        if self.state is CONNECTING:
            reader = self.reader
            first: list[bytes] = []

            def read_line(limit: int, too_long: type[Exception]
                          ) -> Generator[None, None, bytes | bytearray]:
                if not first:
                    while b"\n" not in reader.buffer:
                        if not _could_begin_request(reader.buffer):
                            raise _NotHttp(bytes(reader.buffer[:24]))
                        if reader.eof or len(reader.buffer) > limit:
                            break  # read_line raises the right error
                        yield
                line = yield from reader.read_line(limit, too_long)
                if not first:
                    first.append(bytes(line))
                return line

            try:
                request = yield from Request.parse(read_line)
            except RequestLineTooLong:
                self._answer(text_response(
                    414, f"request line over {MAX_LINE_LENGTH} bytes"), "request line too long")
                yield
                return
            except (HeaderLineTooLong, TooManyHeaders) as exc:
                self._answer(text_response(431, f"request header fields too large: {exc}"),
                             "header fields too large")
                yield
                return
            except EOFError as exc:
                if not reader.eof:  # a line without CRLF, not the end of the stream
                    self._answer(malformed_response(first[0] if first else None, exc), str(exc))
                    yield
                    return
                # The deliberate exception (module docstring): nobody is left to answer.
                self.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
                self.handshake_exc.__cause__ = exc
                self.send_eof()
                self.parser = self.discard()
                next(self.parser)
                yield
                return
            except Exception as exc:
                self._answer(malformed_response(first[0] if first else None, exc), str(exc))
                yield
                return
            self.events.append(request)
        # The frames' parser: ServerProtocol.parse would read another request head.
        yield from Protocol.parse(self)

    def _answer(self, response: Response, problem: str) -> None:
        """Send ``response`` to a request that did not parse; the connection then closes."""
        self.handshake_exc = InvalidMessage(f"did not receive a valid HTTP request: {problem}")
        self.send_response(response)  # sends EOF and discards what follows
