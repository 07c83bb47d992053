"""An export client that stops taking what it is sent is let go, and strands nothing.

A client that never acks (``ack=client``) or never reads would otherwise hold the messages
it was sent for as long as it stays connected. After ``export_stall_timeout`` without a
write going through or an ack coming, the gateway closes it with 1008 and nacks what it
held, so the next consumer of the subscription gets every message.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pulsar
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from quiesce.core.config import Settings
from tests.data import id_of, sample_messages
from tests.harness import publish_messages, start_gateway, topic_of, ws_url

# Bound of each wait (generous: it only matters when something is wrong).
LONG = 30.0
STALL = 1.0  # export_stall_timeout in these tests
MESSAGES, WINDOW = 10, 5


async def test_a_client_that_never_acks_is_closed_with_1008_and_its_messages_come_again(
    nursery: trio.Nursery, settings: Settings, pulsar_client: pulsar.Client, flow: str
) -> None:
    """ack=client, window 5, no ack: 1008 after the stall timeout; a new consumer gets all 10."""
    gateway = await start_gateway(nursery, replace(settings, export_stall_timeout=STALL,
                                                   nack_redelivery_delay_ms=100))
    try:
        messages = sample_messages("triples", MESSAGES)
        query = f"subscription=s&position=earliest&ack=client&window={WINDOW}"
        path = f"/api/v1/flow/{flow}/export/triples?{query}"
        await publish_messages(pulsar_client, topic_of("triples", flow), messages)
        held: list[dict[str, Any]] = []
        with trio.fail_after(LONG):
            async with connect(ws_url(gateway, path)) as stuck:
                try:
                    while True:
                        held.append(json.loads(await stuck.recv()))
                except ConnectionClosed:
                    pass
        again: set[str] = set()
        with trio.fail_after(LONG):
            async with connect(ws_url(gateway, path.replace("ack=client", "ack=auto")
                                      + "&until=end")) as next_one:
                try:
                    while True:
                        frame = json.loads(await next_one.recv())
                        if "end" not in frame:
                            again.add(id_of(frame))
                except ConnectionClosed:
                    pass
        print(f"\nstalled client: held {len(held)} frames, closed {stuck.close_code}; next "
              f"consumer got {len(again)} distinct of {MESSAGES}, closed {next_one.close_code}")
        assert len(held) == WINDOW and [f["seq"] for f in held] == list(range(1, WINDOW + 1))
        assert stuck.close_code == 1008
        assert again == {id_of(m) for m in messages}
    finally:
        gateway.request_shutdown()
