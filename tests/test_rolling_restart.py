"""A rolling restart of two gateway processes on one broker, under continuous load, loses nothing.

Two real ``python -m quiesce.supervisor serve`` processes (A and B, each on a fixed port) on
one real pulsar-lite broker. Load, all on one flow's triples topic:

* six importers (three with A as their home, three with B), each sending distinct frames with
  ``?receipts=true`` at a steady pace, with at most a window of unreceipted frames. Four of
  them close each connection after a few hundred frames and open a new one (home first), as
  batch clients do, and heed ``{"draining": …}``: they stop sending and close at once. Two
  (one per home) keep one connection as long as it lasts and ignore ``{"draining": …}``: they
  send on until the gateway, after its import grace, closes with 1001. A connection that ends
  either way settles by its last ``{"ack": N}``: what it did not cover is sent again on the
  next connection (the resends; a resent frame that had been stored after all is an import
  duplicate). A refused handshake (HTTP 503 while a gateway drains, or nothing listening
  while it restarts) sends the importer to the other gateway.
* three exporters on one named subscription (``subscription=…&ack=client&position=earliest``,
  Pulsar Shared), each acking cumulatively what it received, at most every 0.1 s, with a
  window of 20: together about as fast as the importers, so at each drain messages wait in
  flight and in the gateway's queue. (A gateway changed to ack the queued ones at its drain
  instead of nacking them fails this test: 551 messages acked in Pulsar that nobody
  received.) A close with 1001 (the gateway drains) sends it to the other gateway; what it
  was sent and had not acked comes again to some exporter (the export duplicates).

Then: SIGTERM A, wait for its exit (code 0), start A again on its port, and wait until the
restarted A has receipted import frames and the exporters deliver through B; the same for B;
stop the importers, read the topic, wait until the exporters have every stored message,
close them (1000, everything acked), and dump what the subscription still holds. The ledger
(sent / receipted / persisted / delivered unique and total / acked / duplicates of import and
export) is printed and asserted: receipted ⊆ persisted ⊆ delivered, acked ⊆ delivered, no
message gone from the subscription that no exporter received, every frame sent receipted in
the end, every gateway exited 0 and forced nothing, every close 1000 or 1001.

Duplicates are counted, not forbidden. Import: none so far (a resend is stored twice only
when a connection is lost without its final ack, and a drain always sends one). Export: 4 to
19 in the runs so far, every one of a message an exporter had acked already. The gateway's
producer batches (``producer_batching``), a batched entry goes to one consumer whole, and a
drain nacks the messages of it still queued or unacked; without batch-index acks the broker
then redelivers the whole entry, acked messages included. With batching off, two runs had
none. Apache Pulsar does the same unless batch-index acknowledgement is on (broker
``acknowledgmentAtBatchIndexLevelEnabled``, consumer ``batch_index_ack_enabled``).

**pulsar-lite and Shared subscriptions across connections (DESIGN.md), and how this test
handles it.** Measured on pulsar-lite 0.2.0 with pulsar-client 3.13: the broker keys a
subscription's consumers by the consumer id the *client* chose, and pulsar-client numbers the
consumers of each connection 0, 1, 2… A consumer from a second connection whose id is already
held on the subscription is refused ("Consumer N already exists" in the broker log) and the
broker drops that *whole connection*: pulsar-client reconnects, the subscribe hangs until the
30 s operation timeout, and everything else on that connection (the other gateway's
producers and consumers) is cut off meanwhile. Consumers whose ids differ share the
subscription fine. Two gateways are two connections whose ids follow the same sequence, so
exporters spread over both collide at random: in one run with the exporters spread, the
broker logged 16 such refusals, an export hung in its subscribe until the drain deadline
forced it (1011), and the redeliveries after the dropped connections added thousands of
duplicate deliveries. So this test keeps every consumer of the subscription on *one gateway
at a time*: the exporters start on A, and an exporter closed with 1001 moves to the other
gateway only once the gateway it left has exited (here the test sees the process exit; a
deployment's client would wait until the old gateway stops answering, or retry). By then the
broker has dropped that connection and its consumers. (Moving at once, without that wait,
passed 4 runs of 4, since a draining gateway closes its consumers right after their sockets,
but nothing orders the two.) The subscription keeps its messages while no exporter is
connected, so nothing is lost, only delayed by the drain. With Apache Pulsar, consumers
belong to their connection: exporters can reconnect at once and be spread over both gateways
all the time.
"""

