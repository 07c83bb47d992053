"""Integration tests of import (CONTRACT §2, §3, §5): real gateway, real broker, real clients.

Every test talks to an in-process gateway over loopback with real WebSocket clients
(``websockets.trio`` and, once, ``trio_websocket``) and reads back what reached Pulsar with a
plain pulsar-client Reader. Nothing sleeps: every wait is on a message or an event and is
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from typing import Any

import pulsar
import pytest
import trio
from trio_websocket import ConnectionClosed as TwsConnectionClosed
from trio_websocket import open_websocket_url
from websockets.exceptions import ConnectionClosedOK

from quiesce.core.wire import KINDS
from quiesce.supervisor import Supervisor
from tests.data import ids_of, sample_message
from tests.harness import (
    ImportClient,
    expect_status,
    http_get,
    import_path,
    metric_samples,
    open_import,
    persisted,
    start_gateway,
    to_payload,
    topic_of,
    ws_url,
)

# Bounds of the waits (generous: they only matter when something is wrong).
SHORT = 10.0
LONG = 60.0


def encode(message: dict[str, Any]) -> str:
    """One text frame for ``message``."""
    return json.dumps(message)


def assert_acks_sane(client: ImportClient, total: int) -> None:
    """Acks rose strictly, never exceeded the frames sent, and the last one is ``total``."""
    assert client.violations == []
    assert client.acks == sorted(set(client.acks))
    assert client.acks, "no ack received"
    assert client.acks[-1] == total
    assert client.received[-1] == {"ack": total}, "the final ack must be the last frame"


def assert_closed_normally(client: ImportClient) -> None:
    """The server answered the client's close with 1000."""
    assert isinstance(client.closed, ConnectionClosedOK), repr(client.closed)
    assert client.ws.close_code == 1000


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", KINDS)
async def test_each_kind_round_trips_with_a_final_ack_before_the_close(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, kind: str
) -> None:
    """Twenty messages of each kind are acked in full before the close and land unchanged."""
    messages = [sample_message(kind, i) for i in range(20)]
    assert len(set(ids_of(messages))) == 20
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow, kind))) as client:
            for message in messages:
                await client.send(encode(message))
    assert client.sent == 20
    assert client.errors == []
    assert_acks_sane(client, 20)
    assert_closed_normally(client)
    assert await persisted(pulsar_client, topic_of(kind, flow), len(messages)) == messages


async def test_five_thousand_frames_then_an_immediate_close_are_all_acked_and_persisted(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """A close right after 5000 frames still gets ack 5000 before the close frame, and all land."""
    total = 5000
    frames = [encode(sample_message("triples", i)) for i in range(total)]
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow, "triples"))) as client:
            for frame in frames:
                await client.send(frame)
    assert client.sent == total
    assert client.errors == []
    assert_acks_sane(client, total)
    assert_closed_normally(client)
    stored = await persisted(pulsar_client, topic_of("triples", flow), total)
    assert len(stored) == total
    assert ids_of(stored) == [sample_message("triples", i)["metadata"]["id"] for i in range(total)]


async def test_receipts_rise_monotonically_never_exceed_frames_sent_and_end_at_the_total(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Every ack is above the previous one, at most the frames sent so far, the last the total."""
    total = 500
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow, "triples"))) as client:
            for i in range(total):
                await client.send(encode(sample_message("triples", i)))
                if i == total // 2:
                    await client.wait_ack(i + 1)  # a mid-stream ack is observed, too
    assert client.violations == []
    assert len(client.acks) >= 2
    assert all(a < b for a, b in itertools.pairwise(client.acks))
    assert all(1 <= a <= total for a in client.acks)
    assert_acks_sane(client, total)
    assert len(await persisted(pulsar_client, topic_of("triples", flow), total)) == total


async def test_receipts_off_sends_no_acks_but_still_persists_everything(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Without ?receipts=true the server sends nothing, and every frame still lands by close."""
    messages = [sample_message("entity-contexts", i) for i in range(30)]
    path = import_path(flow, "entity-contexts", receipts=False)
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, path)) as client:
            for message in messages:
                await client.send(encode(message))
    assert client.received == []
    assert_closed_normally(client)
    topic = topic_of("entity-contexts", flow)
    assert await persisted(pulsar_client, topic, len(messages)) == messages


