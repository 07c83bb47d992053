"""Process-level tests of shutdown (CONTRACT §1, §3, §4, §6): real signals, real sockets.

Most tests run ``python -m quiesce.supervisor serve`` as a child process on the session's
pulsar-lite broker (``open_gateway_process`` in tests/harness.py), talk to it with real
WebSocket clients, and signal it. The child's stderr is drained by a thread into a list of
lines the tests wait on, so the child never blocks on a full pipe. Nothing sleeps: every wait
is on a message, a log line or the process, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import connect

from quiesce.core.config import Settings
from tests.data import doc_id, ids_of, sample_message, sample_messages
from tests.harness import (
    Broker,
    ExportStream,
    GatewayProcess,
    ImportClient,
    Listening,
    http_get,
    import_path,
    metric_samples,
    open_gateway_process,
    open_import,
    persisted,
    publish_messages,
    start_gateway,
    topic_of,
    ws_url,
)

# Bounds of the waits (generous: they only matter when something is wrong).
SHORT = 10.0
LONG = 60.0
# How long a signalled process may take to exit: the longest --shutdown-timeout used (10 s,
# or 30 s where a second SIGINT must cut it short) plus closing the broker client.
EXIT_BOUND = 25.0
DRAINING_PATTERN = r"serving -> draining"


def signal_now(gateway: GatewayProcess, signum: int) -> float:
    """Send ``signum`` to the gateway process; returns the time it was sent (Trio's clock)."""
    gateway.signal(signum)
    return trio.current_time()


# ---------------------------------------------------------------- clients


def export_path(flow: str, query: str) -> str:
    """Path of the triples export WebSocket of ``flow`` with ``query``."""
    return f"/api/v1/flow/{flow}/export/triples?{query}"


@asynccontextmanager
async def open_export(gateway: Listening, flow: str, query: str) -> AsyncIterator[ExportStream]:
    """An export connection to ``gateway`` whose frames a task collects (see ExportStream).

    The body must wait for the server's close (``done``): the collecting task ends only then.
    """
    async with connect(ws_url(gateway, export_path(flow, query)), close_timeout=SHORT) as ws:
        stream = ExportStream(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.collect)
            yield stream


# ---------------------------------------------------------------- 1. import + SIGTERM


async def test_sigterm_during_a_streaming_import_closes_1001_and_keeps_every_acked_frame(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGTERM mid-stream closes the import with 1001, exits 0, and loses no acked frame.

    The client reads replies: it stops sending at the server's ``{"draining": …}``, so the
    gateway finds it quiet and drains without waiting for the rest of its grace.
    """
    limit = 20_000
    async with open_gateway_process("--shutdown-timeout", "10", pulsar_url=broker_url,
                                    data_dir=tmp_path) as gateway:
        async with open_import(ws_url(gateway, import_path(flow)), close_timeout=SHORT) as client:

            async def stream() -> None:
                try:
                    for i in range(limit):
                        if client.draining.is_set():
                            return
                        await client.send(json.dumps(sample_message("triples", i)))
                except ConnectionClosed:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                with trio.fail_after(LONG):
                    await client.wait_until(lambda: client.ack >= 500)
                signalled = signal_now(gateway, signal.SIGTERM)
                with trio.fail_after(LONG):
                    await client.done.wait()
                closed_at = trio.current_time()
        code = await gateway.wait_exit_async(10.0 + 5.0)
        exited_at = trio.current_time()
    stored = await persisted(pulsar_client, topic_of("triples", flow))
    stored_ids = ids_of(stored)
    last_ack = client.ack
    print(f"\nimport+SIGTERM: sent={client.sent} acked={last_ack} persisted={len(stored)} "
          f"close={client.ws.close_code} closed_after={closed_at - signalled:.2f}s "
          f"exit={code} exited_after={exited_at - signalled:.2f}s")
    assert client.violations == []
    assert client.errors == []
    assert client.sent < limit, "the stream ended before the signal: nothing was tested"
    assert client.draining.is_set(), "the server never said it drains"
    assert last_ack == client.sent, "every frame sent before the client stopped is acked"
    missing = set(map(doc_id, range(last_ack))) - set(stored_ids)
    assert not missing, f"{len(missing)} acked frames are not in the topic"
    assert len(stored_ids) == len(set(stored_ids)), "duplicates in the topic"
    # What reached the topic is a prefix of what was sent, in order.
    assert stored_ids == [doc_id(i) for i in range(len(stored_ids))]
    assert client.ws.close_code == 1001, (client.ws.close_code, gateway.log())
    assert code is not None, "still running 15 s after SIGTERM:\n" + gateway.log()
    assert code == 0, gateway.log()


# ---------------------------------------------------------------- 2. export ack=client + SIGTERM


async def test_sigterm_during_a_client_acked_export_redelivers_exactly_the_unacked_messages(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path,
    settings: Settings,
) -> None:
    """After SIGTERM with 100 of 300 frames acked, a fresh gateway redelivers all but those 100."""
    total = 500
    topic = topic_of("triples", flow)
    await publish_messages(pulsar_client, topic, sample_messages("triples", total))
    subscription = f"s-{uuid.uuid4().hex[:8]}"
    query = f"subscription={subscription}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "1"}
    async with open_gateway_process("--shutdown-timeout", "10", pulsar_url=broker_url,
                                    data_dir=tmp_path, env=env) as gateway:
        async with open_export(gateway, flow, query) as first:
            with trio.fail_after(LONG):
                await first.wait_frames(300)
            await first.ack(100)
            signalled = signal_now(gateway, signal.SIGTERM)
            with trio.fail_after(LONG):
                await first.done.wait()
            closed_at = trio.current_time()
        code = await gateway.wait_exit_async(EXIT_BOUND)
        exited_at = trio.current_time()
    first_close = first.ws.close_code
    seqs = [seq for seq, _ in first.frames]
    assert seqs == list(range(1, len(seqs) + 1))
    acked = {mid for seq, mid in first.frames if seq <= 100}
    assert len(acked) == 100
    # The drain waited about the subscriber drain timeout (1 s) for acks that never came.
    assert 0.5 <= closed_at - signalled < 5.0, closed_at - signalled

    # A fresh gateway on the same broker and subscription gets every unacked message back.
    redelivered: list[str] = []
    async with trio.open_nursery() as nursery:
        fresh = await start_gateway(nursery, settings)
        end_query = f"subscription={subscription}&ack=client&until=end"
        with trio.fail_after(LONG):
            async with open_export(fresh, flow, end_query) as second:
                acked_up_to = 0
                while not second.done.is_set():
                    if len(second.frames) > acked_up_to:
                        acked_up_to = second.frames[-1][0]
                        await second.ack(acked_up_to)
                    else:
                        await second._changed.wait()
            redelivered = [mid for _, mid in second.frames]
        fresh.request_shutdown()
    everything = {doc_id(i) for i in range(total)}
    counts = Counter(redelivered)
    duplicates = sum(n - 1 for n in counts.values())
    came_back_acked = acked & set(counts)
    print(f"\nexport+SIGTERM: published={total} first_delivered={len(first.frames)} "
          f"client_acked=100 (in order: {acked == set(map(doc_id, range(100)))}) "
          f"closed_after={closed_at - signalled:.2f}s exited_after={exited_at - signalled:.2f}s "
          f"close={first_close} exit={code} "
          f"redelivered={len(redelivered)} unique={len(counts)} duplicates={duplicates} "
          f"acked_came_back={len(came_back_acked)} end={second.others}")
    assert second.others == [{"end": True}], second.others
    assert second.ws.close_code == 1000
    assert not came_back_acked, sorted(came_back_acked)[:10]
    assert set(counts) == everything - acked, sorted(everything - acked - set(counts))[:10]
    assert code == 0, gateway.log()
    assert first_close == 1001, (first_close, gateway.log())


async def test_a_drain_that_interrupts_a_blocked_export_write_still_closes_1001(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGTERM while the export writer is blocked on a full socket still drains to 1001."""
    total, first_batch = 600, 100
    # 16 KB messages (an unknown extra field is kept): the window's worth of unread frames is
    # far more than the socket buffers hold, so the server's writer is blocked mid-send.
    messages = [{**sample_message("triples", i), "padding": "x" * 16_000} for i in range(total)]
    await publish_messages(pulsar_client, topic_of("triples", flow), messages)
    query = f"subscription=b-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "5"}
    async with open_gateway_process("--shutdown-timeout", "10", pulsar_url=broker_url,
                                    data_dir=tmp_path, env=env) as gateway:
        async with connect(ws_url(gateway, export_path(flow, query)), close_timeout=SHORT,
                           max_size=None) as ws:
            frames: list[dict[str, Any]] = []
            with trio.fail_after(LONG):
                while len(frames) < first_batch:
                    frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"ack": first_batch}))
            signalled = signal_now(gateway, signal.SIGTERM)  # the client is not reading now
            acked = first_batch
            try:
                with trio.fail_after(LONG):
                    while True:  # now read and ack everything, as a draining client would
                        frame = json.loads(await ws.recv())
                        frames.append(frame)
                        if "seq" in frame:
                            acked = frame["seq"]
                            await ws.send(json.dumps({"ack": acked}))
            except ConnectionClosed:
                pass
            closed_at = trio.current_time()
        code = await gateway.wait_exit_async(EXIT_BOUND)
    errors = [f for f in frames if "error" in f]
    print(f"\nblocked export write: published={total} delivered={len(frames) - len(errors)} "
          f"client_acked={acked} errors={errors[:3]} close={ws.close_code} "
          f"closed_after={closed_at - signalled:.2f}s exit={code} "
          f"log={gateway.find(r'abandon|forc|shutdown complete')}")
    assert errors == [], errors[:3]
    assert code == 0, gateway.log()
    assert ws.close_code == 1001, (ws.close_code, gateway.log())


