"""The broker goes away under load: killed (SIGKILL, then restarted) or frozen (SIGSTOP, then
SIGCONT). Nothing receipted is lost, nothing is acked undelivered, nothing is stranded, and a
client that closes during the outage gets a close code (CONTRACT §4), never 1006.

Everything is real: a pulsar-lite of the test's own, a gateway process on it, WebSocket
clients over loopback. The load: ``IMPORTERS`` import clients with receipts send frames
continuously (each keeps at most ``WINDOW`` frames unreceipted, as a client that reads its
receipts does), and an ``ack=client`` export acks every message it gets. Then the broker goes:

- every importer fills its window (the gateway waits for the broker, with
  ``publisher_max_queue_size`` frames in flight and the rest read ahead);
- ``CLOSERS`` of them close their sockets in the middle of the outage: each must get the
  server's close frame — 1011, the drain being cut by ``publisher_drain_timeout`` — within
  ``CLOSE_BOUND`` (before the fix, the gateway stopped reading a socket whose frames waited
  for the broker, never saw the close, and the client gave up with 1006);
- the broker comes back; every client (those that closed reconnect) resends what was not
  receipted, on a new connection, until every frame is receipted; the export reconnects if
  it was closed and reads until it has had every stored message.

Each run prints its ledger: sent (distinct frames), receipted, persisted (distinct), delivered
and acked (distinct, export), nacked (deliveries past one per stored copy: a message that
came again after a nack or a lost ack), duplicates (stored copies of a frame stored already,
from resends of frames persisted but never receipted).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.trio.client import ClientConnection, connect

from tests.data import doc_id, id_of, sample_message
from tests.faults._faults import Ledger
from tests.harness import (
    LONG,
    Broker,
    GatewayProcess,
    ImportClient,
    import_path,
    open_gateway_process,
    read_topic_counted,
    topic_of,
    ws_url,
)

IMPORTERS = 4
CLOSERS = 2  # importers that close their socket during the outage
WINDOW = 200  # frames an importer leaves unreceipted at most (about 1.2 KB each)
IN_FLIGHT = 50  # publisher_max_queue_size: the rest of a window waits, read ahead
DRAIN = 3.0  # publisher_drain_timeout
GRACE = 2.0  # socket_grace_period
# A close during the outage is answered once the drain gives up: within the drain and the
# close handshake, plus slack for a loaded machine. The client's close_timeout is this too:
# past it the client gives up and the close is 1006.
CLOSE_BOUND = DRAIN + GRACE + 3.0
BEFORE = 300  # frames receipted (over all importers) before the broker goes
AFTER = 300  # frames receipted after it is back, before the importers stop
PER_CLIENT = 100_000  # id space of one importer
SETTINGS = {
    "QUIESCE_PUBLISHER_MAX_QUEUE_SIZE": str(IN_FLIGHT),
    "QUIESCE_PUBLISHER_DRAIN_TIMEOUT": str(DRAIN),
    "QUIESCE_SOCKET_GRACE_PERIOD": str(GRACE),
    "QUIESCE_BROKER_PROBE_INTERVAL": "0.5",
}


def frame_of(n: int) -> str:
    """Frame number ``n`` (ids never repeat between importers)."""
    return json.dumps(sample_message("triples", n))


def close_code(exc: ConnectionClosed | None) -> int:
    """The close code the server sent, or 1006 when no close frame came."""
    if exc is None or exc.rcvd is None:
        return 1006
    return exc.rcvd.code


@dataclass
class Importer:
    """One importing client across its connections: what it sent, what was receipted.

    Attributes:
        next: its next new frame number (its frames are numbered from its first on).
        pending: frame numbers to send again (not receipted on an earlier connection).
        sent: distinct frame numbers sent at least once.
        receipted: frame numbers the server receipted (an ack covered them, no error frame).
        close_codes: the close code of each connection it closed during the outage.
        close_seconds: for each, how long the server took to answer its close.
        window_full: set whenever it finds WINDOW frames unreceipted (replaced by the test).
        waiting: it is waiting for room in its window now.
    """

    next: int
    pending: list[int] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)
    receipted: set[int] = field(default_factory=set)
    close_codes: list[int] = field(default_factory=list)
    close_seconds: list[float] = field(default_factory=list)
    window_full: trio.Event = field(default_factory=trio.Event)
    waiting: bool = False


class Load:
    """The importers and the export, and what they saw."""

    def __init__(self, gateway: GatewayProcess, flow: str) -> None:
        self.gateway = gateway
        self.flow = flow
        self.importers = [Importer(i * PER_CLIENT) for i in range(IMPORTERS)]
        self.stop_fresh = trio.Event()  # importers stop sending new frames
        self.progress = trio.Event()  # something was receipted (replaced on each wait)
        self.delivered: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.export_changed = trio.Event()
        self.export_scope = trio.CancelScope()
        self.export_closes: list[int] = []

    def receipted(self) -> int:
        """Frames receipted so far, over all importers."""
        return sum(len(i.receipted) for i in self.importers)

    async def wait_receipted(self, n: int) -> None:
        """Wait until ``n`` frames are receipted."""
        while self.receipted() < n:
            self.progress = trio.Event()
            await self.progress.wait()

    # ----------------------------------------------------------------- imports

    async def run_importer(self, imp: Importer, closing: trio.Event | None,
                           closed: trio.Event, back: trio.Event) -> None:
        """Connections until the importers stop and all it sent is receipted.

        With ``closing``: its first connection closes when that is set (in the outage), and
        it connects again once the broker is ``back``.
        """
        if closing is not None:
            await self.session(imp, closing)
            closed.set()
            await back.wait()
        while not (self.stop_fresh.is_set() and not imp.pending and imp.receipted == imp.sent):
            if not await self.session(imp, None):
                await trio.sleep(0.2)  # a reconnection's back-off, not a synchronisation

    async def session(self, imp: Importer, closing: trio.Event | None) -> bool:
        """One import connection: send until told to stop, close, settle the ledger.

        Frames it sent and did not get receipted go back to ``pending``. Returns False if
        the connection could not be opened.
        """
        url = ws_url(self.gateway, import_path(self.flow))
        on_this: list[int] = []  # frame numbers, by seq - 1
        try:
            async with connect(url, close_timeout=CLOSE_BOUND) as ws:
                client = ImportClient(ws)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.collect)
                    nursery.start_soon(self._note_receipts, imp, client, on_this)
                    await self._send(imp, client, on_this, closing)
                    started = trio.current_time()
                    await ws.aclose()
                    await client.wait_closed()
                    seconds = trio.current_time() - started
                    nursery.cancel_scope.cancel()
        except (OSError, InvalidHandshake):
            imp.pending = on_this + imp.pending
            return False
        assert not client.violations, client.violations
        if closing is not None:
            imp.close_codes.append(close_code(client.closed))
            imp.close_seconds.append(seconds)
        failed = {e["seq"] for e in client.errors if "seq" in e}
        for seq, n in enumerate(on_this, start=1):
            if seq <= client.ack and seq not in failed:
                imp.receipted.add(n)
        imp.pending = [n for n in on_this if n not in imp.receipted] + imp.pending
        self.progress.set()
        return True

    async def _note_receipts(self, imp: Importer, client: ImportClient,
                             on_this: list[int]) -> None:
        noted = 0
        try:
            while True:
                await client.wait_until(lambda seen=noted: client.ack > seen)
                failed = {e["seq"] for e in client.errors if "seq" in e}  # sent before acks
                for seq in range(noted + 1, client.ack + 1):
                    if seq not in failed:
                        imp.receipted.add(on_this[seq - 1])
                noted = client.ack
                self.progress.set()
        except AssertionError:
            return  # the connection ended: session() settles the rest

    async def _send(self, imp: Importer, client: ImportClient, on_this: list[int],
                    closing: trio.Event | None) -> None:
        while not client.done.is_set():
            if closing is not None and closing.is_set():
                return
            if client.sent - client.ack >= WINDOW:
                imp.window_full.set()
                imp.waiting = True
                try:
                    await self._room(client, closing)
                finally:
                    imp.waiting = False
                continue
            if imp.pending:
                n = imp.pending.pop(0)
            elif self.stop_fresh.is_set():
                return
            else:
                n = imp.next
                imp.next += 1
            on_this.append(n)
            imp.sent.add(n)
            try:
                await client.send(frame_of(n))
            except ConnectionClosed:
                return

    async def _room(self, client: ImportClient, closing: trio.Event | None) -> None:
        """Wait for room in the window, the end of the connection, or a reason to close."""
        async with trio.open_nursery() as nursery:
            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            async def room() -> None:
                try:
                    await client.wait_until(lambda: client.sent - client.ack < WINDOW)
                except AssertionError:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(room)
            nursery.start_soon(until, self.stop_fresh)
            if closing is not None:
                nursery.start_soon(until, closing)

    # ------------------------------------------------------------------ export

    async def run_export(self) -> None:
        """An ack=client export that acks all it gets, connecting again when closed; runs
        until ``export_scope`` is cancelled."""
        path = (f"/api/v1/flow/{self.flow}/export/triples"
                "?subscription=audit&position=earliest&ack=client")
        with self.export_scope:
            while True:
                try:
                    async with connect(ws_url(self.gateway, path)) as ws:
                        await self._export_session(ws)
                except ConnectionClosed as exc:
                    self.export_closes.append(close_code(exc))
                except (OSError, InvalidHandshake):
                    pass
                await trio.sleep(0.2)  # a reconnection's back-off, not a synchronisation

    async def _export_session(self, ws: ClientConnection) -> None:
        while True:
            frame = json.loads(await ws.recv())
            if "message" not in frame:
                continue
            key = id_of(frame["message"])
            self.delivered[key] += 1
            await ws.send(json.dumps({"ack": frame["seq"]}))
            self.acked.add(key)
            self.export_changed.set()


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_a_broker_outage_under_load_loses_nothing_and_closes_with_a_code(
    own_broker: Broker, tmp_path: Path, outage: str
) -> None:
    """SIGKILL+restart or SIGSTOP+SIGCONT under load: see the module docstring."""
    flow = f"outage{outage}"
    async with open_gateway_process(pulsar_url=own_broker.url, data_dir=tmp_path / "gw",
                                    env=SETTINGS) as gateway:
        load = Load(gateway, flow)
        closing = [trio.Event() for _ in range(CLOSERS)]
        closed = [trio.Event() for _ in range(CLOSERS)]
        back = trio.Event()
        async with trio.open_nursery() as outer:
            outer.start_soon(load.run_export)
            async with trio.open_nursery() as importers:
                for i, imp in enumerate(load.importers):
                    importers.start_soon(load.run_importer, imp,
                                         closing[i] if i < CLOSERS else None,
                                         closed[i] if i < CLOSERS else trio.Event(), back)
                with trio.fail_after(LONG):
                    await load.wait_receipted(BEFORE)
                # The outage: every importer fills its window, then the closers close.
                if outage == "killed":
                    own_broker.kill()
                else:
                    own_broker.freeze()
                with trio.move_on_after(LONG):
                    for imp in load.importers:
                        while not imp.waiting:  # (it may be waiting already)
                            imp.window_full = trio.Event()
                            await imp.window_full.wait()
                free = [f"importer {i}: {imp.next - i * PER_CLIENT} sent, "
                        f"{len(imp.receipted)} receipted, {len(imp.pending)} pending"
                        for i, imp in enumerate(load.importers) if not imp.waiting]
                assert not free, f"{free}; gateway log:\n{gateway.log(30)}"
                for event in closing:
                    event.set()
                with trio.fail_after(CLOSE_BOUND + LONG):
                    for event in closed:
                        await event.wait()
                # Every closer had its answer (or gave up): the broker comes back.
                if outage == "killed":
                    await trio.to_thread.run_sync(own_broker.restart)
                else:
                    own_broker.thaw()
                back.set()
                with trio.fail_after(LONG * 2):
                    await load.wait_receipted(load.receipted() + AFTER)
                load.stop_fresh.set()
                # The importers' nursery ends once all they sent is receipted.
                with trio.fail_after(LONG * 2):
                    await _all_receipted(load)
            reader = own_broker.client()
            try:
                stored = await trio.to_thread.run_sync(
                    read_topic_counted, reader, topic_of("triples", flow),
                    sum(len(i.sent) for i in load.importers))
            finally:
                reader.close()
            stored_ids = [id_of(m) for m in stored.messages()]
            with trio.fail_after(LONG):
                while not set(stored_ids) <= set(load.delivered):
                    load.export_changed = trio.Event()
                    await load.export_changed.wait()
            load.export_scope.cancel()

    sent = {doc_id(n) for imp in load.importers for n in imp.sent}
    receipted = {doc_id(n) for imp in load.importers for n in imp.receipted}
    distinct = set(stored_ids)
    ledger = Ledger(
        sent=len(sent), receipted=len(receipted), persisted=len(distinct),
        delivered=len(set(load.delivered)), acked=len(load.acked),
        # Deliveries past one per stored copy: messages that came again after a nack (or
        # an ack the outage lost).
        nacked=max(0, sum(load.delivered.values()) - len(stored_ids)),
        duplicates=len(stored_ids) - len(distinct),
    )
    codes = [c for imp in load.importers[:CLOSERS] for c in imp.close_codes]
    seconds = [round(s, 2) for imp in load.importers[:CLOSERS] for s in imp.close_seconds]
    ledger.print(f"broker {outage} under load")
    print(f"closes during the outage: codes {codes}, answered in {seconds} s "
          f"(bound {CLOSE_BOUND:g} s); export connections closed with {load.export_closes}")
    tracebacks = gateway.find(r"Traceback|keepalive ping failed")
    assert not tracebacks, "\n".join(tracebacks)
    # A close during the outage gets the server's close frame (a code), within the bound.
    assert len(codes) == CLOSERS and all(c != 1006 for c in codes), codes
    assert all(s <= CLOSE_BOUND for s in seconds), seconds
    # Zero receipted loss; and every frame sent ends receipted (clients resend the rest).
    assert receipted <= distinct, sorted(receipted - distinct)[:5]
    assert receipted == sent
    assert distinct == sent
    # Zero acked-undelivered, zero stranded: every stored message reached the export.
    assert load.acked <= set(load.delivered)
    assert distinct <= set(load.delivered)


async def _all_receipted(load: Load) -> None:
    """Wait until every importer has everything it sent receipted, nothing pending."""
    while not all(imp.receipted == imp.sent and not imp.pending for imp in load.importers):
        load.progress = trio.Event()
        await load.progress.wait()
