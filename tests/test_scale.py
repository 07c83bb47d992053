"""Exports at scale: large messages flow, idle exports hold no thread and wake nothing.

Real gateway (in-process), real broker. The thread and CPU tests count what the whole test
process uses (``/proc/self/task``, ``os.times``): the gateway, pulsar-client's C++ threads
and the test's own clients, which are idle WebSockets that use neither.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from typing import Any

import pulsar
import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from quiesce.actors import subscriber as subscriber_module
from quiesce.actors.broker import open_broker
from quiesce.actors.subscriber import Subscriber
from quiesce.core.config import Settings
from quiesce.core.protocol import Direction, Position
from quiesce.core.routes import Route
from quiesce.supervisor import Supervisor
from tests.data import sample_message
from tests.harness import (
    import_frames,
    import_path,
    publish_messages,
    to_payload,
    topic_of,
    ws_url,
)

# Bound of a whole test's waits (generous: they only matter when something is wrong).
LONG = 120.0
# Large messages: how many, and how large (the issue: 600 of 1 MB).
LARGE_COUNT = 600
LARGE_BYTES = 1024 * 1024
# Idle exports opened at once (handshakes in progress at the same time).
OPEN_CONCURRENCY = 50
# How many threads 490 more idle exports may add at most: Trio's worker threads, which
# subscribe, probe and close (its default limiter: 40 at a time, kept idle a few seconds
# after use), and a margin. Before receive_async, each export held one thread: +490.
THREAD_GROWTH_BOUND = 40 + 15
# Idle CPU: the interval measured, and the bound for 200 idle exports over it. Measured:
# ~0.01 s (0.6 % of a core); a receive loop of 100 ms per export used ~0.8 s (40 %).
IDLE_INTERVAL = 2.0
IDLE_CPU_BOUND = 0.25


def large_message(i: int) -> dict[str, Any]:
    """A ~1 MB triples message: one triple whose literal is ``LARGE_BYTES`` long."""
    message = sample_message("triples", i)
    message["metadata"]["id"] = f"large-{i}"
    message["triples"][0]["o"] = {"v": f"{i:08d}" + "x" * (LARGE_BYTES - 8), "e": False}
    return message


def publish_large(client: pulsar.Client, topic: str) -> None:
    """Publish LARGE_COUNT large messages, built one at a time (600 MB are never all held)."""
    producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True,
                                      max_pending_messages=16, send_timeout_millis=0)
    failures: list[Any] = []
    try:
        for i in range(LARGE_COUNT):
            producer.send_async(to_payload(topic, large_message(i)),
                                lambda result, _id: failures.append(result)
                                if result != pulsar.Result.Ok else None)
        producer.flush()
    finally:
        producer.close()
    assert failures == []


@pytest.mark.slow
async def test_an_until_end_dump_of_600_messages_of_1_mb_completes_and_ends(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    """Every one of 600 messages of 1 MB arrives, then {"end": true} and 1000: the consumer's
    prefetch is sized by bytes (1 or 2 messages), not the 1000 on which pulsar-lite stalls."""
    topic = topic_of("triples", flow)
    await trio.to_thread.run_sync(publish_large, pulsar_client, topic)
    path = (f"/api/v1/flow/{flow}/export/triples?subscription=dump&position=earliest"
            f"&until=end&ack=client")
    ids: list[str] = []
    end = []
    caplog.set_level(logging.DEBUG, logger="quiesce.subscriber")
    with trio.fail_after(LONG):
        async with connect(ws_url(gateway, path), max_size=None, close_timeout=LONG) as ws:
            try:
                while True:
                    frame = json.loads(await ws.recv())
                    if "end" in frame:
                        end.append(frame)
                        continue
                    ids.append(frame["message"]["metadata"]["id"])
                    await ws.send(json.dumps({"ack": frame["seq"]}))
            except ConnectionClosed:
                pass
    queues = [r.args[0] for r in caplog.records if r.msg.startswith("subscribed with")]
    print(f"\n{len(ids)} frames, {len(set(ids))} distinct, end {end}, close {ws.close_code}, "
          f"receiver queue {queues}")
    assert set(ids) == {f"large-{i}" for i in range(LARGE_COUNT)}
    assert end == [{"end": True}] and ws.close_code == 1000
    assert len(queues) == 1 and queues[0] <= 2


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft open-file limit to at least ``needed`` (skip if the hard one is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"open-file limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def threads() -> int:
    """Threads of this process, of every kind (Python's, Trio's workers, pulsar-client's)."""
    return len(os.listdir("/proc/self/task"))


def cpu_seconds() -> float:
    """CPU seconds this process used so far, all threads."""
    times = os.times()
    return times.user + times.system


async def hold_export(url: str, limiter: trio.CapacityLimiter, release: trio.Event,
                      task_status: trio.TaskStatus[ClientConnection] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Open an export WebSocket (at most ``limiter`` handshakes at a time), report it, and
    keep it open until ``release``."""
    await limiter.acquire()
    holding = True
    try:
        async with connect(url, close_timeout=LONG) as ws:
            limiter.release()
            holding = False
            task_status.started(ws)
            await release.wait()
    finally:
        if holding:
            limiter.release()


async def open_idle_exports(nursery: trio.Nursery, gateway: Supervisor, flow: str,
                            names: range, release: trio.Event) -> None:
    """Open one export per name (``subscription=idle-<name>&position=earliest``) and return
    once each has delivered the one message on the topic: each is subscribed, and idle."""
    limiter = trio.CapacityLimiter(OPEN_CONCURRENCY)

    async def open_one(name: int) -> None:
        url = ws_url(gateway, f"/api/v1/flow/{flow}/export/triples"
                              f"?subscription=idle-{name}&position=earliest")
        ws = await nursery.start(hold_export, url, limiter, release)
        frame = json.loads(await ws.recv())
        assert frame["metadata"]["id"] == "idle", frame

    with trio.fail_after(LONG):
        async with trio.open_nursery() as opening:
            for name in names:
                opening.start_soon(open_one, name)


@pytest.mark.slow
async def test_threads_stay_flat_from_10_to_500_idle_exports(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, nursery: trio.Nursery
) -> None:
    """490 more idle exports add no thread of their own (at most Trio's worker pool)."""
    raise_open_file_limit(4 * 500 + 200)
    message = sample_message("triples")
    message["metadata"]["id"] = "idle"
    await publish_messages(pulsar_client, topic_of("triples", flow), [message])
    release = trio.Event()
    await open_idle_exports(nursery, gateway, flow, range(10), release)
    at_10 = threads()
    await open_idle_exports(nursery, gateway, flow, range(10, 500), release)
    at_500 = threads()
    release.set()
    print(f"\nthreads: {at_10} with 10 idle exports, {at_500} with 500")
    assert at_500 - at_10 <= THREAD_GROWTH_BOUND


@pytest.mark.slow
async def test_200_idle_exports_cost_no_periodic_wake_ups(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, nursery: trio.Nursery
) -> None:
    """Once idle, 200 exports use (almost) no CPU: no receive loop wakes up per export."""
    raise_open_file_limit(4 * 200 + 200)
    message = sample_message("triples")
    message["metadata"]["id"] = "idle"
    await publish_messages(pulsar_client, topic_of("triples", flow), [message])
    release = trio.Event()
    await open_idle_exports(nursery, gateway, flow, range(200), release)
    await trio.testing.wait_all_tasks_blocked(cushion=0.1)
    before = cpu_seconds()
    # Not a wait for something: the interval over which idle CPU is measured.
    await trio.sleep(IDLE_INTERVAL)
    used = cpu_seconds() - before
    release.set()
    print(f"\n200 idle exports: {used:.3f} CPU s in {IDLE_INTERVAL:g} s")
    assert used < IDLE_CPU_BOUND


async def test_a_message_that_completes_a_receive_after_receiving_stopped_is_handed_on(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Any
) -> None:
    """An idle subscriber's pending receive outlives stop_receiving: the message it brings
    is still handed on (the export worker nacks it), and after the nack and the close the
    next consumer of the subscription gets it: nothing is stranded."""
    settings = Settings(pulsar_url=broker_url, data_dir=str(tmp_path),
                        nack_redelivery_delay_ms=0)
    topic = topic_of("triples", flow)
    route = Route(Direction.EXPORT, flow, "triples", topic, subscription="late",
                  position=Position.EARLIEST)
    arrived: list[Any] = []
    got = trio.Event()

    def on_arrival(burst: list[Any]) -> None:
        arrived.extend(burst)
        got.set()

    with trio.fail_after(LONG):
        async with open_broker(settings) as broker, trio.open_nursery() as nursery:
            subscriber = Subscriber(broker, route, settings, "t", on_arrival)
            await subscriber.open()
            nursery.start_soon(subscriber.serve_receiving)
            await trio.testing.wait_all_tasks_blocked()  # its receive is pending, idle
            await subscriber.stop_receiving()
            await publish_messages(pulsar_client, topic, [sample_message("triples", 7)])
            await got.wait()
            assert [m.data() for m in arrived] == [to_payload(topic, sample_message(
                "triples", 7))]
            subscriber.nack(arrived)
            await subscriber.aclose()
            again = Subscriber(broker, route, settings, "t2", on_arrival)
            arrived.clear()
            got = trio.Event()
            await again.open()
            nursery.start_soon(again.serve_receiving)
            await got.wait()
            assert [m.data() for m in arrived] == [to_payload(topic, sample_message(
                "triples", 7))]
            again.ack(arrived)
            await again.stop_receiving()
            await again.aclose()


async def test_an_export_is_sized_from_what_the_gateway_imported_without_a_probe(
    gateway: Supervisor, flow: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of ~256 KB imported through the gateway size the next export of their topic
    (a queue of 7 or 8) with no reader probe: the gateway saw them go by."""
    probes: list[str] = []
    monkeypatch.setattr(subscriber_module, "_read_oldest_size",
                        lambda client, topic: probes.append(topic))
    caplog.set_level(logging.DEBUG, logger="quiesce.subscriber")
    messages = [large_message(i) for i in range(3)]
    for message in messages:
        message["triples"][0]["o"]["v"] = message["triples"][0]["o"]["v"][:256 * 1024]
    with trio.fail_after(LONG):
        client = await import_frames(ws_url(gateway, import_path(flow, "triples")),
                                     [json.dumps(m) for m in messages], max_size=None)
        assert client.ack == 3
        async with connect(ws_url(gateway, f"/api/v1/flow/{flow}/export/triples"
                                           f"?subscription=s&position=earliest&until=end"),
                           max_size=None) as ws:
            frames = []
            try:
                while True:
                    frames.append(json.loads(await ws.recv()))
            except ConnectionClosed:
                pass
    queues = [r.args[0] for r in caplog.records if r.msg.startswith("subscribed with")]
    assert [f["metadata"]["id"] for f in frames[:-1]] == [f"large-{i}" for i in range(3)]
    assert probes == [] and len(queues) == 1 and 7 <= queues[0] <= 8
