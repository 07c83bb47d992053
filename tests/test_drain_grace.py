"""A server drain lets an import whose client is still sending finish, within a grace.

Most TrustGraph clients never ask for receipts and never read replies: if the server stopped
reading at SIGTERM, whatever they sent afterwards would be lost while they print "loaded".
These tests run the gateway as a process, SIGTERM it in the middle of an import, and count
what the client sent against what the topic holds.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
from websockets.trio.client import connect

from quiesce.actors.publisher import Publisher
from quiesce.core.config import Settings
from tests.data import ids_of, sample_message
from tests.harness import (
    import_path,
    open_gateway_process,
    open_import,
    persisted,
    start_gateway,
    topic_of,
    ws_url,
)

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


# ------------------------------------------------ a slow broker is waited for, a silent one not

# The import drain's patience in these tests (publisher_drain_timeout) and the pace at which
# the fake below lets confirmations through: the whole drain takes several patiences.
PATIENCE = 1.0
PACE = 0.25
SLOW_FRAMES = 12


@contextlib.asynccontextmanager
async def paced_confirmations(monkeypatch: pytest.MonkeyPatch, pace: float | None
                              ) -> AsyncIterator[None]:
    """Let the broker's confirmations reach the import one every ``pace`` s (None: never).

    A fake, and the only one here: pulsar-lite cannot be made to confirm slowly but steadily
    on demand (a frozen broker confirms nothing; a thawed one everything at once). The real
    broker still persists every frame; only the hand-over of its confirmations is paced.
    """
    send, receive = trio.open_memory_channel[tuple[Publisher, tuple[int, Any]]](math.inf)
    settle = Publisher._settle_batch

    def held(self: Publisher, batch: list[tuple[int, Any]]) -> None:
        for item in batch:
            send.send_nowait((self, item))

    async def release() -> None:
        async for publisher, item in receive:
            await trio.sleep(pace)  # the injected slowness, not a synchronisation
            settle(publisher, [item])

    monkeypatch.setattr(Publisher, "_settle_batch", held)
    async with trio.open_nursery() as nursery:
        if pace is not None:
            nursery.start_soon(release)
        yield
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("pace", "code"), [(PACE, 1000), (None, 1011)],
                         ids=["slow-broker", "silent-broker"])
async def test_an_ending_import_waits_for_a_slow_broker_but_not_a_silent_one(
    nursery: trio.Nursery, settings: Settings, pulsar_client: pulsar.Client, flow: str,
    monkeypatch: pytest.MonkeyPatch, pace: float | None, code: int
) -> None:
    """``publisher_drain_timeout`` bounds the broker's silence, not the whole drain.

    The client sends its frames and closes at once. With confirmations coming every 0.25 s
    the drain takes ~3 s, three times the patience, and still ends 1000 with every frame
    receipted; with none coming it ends after the patience, 1011, nothing receipted.
    """
    gateway = await start_gateway(nursery, settings, publisher_drain_timeout=PATIENCE)
    frames = [json.dumps(sample_message("triples", i)) for i in range(SLOW_FRAMES)]
    async with paced_confirmations(monkeypatch, pace):
        with trio.fail_after(LONG):
            started = trio.current_time()
            async with open_import(ws_url(gateway, import_path(flow))) as client:
                for frame in frames:
                    await client.send(frame)
            await client.wait_closed()
            took = trio.current_time() - started
    stored = await persisted(pulsar_client, topic_of("triples", flow), SLOW_FRAMES)
    assert client.closed is not None
    closed = client.closed.rcvd.code if client.closed.rcvd else None
    print(f"\n{'slow' if pace else 'silent'} broker: sent {client.sent}, receipted "
          f"{client.ack}, persisted {len(stored)}, close {closed}, drain {took:.2f} s "
          f"(patience {PATIENCE} s)")
    assert client.violations == []
    assert closed == code
    assert len(stored) == SLOW_FRAMES  # the real broker persisted every frame either way
    if pace is not None:
        assert client.ack == SLOW_FRAMES
        assert took > 2 * PATIENCE  # longer than the patience: it was renewed
    else:
        assert client.ack == 0
    gateway.request_shutdown()