from __future__ import annotations

import json
import math
import signal
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.trio.client import connect

from tests.data import doc_id, id_of, sample_message
from tests.harness import (
    Broker,
    ExportStream,
    GatewayProcess,
    ImportClient,
    free_port,
    import_path,
    open_gateway_process,
    open_import,
    persisted,
    topic_of,
    ws_url,
)

pytestmark = pytest.mark.slow

# The load.
HOMES = ("A", "B")
IMPORTERS_PER_GATEWAY = 3
EXPORTERS = 3
RATE = 100.0                # frames per second per importer
BURST = 10                  # frames sent together, every BURST / RATE seconds
WINDOW = 200                # unreceipted frames an importer allows itself
PER_CONNECTION = 300        # frames an importer sends on one connection before closing it
EXPORT_WINDOW = 20          # frames an exporter lets the gateway send ahead of its acks
ACK_PERIOD = 0.1            # an exporter acks at most this often (its processing time)
SUBSCRIPTION = "rolling"
# How much must have happened before (and after) each restart: frames receipted by the
# restarted gateway, messages delivered through the gateway the exporters moved to.
WARM = 500
# The gateways: a drain bound well above what it needs, an import grace shorter than the
# default (5 s), so the importers that ignore {"draining"} keep the drain open a while only.
GRACE = 2.0
GATEWAY_ENV = {"QUIESCE_SHUTDOWN_TIMEOUT": "20", "QUIESCE_IMPORT_DRAIN_GRACE": str(GRACE)}
# Bounds (generous: they only matter when something is wrong).
STEP = 30.0                 # one step: a warm-up, a drain and exit, a restart, a catch-up
EXIT_BOUND = 25.0           # a SIGTERMed gateway exiting (its drain bound + closing)
WHOLE = 150.0               # the whole test
BACKOFF = 0.05              # a client's pause before trying the gateways again


# ---------------------------------------------------------------- gateways


@dataclass(eq=False)
class Run:
    """One gateway process: a slot's process between a start and its exit.

    Attributes:
        slot: ``A`` or ``B``.
        process: the process.
        gone: set once the process has exited (the test saw its exit code).
        receipted: import frames receipted on connections to this process.
        delivered: export messages delivered on connections to this process.
    """

    slot: str
    process: GatewayProcess
    gone: trio.Event = field(default_factory=trio.Event)
    receipted: int = 0
    delivered: int = 0


class Pulse:
    """Wakes whoever waits on a condition over the whole load when any client made progress."""

    def __init__(self) -> None:
        self._changed = trio.Event()

    def poke(self) -> None:
        """Something changed: wake the waiters."""
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (bound it with ``trio.fail_after``)."""
        while not predicate():
            await self._changed.wait()


class Gateways:
    """The two gateway slots: each a fixed port and its current `Run`; started, SIGTERMed and
    started again by the test, killed at the end if still running."""

    def __init__(self, broker: Broker, data: Path, stack: AsyncExitStack) -> None:
        self.broker = broker
        self.data = data
        self.stack = stack
        self.ports = {slot: free_port() for slot in HOMES}
        self.current: dict[str, Run] = {}
        self.runs: list[Run] = []
        self.exit_codes: list[tuple[str, int | None]] = []

    async def start(self, slot: str) -> Run:
        """Start ``slot``'s gateway on its port; return its run once it logged ``ready``."""
        process = await self.stack.enter_async_context(open_gateway_process(
            "--port", str(self.ports[slot]), pulsar_url=self.broker.url,
            data_dir=self.data / slot, env=GATEWAY_ENV))
        run = self.current[slot] = Run(slot, process)
        self.runs.append(run)
        return run

    async def stop(self, slot: str) -> int | None:
        """SIGTERM ``slot``'s gateway and wait for its exit; return the exit code."""
        run = self.current[slot]
        run.process.signal(signal.SIGTERM)
        code = await run.process.wait_exit_async(EXIT_BOUND)
        self.exit_codes.append((slot, code))
        run.gone.set()
        return code

    def other(self, slot: str) -> str:
        """The other slot."""
        return HOMES[1 - HOMES.index(slot)]


