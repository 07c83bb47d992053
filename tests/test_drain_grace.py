"""A server drain lets an import whose client is still sending finish, within a grace.

Most TrustGraph clients never ask for receipts and never read replies: if the server stopped
reading at SIGTERM, whatever they sent afterwards would be lost while they print "loaded".
These tests run the gateway as a process, SIGTERM it in the middle of an import, and count
what the client sent against what the topic holds.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pulsar
import trio
from websockets.trio.client import connect

from tests.data import ids_of, sample_message
from tests.harness import open_gateway_process, persisted, topic_of

# Bounds of the waits (generous: they only matter when something is wrong).
LONG = 60.0
# The grace the gateway gets in these tests (import_drain_grace).
GRACE = 8.0
BEFORE, AFTER = 1000, 2000


def path_of(flow: str, query: str = "") -> str:
    """The triples import path of ``flow``."""
    return f"/api/v1/flow/{flow}/import/triples{query}"


async def test_a_client_that_never_reads_finishes_its_load_after_sigterm(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """Frames sent after SIGTERM, within the grace, are all persisted; the gateway exits 0."""
    env = {"QUIESCE_IMPORT_DRAIN_GRACE": str(GRACE)}
    frames = [json.dumps(sample_message("triples", i)) for i in range(BEFORE + AFTER)]
    async with open_gateway_process(pulsar_url=broker_url, data_dir=tmp_path, env=env
                                    ) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}{path_of(flow)}"
        with trio.fail_after(LONG):
            async with connect(url, close_timeout=LONG) as ws:
                for frame in frames[:BEFORE]:
                    await ws.send(frame)
                mark = len(gateway.lines)
                gateway.signal(signal.SIGTERM)
                await gateway.wait_line_async(r"taking frames for up to", mark)
                for frame in frames[BEFORE:]:
                    await ws.send(frame)
            code = await gateway.wait_exit_async(LONG)
    stored = await persisted(pulsar_client, topic_of("triples", flow), len(frames))
    distinct = set(ids_of(stored))
    print(f"\nsent {len(frames)} ({AFTER} after SIGTERM), persisted {len(stored)}, "
          f"distinct {len(distinct)}, client close {ws.close_code}, gateway exit {code}")
    assert code == 0
    assert distinct == {sample_message("triples", i)["metadata"]["id"]
                        for i in range(len(frames))}
    assert len(stored) == len(frames), "each frame once: nothing published twice"
    assert ws.close_code == 1000  # the client closed first: its own code is echoed


async def test_an_idle_import_does_not_wait_for_the_grace_and_a_receipts_client_is_told(
    broker_url: str, flow: str, tmp_path: Path
) -> None:
    """An idle import drains at once (well inside the grace); a receipts client gets
    ``{"draining": …}`` first, then its final ack, then 1001."""
    env = {"QUIESCE_IMPORT_DRAIN_GRACE": str(GRACE)}
    async with open_gateway_process(pulsar_url=broker_url, data_dir=tmp_path, env=env
                                    ) as gateway:
        base = f"ws://127.0.0.1:{gateway.port}"
        with trio.fail_after(LONG):
            async with connect(base + path_of(flow, "?receipts=true")) as with_receipts, \
                    connect(base + path_of(flow)) as idle:
                await with_receipts.send(json.dumps(sample_message("triples", 0)))
                assert json.loads(await with_receipts.recv()) == {"ack": 1}
                signalled = trio.current_time()
                gateway.signal(signal.SIGTERM)
                received = [json.loads(m) async for m in _until_closed(with_receipts)]
                code = await gateway.wait_exit_async(LONG)
                took = trio.current_time() - signalled
    print(f"\nreceipts client got {received}, close {with_receipts.close_code}; idle close "
          f"{idle.close_code}; exit {code} {took:.2f}s after SIGTERM (grace {GRACE}s)")
    assert received[0]["draining"]["grace_ms"] > 0
    assert received[1:] == []  # ack 1 was sent already; nothing else is owed
    assert with_receipts.close_code == 1001 and idle.close_code == 1001
    assert code == 0
    assert took < GRACE / 2, "idle connections must not wait for the grace"


async def _until_closed(ws: object) -> object:
    """Every message until the connection closes."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            yield await ws.recv()  # type: ignore[attr-defined]
    except ConnectionClosed:
        return
