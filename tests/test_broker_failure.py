"""A broker that dies mid-import or mid-export loses nothing: pulsar-client reconnects and
resends (import), the broker redelivers what was not acked (export).

The fault is real: the pulsar-lite process is killed with SIGKILL and started again on the
same port and data directory while a client streams.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
from websockets.trio.client import connect

from tests.conftest import read_topic, start_gateway, start_pulsar_lite, stop_process, ws_url
from tests.data import sample_message

LONG = 60.0
FRAMES = 600
KILL_AT = 200  # frames acked before the broker is killed
# Export: more than the consumer prefetches (1000), so most must come from the new broker.
EXPORT_MESSAGES = 2500


@dataclass
class RestartableBroker:
    """A real pulsar-lite process that a test can kill -9 and start again on its port and data."""

    data: Path
    process: subprocess.Popen[bytes]
    url: str
    stale: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.stale.append(self.process)

    async def restart(self) -> None:
        """Start the broker again on the same port and data directory."""
        port = int(self.url.rsplit(":", 1)[1])
        self.process, _ = await trio.to_thread.run_sync(start_pulsar_lite, self.data, port)

    def client(self) -> pulsar.Client:
        """A plain pulsar-client on this broker (the caller closes it)."""
        return pulsar.Client(self.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A broker of this test's own (the session one must not be killed); stopped at the end."""
    data = tmp_path / "broker"
    data.mkdir()
    process, url = start_pulsar_lite(data)
    restartable = RestartableBroker(data, process, url)
    yield restartable
    for stale in restartable.stale:
        stop_process(stale)
    stop_process(restartable.process)


async def test_an_import_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, broker: RestartableBroker
) -> None:
    """Kill -9 the broker after 200 acks, restart it: all 600 frames are acked and persisted."""
    flow = "brokerkill"
    gateway = await start_gateway(nursery, settings, pulsar_url=broker.url,
                                  publisher_drain_timeout=30.0)
    acks: list[int] = []
    acked_enough = trio.Event()
    async with connect(ws_url(gateway, f"/api/v1/flow/{flow}/import/triples?receipts=true"),
                       close_timeout=LONG) as ws:

        async def collect() -> None:
            async for text in ws:
                frame = json.loads(text)
                assert "error" not in frame, frame
                acks.append(frame["ack"])
                if frame["ack"] >= KILL_AT:
                    acked_enough.set()

        async def send(numbers: range) -> None:
            for i in numbers:
                await ws.send(json.dumps(sample_message("triples", i)))

        with trio.fail_after(LONG):
            async with trio.open_nursery() as inner:
                inner.start_soon(collect)
                await send(range(KILL_AT))
                await acked_enough.wait()
                broker.kill()
                await send(range(KILL_AT, FRAMES // 2))  # frames the dead broker cannot confirm
                await broker.restart()
                await send(range(FRAMES // 2, FRAMES))
                await ws.aclose()
    assert ws.close_code == 1000
    assert acks == sorted(acks) and acks[-1] == FRAMES, acks[-5:]
    reader = broker.client()
    try:
        stored = await trio.to_thread.run_sync(
            read_topic, reader, f"persistent://tg/flow/triples:{flow}")
    finally:
        reader.close()
    ids = [m["metadata"]["id"] for m in stored]
    expected = {sample_message("triples", i)["metadata"]["id"] for i in range(FRAMES)}
    print(f"sent {FRAMES}, final ack {acks[-1]}, stored {len(ids)} "
          f"({len(ids) - len(set(ids))} duplicates from resends)")
    assert set(ids) == expected


async def test_a_client_acked_export_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, broker: RestartableBroker
) -> None:
    """Kill -9 the broker mid-export (ack=client), restart it: every message still arrives."""
    flow = "brokerkillexport"
    expected = [sample_message("triples", i) for i in range(EXPORT_MESSAGES)]
    publisher = broker.client()
    try:
        def publish() -> None:
            producer = publisher.create_producer(f"persistent://tg/flow/triples:{flow}",
                                                 block_if_queue_full=True)
            for message in expected:
                producer.send_async(json.dumps(message).encode(), None)
            producer.flush()
            producer.close()

        await trio.to_thread.run_sync(publish)
    finally:
        publisher.close()
    gateway = await start_gateway(nursery, settings, pulsar_url=broker.url)
    path = f"/api/v1/flow/{flow}/export/triples?subscription=s&position=earliest&ack=client"
    seen: list[str] = []
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        with trio.fail_after(LONG):
            while len(set(seen)) < EXPORT_MESSAGES:
                frame = json.loads(await ws.recv())
                seen.append(frame["message"]["metadata"]["id"])
                await ws.send(json.dumps({"ack": frame["seq"]}))
                if len(seen) == KILL_AT:
                    broker.kill()
                    await broker.restart()
    print(f"published {EXPORT_MESSAGES}, delivered {len(seen)} "
          f"({len(seen) - len(set(seen))} redelivered after the restart)")
    assert set(seen) == {m["metadata"]["id"] for m in expected}
