"""A broker that dies mid-import or mid-export loses nothing: pulsar-client reconnects and
resends (import), the broker redelivers what was not acked (export).

The fault is real: the pulsar-lite process is killed with SIGKILL and started again on the
same port and data directory while a client streams.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from websockets.trio.client import connect

from tests.data import id_of, ids_of, sample_message, sample_messages
from tests.harness import (
    Broker,
    import_path,
    open_import,
    publish_messages,
    read_topic,
    start_gateway,
    topic_of,
    ws_url,
)

LONG = 60.0
FRAMES = 600
KILL_AT = 200  # frames acked before the broker is killed
# Export: more than the consumer prefetches (1000), so most must come from the new broker.
EXPORT_MESSAGES = 2500


async def test_an_import_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, own_broker: Broker
) -> None:
    """Kill -9 the broker after 200 acks, restart it: all 600 frames are acked and persisted."""
    flow = "brokerkill"
    gateway = await start_gateway(nursery, settings, pulsar_url=own_broker.url,
                                  publisher_drain_timeout=30.0)
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow))) as client:

            async def send(numbers: range) -> None:
                for i in numbers:
                    await client.send(json.dumps(sample_message("triples", i)))

            await send(range(KILL_AT))
            await client.wait_ack(KILL_AT)
            own_broker.kill()
            await send(range(KILL_AT, FRAMES // 2))  # frames the dead broker cannot confirm
            await trio.to_thread.run_sync(own_broker.restart)
            await send(range(FRAMES // 2, FRAMES))
    acks = client.acks
    assert client.errors == [], client.errors
    assert client.ws.close_code == 1000
    assert acks == sorted(acks) and acks[-1] == FRAMES, acks[-5:]
    reader = own_broker.client()
    try:
        stored = await trio.to_thread.run_sync(read_topic, reader, topic_of("triples", flow))
    finally:
        reader.close()
    ids = ids_of(stored)
    expected = set(ids_of(sample_messages("triples", FRAMES)))
    print(f"sent {FRAMES}, final ack {acks[-1]}, stored {len(ids)} "
          f"({len(ids) - len(set(ids))} duplicates from resends)")
    assert set(ids) == expected


async def test_a_client_acked_export_survives_the_broker_being_killed_and_restarted(
    nursery: trio.Nursery, settings: Any, own_broker: Broker
) -> None:
    """Kill -9 the broker mid-export (ack=client), restart it: every message still arrives."""
    flow = "brokerkillexport"
    expected = sample_messages("triples", EXPORT_MESSAGES)
    publisher = own_broker.client()
    try:
        await publish_messages(publisher, topic_of("triples", flow), expected)
    finally:
        publisher.close()
    gateway = await start_gateway(nursery, settings, pulsar_url=own_broker.url)
    path = f"/api/v1/flow/{flow}/export/triples?subscription=s&position=earliest&ack=client"
    seen: list[str] = []
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        with trio.fail_after(LONG):
            while len(set(seen)) < EXPORT_MESSAGES:
                frame = json.loads(await ws.recv())
                seen.append(id_of(frame["message"]))
                await ws.send(json.dumps({"ack": frame["seq"]}))
                if len(seen) == KILL_AT:
                    own_broker.kill()
                    await trio.to_thread.run_sync(own_broker.restart)
    print(f"published {EXPORT_MESSAGES}, delivered {len(seen)} "
          f"({len(seen) - len(set(seen))} redelivered after the restart)")
    assert set(seen) == set(ids_of(expected))
