"""Hostile import frames beside a good import: every one refused, nothing good lost (CONTRACT §3).

Ten thousand Hypothesis-generated hostile frames (``_hostile.py``: NaN, lone surrogates,
duplicate keys at any depth, nesting past the bound, numbers past a double, wrong types,
missing fields, cut-off text, binary, invalid UTF-8, noise) go over one import connection
with good frames mixed in, while a second connection on the same gateway imports only good
frames. Each test prints its ledger and asserts: every hostile frame got an error frame with
its own seq, every good frame was receipted and is in the topic once, and the gateway still
answers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import orjson
import pulsar
import pytest
import trio

from quiesce.supervisor import Supervisor
from tests.data import id_of, sample_message
from tests.faults._faults import Ledger
from tests.faults._hostile import Frame, hostile_frames
from tests.harness import (
    ImportClient,
    http_get,
    import_path,
    open_import,
    persisted,
    read_topic_counted,
    topic_of,
    ws_url,
)

# 600 Hypothesis examples, each mutation applied to 17 messages: 10,200 hostile frames.
EXAMPLES, PER_EXAMPLE = 600, 17
# One good frame after every this many hostile ones on the hostile connection.
GOOD_EVERY = 20
# Good frames on the connection beside it.
BESIDE = 500
# The whole test, generously: it takes a few seconds.
BOUND = 60.0


@pytest.fixture(scope="module")
def hostile() -> list[Frame]:
    """The hostile frames, generated once for the module (derandomized: the same each run)."""
    return hostile_frames(EXAMPLES, PER_EXAMPLE)


async def send_frame(client: ImportClient, frame: Frame) -> None:
    """Send ``frame`` as it says: text (bytes as text too, unchecked) or binary."""
    client.sent += 1
    await client.ws.send(frame.payload, text=frame.text)


def good_ids(stored: list[dict[str, Any]]) -> Counter[str]:
    """How many times each message id is stored."""
    return Counter(id_of(m) for m in stored)


async def test_hostile_frames_beside_a_good_import_are_each_refused_and_lose_nothing(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, hostile: list[Frame]
) -> None:
    """10,200 hostile frames each get an error frame; every good frame is receipted and stored."""
    beside_flow = flow + "-b"
    mixed = Ledger()
    beside = Ledger()
    good_seqs: dict[int, str] = {}   # seq on the hostile connection -> id of the good frame
    hostile_seqs: dict[int, Frame] = {}
    started = time.perf_counter()

    async def run_beside() -> None:
        async with open_import(ws_url(gateway, import_path(beside_flow))) as client:
            for i in range(BESIDE):
                await client.send(json.dumps(sample_message("triples", i)))
                beside.sent += 1
        beside.receipted, beside.rejected = client.ack, len(client.errors)
        assert client.violations == [] and client.ws.close_code == 1000

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as tasks:
            tasks.start_soon(run_beside)
            async with open_import(ws_url(gateway, import_path(flow))) as client:
                good = 0
                for n, frame in enumerate(hostile, 1):
                    if n % GOOD_EVERY == 0:
                        message = sample_message("triples", good)
                        await client.send(json.dumps(message))
                        good_seqs[client.sent] = id_of(message)
                        good += 1
                    await send_frame(client, frame)
                    hostile_seqs[client.sent] = frame
                mixed.sent = client.sent
    elapsed = time.perf_counter() - started
    stored = await persisted(pulsar_client, topic_of("triples", flow), len(good_seqs))
    stored_beside = await persisted(pulsar_client, topic_of("triples", beside_flow), BESIDE)

    errors = {e["seq"]: e for e in client.errors}
    mixed.receipted, mixed.rejected = client.ack, len(client.errors)
    mixed.persisted, mixed.duplicates = len(stored), len(stored) - len(good_ids(stored))
    beside.persisted = len(stored_beside)
    beside.duplicates = len(stored_beside) - len(good_ids(stored_beside))
    mixed.print(f"hostile connection ({len(hostile_seqs)} hostile, {len(good_seqs)} good, "
                f"{elapsed:.1f}s)")
    beside.print("good import beside it")
    codes = Counter((hostile_seqs[s].kind, e["code"]) for s, e in errors.items()
                    if s in hostile_seqs)
    print("error codes by kind of hostile frame:", dict(sorted(codes.items())))

    assert client.violations == [], client.violations[:5]
    assert client.ws.close_code == 1000
    # Every hostile frame, and nothing else, got an error frame with its own seq.
    assert set(errors) == set(hostile_seqs)
    assert len(client.errors) == len(hostile_seqs), "one error frame per hostile frame"
    for seq, error in errors.items():
        expected = "unsupported-frame" if not hostile_seqs[seq].text else "invalid-message"
        assert error["code"] == expected, (hostile_seqs[seq], error)
        assert error["detail"] and "\n" not in error["detail"], error
    # The final ack covers every frame: the good ones persisted, the hostile ones settled.
    assert mixed.receipted == mixed.sent
    assert good_ids(stored) == Counter(good_seqs.values())
    assert mixed.duplicates == 0
    assert beside.receipted == beside.persisted == beside.sent == BESIDE
    assert beside.rejected == beside.duplicates == 0
    assert (await http_get(gateway.port, "/healthz"))[0] == 200


async def test_every_stored_payload_parses_under_a_strict_parser(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """What reaches the topic from a stream of near-miss frames is strict JSON, every byte."""
    # Valid frames that only look suspicious: an escaped colon, a paired surrogate, numbers
    # near a double's limit, nesting just inside the bound, orjson's own compact output.
    frames = [
        json.dumps(sample_message("triples", 1)),
        json.dumps(sample_message("triples", 2)).replace('"Alpha 2"', '"Alpha\\u003a 2"'),
        json.dumps(sample_message("triples", 3)).replace('"Alpha 3"', '"\\ud83d\\ude00 3"'),
        json.dumps(sample_message("triples", 4))[:-1] + ', "n": 1e308, "i": ' + "9" * 300 + "}",
        json.dumps(sample_message("triples", 5))[:-1] + ', "deep": ' + "[" * 250 + "]" * 250
        + "}",
        orjson.dumps(sample_message("triples", 6)).decode(),
    ]
    ledger = Ledger(sent=len(frames))
    with trio.fail_after(BOUND):
        async with open_import(ws_url(gateway, import_path(flow))) as client:
            for frame in frames:
                await client.send(frame)
    read = await persisted(pulsar_client, topic_of("triples", flow), len(frames))
    ledger.receipted, ledger.rejected, ledger.persisted = client.ack, len(client.errors), len(read)
    ledger.print("near misses")
    assert client.errors == []
    assert ledger.receipted == ledger.persisted == ledger.sent
    stored = await trio.to_thread.run_sync(read_topic_counted, pulsar_client,
                                           topic_of("triples", flow), len(frames))
    for payload in stored.payloads:
        orjson.loads(payload)  # raises on anything that is not strict JSON
