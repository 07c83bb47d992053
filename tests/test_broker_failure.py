"""A broker that dies mid-import loses nothing: pulsar-client reconnects and resends.

The fault is real: the pulsar-lite process is killed with SIGKILL and started again on the
same port and data directory while a client streams frames with receipts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pulsar
import trio
from websockets.trio.client import connect

from core.wire import sample_message
from tests.conftest import read_topic, start_gateway, start_pulsar_lite, stop_process, ws_url

LONG = 60.0
FRAMES = 600
KILL_AT = 200  # frames acked before the broker is killed
# Export: more than the consumer prefetches (1000), so most must come from the new broker.
EXPORT_MESSAGES = 2500


async def test_an_import_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, tmp_path: Path
) -> None:
    """Kill -9 the broker after 200 acks, restart it: all 600 frames are acked and persisted."""
    data = tmp_path / "broker"
    data.mkdir()
    process, url = start_pulsar_lite(data)
    port = int(url.rsplit(":", 1)[1])
    processes: list[subprocess.Popen[bytes]] = [process]
    flow = "brokerkill"
    topic = f"persistent://tg/flow/triples:{flow}"
    try:
        gateway = await start_gateway(nursery, settings, pulsar_url=url,
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

            with trio.fail_after(LONG):
                async with trio.open_nursery() as inner:
                    inner.start_soon(collect)
                    for i in range(KILL_AT):
                        await ws.send(json.dumps(sample_message("triples", i)))
                    await acked_enough.wait()
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
                    for i in range(KILL_AT, FRAMES // 2):
                        await ws.send(json.dumps(sample_message("triples", i)))
                    restarted, _ = await trio.to_thread.run_sync(start_pulsar_lite, data, port)
                    processes.append(restarted)
                    for i in range(FRAMES // 2, FRAMES):
                        await ws.send(json.dumps(sample_message("triples", i)))
                    await ws.aclose()
        assert ws.close_code == 1000
        assert acks == sorted(acks) and acks[-1] == FRAMES, acks[-5:]
        reader = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        try:
            stored = await trio.to_thread.run_sync(read_topic, reader, topic)
        finally:
            reader.close()
        ids = [m["metadata"]["id"] for m in stored]
        expected = {sample_message("triples", i)["metadata"]["id"] for i in range(FRAMES)}
        print(f"sent {FRAMES}, final ack {acks[-1]}, stored {len(ids)} "
              f"({len(ids) - len(set(ids))} duplicates from resends)")
        assert set(ids) == expected
    finally:
        for p in processes:
            stop_process(p)


async def test_a_client_acked_export_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, tmp_path: Path
) -> None:
    """Kill -9 the broker mid-export (ack=client), restart it: every message still arrives."""
    data = tmp_path / "broker"
    data.mkdir()
    process, url = start_pulsar_lite(data)
    port = int(url.rsplit(":", 1)[1])
    processes: list[subprocess.Popen[bytes]] = [process]
    flow = "brokerkillexport"
    topic = f"persistent://tg/flow/triples:{flow}"
    expected = [sample_message("triples", i) for i in range(EXPORT_MESSAGES)]
    try:
        publisher = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        try:
            def publish() -> None:
                producer = publisher.create_producer(topic, block_if_queue_full=True)
                for message in expected:
                    producer.send_async(json.dumps(message).encode(), None)
                producer.flush()
                producer.close()

            await trio.to_thread.run_sync(publish)
        finally:
            publisher.close()
        gateway = await start_gateway(nursery, settings, pulsar_url=url)
        path = (f"/api/v1/flow/{flow}/export/triples?subscription=s&position=earliest"
                "&ack=client")
        seen: list[str] = []
        async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
            with trio.fail_after(LONG):
                while len(set(seen)) < EXPORT_MESSAGES:
                    frame = json.loads(await ws.recv())
                    seen.append(frame["message"]["metadata"]["id"])
                    await ws.send(json.dumps({"ack": frame["seq"]}))
                    if len(seen) == KILL_AT:
                        os.kill(process.pid, signal.SIGKILL)
                        process.wait()
                        restarted, _ = await trio.to_thread.run_sync(
                            start_pulsar_lite, data, port)
                        processes.append(restarted)
        print(f"published {EXPORT_MESSAGES}, delivered {len(seen)} "
              f"({len(seen) - len(set(seen))} redelivered after the restart)")
        assert set(seen) == {m["metadata"]["id"] for m in expected}
    finally:
        for p in processes:
            stop_process(p)
