"""Integration tests of export (CONTRACT §4, §5): real gateway, real broker, real clients.

Every test talks to an in-process gateway over loopback with ``websockets.trio`` clients and
puts its data on a topic of its own, either through the gateway's import or straight into
Pulsar with a plain producer. Nothing sleeps to synchronise: every wait is on a frame, a
close, or an HTTP answer, and is bounded by ``trio.fail_after``. pulsar-lite may redeliver a
message, so the tests count duplicates and print them, and assert on the set of ids.
"""

from __future__ import annotations

import collections
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pulsar
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from quiesce.core.config import Settings
from quiesce.core.wire import KINDS
from quiesce.supervisor import Supervisor
from tests.data import id_of, sample_message, sample_messages
from tests.harness import (
    expect_status,
    http_get,
    import_frames,
    import_path,
    metric_samples,
    publish_messages,
    start_gateway,
    topic_of,
    ws_url,
)

# Bounds of the waits (generous: they only matter when something is wrong).
SHORT = 10.0
LONG = 60.0
NACK_METRIC = "subscriber_messages_negatively_acknowledged_total"


# ---------------------------------------------------------------- helpers


def export_path(flow: str, kind: str = "triples", **query: str | int) -> str:
    """Path of the export WebSocket of (flow, kind) with ``query`` parameters."""
    text = "&".join(f"{name}={value}" for name, value in query.items())
    return f"/api/v1/flow/{flow}/export/{kind}" + (f"?{text}" if text else "")


async def import_with_receipts(gateway: Supervisor, flow: str, kind: str,
                               messages: list[dict[str, Any]]) -> None:
    """Import ``messages`` through the gateway and check the receipt covering them all."""
    with trio.fail_after(LONG):
        client = await import_frames(ws_url(gateway, import_path(flow, kind)),
                                     [json.dumps(m) for m in messages])
    assert client.errors == [], client.errors
    assert client.ack == len(messages), client.acks[-5:]


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    """The next server frame, decoded (fails after SHORT seconds)."""
    with trio.fail_after(SHORT):
        frame = json.loads(await ws.recv())
    assert isinstance(frame, dict), frame
    return frame


async def next_message(ws: ClientConnection, client_mode: bool = False) -> dict[str, Any]:
    """The next exported message (unwrapped from ``{"seq", "message"}`` with ack=client)."""
    frame = await next_frame(ws)
    assert "error" not in frame and "end" not in frame, frame
    if client_mode:
        assert set(frame) == {"seq", "message"}, frame
        return dict(frame["message"])
    return frame


async def send_ack(ws: ClientConnection, n: int) -> None:
    """Acknowledge every frame up to seq ``n``."""
    await ws.send(json.dumps({"ack": n}))


async def confirm_processed(ws: ClientConnection) -> None:
    """Prove that the server applied every client frame sent so far (in-order probe).

    Sends a deliberately invalid ack; the server handles client frames in order, so once its
    error comes back, everything sent before it has been applied. The caller must make sure
    no message frames are in flight (ack=client with a full window, or a drained topic).
    """
    await ws.send('{"ack": "probe"}')
    frame = await next_frame(ws)
    assert frame.get("error", {}).get("code") == "invalid-ack", frame
    assert "probe" in frame["error"]["detail"], frame


async def abort(ws: ClientConnection) -> None:
    """Drop the connection with a TCP reset: no close frame, no FIN.

    SO_LINGER 0 makes closing the socket send RST. ``close_stream`` (websockets' own
    teardown) closes it; the client's receiving task may be parked on its full message
    buffer, where it would never notice, so it is released to find the stream closed.
    """
    sock = ws.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # websockets' reader task pauses on a full buffer (max_queue) and then watches neither the
    # socket nor its closing: lift the flow control so it sees the close and ends.
    ws.recv_messages.high = ws.recv_messages.low = None
    if ws.recv_flow_control is not None:
        ws.resume_reading()
    await ws.close_stream()
    if ws.recv_flow_control is not None:
        ws.resume_reading()


