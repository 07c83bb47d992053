"""Every HTTP request gets an answer: raw TCP requests against a real gateway (CONTRACT §2, §7).

Each request is written byte for byte over ``trio.open_tcp_stream``; the answer is read until
the server's EOF and must carry its status, ``Connection: close``, a correct
``Content-Length`` and a one-line plain-text body naming the problem. The gateway keeps
serving throughout: a good import beside them is receipted and persisted.
"""

from __future__ import annotations

import base64
import json

import pulsar
import pytest
import trio

from quiesce.supervisor import Supervisor
from tests.data import sample_message
from tests.faults._faults import Ledger, RawResponse, raw_http
from tests.harness import LONG, import_path, open_import, persisted, topic_of, ws_url

API = "/api/v1/flow/f1/import/triples"
KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(path: str = API, *, host: bool = True, version: str | None = "13",
              key: str | None = KEY, upgrade: bool = True, extra: str = "") -> bytes:
    """A WebSocket handshake request, with the parts a test wants missing or wrong."""
    lines = [f"GET {path} HTTP/1.1"]
    if host:
        lines.append("Host: 127.0.0.1")
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def get(path: str, extra: str = "", method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """A plain request with a Host header and ``extra`` header lines (CRLF-terminated)."""
    return f"{method} {path} {version}\r\nHost: x\r\n{extra}\r\n".encode()


# (name, request bytes, status, words the one-line body must contain)
CASES: list[tuple[str, bytes, int, str]] = [
    ("post-healthz", get("/healthz", method="POST"), 405, "method POST not allowed"),
    ("post-healthz-body", get("/healthz", "Content-Length: 5\r\n", "POST") + b"hello", 405,
     "method POST not allowed"),
    ("post-api-body", get(API, "Content-Length: 2\r\n", "POST") + b"{}", 405, "use GET"),
    ("put-metrics", get("/metrics", method="PUT"), 405, "method PUT"),
    ("delete-readyz", get("/readyz", method="DELETE"), 405, "method DELETE"),
    ("head-healthz", get("/healthz", method="HEAD"), 405, "method HEAD"),
    ("lowercase-get", get("/healthz", method="get"), 405, "method get"),
    ("post-unknown", get("/nope", method="POST"), 404, "no such path '/nope'"),
    ("post-unknown-body", get("/nope", "Content-Length: 1\r\n", "POST") + b"x", 404,
     "no such path"),
    ("get-root", get("/"), 404, "no such path '/'"),
    ("get-unknown", get("/nope"), 404, "no such path '/nope'"),
    ("options-star", get("*", method="OPTIONS"), 404, "no such path"),
    ("chunked-get", get("/healthz", "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n",
     400, "Transfer-Encoding is not supported"),
    ("body-on-get", get("/healthz", "Content-Length: 5\r\n") + b"hello", 400,
     "request body is not supported"),
    ("lf-only", b"GET /healthz HTTP/1.1\nHost: x\n\n", 400, "request line without CRLF"),
    ("lf-only-header", b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n", 400,
     "header line without CRLF"),
    ("non-ascii-path", "GET /héllo HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400,
     "request target is not ASCII"),
    ("control-in-path", b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400,
     "invalid request target"),
    ("relative-target", get("healthz"), 400, "invalid request target 'healthz'"),
    ("bad-percent", get("/healthz%zz"), 400, "invalid request target"),
    ("space-in-query", b"GET /healthz?a=b\tc HTTP/1.1\r\nHost: x\r\n\r\n", 400,
     "invalid request target"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP/2 is not supported"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xaa" * 32, 400,
     "not an HTTP request"),
    ("binary-noise", bytes(range(256)), 400, "not an HTTP request"),
    ("garbage-line", b"hello there\r\n\r\n", 400, "invalid request line 'hello there'"),
    ("no-version", b"GET /healthz\r\n\r\n", 400, "invalid request line"),
    ("double-space", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid request line"),
    ("http-3", b"GET /healthz HTTP/3\r\n\r\n", 400, "HTTP/2 is not supported"),
    ("http-0.9", b"GET /healthz HTTP/0.9\r\n\r\n", 400, "unsupported protocol 'HTTP/0.9'"),
    ("header-no-colon", get("/healthz", "bogus\r\n"), 400, "invalid HTTP header line"),
    ("header-bad-name", get("/healthz", "Bad Name: 1\r\n"), 400, "invalid HTTP header name"),
    ("no-host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, "missing Host header"),
    ("two-hosts", get("/healthz", "Host: y\r\n"), 400, "more than one Host header"),
    ("line-too-long", get("/" + "a" * 9000), 414, "request line over 8192 bytes"),
    ("too-many-headers", get("/healthz", "X-A: 1\r\n" * 200), 431, "too large"),
    ("api-without-upgrade", get(API), 426, "upgrade required"),
    ("api-http-1.0", get(API, version="HTTP/1.0"), 505, "needs HTTP/1.1"),
    ("handshake-without-host", handshake(host=False), 400, "missing Host header"),
    ("handshake-version-8", handshake(version="8"), 400, "Sec-WebSocket-Version"),
    ("handshake-no-version", handshake(version=None), 400, "Sec-WebSocket-Version"),
    ("handshake-no-key", handshake(key=None), 400, "Sec-WebSocket-Key"),
    ("handshake-bad-key", handshake(key="short"), 400, "Sec-WebSocket-Key"),
    ("handshake-unknown-flow-kind", handshake("/api/v1/flow/f1/import/nope"), 404,
     "unknown kind 'nope'"),
    ("handshake-bad-query", handshake(API + "?receipts=maybe"), 400,
     "receipts must be true or false"),
]


def check_answer(name: str, answer: RawResponse, status: int, words: str) -> None:
    """The answer has ``status``, Connection: close, its length, and one line with ``words``."""
    assert answer.status == status, (name, answer.raw[:300])
    assert answer.headers.get("connection", "").lower() == "close", (name, answer.headers)
    assert int(answer.headers["content-length"]) == len(answer.body.encode()), name
    assert answer.body.endswith("\n") and answer.body.count("\n") == 1, (name, answer.body)
    assert words in answer.body, (name, answer.body)


@pytest.mark.parametrize(("name", "data", "status", "words"), CASES, ids=[c[0] for c in CASES])
async def test_every_malformed_or_refused_request_gets_its_status(
    gateway: Supervisor, name: str, data: bytes, status: int, words: str
) -> None:
    """Each request on the list is answered with its status and a one-line reason."""
    answer = await raw_http(gateway.port, data)
    print(f"\n{name}: {answer.status} {answer.body.strip()}")
    check_answer(name, answer, status, words)
    if status == 405:
        assert answer.headers["allow"] == "GET"
    if name == "handshake-version-8":
        assert answer.headers["sec-websocket-version"] == "13"
    if status == 426:
        assert answer.headers["upgrade"] == "websocket"


async def test_well_formed_requests_still_succeed(gateway: Supervisor) -> None:
    """A plain GET, one with [ ] | ^ in its query, an HTTP/1.0 GET without Host and a correct
    handshake are served."""
    ok = await raw_http(gateway.port, get("/healthz"))
    lax = await raw_http(gateway.port, get("/healthz?x=[1]|^{}"))
    old = await raw_http(gateway.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        async with stream:
            await stream.send_all(handshake())
            head = bytearray()
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
    assert (ok.status, ok.body) == (200, "ok\n")
    assert lax.status == 200
    assert old.status == 200
    assert head.startswith(b"HTTP/1.1 101 "), bytes(head)


async def test_the_gateway_keeps_importing_beside_every_bad_request(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """All the bad requests, sent while an import runs, leave it receipted and persisted."""
    ledger = Ledger()
    statuses: list[int] = []
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow))) as client:
            for i, (_name, data, _status, _words) in enumerate(CASES):
                await client.send(json.dumps(sample_message("triples", i)))
                ledger.sent += 1
                statuses.append((await raw_http(gateway.port, data)).status)
            await client.wait_ack(ledger.sent)
    stored = await persisted(pulsar_client, topic_of("triples", flow), ledger.sent)
    ledger.receipted, ledger.persisted = client.ack, len(stored)
    ledger.rejected = len(client.errors)
    ledger.duplicates = ledger.persisted - len({m["metadata"]["id"] for m in stored})
    ledger.print("import beside bad requests")
    assert statuses == [c[2] for c in CASES]
    assert client.ws.close_code == 1000
    assert ledger.receipted == ledger.persisted == ledger.sent
    assert ledger.rejected == ledger.duplicates == 0
    assert (await raw_http(gateway.port, get("/healthz"))).status == 200


async def test_a_client_that_closes_before_its_request_is_complete_gets_no_answer(
    gateway: Supervisor,
) -> None:
    """The one deliberate exception: half a request and then EOF is closed without a reply."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", gateway.port)
        async with stream:
            await stream.send_all(b"GET /heal")
            await stream.send_eof()
            received = bytearray()
            while chunk := await stream.receive_some(4096):
                received += chunk
    assert received == b""
    assert (await raw_http(gateway.port, get("/healthz"))).status == 200