# ---------------------------------------------------------------- importers


class Importer:
    """A receipts client that sends distinct frames until told to stop, resending after any
    connection whatever its last ack did not cover.

    Attributes:
        index: its number (frame ids are made from it).
        home: the gateway it tries first on every connection.
        heeds_draining: it stops sending and closes at ``{"draining": …}``, and closes each
            connection after ``PER_CONNECTION`` frames; otherwise it sends on one connection
            until the gateway closes it.
        sent: distinct frames sent at least once (frames 0 … sent-1).
        sends: frames sent, resends included.
        receipted: ids of the frames some ack covered.
        connections: connections per slot.
        closes: the close code of every connection (None: no close frame).
    """

    def __init__(self, index: int, home: str, heeds_draining: bool, gateways: Gateways,
                 flow: str, pulse: Pulse) -> None:
        self.index = index
        self.home = home
        self.heeds_draining = heeds_draining
        self.gateways = gateways
        self.path = import_path(flow)
        self.pulse = pulse
        self.sent = 0
        self.sends = 0
        self.receipted: set[str] = set()
        self.connections: Counter[str] = Counter()
        self.closes: list[int | None] = []
        self._again: deque[int] = deque()  # frames to send again, before any new one

    async def run(self, stop: trio.Event) -> None:
        """Connect (home first, then the other) and send until the connection ends; again,
        until ``stop`` and nothing is left to send again."""
        while not stop.is_set() or self._again:
            for slot in (self.home, self.gateways.other(self.home)):
                run = self.gateways.current[slot]
                on_connection: list[int] = []
                client: ImportClient | None = None
                try:
                    async with open_import(ws_url(run.process, self.path)) as client:
                        self.connections[slot] += 1
                        await self._send(run, client, on_connection, stop)
                except (OSError, InvalidHandshake):
                    if client is None:
                        continue  # refused (503 while draining) or nothing listening: next
                assert client is not None
                self._settle(run, client, on_connection)
                break
            else:
                await trio.sleep(BACKOFF)  # both refused for a moment: a client's backoff

    def _next(self, stop: trio.Event) -> int | None:
        """The next frame to send: one to send again, else a new one unless stopping."""
        if self._again:
            return self._again.popleft()
        if stop.is_set():
            return None
        self.sent += 1
        return self.sent - 1

    async def _send(self, run: Run, client: ImportClient, on_connection: list[int],
                    stop: trio.Event) -> None:
        credited = 0

        def ended() -> bool:
            return client.done.is_set() or (self.heeds_draining and client.draining.is_set())

        try:
            per_connection = PER_CONNECTION if self.heeds_draining else math.inf
            while not ended() and len(on_connection) < per_connection:
                for _ in range(BURST):
                    n = self._next(stop)
                    if n is None:
                        return
                    on_connection.append(n)
                    self.sends += 1
                    await client.send(json.dumps(sample_message("triples", self.number(n))))
                await client.wait_until(
                    lambda: ended() or len(on_connection) - client.ack < WINDOW)
                await trio.sleep(BURST / RATE)  # pacing the load, not synchronisation
                run.receipted += client.ack - credited
                credited = client.ack
                self.pulse.poke()
        except ConnectionClosed:
            pass  # the connection ended under a send: settled by its last ack
        finally:
            run.receipted -= credited  # _settle credits the whole connection

    def number(self, n: int) -> int:
        """The `sample_message` number of its frame ``n`` (distinct across importers)."""
        return self.index * 1_000_000 + n

    def _settle(self, run: Run, client: ImportClient, on_connection: list[int]) -> None:
        """After the connection: what its last ack covered is receipted; the rest goes again."""
        covered = client.ack
        assert not client.violations, client.violations
        assert not client.errors, client.errors
        self.receipted.update(doc_id(self.number(n)) for n in on_connection[:covered])
        run.receipted += covered
        self._again.extendleft(reversed(on_connection[covered:]))
        received = client.closed.rcvd if client.closed is not None else None
        self.closes.append(received.code if received is not None else None)
        self.pulse.poke()


