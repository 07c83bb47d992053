"""Concurrent until=end dumps of large backlogs are complete, and end only after all of it.

Regression test for pulsar-lite 0.2.0's dispatch stall (docs/architecture.md, "pulsar-lite
stalls"): with 8 concurrent fresh exports of 5,000-message backlogs, pulsar-lite stopped
dispatching to some of them for good, and an until=end dump then ended with
``{"end": true}`` after what it had (0 to 4,843 of 5,000 on main 9dfca39: 11 of 24 dumps):
a second of quiet counted as the end.
Real parts only: a broker of the test's own, a gateway process, WebSocket clients.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from quiesce.actors.broker import open_broker
from quiesce.actors.subscriber import Subscriber, message_key
from quiesce.core.config import Settings
from quiesce.core.protocol import Direction, Position
from quiesce.core.routes import Route
from tests.data import sample_message
from tests.harness import (
    Broker,
    Listening,
    from_payload,
    open_gateway_process,
    to_payload,
    topic_of,
    ws_url,
)

DUMPS = 8
BACKLOG = 5_000
ROUNDS = 3
# Bound of one round of 8 dumps (publishing included); generous, it only matters on a hang.
ROUND_BOUND = 240.0
# Bound of one round of 8 open-ended exports: a stall is looked at after 5 s of quiet.
OPEN_ROUND_BOUND = 60.0


def publish_backlog(client: pulsar.Client, topic: str, count: int, start: int = 0) -> set[str]:
    """Publish ``count`` triples messages, an entry each (pulsar-client's default, as the
    benchmarks do; pulsar-lite stalls soonest on those), and return their ids."""
    producer = client.create_producer(topic, batching_enabled=False,
                                      block_if_queue_full=True)
    ids: set[str] = set()
    try:
        for i in range(start, start + count):
            message = sample_message("triples", i)
            producer.send_async(to_payload(topic, message), None)
            ids.add(message["metadata"]["id"])
        producer.flush()
    finally:
        producer.close()
    return ids


async def fill(client: pulsar.Client, flows: list[str]) -> dict[str, set[str]]:
    """A ``BACKLOG`` of its own on each flow's triples topic: the ids, by flow."""
    return {flow: await trio.to_thread.run_sync(
        publish_backlog, client, topic_of("triples", flow), BACKLOG) for flow in flows}


async def dump(gateway: Listening, flow: str, into: dict[str, Any]) -> None:
    """Read one until=end dump to its close, recording ids, the end frame and the close."""
    path = f"/api/v1/flow/{flow}/export/triples?position=earliest&until=end&ack=auto"
    delivered: list[str] = []
    end_after: int | None = None
    errors: list[dict[str, Any]] = []
    async with connect(ws_url(gateway, path), close_timeout=30, max_size=None) as ws:
        try:
            while True:
                frame = json.loads(await ws.recv())
                if frame == {"end": True}:
                    end_after = len(delivered)
                elif "error" in frame:
                    errors.append(frame)
                else:
                    delivered.append(frame["metadata"]["id"])
        except ConnectionClosed:
            pass
    into.update(delivered=delivered, end_after=end_after, errors=errors, code=ws.close_code)


