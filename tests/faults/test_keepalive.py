"""The gateway's keepalive: it spares a client merely waiting on the broker, and ends one that
stopped answering with 1011 and one log line, never a traceback. And what an import holds
while it waits stays within its byte bounds (read ahead: ``import_buffer_bytes``; in flight:
``publisher_max_queue_bytes``).

A real gateway (in process, so the keepalive's 20 s can be made 0.3 s) on a real pulsar-lite
of the test's own, real WebSocket clients over loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
from websockets.client import ClientProtocol
from websockets.frames import PING as PING_OPCODE
from websockets.frames import Frame
from websockets.trio.client import connect

from quiesce import supervisor
from quiesce.actors.importer import ImportWorker
from quiesce.actors.websocket import FRAME_OVERHEAD
from quiesce.core.config import Settings
from tests.data import sample_message
from tests.faults._faults import Ledger
from tests.harness import (
    LONG,
    Broker,
    ImportClient,
    import_path,
    persisted,
    start_gateway,
    topic_of,
    ws_url,
)

PING = 0.3  # the keepalive's interval and timeout in these tests
FRAMES = 300  # ~1.2 KB each: several times the read-ahead bound below
READ_AHEAD = 64 * 1024
IN_FLIGHT_BYTES = 8 * 1024  # binds before publisher_max_queue_size (1000)
FRAME = len(json.dumps(sample_message("triples", 0)))
# How long the frozen broker keeps the client waiting: many keepalive periods.
WAITING = 12 * PING


@pytest.fixture
def fast_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keepalive ping every PING seconds, its pong due within PING."""
    monkeypatch.setattr(supervisor, "WS_PING_INTERVAL", PING)
    monkeypatch.setattr(supervisor, "WS_PING_TIMEOUT", PING)


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.exc_info or (r.name.startswith("websockets") and r.levelno >= logging.ERROR)]


async def test_a_client_waiting_on_a_frozen_broker_is_not_killed_by_the_keepalive(
    nursery: trio.Nursery, settings: Settings, own_broker: Broker, fast_keepalive: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Frames wait for a frozen broker, reading is paused (the read-ahead is full), the pong is
    behind unread data: the connection lives on; the broker back, all is receipted, 1000."""
    caplog.set_level(logging.INFO)
    gateway = await start_gateway(nursery, replace(
        settings, pulsar_url=own_broker.url, import_buffer_bytes=READ_AHEAD,
        publisher_max_queue_bytes=IN_FLIGHT_BYTES))
    flow = "waitingonbroker"
    try:
        async with connect(ws_url(gateway, import_path(flow)), close_timeout=LONG,
                           ping_interval=None) as ws:
            client = ImportClient(ws)
            async with trio.open_nursery() as tasks:
                tasks.start_soon(client.collect)
                await client.send(json.dumps(sample_message("triples", 0)))
                with trio.fail_after(LONG):
                    await client.wait_ack(1)
                own_broker.freeze()

                async def send_rest() -> None:  # its writes block once TCP is full
                    for i in range(1, FRAMES):
                        await client.send(json.dumps(sample_message("triples", i)))

                tasks.start_soon(send_rest)
                # Many keepalive periods pass with the pong stuck behind unread frames.
                with trio.move_on_after(WAITING):
                    await client.done.wait()
                alive = not client.done.is_set()
                (actor,) = gateway.actors
                pauses, read_ahead = actor.ws.read_pauses, actor.ws.read_ahead_bytes
                worker = actor.worker
                assert isinstance(worker, ImportWorker)
                in_flight, in_flight_bytes = worker.depth, worker.in_flight_bytes
                own_broker.thaw()
                with trio.fail_after(LONG):
                    await client.wait_ack(FRAMES)
                await ws.aclose()
                await client.wait_closed()
    finally:
        own_broker.thaw()
        gateway.request_shutdown()
    reader = own_broker.client()
    try:
        stored = await persisted(reader, topic_of("triples", flow), FRAMES)
    finally:
        reader.close()
    code = client.closed.rcvd.code if client.closed and client.closed.rcvd else 1006
    ledger = Ledger(sent=FRAMES, receipted=client.ack, persisted=len(stored))
    ledger.print(f"keepalive every {PING}s while the broker was frozen {WAITING:.1f}s")
    print(f"connection alive through the freeze: {alive} (reading paused {pauses} times); "
          f"close code {code}")
    print(f"while frozen: {read_ahead} bytes read ahead (bound {READ_AHEAD}), {in_flight} "
          f"frames / {in_flight_bytes} bytes in flight (bound {IN_FLIGHT_BYTES})")
    assert pauses > 0, "the read-ahead bound was never reached: the test proves nothing"
    # Each bound may be passed by the one frame that crossed it, never more.
    assert READ_AHEAD < read_ahead <= READ_AHEAD + FRAME + FRAME_OVERHEAD
    # (Payloads are about the same size, a little bigger than their frames.)
    assert 0 < in_flight < 1000
    assert IN_FLIGHT_BYTES <= in_flight_bytes
    assert in_flight_bytes - in_flight_bytes // in_flight < IN_FLIGHT_BYTES
    assert alive, f"the keepalive ended a connection waiting on the broker: {client.closed!r}"
    assert client.ack == FRAMES and len(stored) == FRAMES and code == 1000
    assert not client.violations
    assert not _tracebacks(caplog), _tracebacks(caplog)


class NoPongProtocol(ClientProtocol):
    """A fake client that never answers a ping: websockets always does, so this injects the
    fault (a peer that is gone without closing)."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is PING_OPCODE:
            return
        super().recv_frame(frame)


async def test_a_client_that_stops_answering_pings_gets_1011_and_one_log_line(
    gateway_fast: supervisor.Supervisor, caplog: pytest.LogCaptureFixture,
) -> None:
    """No pong within the timeout: the server closes with 1011, logs one warning, no
    traceback, and everything the client sent before is receipted in its final ack."""
    caplog.set_level(logging.INFO)
    async with connect(ws_url(gateway_fast, import_path("silentpeer")),
                       close_timeout=LONG, ping_interval=None) as ws:
        ws.protocol.__class__ = NoPongProtocol
        client = ImportClient(ws)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(client.collect)
            for i in range(5):
                await client.send(json.dumps(sample_message("triples", i)))
            with trio.fail_after(LONG):
                await client.wait_closed()
    code = client.closed.rcvd.code if client.closed and client.closed.rcvd else 1006
    lines = [r.getMessage() for r in caplog.records if r.name == "quiesce.websocket"]
    print(f"close code {code}; final ack {client.ack}; log: {lines}")
    assert code == 1011
    assert client.ack == 5
    assert len([line for line in lines if line.startswith("no pong within")]) == 1
    assert not _tracebacks(caplog), _tracebacks(caplog)


@pytest.fixture
async def gateway_fast(nursery: trio.Nursery, settings: Settings, fast_keepalive: None
                       ) -> AsyncIterator[supervisor.Supervisor]:
    """A gateway on the session broker whose keepalive pings every PING seconds."""
    gateway = await start_gateway(nursery, settings)
    yield gateway
    gateway.request_shutdown()