# ---------------------------------------------------------------- exporters


class Exporter:
    """An ``ack=client`` consumer of the shared subscription, acking what it received.

    It connects to one gateway; closed with 1001 it waits until that gateway has exited (the
    pulsar-lite quirk in the module docstring), then connects to the other one.

    Attributes:
        delivered: every message received, by id (a count above 1 is a duplicate delivery).
        acked: ids of the messages its acks covered.
        acked_anywhere: ids any exporter's acks covered (shared by all of them).
        again_after_ack: deliveries of a message some exporter had acked already.
        connections: connections per slot.
        closes: the close code of every connection (None: no close frame).
        others: frames other than messages (error frames would land here).
    """

    def __init__(self, gateways: Gateways, flow: str, pulse: Pulse,
                 acked_anywhere: set[str]) -> None:
        self.gateways = gateways
        self.path = (f"/api/v1/flow/{flow}/export/triples?subscription={SUBSCRIPTION}"
                     f"&ack=client&position=earliest&window={EXPORT_WINDOW}")
        self.pulse = pulse
        self.delivered: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.acked_anywhere = acked_anywhere
        self.again_after_ack = 0
        self.connections: Counter[str] = Counter()
        self.closes: list[int | None] = []
        self.others: list[dict[str, Any]] = []
        self._seen = 0  # frames of the current connection counted as delivered
        self._acked_here = 0  # frames of the current connection acked

    async def run(self, slot: str, stop: trio.Event) -> None:
        """Consume through ``slot``'s gateway, moving at each drain, until ``stop``."""
        while True:
            run = self.gateways.current[slot]
            try:
                code = await self._session(run, stop)
            except (OSError, InvalidHandshake):
                await trio.sleep(BACKOFF)  # refused: not up (yet). A client's backoff
                continue
            if stop.is_set():
                return
            if code == 1001:
                await run.gone.wait()  # pulsar-lite: leave only a gateway that has exited
                slot = self.gateways.other(slot)

    async def _session(self, run: Run, stop: trio.Event) -> int | None:
        self._seen = self._acked_here = 0
        async with connect(ws_url(run.process, self.path), close_timeout=STEP) as ws:
            self.connections[run.slot] += 1
            stream = ExportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.collect)
                nursery.start_soon(self._close_at, stop, stream)
                await self._ack(run, stream)
                nursery.cancel_scope.cancel()
        self.others.extend(stream.others)
        received = stream.closed.rcvd if stream.closed is not None else None
        self.closes.append(received.code if received is not None else None)
        return self.closes[-1]

    async def _ack(self, run: Run, stream: ExportStream) -> None:
        """Count and ack (cumulatively) whatever has arrived, until the connection ends."""
        while True:
            await stream.wait_news(self._seen)
            frames = stream.frames
            for _, mid in frames[self._seen:]:
                self.delivered[mid] += 1
                self.again_after_ack += mid in self.acked_anywhere
            run.delivered += len(frames) - self._seen
            self._seen = len(frames)
            if stream.done.is_set():
                return  # what was not acked is nacked by the gateway: it comes again
            try:
                await stream.ack(frames[-1][0])
            except ConnectionClosed:
                continue
            newly = [mid for _, mid in frames[self._acked_here:self._seen]]
            self.acked.update(newly)
            self.acked_anywhere.update(newly)
            self._acked_here = self._seen
            self.pulse.poke()
            # Processing time, shaping the load: with the small window, frames wait unacked
            # and in the gateway's queue at every drain (to be nacked there, not lost).
            await trio.sleep(ACK_PERIOD)

    async def _close_at(self, stop: trio.Event, stream: ExportStream) -> None:
        """At ``stop``, once everything received is acked, close normally (1000)."""
        await stop.wait()
        await self.pulse.until(
            lambda: stream.done.is_set() or self._acked_here == len(stream.frames))
        await stream.ws.aclose()


