"""until=end ends promptly however little is left, and an export whose subscriber fails closes.

Regression tests: before the machines/ledgers rework, a second until=end dump after a
complete one never ended, an empty topic made pulsar-client log at ERROR, and an export
whose subscriber failed after subscribing stayed open until the shutdown deadline.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from quiesce.actors.subscriber import Subscriber
from quiesce.core.errors import BrokerError
from quiesce.supervisor import Supervisor
from tests.data import sample_message
from tests.harness import Listening, open_gateway_process, to_payload, topic_of, ws_url

# Bound of a whole dump (generous: it only matters when something is wrong).
LONG = 30.0
# CONTRACT: a dump with nothing left ends "promptly": about a second; this is the bound.
PROMPT = 3.0
MESSAGES = 25


def publish(client: pulsar.Client, topic: str, count: int) -> list[str]:
    """Publish ``count`` triples messages (blocking) and return their ids."""
    producer = client.create_producer(topic)
    ids = []
    try:
        for i in range(count):
            message = sample_message("triples", i)
            producer.send(to_payload(topic, message))
            ids.append(message["metadata"]["id"])
    finally:
        producer.close()
    return ids


async def dump(gateway: Listening, path: str) -> tuple[list[dict[str, Any]], int | None]:
    """Read an until=end export to its close: (frames, close code)."""
    frames: list[dict[str, Any]] = []
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except ConnectionClosed:
            pass
    return frames, ws.close_code


@pytest.mark.parametrize("ack", ["auto", "client"])
async def test_a_second_dump_after_a_complete_one_ends_promptly_with_end_and_1000(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, ack: str
) -> None:
    """A subscription that has nothing left sends {"end": true} and 1000 within ~1 s."""
    ids = await trio.to_thread.run_sync(publish, pulsar_client, topic_of("triples", flow),
                                        MESSAGES)
    path = (f"/api/v1/flow/{flow}/export/triples?subscription=dump&position=earliest"
            f"&until=end&ack={ack}")
    with trio.fail_after(LONG):
        first = await dump_acking(gateway, path, ack == "client")
    delivered = [f.get("message", f)["metadata"]["id"] for f in first if "end" not in f]
    assert set(delivered) == set(ids) and first[-1] == {"end": True}
    started = trio.current_time()
    with trio.fail_after(PROMPT):
        second, code = await dump(gateway, path)
    elapsed = trio.current_time() - started
    print(f"\nsecond dump ({ack}): {len(second)} frames, close {code}, {elapsed:.2f}s")
    assert second == [{"end": True}]
    assert code == 1000


async def dump_acking(gateway: Supervisor, path: str, client_mode: bool
                      ) -> list[dict[str, Any]]:
    """Read a dump to its end, acking each frame when ``client_mode``."""
    frames: list[dict[str, Any]] = []
    async with connect(ws_url(gateway, path), close_timeout=LONG) as ws:
        try:
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if client_mode and "seq" in frame:
                    await ws.send(json.dumps({"ack": frame["seq"]}))
        except ConnectionClosed:
            pass
    assert ws.close_code == 1000
    return frames


async def test_a_dump_from_latest_on_a_busy_topic_ends_promptly(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """A fresh subscription at the latest position has no backlog: it ends at once."""
    await trio.to_thread.run_sync(publish, pulsar_client, topic_of("triples", flow), 5)
    with trio.fail_after(PROMPT):
        frames, code = await dump(gateway, f"/api/v1/flow/{flow}/export/triples?until=end")
    assert frames == [{"end": True}] and code == 1000


async def test_a_dump_of_a_topic_that_does_not_exist_logs_no_error(
    broker_url: str, flow: str, tmp_path: Path
) -> None:
    """An empty topic ends the dump at once, and the gateway logs nothing at ERROR for it.

    In a process of its own: pulsar-client's C++ logger is process-wide (the first client of
    a process decides where every client logs), and the test session has a client already.
    """
    async with open_gateway_process(pulsar_url=broker_url, data_dir=tmp_path) as gateway:
        path = f"/api/v1/flow/{flow}/export/graph-embeddings?subscription=e&until=end"
        with trio.fail_after(PROMPT):
            frames, code = await dump(gateway, path)
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait_exit_async(LONG) == 0
    lines = gateway.lines
    errors = [line for line in lines if "ERROR" in line or " WARN" in line]
    print(f"\nempty topic: {frames}, close {code}, {len(lines)} log lines, "
          f"errors/warnings: {errors}")
    assert frames == [{"end": True}] and code == 1000
    assert any("stopped" in line for line in lines), lines  # the log was read to its end
    assert errors == []


async def test_an_export_whose_subscriber_fails_after_subscribing_closes_at_once(
    gateway: Supervisor, flow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker failure after subscribing gets its error frame and a 1011 close, promptly.

    A fake, and the only one here: pulsar-lite cannot be made to fail ``get_last_message_id``
    on demand, so the test makes the subscriber's call raise the error a broker would.
    """

    async def fail(self: Subscriber) -> None:
        raise BrokerError("cannot read the last message id: injected failure")

    monkeypatch.setattr(Subscriber, "last_place", fail)
    with trio.fail_after(PROMPT):
        frames, code = await dump(
            gateway, f"/api/v1/flow/{flow}/export/triples?subscription=f&until=end")
    print(f"\nfailed subscriber: {frames}, close {code}")
    assert [f["error"]["code"] for f in frames] == ["broker-unavailable"]
    assert "injected failure" in frames[0]["error"]["detail"]
    assert code == 1011