# ---------------------------------------------------------------- 3. readiness during a drain


async def test_readyz_turns_503_and_handshakes_are_refused_503_once_a_drain_starts(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """/readyz is 200 while serving, 503 once draining, and new handshakes then get HTTP 503."""
    total = 10
    topic = topic_of("triples", flow)
    await publish_messages(pulsar_client, topic, sample_messages("triples", total))
    query = f"subscription=r-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "3"}
    async with open_gateway_process("--shutdown-timeout", "10", pulsar_url=broker_url,
                                    data_dir=tmp_path, env=env) as gateway:
        assert (await http_get(gateway.port, "/readyz"))[0] == 200
        async with open_export(gateway, flow, query) as holder:
            with trio.fail_after(LONG):
                await holder.wait_frames(total)  # held unacked: the drain must wait
            assert (await http_get(gateway.port, "/readyz"))[0] == 200
            mark = len(gateway.lines)
            gateway.signal(signal.SIGTERM)
            with trio.fail_after(SHORT):
                await gateway.wait_line_async(DRAINING_PATTERN, mark)
            status, body = await http_get(gateway.port, "/readyz")
            health, _ = await http_get(gateway.port, "/healthz")
            with trio.fail_after(SHORT), pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url(gateway, import_path(flow))):
                    pass
            # Now let the drain finish: ack everything that was held.
            await holder.ack(total)
            with trio.fail_after(SHORT):
                await holder.done.wait()
        code = await gateway.wait_exit_async(EXIT_BOUND)
    print(f"\nreadyz: draining status={status} body={body.strip()!r} healthz={health} "
          f"handshake={refused.value.response.status_code} close={holder.ws.close_code} "
          f"exit={code}")
    assert status == 503, body
    assert health == 200
    assert refused.value.response.status_code == 503
    assert holder.ws.close_code == 1001
    assert code == 0, gateway.log()
    stored = await persisted(pulsar_client, topic)
    assert len(stored) == total  # the refused import published nothing


