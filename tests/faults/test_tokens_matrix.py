"""Scoped tokens at the handshake: 401, 403 or 101 per token, flow, direction and workspace.

A gateway with the shared secret and a tokens file is asked every combination; the expected
status comes from the rules of CONTRACT §7 and docs/operations.md (unknown or missing
credential 401; a known token outside its flows, directions or workspaces 403; otherwise the
handshake completes). A gateway process then has its tokens file rewritten and reloaded with
SIGHUP while an import and an export are open: they stay open and finish with nothing lost,
new handshakes see the new tokens, and a broken file keeps them. No token ever reaches a log.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import signal
import uuid
from pathlib import Path

import pulsar
import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from quiesce.core.config import Settings
from quiesce.supervisor import Supervisor
from tests.data import sample_message, sample_message_tg2
from tests.faults._faults import Ledger, raw_http
from tests.harness import (
    LONG,
    Listening,
    http_get,
    import_path,
    open_gateway_process,
    open_import,
    persisted,
    start_gateway,
    topic_of,
    ws_url,
)

SECRET = "s3cret-shared"
VALUES = {
    "loader-a": "tok-loader-a-0123456789",
    "reader": "tok-reader-0123456789",
    "ws-one": "tok-ws-one-0123456789",
}
TOKENS_FILE = f"""
[tokens.loader-a]
token = "{VALUES['loader-a']}"
flows = ["team-a-*"]
directions = ["import"]

[tokens.reader]
token_sha256 = "{hashlib.sha256(VALUES['reader'].encode()).hexdigest()}"
directions = ["export"]
workspaces = ["default"]
metrics = true

[tokens.ws-one]
token = "{VALUES['ws-one']}"
workspaces = ["ws-1"]
"""
# Who presents what: None is no credential at all.
PRESENTED = {"none": None, "unknown": "tok-nobody", "secret": SECRET, **VALUES}
SHORT = 10.0


def expected_status(who: str, flow: str, direction: str, workspace: str | None) -> int:
    """The rules, written out once more: 401, 403 or 101."""
    if who in ("none", "unknown"):
        return 401
    ws = workspace or "default"
    allowed = {
        "secret": True,
        "loader-a": flow.startswith("team-a-") and direction == "import",
        "reader": direction == "export" and ws == "default",
        "ws-one": ws == "ws-1",
    }[who]
    return 101 if allowed else 403


async def handshake_status(url: str, token: str | None, bearer: bool,
                           frame: str | None = None) -> int:
    """101 if the handshake at ``url`` completes (then closed normally), else its status.

    With ``frame``, an accepted connection (an import with receipts) sends it and waits for
    its receipt before closing: 101 means a connection that works.
    """
    headers = {"Authorization": f"Bearer {token}"} if token and bearer else {}
    if token and not bearer:
        url += f"&token={token}"
    try:
        with trio.fail_after(SHORT):
            async with connect(url, additional_headers=headers) as ws:
                if frame is not None:
                    await ws.send(frame)
                    assert json.loads(await ws.recv()) == {"ack": 1}
                return 101
    except InvalidStatus as refused:
        return int(refused.response.status_code)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    """The tokens file of the matrix."""
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS_FILE)
    return path


@pytest.fixture
async def scoped(nursery: trio.Nursery, settings: Settings, tokens_file: Path) -> Supervisor:
    """A tg2 gateway (workspaces exist there) with the shared secret and the tokens file."""
    gateway = await start_gateway(nursery, settings, secret=SECRET, tokens_file=str(tokens_file),
                                  profile="tg2")
    yield gateway
    gateway.request_shutdown()


async def test_the_token_matrix_gives_401_403_or_101_as_the_rules_say(
    scoped: Supervisor, pulsar_client: pulsar.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Every token, flow, direction and workspace gets the status the rules give it."""
    caplog.set_level(logging.DEBUG)
    uid = uuid.uuid4().hex[:8]
    flows = [f"team-a-{uid}", f"team-b-{uid}"]
    cases = list(itertools.product(PRESENTED, flows, ("import", "export"), (None, "ws-1")))
    wrong: list[str] = []
    counts: dict[int, int] = {}
    ledger = Ledger()
    imported: dict[tuple[str, str], int] = {}
    for n, (who, flow, direction, workspace) in enumerate(cases):
        query = "?receipts=true" if direction == "import" else "?ack=auto"
        if workspace is not None:
            query += f"&workspace={workspace}"
        url = ws_url(scoped, f"/api/v1/flow/{flow}/{direction}/triples{query}")
        frame = json.dumps(sample_message_tg2(n)) if direction == "import" else None
        status = await handshake_status(url, PRESENTED[who], bearer=n % 2 == 0, frame=frame)
        counts[status] = counts.get(status, 0) + 1
        if frame is not None and status == 101:
            ledger.sent += 1
            ledger.receipted += 1  # handshake_status waited for {"ack": 1}
            key = (flow, workspace or "default")
            imported[key] = imported.get(key, 0) + 1
        if status != expected_status(who, flow, direction, workspace):
            wrong.append(f"{who} {flow} {direction} {workspace}: {status}")
    for (flow, workspace), count in imported.items():
        stored = await persisted(pulsar_client, topic_of("triples", flow, "tg2", workspace), count)
        ledger.persisted += len(stored)
    print(f"\n{len(cases)} handshakes: " + ", ".join(f"{s}={c}" for s, c in sorted(counts.items())))
    ledger.print("one frame imported on each accepted import")
    assert wrong == []
    assert set(counts) == {101, 401, 403}
    assert ledger.receipted == ledger.persisted == ledger.sent > 0
    # websockets' own debug lines show request heads; the gateway caps that logger at WARNING
    # (configure_logging), and the process test below checks its real output at debug level.
    ours = [r for r in caplog.records if not r.name.startswith("websockets")]
    for value in (SECRET, *VALUES.values()):
        leaks = [r for r in ours if value in r.getMessage() + repr(r.__dict__)]
        assert not leaks, f"a token was logged: {leaks[0].name} {leaks[0].getMessage()[:300]}"
    assert any("token 'loader-a' may not export" in r.getMessage() for r in ours)