def nack_count(gateway: Supervisor, kind: str, reason: str) -> float:
    """The gateway's nack counter for (kind, reason), read from its own registry."""
    value = gateway.metrics.registry.get_sample_value(
        NACK_METRIC, {"kind": kind, "reason": reason})
    return value or 0.0


def exported_count(gateway: Supervisor, kind: str) -> float:
    """Messages the gateway wrote to export sockets for ``kind``."""
    value = gateway.metrics.registry.get_sample_value(
        "messages_exported_total", {"kind": kind})
    return value or 0.0


async def scraped(port: int, name: str, labels: dict[str, str]) -> float:
    """The value of one sample scraped from GET /metrics (0 when absent)."""
    status, text = await http_get(port, "/metrics")
    assert status == 200
    return metric_samples(text, name).get(frozenset(labels.items()), 0.0)


class Tally:
    """Ids received, with duplicates counted."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, message: dict[str, Any]) -> str:
        """Count one received message; returns its id."""
        key = id_of(message)
        self.counts[key] += 1
        return key

    @property
    def distinct(self) -> set[str]:
        """Every id seen at least once."""
        return set(self.counts)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first of each id."""
        return sum(self.counts.values()) - len(self.counts)


async def discard_rest(ws: ClientConnection) -> None:
    """Read and drop server frames until the connection is closed."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        pass


@asynccontextmanager
async def export(url: str) -> AsyncIterator[ClientConnection]:
    """An export connection, closed normally (close frame, wait for the server's) at the end.

    The client keeps reading (and dropping) frames while it closes: websockets stops
    reading the socket while its message buffer is full, and would never see the server's
    close frame.
    """
    async with connect(url, close_timeout=LONG, max_queue=4) as ws:
        yield ws
        with trio.fail_after(LONG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(discard_rest, ws)
                await ws.aclose()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", KINDS)
async def test_each_kind_exports_exactly_the_messages_imported_through_the_gateway(
    gateway: Supervisor, flow: str, kind: str
) -> None:
    """Twenty messages imported with receipts come back from export as equal JSON."""
    messages = sample_messages(kind, 20)
    expected = {id_of(m): m for m in messages}
    received: dict[str, dict[str, Any]] = {}
    tally = Tally()
    url = ws_url(gateway, export_path(flow, kind, subscription="rt", position="earliest"))
    async with export(url) as ws:
        await import_with_receipts(gateway, flow, kind, messages)
        with trio.fail_after(LONG):
            while len(received) < len(messages):
                message = await next_message(ws)
                received[tally.add(message)] = message
    print(f"{kind}: 20 imported, {sum(tally.counts.values())} exported, "
          f"{tally.duplicates} duplicates")
    assert received == expected


# ---------------------------------------------------------------- resumption


@pytest.mark.parametrize("ack", ["client", "auto"])
async def test_an_aborted_export_resumes_on_the_same_subscription_without_losing_messages(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, ack: str
) -> None:
    """After a TCP reset at frame 500 of 2000, a reconnect delivers every message not taken.

    ack=client: the union of both reads is all 2000, and nothing acked (first 450) comes
    back. ack=auto: a message is acked once written to the socket, so only frames written but
    never read by the client may be missing; every other message must come back.
    """
    kind = "triples"
    messages = sample_messages(kind, 2000)
    all_ids = {id_of(m) for m in messages}
    await publish_messages(pulsar_client, topic_of(kind, flow), messages)
    client_mode = ack == "client"
    path = export_path(flow, kind, subscription="resume", position="earliest", ack=ack)
    first, second = Tally(), Tally()
    acked: set[str] = set()
    order: list[str] = []

    async with connect(ws_url(gateway, path), max_queue=4) as ws:
        with trio.fail_after(LONG):
            for seq in range(1, 501):
                order.append(first.add(await next_message(ws, client_mode)))
                if client_mode and seq == 450:
                    await send_ack(ws, 450)
                    acked = set(order)
        if client_mode:
            # The window (1000) is not full, so message frames may precede the probe's
            # error: skip them (they are unread, as if still in the socket buffer).
            await ws.send('{"ack": "probe"}')
            with trio.fail_after(SHORT):
                while "error" not in (frame := json.loads(await ws.recv())):
                    pass
            assert frame["error"]["code"] == "invalid-ack", frame
        await abort(ws)
    assert ws.close_code != 1000

    if client_mode:
        async with export(ws_url(gateway, path)) as ws:
            seen = set(first.distinct)
            with trio.fail_after(LONG):
                while seen != all_ids:
                    frame = await next_frame(ws)
                    await send_ack(ws, frame["seq"])
                    seen.add(second.add(frame["message"]))
    else:
        # Some messages may be gone (written, acked, never read): read the backlog to its end.
        async with export(ws_url(gateway, path + "&until=end")) as ws:
            with trio.fail_after(LONG):
                while "end" not in (frame := await next_frame(ws)):
                    second.add(frame)
    union = first.distinct | second.distinct
    written = exported_count(gateway, kind)
    read = sum(first.counts.values()) + sum(second.counts.values())
    print(f"ack={ack}: first read {sum(first.counts.values())}, second read "
          f"{sum(second.counts.values())} ({second.duplicates} duplicates within it, "
          f"{len(first.distinct & second.distinct)} ids seen on both), union {len(union)}, "
          f"missing {len(all_ids - union)}, acked ids back {len(acked & second.distinct)}, "
          f"written {written:.0f}, written but unread {written - read:.0f}")
    if client_mode:
        assert union == all_ids
    else:
        assert len(all_ids - union) <= written - read, "a message never written is lost"
    if client_mode:
        assert acked & second.distinct == set(), "an acked message came back"


async def test_client_acks_hold_across_a_normal_close_and_unacked_messages_come_back(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Acking 200 of 300 frames read (of 400) and closing: a reconnect gets the other 200 only."""
    kind = "triples"
    messages = sample_messages(kind, 400)
    all_ids = [id_of(m) for m in messages]
    topic = topic_of(kind, flow)
    await publish_messages(pulsar_client, topic, messages)
    path = export_path(flow, kind, subscription="acks", position="earliest", ack="client")
    by_seq: dict[int, str] = {}
    async with export(ws_url(gateway, path)) as ws:
        with trio.fail_after(LONG):
            while len(by_seq) < 300:
                frame = await next_frame(ws)
                assert frame["seq"] == len(by_seq) + 1, frame
                by_seq[frame["seq"]] = id_of(frame["message"])
        await send_ack(ws, 200)
    assert ws.close_code == 1000
    acked = {by_seq[s] for s in range(1, 201)}
    unacked_read = {by_seq[s] for s in range(201, 301)}
    assert len(acked) == 200 and len(unacked_read) == 100, "duplicates within one connection"
    expected = set(all_ids) - acked

    # A sentinel published now bounds the second read: it comes after every redelivery.
    sentinel = sample_message(kind, 10_000)
    second = Tally()
    async with export(ws_url(gateway, path)) as ws:
        await publish_messages(pulsar_client, topic, [sentinel])
        with trio.fail_after(LONG):
            while not (expected | {id_of(sentinel)}) <= second.distinct:
                second.add(await next_message(ws, client_mode=True))
    print(f"second connection: {sum(second.counts.values())} frames, "
          f"{second.duplicates} duplicates, acked ids back: {len(acked & second.distinct)}")
    assert unacked_read <= second.distinct
    assert acked & second.distinct == set(), "an acked message came back"


# ---------------------------------------------------------------- ack=client protocol


async def test_invalid_client_acks_get_error_frames_and_change_nothing(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Bad, out-of-range and backward acks get invalid-ack errors; valid and repeated acks don't."""
    kind = "triples"
    messages = sample_messages(kind, 10)
    topic = topic_of(kind, flow)
    await publish_messages(pulsar_client, topic, messages)
    path = export_path(flow, kind, subscription="errs", position="earliest", ack="client")
    by_seq: dict[int, str] = {}

    async def expect_error(frame_text: str, fragment: str) -> None:
        await ws.send(frame_text)
        frame = await next_frame(ws)
        assert set(frame) == {"error"}, frame
        assert frame["error"]["code"] == "invalid-ack", frame
        assert fragment in frame["error"]["detail"], frame

    async with export(ws_url(gateway, path)) as ws:
        with trio.fail_after(LONG):
            while len(by_seq) < 10:
                frame = await next_frame(ws)
                by_seq[frame["seq"]] = id_of(frame["message"])
        assert sorted(by_seq) == list(range(1, 11))
        await expect_error("not json {", "JSON")
        await expect_error('{"ack": "x"}', '"x"')
        await expect_error('{"ack": 11}', "11")
        await send_ack(ws, 5)
        await expect_error('{"ack": 3}', "backwards")  # also proves ack 5 drew no error
        await send_ack(ws, 5)                            # repeating the current ack
        await expect_error('{"ack": "y"}', '"y"')        # the next frame is this error
        await send_ack(ws, 7)
        await expect_error('{"ack": 6}', "backwards")   # ack 7 was applied
        await expect_error('{"ack": 11}', "beyond")
    assert ws.close_code == 1000

    # What was acked (seq 1..7) is gone from the subscription; seq 8..10 come back.
    rest = Tally()
    async with export(ws_url(gateway, export_path(
            flow, kind, subscription="errs", until="end"))) as ws:
        with trio.fail_after(LONG):
            while "end" not in (frame := await next_frame(ws)):
                rest.add(frame)
    assert ws.close_code == 1000
    print(f"after ack 7: {sum(rest.counts.values())} redelivered, {rest.duplicates} duplicates")
    assert rest.distinct == {by_seq[s] for s in (8, 9, 10)}


async def test_the_window_stops_the_server_at_five_unacked_frames_until_an_ack(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """With window=5 the server sends 5 frames, then only an error, until the client acks."""
    kind = "triples"
    messages = sample_messages(kind, 20)
    await publish_messages(pulsar_client, topic_of(kind, flow), messages)
    path = export_path(flow, kind, subscription="win", position="earliest", ack="client",
                       window=5)
    tally = Tally()
    async with export(ws_url(gateway, path)) as ws:
        for batch in range(4):
            for i in range(1, 6):
                frame = await next_frame(ws)
                assert frame.get("seq") == batch * 5 + i, frame
                tally.add(frame["message"])
            # A 6th message frame would already be on its way: the next frame must be the
            # error for this ack beyond the last seq sent.
            await ws.send(json.dumps({"ack": batch * 5 + 6}))
            frame = await next_frame(ws)
            assert set(frame) == {"error"}, f"window exceeded: {frame}"
            assert frame["error"]["code"] == "invalid-ack"
            await send_ack(ws, batch * 5 + 5)
    assert ws.close_code == 1000
    assert tally.duplicates == 0
    assert tally.distinct == {id_of(m) for m in messages}


async def test_the_window_in_bytes_holds_big_messages_back_whatever_window_says(
    nursery: trio.Nursery, settings: Settings, pulsar_client: pulsar.Client, flow: str
) -> None:
    """``export_window_bytes`` bounds the bytes in flight below ``window=``, one message at least.

    Messages of ~1.2 KB against a 1 KiB byte window and ``window=1000``: one frame at a time,
    each only after the previous one is acked; every message arrives once.
    """
    gateway = await start_gateway(nursery, settings, export_window_bytes=1024)
    kind, count = "triples", 8
    messages = sample_messages(kind, count)
    await publish_messages(pulsar_client, topic_of(kind, flow), messages)
    path = export_path(flow, kind, subscription="bytes", position="earliest", ack="client",
                       window=1000)
    tally = Tally()
    async with export(ws_url(gateway, path)) as ws:
        for seq in range(1, count + 1):
            frame = await next_frame(ws)
            assert frame.get("seq") == seq, frame
            tally.add(frame["message"])
            # Were a second frame in flight it would come before this ack's error.
            await ws.send(json.dumps({"ack": seq + 1}))
            frame = await next_frame(ws)
            assert set(frame) == {"error"}, f"byte window exceeded: {frame}"
            await send_ack(ws, seq)
    print(f"\nbyte window: sent {count}, distinct "
          f"{len(tally.distinct)}, close {ws.close_code}")
    assert ws.close_code == 1000
    assert tally.duplicates == 0
    assert tally.distinct == {id_of(m) for m in messages}
    gateway.request_shutdown()


# ---------------------------------------------------------------- backpressure


async def test_block_backpressure_delivers_everything_to_a_slow_reader_without_nacks(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str
) -> None:
    """With a queue of 2 and backpressure=block, 200 messages all arrive and none is nacked."""
    kind = "triples"
    gw = await start_gateway(nursery, settings, subscriber_max_queue_size=2,
                             nack_redelivery_delay_ms=200)
    try:
        messages = sample_messages(kind, 200)
        await publish_messages(pulsar_client, topic_of(kind, flow), messages)
        path = export_path(flow, kind, subscription="slow", position="earliest",
                           backpressure="block")
        tally = Tally()
        max_depth = 0.0
        async with export(ws_url(gw, path)) as ws:
            with trio.fail_after(LONG):
                while len(tally.distinct) < 200:
                    tally.add(await next_message(ws))
                    if len(tally.counts) % 10 == 0:
                        # The slowness: a real HTTP round trip to the gateway every 10 frames.
                        depth = await scraped(gw.port, "subscriber_queue_depth", {})
                        max_depth = max(max_depth, depth)
        nacked = await scraped(gw.port, NACK_METRIC, {"kind": kind, "reason": "backpressure"})
        print(f"block: 200 published, {sum(tally.counts.values())} received, "
              f"{tally.duplicates} duplicates, backpressure nacks {nacked:.0f}, "
              f"max queue depth seen {max_depth:.0f}")
        assert tally.distinct == {id_of(m) for m in messages}
        assert nacked == 0
        assert nack_count(gw, kind, "backpressure") == 0
    finally:
        gw.request_shutdown()


@pytest.mark.parametrize("strategy", ["drop_new", "drop_oldest"])
async def test_drop_backpressure_nacks_overflow_and_every_message_still_arrives(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str,
    strategy: str
) -> None:
    """A client withholding acks (window=1, queue 2) makes drops; acking then gets all 200."""
    kind = "triples"
    gw = await start_gateway(nursery, settings, subscriber_max_queue_size=2,
                             nack_redelivery_delay_ms=200)
    try:
        messages = sample_messages(kind, 200)
        path = export_path(flow, kind, subscription="drops", position="earliest",
                           ack="client", window=1, backpressure=strategy)
        tally = Tally()
        async with export(ws_url(gw, path)) as ws:
            await publish_messages(pulsar_client, topic_of(kind, flow), messages)
            frame = await next_frame(ws)
            tally.add(frame["message"])
            # Withhold the ack until the gateway reports drops (each check an HTTP round trip).
            with trio.fail_after(SHORT):
                while await scraped(gw.port, NACK_METRIC,
                                    {"kind": kind, "reason": "backpressure"}) == 0:
                    pass
            dropped_early = nack_count(gw, kind, "backpressure")
            await send_ack(ws, frame["seq"])
            with trio.fail_after(LONG):
                while len(tally.distinct) < 200:
                    frame = await next_frame(ws)
                    tally.add(frame["message"])
                    await send_ack(ws, frame["seq"])
            await confirm_processed(ws)
        dropped = nack_count(gw, kind, "backpressure")
        print(f"{strategy}: 200 published, {sum(tally.counts.values())} delivered, "
              f"{tally.duplicates} duplicates, backpressure nacks {dropped:.0f} "
              f"({dropped_early:.0f} before the first ack)")
        assert dropped_early > 0
        assert tally.distinct == {id_of(m) for m in messages}
        assert tally.duplicates == 0, "a client-acked message was delivered again"
    finally:
        gw.request_shutdown()


# ---------------------------------------------------------------- until=end


@pytest.mark.parametrize("ack", ["auto", "client"])
async def test_until_end_sends_the_backlog_then_end_then_closes_with_1000(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, ack: str
) -> None:
    """until=end delivers the 30 published messages, then {"end": true}, then close 1000."""
    kind = "entity-contexts"
    messages = sample_messages(kind, 30)
    await publish_messages(pulsar_client, topic_of(kind, flow), messages)
    client_mode = ack == "client"
    path = export_path(flow, kind, subscription="dump", position="earliest", until="end",
                       ack=ack)
    tally = Tally()
    frames: list[dict[str, Any]] = []
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        with trio.fail_after(LONG):
            try:
                while True:
                    frame = await next_frame(ws)
                    frames.append(frame)
                    if "end" in frame:
                        continue
                    if client_mode:
                        assert frame["seq"] == len(frames), frame
                        tally.add(frame["message"])
                        await send_ack(ws, frame["seq"])
                    else:
                        tally.add(frame)
            except ConnectionClosed:
                pass
    print(f"until=end ack={ack}: {len(frames)} frames, {tally.duplicates} duplicates")
    assert frames[-1] == {"end": True}
    assert [f for f in frames if "end" in f] == [{"end": True}]
    assert tally.distinct == {id_of(m) for m in messages}
    assert ws.close_code == 1000


@pytest.mark.parametrize("strategy", ["drop_new", "drop_oldest"])
async def test_until_end_waits_for_messages_dropped_by_backpressure_before_ending(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str,
    strategy: str
) -> None:
    """until=end with drops (queue 2, window=1) delivers all 200 backlog messages before the end.

    The dropped messages are nacked and still in the subscription, so CONTRACT §4 ("once
    every message that was in the subscription when the connection opened has been
    delivered") forbids the end until they have come back and been delivered.
    """
    kind = "triples"
    gw = await start_gateway(nursery, settings, subscriber_max_queue_size=2,
                             nack_redelivery_delay_ms=200)
    try:
        messages = sample_messages(kind, 200)
        await publish_messages(pulsar_client, topic_of(kind, flow), messages)
        path = export_path(flow, kind, subscription="dump", position="earliest", until="end",
                           backpressure=strategy, ack="client", window=1)
        tally = Tally()
        async with export(ws_url(gw, path)) as ws:
            with trio.fail_after(LONG):
                while "end" not in (frame := await next_frame(ws)):
                    tally.add(frame["message"])
                    await send_ack(ws, frame["seq"])
        dropped = nack_count(gw, kind, "backpressure")
        print(f"until=end {strategy}: {sum(tally.counts.values())} delivered before the end, "
              f"{len(tally.distinct)} distinct, {tally.duplicates} duplicates, "
              f"backpressure nacks {dropped:.0f}")
        assert ws.close_code == 1000
        assert dropped > 0, "no drop happened: the test did not exercise redelivery"
        missing = {id_of(m) for m in messages} - tally.distinct
        assert missing == set(), f"{len(missing)} of 200 backlog messages not delivered"
    finally:
        gw.request_shutdown()


async def test_until_end_on_an_empty_topic_ends_at_once(gateway: Supervisor, flow: str) -> None:
    """until=end on a topic with nothing in it sends only {"end": true} and closes with 1000."""
    path = export_path(flow, "graph-embeddings", subscription="empty", position="earliest",
                       until="end")
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        assert await next_frame(ws) == {"end": True}
        with trio.fail_after(SHORT), pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1000


# ---------------------------------------------------------------- routes


async def test_unknown_kind_is_404_and_bad_backpressure_or_window_is_400(
    gateway: Supervisor, flow: str
) -> None:
    """An unknown kind is refused with 404; backpressure=fast, window=0 and others with 400."""
    await expect_status(ws_url(gateway, export_path(flow, "widgets")), 404)
    await expect_status(ws_url(gateway, export_path(flow, backpressure="fast")), 400)
    await expect_status(ws_url(gateway, export_path(flow, window=0)), 400)
    await expect_status(ws_url(gateway, export_path(flow, window="lots")), 400)
    await expect_status(ws_url(gateway, export_path(flow, ack="never")), 400)
    await expect_status(ws_url(gateway, export_path(flow, position="middle")), 400)
    await expect_status(ws_url(gateway, export_path(flow, until="later")), 400)