async def residue(gateway: Run, flow: str) -> list[str]:
    """What the subscription still holds: an until=end dump of it, acked as it comes."""
    path = (f"/api/v1/flow/{flow}/export/triples?subscription={SUBSCRIPTION}"
            f"&ack=client&until=end")
    async with connect(ws_url(gateway.process, path), close_timeout=STEP) as ws:
        stream = ExportStream(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.collect)
            acked = 0
            while not stream.done.is_set():
                await stream.wait_news(acked)
                if len(stream.frames) > acked:
                    acked = len(stream.frames)
                    await stream.ack(stream.frames[-1][0])
    assert stream.others == [{"end": True}], stream.others
    return [mid for _, mid in stream.frames]


# ---------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What the load sent and what became of it (see the module docstring).

    Attributes:
        sent: distinct frames the importers sent.
        resent: sends of a frame beyond its first.
        receipted: distinct frames an import ack covered.
        persisted: messages stored in the topic (a resent frame may be stored twice).
        persisted_unique: distinct frames stored.
        delivered_unique: distinct messages the exporters received.
        delivered_total: messages the exporters received, redeliveries included.
        acked: distinct messages the exporters acked.
        duplicates_import: stored copies beyond the first (persisted - persisted_unique).
        duplicates_export: deliveries beyond the first (delivered_total - delivered_unique).
        duplicates_export_acked: those of a message an exporter had acked already (a batched
            entry is redelivered whole while any message of it is unacked: see below).
        lost: receipted frames not stored (must be 0).
        undelivered: stored messages no exporter received (must be 0).
        acked_undelivered: stored messages acked on the subscription without any exporter
            having received them: neither delivered nor left in it at the end (must be 0).
        residue: messages left on the subscription after the exporters closed (redelivered).
    """

    sent: int = 0
    resent: int = 0
    receipted: int = 0
    persisted: int = 0
    persisted_unique: int = 0
    delivered_unique: int = 0
    delivered_total: int = 0
    acked: int = 0
    duplicates_import: int = 0
    duplicates_export: int = 0
    duplicates_export_acked: int = 0
    lost: int = 0
    undelivered: int = 0
    acked_undelivered: int = 0
    residue: int = 0

    def line(self) -> str:
        """``sent=… receipted=… …``: one line for the test's output."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


# ---------------------------------------------------------------- the test


@asynccontextmanager
async def gateway_pair(broker: Broker, data: Path) -> AsyncIterator[Gateways]:
    """Gateways A and B started; every process still running at the end is killed."""
    async with AsyncExitStack() as stack:
        gateways = Gateways(broker, data, stack)
        for slot in HOMES:
            await gateways.start(slot)
        yield gateways


async def roll(gateways: Gateways, slot: str, pulse: Pulse) -> str:
    """SIGTERM ``slot``'s gateway, check it exits 0, start it again, and wait until the load
    runs through it again (and the exporters deliver through the other one); a summary."""
    runs, other = gateways.runs, gateways.other(slot)
    before = sum(r.receipted for r in runs)
    signalled = trio.current_time()
    code = await gateways.stop(slot)
    assert code == 0, f"{slot} exited {code}:\n{gateways.current[slot].process.log()}"
    exited = trio.current_time()
    during = sum(r.receipted for r in runs) - before
    restarted = await gateways.start(slot)
    ready = trio.current_time()
    holder = gateways.current[other]  # where the exporters are now
    await pulse.until(lambda: restarted.receipted >= WARM and holder.delivered >= WARM)
    return (f"{slot}: exit 0 {exited - signalled:.1f}s after SIGTERM, ready again "
            f"{ready - exited:.1f}s later; {during} frames receipted meanwhile (mostly by "
            f"{other})")