@pytest.mark.parametrize(
    ("who", "status"),
    [("none", 401), ("unknown", 401), ("secret", 200), ("reader", 200), ("loader-a", 403)],
)
async def test_metrics_needs_a_token_that_may_read_them(
    scoped: Supervisor, who: str, status: int
) -> None:
    """/metrics: the secret or a token with metrics = true; other tokens 403, none 401."""
    token = PRESENTED[who]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await http_get(scoped.port, "/metrics", headers)
    print(f"\n/metrics as {who}: {answer[0]} {answer[1][:60].strip()}")
    assert answer[0] == status


async def test_two_authorization_headers_are_answered_not_a_server_error(
    scoped: Supervisor, flow: str
) -> None:
    """Two Bearer headers are judged on both (first match wins), never a 500; "bearer" works."""
    request = (f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
               f"Authorization: Bearer {VALUES['reader']}\r\n\r\n").encode()
    assert (await raw_http(scoped.port, request)).status == 200
    request = (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
               b"Authorization: Bearer b\r\n\r\n")
    assert (await raw_http(scoped.port, request)).status == 401
    # The scheme is case-insensitive (RFC 9110 §11.1).
    request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nauthorization: bearer {SECRET}\r\n\r\n"
    assert (await raw_http(scoped.port, request.encode())).status == 200


async def test_sighup_reloads_tokens_while_open_connections_stay_open(
    broker_url: str, tmp_path: Path, pulsar_client: pulsar.Client, flow: str
) -> None:
    """After SIGHUP new handshakes use the new file, a broken file keeps it, and the import and
    export opened before stay open and finish with every frame receipted and delivered."""
    path = tmp_path / "tokens.toml"
    path.write_text('[tokens.alpha]\ntoken = "tok-alpha-1"\ndirections = ["import"]\n'
                    '[tokens.beta]\ntoken = "tok-beta-1"\ndirections = ["export"]\n')
    ledger = Ledger()
    half = 25
    imp = f"{import_path(flow)}&token=tok-alpha-1"
    exp = f"/api/v1/flow/{flow}/export/triples?token=tok-beta-1"

    async def status(gateway: Listening, path_query: str) -> int:
        return await handshake_status(ws_url(gateway, path_query), None, bearer=False)

    async with open_gateway_process("--tokens-file", str(path), "--log-level", "debug",
                                    pulsar_url=broker_url,
                                    data_dir=tmp_path / "data") as gateway:
        with trio.fail_after(LONG):
            async with connect(ws_url(gateway, exp)) as export_ws:
                async with open_import(ws_url(gateway, imp)) as client:
                    for i in range(half):
                        await client.send(json.dumps(sample_message("triples", i)))
                    await client.wait_ack(half)

                    path.write_text('[tokens.gamma]\ntoken = "tok-gamma-1"\n'
                                    '[tokens.beta]\ntoken = "tok-beta-1"\n'
                                    'flows = ["elsewhere"]\n')
                    mark = len(gateway.lines)
                    gateway.signal(signal.SIGHUP)
                    await gateway.wait_line_async(r"tokens reloaded from .*: 2 tokens", mark)
                    after_reload = (
                        await status(gateway, imp),
                        await status(gateway, f"{import_path(flow)}&token=tok-gamma-1"),
                        await status(gateway, exp),
                    )

                    path.write_text("[tokens.broken\n")
                    mark = len(gateway.lines)
                    gateway.signal(signal.SIGHUP)
                    await gateway.wait_line_async(r"tokens not reloaded, keeping the 2 in use",
                                                  mark)
                    after_broken = await status(
                        gateway, f"{import_path(flow)}&token=tok-gamma-1")

                    for i in range(half, 2 * half):
                        await client.send(json.dumps(sample_message("triples", i)))
                    ledger.sent = client.sent
                delivered = [json.loads(await export_ws.recv()) for _ in range(2 * half)]
            ledger.receipted, ledger.rejected = client.ack, len(client.errors)
            ledger.delivered = len(delivered)
            stored = await persisted(pulsar_client, topic_of("triples", flow), 2 * half)
            ledger.persisted = len(stored)
        log = "\n".join(gateway.lines)
    ledger.print(f"import and export across two SIGHUPs (statuses after reload "
                 f"{after_reload}, after a broken file {after_broken})")
    assert after_reload == (401, 101, 403)
    assert after_broken == 101
    assert client.ws.close_code == 1000 and export_ws.close_code == 1000
    assert ledger.receipted == ledger.persisted == ledger.delivered == ledger.sent == 2 * half
    assert ledger.rejected == 0
    assert [m["metadata"]["id"] for m in delivered] == [
        sample_message("triples", i)["metadata"]["id"] for i in range(2 * half)]
    for value in ("tok-alpha-1", "tok-beta-1", "tok-gamma-1"):
        assert value not in log, "a token was logged"