@pytest.mark.slow
async def test_eight_concurrent_until_end_dumps_are_complete_and_end_only_after_all(
    own_broker: Broker, tmp_path: Path
) -> None:
    """8 concurrent until=end dumps of 5,000-message backlogs, three rounds: every dump
    delivers exactly its topic's messages (none missing, none foreign) and ``{"end": true}``
    only after all of them, then closes with 1000.

    Duplicates are counted and printed, not failed: delivery is at-least-once, and
    pulsar-lite redelivers acked messages to a new consumer of the subscription (the stall
    cure subscribes one), as it sometimes does without one (DESIGN.md).
    """
    client = own_broker.client()
    failures: list[str] = []
    duplicates = 0
    try:
        async with open_gateway_process(pulsar_url=own_broker.url,
                                        data_dir=tmp_path / "gw") as gateway:
            for round_no in range(ROUNDS):
                flows = [f"cc{round_no}x{i}" for i in range(DUMPS)]
                with trio.fail_after(ROUND_BOUND):
                    sent = await fill(client, flows)
                    results: dict[str, dict[str, Any]] = {flow: {} for flow in flows}
                    started = trio.current_time()
                    async with trio.open_nursery() as nursery:
                        for flow in flows:
                            nursery.start_soon(dump, gateway, flow, results[flow])
                    elapsed = trio.current_time() - started
                print(f"\nround {round_no}: {elapsed:.1f}s")
                for flow in flows:
                    r, ids = results[flow], sent[flow]
                    delivered = r["delivered"]
                    unique = set(delivered)
                    ledger = (f"  {flow}: sent {len(ids)} delivered {len(delivered)} "
                              f"unique {len(unique)} duplicates {len(delivered) - len(unique)} "
                              f"missing {len(ids - unique)} foreign {len(unique - ids)} "
                              f"end after {r['end_after']} errors {r['errors']} "
                              f"close {r['code']}")
                    print(ledger)
                    duplicates += len(delivered) - len(unique)
                    if not (unique == ids and r["end_after"] == len(delivered) >= BACKLOG
                            and r["code"] == 1000 and not r["errors"]):
                        failures.append(f"round {round_no}{ledger}")
            recoveries = [line for line in gateway.lines if "pulsar-lite stall" in line]
            rechecked = [line for line in gateway.lines if "not empty after all" in line]
            print(f"stall recoveries logged: {len(recoveries)}; 'empty' answers proved wrong "
                  f"by an arrival: {len(rechecked)}; duplicates in all: {duplicates}")
            for line in recoveries[:5]:
                print(" ", line[:300])
    finally:
        client.close()
    assert failures == []


async def read_count(gateway: Listening, flow: str, count: int, into: dict[str, Any]) -> None:
    """Read an export without until=end until ``count`` distinct messages came, then close."""
    path = f"/api/v1/flow/{flow}/export/triples?position=earliest&ack=auto"
    delivered: list[str] = []
    async with connect(ws_url(gateway, path), close_timeout=30, max_size=None) as ws:
        while len(set(delivered)) < count:
            frame = json.loads(await ws.recv())
            delivered.append(frame["metadata"]["id"])
    into.update(delivered=delivered)


@pytest.mark.slow
async def test_eight_concurrent_open_ended_exports_get_their_whole_backlog(
    own_broker: Broker, tmp_path: Path
) -> None:
    """Without until=end a stalled export is cured too (after STALL_CHECK_PERIOD of quiet
    while the topic holds more than it saw): 8 concurrent exports of 5,000-message backlogs,
    two rounds, each gets all of its topic's messages within the bound."""
    client = own_broker.client()
    try:
        async with open_gateway_process(pulsar_url=own_broker.url,
                                        data_dir=tmp_path / "gw") as gateway:
            for round_no in range(2):
                flows = [f"oe{round_no}x{i}" for i in range(DUMPS)]
                sent = await fill(client, flows)
                results: dict[str, dict[str, Any]] = {flow: {} for flow in flows}
                started = trio.current_time()
                with trio.move_on_after(OPEN_ROUND_BOUND):
                    async with trio.open_nursery() as nursery:
                        for flow in flows:
                            nursery.start_soon(read_count, gateway, flow, BACKLOG,
                                               results[flow])
                print(f"\nround {round_no}: {trio.current_time() - started:.1f}s")
                for flow in flows:
                    delivered = results[flow].get("delivered", [])
                    unique = set(delivered)
                    print(f"  {flow}: sent {len(sent[flow])} delivered {len(delivered)} "
                          f"unique {len(unique)} duplicates {len(delivered) - len(unique)} "
                          f"missing {len(sent[flow] - unique)}")
                    assert unique == sent[flow], flow
            recoveries = [line for line in gateway.lines if "pulsar-lite stall" in line]
            print(f"stall recoveries logged: {len(recoveries)}")
    finally:
        client.close()


def subscriber_on(broker: Any, settings: Settings, flow: str, name: str,
                  on_arrival: Any) -> Subscriber:
    """A Subscriber (the export worker's) on ``flow``'s triples topic, subscription ``name``."""
    route = Route(Direction.EXPORT, flow, "triples", topic_of("triples", flow),
                  subscription=name, position=Position.EARLIEST)
    return Subscriber(broker, route, settings, name, on_arrival)


