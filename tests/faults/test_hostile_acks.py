"""Hostile client acks on an ``ack=client`` export: refused, nothing acked wrongly (CONTRACT §4).

An export connection reads 200 messages and acks 120; then 2,000 Hypothesis-generated hostile
ack frames (not JSON, NaN, duplicate ``ack`` keys, lone surrogates, wrong types, acks that go
backwards or past the last seq, numbers past a double, deep nesting, frames over 1 KiB,
binary, invalid UTF-8) each get an ``invalid-ack`` error frame and change nothing; a last
valid ack takes it to 150, and the client closes. The next consumer of the subscription then
gets exactly the 50 unacked messages, each once, within the nack delay.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pulsar
import trio
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import ClientConnection, connect

from quiesce.supervisor import Supervisor
from tests.data import id_of, sample_messages
from tests.faults._faults import Ledger
from tests.faults._hostile import Frame, generate
from tests.harness import LONG, publish_messages, topic_of, ws_url

MESSAGES = 200
FIRST_ACK, LAST_ACK = 120, 150
HOSTILE_ACKS = 2000


def _ack(value: str) -> str:
    return '{"ack": ' + value + "}"


def _outside(n: int) -> bool:
    """Whether ``{"ack": n}`` is refused after ``FIRST_ACK``: backwards or past the last seq."""
    return n < FIRST_ACK or n > MESSAGES


HOSTILE_ACK = st.one_of(
    st.text(max_size=40).map(lambda t: "}" + t),                       # not JSON
    st.sampled_from(["", " ", "[]", "null", "130", '"ack"', "{}", '{"seq": 130}',
                     '{"Ack": 130}', "[130]"]),                        # not {"ack": N}
    st.integers().filter(_outside).map(lambda n: _ack(str(n))),       # backwards or beyond
    st.sampled_from(['"130"', "130.0", "1.3e2", "true", "null", "[130]", '{"n": 130}',
                     "123456789012345678901234567890"]).map(_ack),    # not an integer
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "9" * 400]).map(_ack),
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(            # a duplicate key
        lambda p: f'{{"ack": {p[0]}, "ack": {p[1]}}}'),
    st.integers(FIRST_ACK, MESSAGES).map(lambda n: f'{{"a\\u0063k": 1, "ack": {n}}}'),
    st.integers(0xD800, 0xDFFF).map(lambda c: f'{{"ack": 130, "\\u{c:04x}": 1}}'),
    st.integers(0xD800, 0xDFFF).map(lambda c: f'{{"\\u{c:04x}ack": 130}}'),
    st.integers(255, 400).map(lambda d: _ack("[" * d + "]" * d)),      # too deep
    st.integers(1025, 3000).map(lambda n: _ack("130") + " " * n),      # over 1 KiB
)


def hostile_acks() -> list[Frame]:
    """The hostile ack frames (derandomized), with binary and invalid UTF-8 ones among them."""
    frames = [Frame(text) for text in generate(HOSTILE_ACK, HOSTILE_ACKS - 200)]
    for i in range(100):
        frames.insert(i * 17, Frame(b"\xff" + _ack(str(130 + i % 20)).encode(), False, "bin"))
        frames.insert(i * 17 + 5, Frame(b'{"ack": 13\xc30}', True, "utf8"))
    return frames


class AckClient:
    """An ``ack=client`` export whose server frames a task collects."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: dict[int, str] = {}
        self.errors: list[dict[str, Any]] = []
        self.other: list[Any] = []
        self._changed = trio.Event()

    async def collect(self) -> None:
        """Read server frames until the connection closes."""
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if "seq" in frame:
                    self.messages[frame["seq"]] = id_of(frame["message"])
                elif "error" in frame:
                    self.errors.append(frame["error"])
                else:
                    self.other.append(frame)
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed:
            pass

    async def wait_until(self, predicate: Any) -> None:
        """Wait until ``predicate()`` holds."""
        while not predicate():
            await self._changed.wait()


async def test_hostile_acks_are_refused_and_the_next_consumer_gets_every_unacked_message(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """2,000 hostile acks get invalid-ack each; only seq 1..150 are acked; 151..200 come back."""
    messages = sample_messages("triples", MESSAGES)
    await publish_messages(pulsar_client, topic_of("triples", flow), messages)
    hostile = hostile_acks()
    base = f"/api/v1/flow/{flow}/export/triples?subscription=hostile"
    ledger = Ledger(sent=MESSAGES, persisted=MESSAGES)
    with trio.fail_after(LONG):
        async with connect(ws_url(gateway, f"{base}&position=earliest&ack=client"
                                           f"&window={MESSAGES}")) as ws:
            client = AckClient(ws)
            async with trio.open_nursery() as tasks:
                tasks.start_soon(client.collect)
                await client.wait_until(lambda: len(client.messages) == MESSAGES)
                await ws.send(_ack(str(FIRST_ACK)))
                for frame in hostile:
                    await ws.send(frame.payload, text=frame.text)
                await client.wait_until(lambda: len(client.errors) == len(hostile))
                await ws.send(_ack(str(LAST_ACK)))
                await ws.aclose()
    ledger.delivered, ledger.rejected = len(client.messages), len(client.errors)
    ledger.acked, ledger.nacked = LAST_ACK, MESSAGES - LAST_ACK
    assert sorted(client.messages) == list(range(1, MESSAGES + 1))
    assert ws.close_code == 1000, ws.close_code
    assert client.other == []
    assert {e["code"] for e in client.errors} == {"invalid-ack"}
    print("hostile ack details, most common:",
          Counter(e["detail"].split(":")[0][:30] for e in client.errors).most_common(8))

    # The next consumer: exactly the unacked messages, each once, within the nack delay.
    unacked = {client.messages[s] for s in range(LAST_ACK + 1, MESSAGES + 1)}
    again: Counter[str] = Counter()
    delay = gateway.settings.nack_redelivery_delay_ms / 1000
    started = time.perf_counter()
    arrived = 0.0
    with trio.fail_after(LONG):
        async with connect(ws_url(gateway, f"{base}&until=end")) as ws:
            async for raw in ws:
                frame = json.loads(raw)
                if frame == {"end": True}:
                    break
                again[id_of(frame)] += 1
                if set(again) >= unacked and not arrived:
                    arrived = time.perf_counter() - started
    ledger.duplicates = sum(again.values()) - len(again)
    ledger.print(f"ack=client export with {len(hostile)} hostile acks; unacked back in "
                 f"{arrived:.2f}s (nack delay {delay:g}s)")
    assert set(again) == unacked, "an acked message came back, or an unacked one did not"
    assert ledger.duplicates == 0
    assert arrived <= delay