# ---------------------------------------------------------------- 4. forced at the deadline


def metric_value(text: str, name: str) -> float:
    """The value of the unlabelled metric ``name`` in Prometheus text."""
    samples = metric_samples(text, name)
    assert frozenset() in samples, f"no {name} in /metrics"
    return samples[frozenset()]


async def _import_then_freeze(
    client: ImportClient, port: int, broker: Broker, acked_before: int, stuck: int
) -> None:
    """Get ``acked_before`` frames acked, freeze the broker, then send ``stuck`` more frames
    and wait until the gateway reports them handed to its producer and unconfirmed."""
    for i in range(acked_before):
        await client.send(json.dumps(sample_message("triples", i)))
    with trio.fail_after(SHORT):
        await client.wait_until(lambda: client.ack == acked_before)
    # Fault injection: a real broker cannot be made to stop confirming on demand, so the
    # broker process is frozen with SIGSTOP (its sockets stay open; nothing is answered).
    broker.freeze()
    for i in range(acked_before, acked_before + stuck):
        await client.send(json.dumps(sample_message("triples", i)))
    # No frame from the gateway can say "read but unconfirmed" (receipts only move on
    # confirmations), so ask /metrics until the gauge shows every stuck frame in flight.
    with trio.fail_after(SHORT):
        while True:
            _, text = await http_get(port, "/metrics")
            if metric_value(text, "publisher_queue_depth") == stuck:
                break
    assert client.ack == acked_before