async def test_a_rolling_restart_under_load_loses_nothing_and_counts_duplicates(
    own_broker: Broker, flow: str, tmp_path: Path
) -> None:
    """SIGTERM and restart A, then B, under continuous import and shared-export load."""
    pulse = Pulse()
    stop_imports, stop_exports = trio.Event(), trio.Event()
    phases: list[str] = []
    client = own_broker.client()
    try:
        with trio.fail_after(WHOLE):
            async with gateway_pair(own_broker, tmp_path) as gateways:
                importers = [Importer(i, HOMES[i % 2], i >= len(HOMES), gateways, flow, pulse)
                             for i in range(IMPORTERS_PER_GATEWAY * len(HOMES))]
                acked_anywhere: set[str] = set()
                exporters = [Exporter(gateways, flow, pulse, acked_anywhere)
                             for _ in range(EXPORTERS)]
                async with trio.open_nursery() as exports:
                    for exporter in exporters:
                        exports.start_soon(exporter.run, "A", stop_exports)  # A holds it
                    async with trio.open_nursery() as imports:
                        for importer in importers:
                            imports.start_soon(importer.run, stop_imports)
                        with trio.fail_after(STEP):
                            await pulse.until(lambda: all(
                                r.receipted >= WARM for r in gateways.runs)
                                and gateways.current["A"].delivered >= WARM)
                        for slot in HOMES:
                            with trio.fail_after(STEP):
                                phases.append(await roll(gateways, slot, pulse))
                        stop_imports.set()
                    receipts = set().union(*(i.receipted for i in importers))
                    stored = Counter(id_of(m) for m in await persisted(
                        client, topic_of("triples", flow), len(receipts)))
                    # Not fail_after: a message that never comes shows in the ledger below.
                    with trio.move_on_after(STEP):
                        await pulse.until(lambda: set(stored) <= set().union(
                            *(e.delivered for e in exporters)))
                    stop_exports.set()
                with trio.fail_after(STEP):
                    left = await residue(gateways.current["A"], flow)
                for slot in HOMES:
                    await gateways.stop(slot)
    finally:
        client.close()

    deliveries: Counter[str] = Counter()
    for exporter in exporters:
        deliveries.update(exporter.delivered)
    acked = set().union(*(e.acked for e in exporters))
    sent = {doc_id(i.number(n)) for i in importers for n in range(i.sent)}
    ledger = Ledger(
        sent=len(sent), resent=sum(i.sends - i.sent for i in importers),
        receipted=len(receipts), persisted=sum(stored.values()), persisted_unique=len(stored),
        delivered_unique=len(deliveries), delivered_total=sum(deliveries.values()),
        acked=len(acked), duplicates_import=sum(stored.values()) - len(stored),
        duplicates_export=sum(deliveries.values()) - len(deliveries),
        duplicates_export_acked=sum(e.again_after_ack for e in exporters),
        lost=len(receipts - set(stored)), undelivered=len(set(stored) - set(deliveries)),
        acked_undelivered=len(set(stored) - set(deliveries) - set(left)), residue=len(left),
    )
    print(f"\n[ledger] rolling restart: {ledger.line()}")
    print("[phases] " + "; ".join(phases))
    print("[runs] " + "; ".join(f"{r.slot}: receipted {r.receipted} delivered {r.delivered}"
                                for r in gateways.runs))
    print("[exits] " + ", ".join(f"{slot}={code}" for slot, code in gateways.exit_codes))
    print("[importers] " + "; ".join(
        f"{i.index}@{i.home} conns {dict(i.connections)} closes {dict(Counter(i.closes))}"
        for i in importers))
    print("[exporters] " + "; ".join(
        f"conns {dict(e.connections)} closes {dict(Counter(e.closes))}" for e in exporters))

    assert [code for _, code in gateways.exit_codes] == [0] * 4, gateways.exit_codes
    assert ledger.lost == 0, "receipted frames missing from the topic"
    assert ledger.receipted == ledger.sent, "every frame sent is receipted in the end"
    assert set(stored) <= sent, "the topic holds frames nobody sent"
    assert ledger.acked_undelivered == 0, "messages acked in Pulsar that nobody received"
    assert ledger.undelivered == 0, "stored messages no exporter received"
    assert set(deliveries) <= set(stored), "delivered messages the topic does not hold"
    assert acked <= set(deliveries), "exporters acked messages they never received"
    assert set(left) <= set(deliveries), "the subscription held messages never delivered"
    for run in gateways.runs:
        assert not run.process.find(r"forcing \d+ connections"), run.process.log()
    for exporter in exporters:
        assert exporter.others == [], exporter.others
        assert set(exporter.connections) == set(HOMES), "each exporter moved at each restart"
        assert set(exporter.closes) <= {1000, 1001}, exporter.closes
    for importer in importers:
        assert set(importer.closes) <= {1000, 1001}, importer.closes
        if not importer.heeds_draining:
            assert 1001 in importer.closes, "a drain closed it after the grace"