# ---------------------------------------------------------------- bad input


def wrong_type(kind: str, i: int) -> tuple[dict[str, Any], str]:
    """A ``kind`` message with one field of the wrong type, and the detail naming it."""
    message = sample_message(kind, i)
    if kind == "triples":
        message["triples"][0]["s"]["e"] = "true"
        return message, "triples[0].s.e: expected boolean, got string"
    if kind == "graph-embeddings":
        message["entities"][1]["vectors"][0][2] = "0.5"
        return message, "entities[1].vectors[0][2]: expected number, got string"
    if kind == "document-embeddings":
        message["chunks"][1]["chunk"] = 7
        return message, "chunks[1].chunk: expected string, got number"
    message["entities"][0]["entity"]["e"] = "yes"
    return message, "entities[0].entity.e: expected boolean, got string"


def bad_frames(kind: str) -> list[tuple[str | bytes, str, str]]:
    """Bad frames for ``kind``: (frame, expected code, a check of the detail as a regex)."""
    missing = sample_message(kind, 900)
    del missing["metadata"]["user"]
    wrong, wrong_detail = wrong_type(kind, 901)
    return [
        ('{"metadata": ', "invalid-message", r"not JSON: .+"),
        ("[1, 2, 3]", "invalid-message", r"expected a JSON object, got array"),
        ('"just a string"', "invalid-message", r"expected a JSON object, got string"),
        (encode(missing), "invalid-message", r"metadata\.user: missing"),
        (encode(wrong), "invalid-message", re.escape(wrong_detail)),
        (encode(sample_message(kind, 902)).encode(), "unsupported-frame", r".*binary.*"),
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_frames_get_error_frames_and_never_stop_the_valid_ones(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, kind: str
) -> None:
    """Each bad frame gets its own error frame before the covering ack; the rest all land."""
    bad = bad_frames(kind)
    valid: list[dict[str, Any]] = []
    expected_errors: dict[int, tuple[str, str]] = {}
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow, kind))) as client:
            for frame, code, detail in bad:
                message = sample_message(kind, len(valid))
                valid.append(message)
                await client.send(encode(message))
                await client.send(frame)
                expected_errors[client.sent] = (code, detail)
            valid.append(sample_message(kind, len(valid)))
            await client.send(encode(valid[-1]))
            await client.wait_ack(client.sent)
            assert len(client.errors) == len(bad)
            assert client.closed is None, "bad input must not close the connection"
            # Still open and working: one more valid frame is acked.
            valid.append(sample_message(kind, len(valid)))
            await client.send(encode(valid[-1]))
            await client.wait_ack(client.sent)
    total = client.sent
    assert total == 2 * len(bad) + 2
    assert_acks_sane(client, total)
    assert_closed_normally(client)

    # One error per bad frame, with its seq, code and a detail naming the problem.
    assert [e["seq"] for e in client.errors] == sorted(expected_errors)
    for error in client.errors:
        code, detail = expected_errors[error["seq"]]
        assert error["code"] == code, error
        assert re.fullmatch(detail, error["detail"], re.IGNORECASE), error
    # An error frame always arrives before the first ack that covers its seq.
    for error in client.errors:
        error_at = client.received.index({"error": error})
        covering = next(i for i, f in enumerate(client.received) if f.get("ack", 0) >= error["seq"])
        assert error_at < covering, (error, client.received)

    assert await persisted(pulsar_client, topic_of(kind, flow), len(valid)) == valid