async def test_last_place_is_none_only_for_an_empty_topic_even_under_load(
    own_broker: Broker, tmp_path: Path
) -> None:
    """``last_place``: None on an empty topic; on 8 busy topics (each consumed at once by its
    own subscriber, as in a concurrent dump), always the topic's last entry, never None."""
    settings = Settings(pulsar_url=own_broker.url, data_dir=str(tmp_path))
    client = own_broker.client()
    flows = [f"lp{i}" for i in range(DUMPS)]
    try:
        for flow in flows:
            await trio.to_thread.run_sync(publish_backlog, client, topic_of("triples", flow),
                                          2_000)
    finally:
        client.close()
    answers: dict[str, list[Any]] = {flow: [] for flow in flows}
    with trio.fail_after(120):
        async with open_broker(settings) as broker, trio.open_nursery() as nursery:
            empty = subscriber_on(broker, settings, "lpempty", "e", lambda burst: None)
            await empty.open()
            assert await empty.last_place() is None
            await empty.aclose()
            subscribers = []
            for flow in flows:
                holder: list[Subscriber] = []

                def ack_all(burst: list[Any], holder: list[Subscriber] = holder) -> None:
                    holder[0].ack(burst)

                sub = subscriber_on(broker, settings, flow, "busy", ack_all)
                holder.append(sub)
                await sub.open()
                subscribers.append(sub)
                nursery.start_soon(sub.serve_receiving)

            async def ask(flow: str, sub: Subscriber) -> None:
                for _ in range(5):
                    answers[flow].append(await sub.last_place())

            async with trio.open_nursery() as asking:
                for flow, sub in zip(flows, subscribers, strict=True):
                    asking.start_soon(ask, flow, sub)
            for sub in subscribers:
                await sub.stop_receiving()
                await sub.aclose()
    print(f"\nlast_place answers: {answers}")
    for flow in flows:
        assert None not in answers[flow]
        assert len({a for a in answers[flow]}) == 1 and answers[flow][0][1] == 1_999


async def test_recover_subscribes_again_and_loses_nothing(
    own_broker: Broker, tmp_path: Path
) -> None:
    """``Subscriber.recover`` mid-stream (nothing held): receiving goes on through the new
    consumer, the old consumer's pending receive is ignored, nothing is missing."""
    settings = Settings(pulsar_url=own_broker.url, data_dir=str(tmp_path))
    client = own_broker.client()
    flow = "recover"
    topic = topic_of("triples", flow)
    try:
        first = await trio.to_thread.run_sync(publish_backlog, client, topic, 300)
        received: list[Any] = []
        progress = trio.Event()
        holder: list[Subscriber] = []

        def ack_all(burst: list[Any]) -> None:
            received.extend(burst)
            holder[0].ack(burst)
            progress.set()

        with trio.fail_after(60):
            async with open_broker(settings) as broker, trio.open_nursery() as nursery:
                sub = subscriber_on(broker, settings, flow, "r", ack_all)
                holder.append(sub)
                await sub.open()
                nursery.start_soon(sub.serve_receiving)
                while len(received) < 300:
                    progress = trio.Event()
                    await progress.wait()
                await trio.testing.wait_all_tasks_blocked()  # idle: a receive is pending
                await sub.recover()
                second = await trio.to_thread.run_sync(publish_backlog, client, topic, 200,
                                                     300)
                while not second <= {_id(m) for m in received}:
                    progress = trio.Event()
                    await progress.wait()
                await sub.stop_receiving()
                await sub.aclose()
    finally:
        client.close()
    ids = [_id(m) for m in received]
    unique = set(ids)
    print(f"\nrecover: sent {len(first) + len(second)}, received {len(ids)}, unique "
          f"{len(unique)}, duplicates {len(ids) - len(unique)}, keys "
          f"{sorted({message_key(m)[:2] for m in received})[-1]}")
    assert unique == first | second


def _id(message: Any) -> str:
    """A received triples message's metadata id."""
    return str(from_payload(topic_of("triples", "recover"), message.data())["metadata"]["id"])
