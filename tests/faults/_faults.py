"""Shared helpers of the fault suite: the ledger every test prints, raw HTTP over TCP."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import trio

from tests.harness import HTTP_TIMEOUT


@dataclass
class Ledger:
    """What one fault test sent and what became of it; printed, then asserted on.

    Attributes:
        sent: frames (or messages) the test sent.
        receipted: import frames covered by the server's last ack.
        persisted: messages found in the topic afterwards.
        rejected: frames that got an error frame.
        delivered: export messages written to the client.
        acked: export messages the client acked.
        nacked: export messages left unacked (to be redelivered).
        duplicates: deliveries or stored copies of a message already counted.
    """

    sent: int = 0
    receipted: int = 0
    persisted: int = 0
    rejected: int = 0
    delivered: int = 0
    acked: int = 0
    nacked: int = 0
    duplicates: int = 0

    def line(self) -> str:
        """``sent=… receipted=… …``: one line for the test's output."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def print(self, title: str) -> None:
        """Print the ledger under ``title`` (pytest -s, or the captured output on failure)."""
        print(f"\n[ledger] {title}: {self.line()}")


@dataclass(frozen=True)
class RawResponse:
    """An HTTP response read off a raw socket.

    Attributes:
        status: the status code (0 if the server sent nothing).
        headers: header names in lower case, to their values.
        body: the body, decoded.
        raw: every byte the server sent.
    """

    status: int
    headers: dict[str, str]
    body: str
    raw: bytes


async def raw_http(port: int, data: bytes) -> RawResponse:
    """Send ``data`` over a new TCP connection and read everything until the server's EOF.

    The client never half-closes first: a server that answers does so for the request alone.
    """
    with trio.fail_after(HTTP_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = bytearray()
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:  # a reset after the answer: keep what came
                pass
    raw = bytes(received)
    if not raw:
        return RawResponse(0, {}, "", raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
    assert match, f"not an HTTP response: {raw[:200]!r}"
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(match.group(1)), headers, body.decode(), raw)