async def test_bad_input_on_one_connection_does_not_touch_a_concurrent_one(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """A connection sending garbage beside a clean one leaves the clean one error-free and whole."""
    other_flow = f"{flow}b"
    rounds = 50
    sent_good: list[dict[str, Any]] = []
    sent_mixed: list[dict[str, Any]] = []
    with trio.fail_after(LONG):
        async with (
            open_import(ws_url(gateway, import_path(flow, "triples"))) as mixed,
            open_import(ws_url(gateway, import_path(other_flow, "triples"))) as good,
        ):
            for i in range(rounds):
                sent_mixed.append(sample_message("triples", i))
                await mixed.send(encode(sent_mixed[-1]))
                await mixed.send("not json at all" if i % 2 else b"\x00binary")
                sent_good.append(sample_message("triples", 1000 + i))
                await good.send(encode(sent_good[-1]))
            await mixed.wait_ack(mixed.sent)
            await good.wait_ack(good.sent)
    assert good.errors == []
    assert_acks_sane(good, rounds)
    assert_closed_normally(good)
    assert len(mixed.errors) == rounds
    assert_acks_sane(mixed, 2 * rounds)
    assert_closed_normally(mixed)
    good_topic, mixed_topic = topic_of("triples", other_flow), topic_of("triples", flow)
    assert await persisted(pulsar_client, good_topic, len(sent_good)) == sent_good
    assert await persisted(pulsar_client, mixed_topic, len(sent_mixed)) == sent_mixed


async def test_an_oversize_frame_closes_with_1009_and_earlier_frames_still_land(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str
) -> None:
    """A frame above max_message_bytes closes the socket with 1009; frames before it persist."""
    small = await start_gateway(nursery, settings, max_message_bytes=2048)
    try:
        before = [sample_message("triples", i) for i in range(3)]
        assert all(len(encode(m)) < 2048 for m in before)
        oversize = sample_message("triples", 99)
        oversize["padding"] = "x" * 4096
        with trio.fail_after(LONG):
            async with open_import(ws_url(small, import_path(flow, "triples")),
                                   close_timeout=SHORT) as client:
                for message in before:
                    await client.send(encode(message))
                await client.send(encode(oversize))
                await client.wait_closed()
        assert client.closed is not None
        assert client.closed.rcvd is not None, "the server must send a close frame"
        assert client.closed.rcvd.code == 1009
        assert client.errors == []
        assert client.violations == []
        assert client.ack <= len(before)
        assert await persisted(pulsar_client, topic_of("triples", flow), len(before)) == before
    finally:
        small.request_shutdown()


async def test_frames_the_broker_refuses_get_publish_failed_and_the_cap_closes_with_1011(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Frames over the broker's size limit are refused by it: each gets a publish-failed error
    frame (settled, so acks pass them), and the cap on consecutive failures closes with 1011.

    The session broker allows 8 MiB; the gateway here allows 16 MiB, so a 9 MiB frame passes
    the gateway and the real broker (through pulsar-client) refuses it.
    """
    capped = await start_gateway(nursery, settings, max_message_bytes=16 * 1024 * 1024,
                                 max_consecutive_errors=2)
    try:
        first = sample_message("triples", 0)
        big = sample_message("triples", 1)
        big["triples"][0]["o"] = {"v": "x" * (9 * 1024 * 1024), "e": False}
        with trio.fail_after(LONG):
            async with open_import(ws_url(capped, import_path(flow, "triples", receipts=True)),
                                   close_timeout=SHORT, max_size=None) as client:
                await client.send(encode(first))
                await client.wait_ack(1)
                await client.send(encode(big))
                await client.send(encode(big))
                await client.wait_closed()
        assert client.violations == []
        assert [(e["seq"], e["code"]) for e in client.errors] == [
            (2, "publish-failed"), (3, "publish-failed")]
        assert all("broker refused" in e["detail"] for e in client.errors)
        assert client.ack == 3, "refused frames are settled: the ack covers them"
        assert client.closed is not None and client.closed.rcvd is not None
        assert client.closed.rcvd.code == 1011
        assert await persisted(pulsar_client, topic_of("triples", flow), 1) == [first]
    finally:
        capped.request_shutdown()


# ---------------------------------------------------------------- routes and HTTP


async def test_unknown_kind_and_bad_flow_name_are_404_and_a_bad_query_is_400(
    gateway: Supervisor, flow: str
) -> None:
    """Handshakes for an unknown kind, an invalid flow or path are 404; receipts=maybe is 400."""
    await expect_status(ws_url(gateway, f"/api/v1/flow/{flow}/import/widgets"), 404)
    await expect_status(ws_url(gateway, "/api/v1/flow/bad%20flow!/import/triples"), 404)
    await expect_status(ws_url(gateway, f"/api/v1/flow/{flow}/upload/triples"), 404)
    await expect_status(ws_url(gateway, "/somewhere/else"), 404)
    await expect_status(ws_url(gateway, f"/api/v1/flow/{flow}/import/triples?receipts=maybe"),
                        400)


async def test_configured_flows_allow_only_listed_flows_and_kinds_onto_their_topics(
    nursery: trio.Nursery, settings: Any, pulsar_client: pulsar.Client, flow: str
) -> None:
    """With [flows.only] configured, unlisted flows/kinds are 404 and 'only' lands on its topic."""
    topic = f"persistent://tg/flow/x-{uuid.uuid4().hex}"
    gw = await start_gateway(nursery, settings, flows={"only": {"triples": topic}})
    try:
        await expect_status(ws_url(gw, import_path(flow, "triples")), 404)
        await expect_status(ws_url(gw, import_path("only", "graph-embeddings")), 404)
        messages = [sample_message("triples", i) for i in range(5)]
        with trio.fail_after(LONG):
            async with open_import(ws_url(gw, import_path("only", "triples"))) as client:
                for message in messages:
                    await client.send(encode(message))
        assert_acks_sane(client, 5)
        assert_closed_normally(client)
        stored = await persisted(pulsar_client, topic, len(messages))
        # A configured topic holds the flow's profile's payload (tg1: TrustGraph 1.x's
        # JsonSchema(Triples)), not the socket format.
        first = messages[0]["triples"][0]["s"]
        assert stored[0]["triples"][0]["s"] == {"value": first["v"], "is_uri": first["e"],
                                                "type": None}
        assert stored == [json.loads(to_payload(topic_of("triples", "x"), m)) for m in messages]
    finally:
        gw.request_shutdown()


async def test_healthz_and_readyz_answer_200_while_serving(gateway: Supervisor) -> None:
    """Both probes answer 200 on the WebSocket port, and readyz names the bound URL."""
    status, _ = await http_get(gateway.port, "/healthz")
    assert status == 200
    status, body = await http_get(gateway.port, "/readyz")
    assert status == 200
    assert f"http://127.0.0.1:{gateway.port}" in body


async def test_metrics_count_imported_and_rejected_frames_by_kind(
    gateway: Supervisor, flow: str
) -> None:
    """After an import, /metrics shows the persisted count and the rejections by code."""
    with trio.fail_after(LONG):
        async with open_import(ws_url(gateway, import_path(flow, "triples"))) as client:
            for i in range(12):
                await client.send(encode(sample_message("triples", i)))
            await client.send("{nope")
            await client.send("[]")
            await client.send(b"\x01\x02")
    assert_acks_sane(client, 15)
    status, text = await http_get(gateway.port, "/metrics")
    assert status == 200
    imported = metric_samples(text, "messages_imported_total")
    assert imported[frozenset({("kind", "triples")})] == 12
    rejected = metric_samples(text, "messages_rejected_total")
    assert rejected[frozenset({("kind", "triples"), ("code", "invalid-message")})] == 2
    assert rejected[frozenset({("kind", "triples"), ("code", "unsupported-frame")})] == 1


# ---------------------------------------------------------------- an independent client


async def test_trio_websocket_client_imports_two_hundred_triples_with_receipts(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """trio-websocket imports 200 triples: ack 200 arrives, the close is 1000, 200 land.

    trio-websocket discards frames that arrive after its own close frame, so this client waits
    for the final ack and then closes.
    """
    total = 200
    messages = [sample_message("triples", i) for i in range(total)]
    acks: list[int] = []
    frames: list[dict[str, Any]] = []
    got_all = trio.Event()

    with trio.fail_after(LONG):
        async with open_websocket_url(ws_url(gateway, import_path(flow, "triples"))) as ws:

            async def read() -> None:
                try:
                    while True:
                        frame = json.loads(await ws.get_message())
                        frames.append(frame)
                        if "ack" in frame:
                            acks.append(frame["ack"])
                            if frame["ack"] >= total:
                                got_all.set()
                except TwsConnectionClosed:
                    pass

            async with trio.open_nursery() as inner:
                inner.start_soon(read)
                for message in messages:
                    await ws.send_message(encode(message))
                await got_all.wait()
                await ws.aclose()
            assert ws.closed is not None
            assert ws.closed.code == 1000
    assert all(a < b for a, b in itertools.pairwise(acks))
    assert acks[-1] == total
    assert [f for f in frames if "ack" not in f] == []
    assert await persisted(pulsar_client, topic_of("triples", flow), len(messages)) == messages