async def test_a_connection_that_cannot_drain_is_forced_1011_counted_and_the_process_exits(
    own_broker: Broker, flow: str, tmp_path: Path
) -> None:
    """With the broker frozen, SIGTERM forces the import at --shutdown-timeout with 1011."""
    acked_before, stuck = 50, 20
    env = {"QUIESCE_PUBLISHER_DRAIN_TIMEOUT": "30"}
    async with open_gateway_process("--shutdown-timeout", "2", pulsar_url=own_broker.url,
                                    data_dir=tmp_path, env=env) as gateway:
        async with open_import(ws_url(gateway, import_path(flow)), close_timeout=SHORT) as client:
            await _import_then_freeze(client, gateway.port, own_broker, acked_before, stuck)
            signalled = signal_now(gateway, signal.SIGTERM)
            with trio.fail_after(LONG):
                await client.done.wait()
            closed_at = trio.current_time()
        code = await gateway.wait_exit_async(EXIT_BOUND)
        exited_at = trio.current_time()
    own_broker.thaw()
    shutdown_lines = gateway.find(r"shutdown complete")
    print(f"\nforced (process): sent={client.sent} acked={client.ack} "
          f"close={client.ws.close_code} "
          f"closed_after={closed_at - signalled:.2f}s exit={code} "
          f"exited_after={exited_at - signalled:.2f}s log={shutdown_lines}")
    client_pulsar = own_broker.client()
    try:
        stored = await persisted(client_pulsar, topic_of("triples", flow))
    finally:
        client_pulsar.close()
    print(f"forced (process): persisted after thaw={len(stored)}")
    assert client.ws.close_code == 1011, (client.ws.close_code, gateway.log())
    assert 1.5 <= closed_at - signalled < 6.0, closed_at - signalled
    assert exited_at - signalled < 15.0, gateway.log()
    assert code == 0, gateway.log()
    assert len(shutdown_lines) == 1 and re.search(r"\bforced=1\b", shutdown_lines[0]), \
        gateway.log()
    assert re.search(r"\bgraceful=0\b", shutdown_lines[0])
    assert client.ack == acked_before  # nothing sent after the freeze was ever receipted
    missing = set(map(doc_id, range(acked_before))) - set(ids_of(stored))
    assert not missing, sorted(missing)


async def test_a_forced_connection_is_counted_in_websocket_forced_shutdowns_total(
    own_broker: Broker, flow: str, settings: Settings
) -> None:
    """In process: the forced import shows up as websocket_forced_shutdowns_total{import} 1."""
    acked_before, stuck = 20, 10
    async with trio.open_nursery() as outer:
        gateway = await start_gateway(outer, settings, pulsar_url=own_broker.url,
                                      shutdown_timeout=1.0, publisher_drain_timeout=30.0)
        async with open_import(ws_url(gateway, import_path(flow)), close_timeout=SHORT) as client:
            await _import_then_freeze(client, gateway.port, own_broker, acked_before, stuck)
            gateway.request_shutdown()
            with trio.fail_after(LONG):
                await client.done.wait()
        registry = gateway.metrics.registry
        forced = registry.get_sample_value("websocket_forced_shutdowns_total",
                                           {"direction": "import"})
        graceful = registry.get_sample_value("websocket_graceful_shutdowns_total",
                                             {"direction": "import"})
        dropped = registry.get_sample_value("publisher_messages_dropped_total",
                                            {"kind": "triples"})
        own_broker.thaw()  # let the gateway's broker client close promptly
    print(f"\nforced (in process): close={client.ws.close_code} forced={forced} "
          f"graceful={graceful} publisher_dropped={dropped}")
    assert client.ws.close_code == 1011
    assert forced == 1
    assert not graceful


# ---------------------------------------------------------------- 5. second SIGINT


async def test_a_second_sigint_forces_the_drain_at_once(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """A second SIGINT ends a drain that would wait 30 s within a few seconds."""
    total = 10
    topic = topic_of("triples", flow)
    await publish_messages(pulsar_client, topic, sample_messages("triples", total))
    query = f"subscription=i-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "30"}
    async with open_gateway_process("--shutdown-timeout", "30", pulsar_url=broker_url,
                                    data_dir=tmp_path, env=env) as gateway:
        async with open_export(gateway, flow, query) as holder:
            with trio.fail_after(LONG):
                await holder.wait_frames(total)  # never acked: the drain would wait 30 s
            mark = len(gateway.lines)
            first = signal_now(gateway, signal.SIGINT)
            with trio.fail_after(SHORT):
                await gateway.wait_line_async(DRAINING_PATTERN, mark)
            second = signal_now(gateway, signal.SIGINT)
            with trio.fail_after(LONG):
                await holder.done.wait()
            closed_at = trio.current_time()
        code = await gateway.wait_exit_async(EXIT_BOUND)
        exited_at = trio.current_time()
    print(f"\nsecond SIGINT: close={holder.ws.close_code} closed_after={closed_at - second:.2f}s "
          f"exit={code} exited_after={exited_at - second:.2f}s "
          f"(first SIGINT {second - first:.2f}s before) "
          f"log={gateway.find(r'second SIGINT|shutdown complete')}")
    assert exited_at - second < 5.0, gateway.log()
    assert code == 0, gateway.log()
    assert holder.ws.close_code == 1011
    assert gateway.find(r"second SIGINT: forcing")
