"""Process-level tests of shutdown (CONTRACT §1, §3, §4, §6): real signals, real sockets.

Most tests run ``python -m supervisor serve`` as a child process on the session's pulsar-lite
broker, talk to it with real WebSocket clients, and signal it. The child's stderr is drained
by a background task into a list of lines the tests wait on, so the child never blocks on a
full pipe. Nothing sleeps: every wait is on a message, a log line or the process, bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import ClientConnection, connect

from quiesce.core.config import Settings
from tests.conftest import (
    http_get,
    read_topic,
    start_gateway,
    start_pulsar_lite,
    stop_process,
    ws_url,
)
from tests.data import sample_message

ROOT = Path(__file__).resolve().parent.parent
# Bounds of the waits (generous: they only matter when something is wrong).
READY_TIMEOUT = 25.0
SHORT = 10.0
LONG = 60.0
# How long a signalled process may take to exit: the longest --shutdown-timeout used (10 s,
# or 30 s where a second SIGINT must cut it short) plus closing the broker client.
EXIT_BOUND = 25.0
READY_PATTERN = r"ready on http://127\.0\.0\.1:(\d+)"
DRAINING_PATTERN = r"serving -> draining"


def topic_of(kind: str, flow: str) -> str:
    """The default topic of (flow, kind) (CONTRACT §5)."""
    return f"persistent://tg/flow/{kind}:{flow}"


def doc_id(i: int) -> str:
    """The ``metadata.id`` of ``sample_message("triples", i)``."""
    return str(sample_message("triples", i)["metadata"]["id"])


def ids_of(messages: list[dict[str, Any]]) -> list[str]:
    """The ``metadata.id`` of each message, in order."""
    return [m["metadata"]["id"] for m in messages]


async def persisted(client: pulsar.Client, topic: str) -> list[dict[str, Any]]:
    """Every message in ``topic``, read without blocking Trio."""
    with trio.fail_after(LONG):
        return await trio.to_thread.run_sync(read_topic, client, topic)


def publish(client: pulsar.Client, topic: str, messages: list[dict[str, Any]]) -> None:
    """Publish ``messages`` to ``topic`` and wait until the broker confirmed every one."""
    results: list[Any] = []
    producer = client.create_producer(topic)
    try:
        for message in messages:
            producer.send_async(json.dumps(message).encode(),
                                lambda result, _id: results.append(result))
        producer.flush()
    finally:
        producer.close()
    assert len(results) == len(messages)
    assert all(r == pulsar.Result.Ok for r in results), results



# ---------------------------------------------------------------- the gateway as a process


class GatewayProcess:
    """A ``quiesce serve`` child process whose stderr lines are collected as they come.

    Attributes:
        process: the trio process.
        lines: every stderr line so far.
        port: the port from the ``ready`` line.
    """

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.port = 0
        self.eof = False
        self._changed = trio.Event()

    async def pump(self) -> None:
        """Read stderr to its end, splitting it into lines."""
        assert self.process.stderr is not None
        pending = b""
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                if complete:
                    self.lines += [line.decode(errors="replace") for line in complete]
                    self._wake()
        finally:
            if pending:
                self.lines.append(pending.decode(errors="replace"))
            self.eof = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_line(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first stderr line from index ``start`` matching ``pattern`` (waits for it)."""
        index = start
        while True:
            while index < len(self.lines):
                match = re.search(pattern, self.lines[index])
                if match:
                    return match
                index += 1
            if self.eof:
                raise AssertionError(f"stderr ended without {pattern!r}:\n" + self.log())
            await self._changed.wait()

    def find(self, pattern: str) -> list[str]:
        """Every stderr line so far matching ``pattern``."""
        return [line for line in self.lines if re.search(pattern, line)]

    def log(self) -> str:
        """The stderr so far, for assertion messages."""
        return "\n".join(self.lines[-60:])

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns the time it was sent (trio clock)."""
        self.process.send_signal(signum)
        return trio.current_time()

    async def wait_exit(self, within: float = EXIT_BOUND) -> int | None:
        """Wait up to ``within`` seconds for the process to exit; its exit code, or None if
        it is still running then (the caller asserts; the context manager kills it)."""
        with trio.move_on_after(within):
            return await self.process.wait()
        return None


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any QUIESCE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIESCE_")}
    env.update(extra)
    return env


@asynccontextmanager
async def gateway_process(
    pulsar_url: str, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """Run ``python -m supervisor serve --port 0`` on ``pulsar_url`` until the body is done.

    Yields once the ``ready`` line has been logged. A process still running at the end is
    killed.
    """
    command = [sys.executable, "-m", "quiesce.supervisor", "serve", "--port", "0",
               "--pulsar-url", pulsar_url, "--data-dir", str(data_dir), *args]
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=_child_env(env or {}), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    gateway = GatewayProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway.pump)
            with trio.fail_after(READY_TIMEOUT):
                match = await gateway.wait_line(READY_PATTERN)
            gateway.port = int(match.group(1))
            try:
                yield gateway
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(SHORT, shield=True):
                    await process.wait()
    finally:
        if process.returncode is None:
            process.kill()


def url_of(gateway: GatewayProcess, path: str) -> str:
    """``ws://`` URL of ``path`` on a gateway process."""
    return f"ws://127.0.0.1:{gateway.port}{path}"


# ---------------------------------------------------------------- a broker of one's own


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OwnBroker:
    """A pulsar-lite process that one test may freeze (SIGSTOP) and thaw (SIGCONT)."""

    url: str
    process: subprocess.Popen[bytes]
    frozen: bool = False

    def freeze(self) -> None:
        """Stop the broker process: it keeps its sockets but answers nothing."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """Let a frozen broker run again."""
        if self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
            self.frozen = False


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A dedicated pulsar-lite broker; thawed and stopped at the end whatever happened."""
    data = tmp_path / "own-broker"
    data.mkdir()
    process, url = start_pulsar_lite(data)
    broker = OwnBroker(url, process)
    try:
        yield broker
    finally:
        broker.thaw()
        stop_process(process)


# ---------------------------------------------------------------- clients


class ImportStream:
    """An import connection with receipts: a reader task collects acks and error frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sent = 0
        self.acks: list[int] = []
        self.errors: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.done = trio.Event()
        self._changed = trio.Event()

    @property
    def ack(self) -> int:
        """The highest ack received (0 before any)."""
        return self.acks[-1] if self.acks else 0

    async def collect(self) -> None:
        """Read server frames until the connection closes."""
        try:
            while True:
                frame = json.loads(await self.ws.recv())
                if "ack" in frame:
                    n = frame["ack"]
                    if n <= self.ack or n > self.sent:
                        self.violations.append(f"ack {n} after {self.ack}, {self.sent} sent")
                    self.acks.append(n)
                elif "error" in frame:
                    self.errors.append(frame["error"])
                else:
                    self.violations.append(f"unexpected frame {frame}")
                self._wake()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self.done.set()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, frame: str) -> None:
        """Send one text frame (counted before sending, so an ack never exceeds ``sent``)."""
        self.sent += 1
        await self.ws.send(frame)

    async def wait_until(self, predicate: Any) -> None:
        """Wait until ``predicate()`` holds (fails if the connection ends first)."""
        while not predicate():
            if self.done.is_set():
                raise AssertionError(f"connection ended ({self.closed!r}) while waiting")
            await self._changed.wait()


class ExportStream:
    """An ``ack=client`` export connection: collects ``{"seq", "message"}`` frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[int, str]] = []  # (seq, metadata id)
        self.others: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self.done = trio.Event()
        self._changed = trio.Event()

    async def collect(self) -> None:
        """Read server frames until the connection closes."""
        try:
            while True:
                frame = json.loads(await self.ws.recv())
                if "seq" in frame:
                    self.frames.append((frame["seq"], frame["message"]["metadata"]["id"]))
                else:
                    self.others.append(frame)
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self.done.set()
            self._changed.set()

    async def wait_frames(self, n: int) -> None:
        """Wait until ``n`` message frames have arrived."""
        while len(self.frames) < n:
            if self.done.is_set():
                raise AssertionError(f"closed ({self.closed!r}) after {len(self.frames)} frames")
            await self._changed.wait()

    async def ack(self, n: int) -> None:
        """Acknowledge every frame up to seq ``n``."""
        await self.ws.send(json.dumps({"ack": n}))


def export_path(flow: str, query: str) -> str:
    """Path of the triples export WebSocket of ``flow`` with ``query``."""
    return f"/api/v1/flow/{flow}/export/triples?{query}"


def import_path(flow: str) -> str:
    """Path of the triples import WebSocket of ``flow``, with receipts."""
    return f"/api/v1/flow/{flow}/import/triples?receipts=true"


# ---------------------------------------------------------------- 1. import + SIGTERM


async def test_sigterm_during_a_streaming_import_closes_1001_and_keeps_every_acked_frame(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGTERM mid-stream closes the import with 1001, exits 0, and loses no acked frame."""
    limit = 20_000
    async with gateway_process(broker_url, tmp_path, "--shutdown-timeout", "10") as gateway:
        async with connect(url_of(gateway, import_path(flow)), close_timeout=SHORT) as ws:
            client = ImportStream(ws)

            async def stream() -> None:
                try:
                    for i in range(limit):
                        await client.send(json.dumps(sample_message("triples", i)))
                except ConnectionClosed:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.collect)
                nursery.start_soon(stream)
                with trio.fail_after(LONG):
                    await client.wait_until(lambda: client.ack >= 500)
                signalled = gateway.signal(signal.SIGTERM)
                with trio.fail_after(LONG):
                    await client.done.wait()
                closed_at = trio.current_time()
        code = await gateway.wait_exit(10.0 + 5.0)
        exited_at = trio.current_time()
    stored = await persisted(pulsar_client, topic_of("triples", flow))
    stored_ids = ids_of(stored)
    last_ack = client.ack
    print(f"\nimport+SIGTERM: sent={client.sent} acked={last_ack} persisted={len(stored)} "
          f"close={ws.close_code} closed_after={closed_at - signalled:.2f}s "
          f"exit={code} exited_after={exited_at - signalled:.2f}s")
    assert client.violations == []
    assert client.errors == []
    assert client.sent < limit, "the stream ended before the signal: nothing was tested"
    missing = set(map(doc_id, range(last_ack))) - set(stored_ids)
    assert not missing, f"{len(missing)} acked frames are not in the topic"
    assert len(stored_ids) == len(set(stored_ids)), "duplicates in the topic"
    # What reached the topic is a prefix of what was sent, in order.
    assert stored_ids == [doc_id(i) for i in range(len(stored_ids))]
    assert ws.close_code == 1001, (ws.close_code, gateway.log())
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
    await trio.to_thread.run_sync(
        publish, pulsar_client, topic, [sample_message("triples", i) for i in range(total)])
    subscription = f"s-{uuid.uuid4().hex[:8]}"
    query = f"subscription={subscription}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "1"}
    async with gateway_process(broker_url, tmp_path, "--shutdown-timeout", "10",
                               env=env) as gateway:
        async with connect(url_of(gateway, export_path(flow, query)),
                           close_timeout=SHORT) as ws:
            first = ExportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.collect)
                with trio.fail_after(LONG):
                    await first.wait_frames(300)
                await first.ack(100)
                signalled = gateway.signal(signal.SIGTERM)
                with trio.fail_after(LONG):
                    await first.done.wait()
                closed_at = trio.current_time()
        code = await gateway.wait_exit()
        exited_at = trio.current_time()
    first_close = ws.close_code
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
            async with connect(ws_url(fresh, export_path(flow, end_query))) as ws2:
                second = ExportStream(ws2)
                async with trio.open_nursery() as inner:
                    inner.start_soon(second.collect)
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
    assert ws2.close_code == 1000
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
    await trio.to_thread.run_sync(publish, pulsar_client, topic_of("triples", flow), messages)
    query = f"subscription=b-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "5"}
    async with gateway_process(broker_url, tmp_path, "--shutdown-timeout", "10",
                               env=env) as gateway:
        async with connect(url_of(gateway, export_path(flow, query)), close_timeout=SHORT,
                           max_size=None) as ws:
            frames: list[dict[str, Any]] = []
            with trio.fail_after(LONG):
                while len(frames) < first_batch:
                    frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"ack": first_batch}))
            signalled = gateway.signal(signal.SIGTERM)  # the client is not reading now
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
        code = await gateway.wait_exit()
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
    await trio.to_thread.run_sync(
        publish, pulsar_client, topic, [sample_message("triples", i) for i in range(total)])
    query = f"subscription=r-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "3"}
    async with gateway_process(broker_url, tmp_path, "--shutdown-timeout", "10",
                               env=env) as gateway:
        assert (await http_get(gateway.port, "/readyz"))[0] == 200
        async with connect(url_of(gateway, export_path(flow, query)),
                           close_timeout=SHORT) as ws:
            holder = ExportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder.collect)
                with trio.fail_after(LONG):
                    await holder.wait_frames(total)  # held unacked: the drain must wait
                assert (await http_get(gateway.port, "/readyz"))[0] == 200
                mark = len(gateway.lines)
                gateway.signal(signal.SIGTERM)
                with trio.fail_after(SHORT):
                    await gateway.wait_line(DRAINING_PATTERN, mark)
                status, body = await http_get(gateway.port, "/readyz")
                health, _ = await http_get(gateway.port, "/healthz")
                with trio.fail_after(SHORT), pytest.raises(InvalidStatus) as refused:
                    async with connect(url_of(gateway, import_path(flow))):
                        pass
                # Now let the drain finish: ack everything that was held.
                await holder.ack(total)
                with trio.fail_after(SHORT):
                    await holder.done.wait()
        code = await gateway.wait_exit()
    print(f"\nreadyz: draining status={status} body={body.strip()!r} healthz={health} "
          f"handshake={refused.value.response.status_code} close={ws.close_code} exit={code}")
    assert status == 503, body
    assert health == 200
    assert refused.value.response.status_code == 503
    assert ws.close_code == 1001
    assert code == 0, gateway.log()
    stored = await persisted(pulsar_client, topic)
    assert len(stored) == total  # the refused import published nothing


# ---------------------------------------------------------------- 4. forced at the deadline


def metric_value(text: str, name: str) -> float:
    """The value of the unlabelled metric ``name`` in Prometheus text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


async def _import_then_freeze(
    client: ImportStream, port: int, broker: OwnBroker, acked_before: int, stuck: int
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
    own_broker: OwnBroker, flow: str, tmp_path: Path
) -> None:
    """With the broker frozen, SIGTERM forces the import at --shutdown-timeout with 1011."""
    acked_before, stuck = 50, 20
    env = {"QUIESCE_PUBLISHER_DRAIN_TIMEOUT": "30"}
    async with gateway_process(own_broker.url, tmp_path, "--shutdown-timeout", "2",
                               env=env) as gateway:
        async with connect(url_of(gateway, import_path(flow)), close_timeout=SHORT) as ws:
            client = ImportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.collect)
                await _import_then_freeze(client, gateway.port, own_broker, acked_before,
                                          stuck)
                signalled = gateway.signal(signal.SIGTERM)
                with trio.fail_after(LONG):
                    await client.done.wait()
                closed_at = trio.current_time()
        code = await gateway.wait_exit()
        exited_at = trio.current_time()
    own_broker.thaw()
    shutdown_lines = gateway.find(r"shutdown complete")
    print(f"\nforced (process): sent={client.sent} acked={client.ack} close={ws.close_code} "
          f"closed_after={closed_at - signalled:.2f}s exit={code} "
          f"exited_after={exited_at - signalled:.2f}s log={shutdown_lines}")
    client_pulsar = pulsar.Client(own_broker.url,
                                  logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        stored = await persisted(client_pulsar, topic_of("triples", flow))
    finally:
        client_pulsar.close()
    print(f"forced (process): persisted after thaw={len(stored)}")
    assert ws.close_code == 1011, (ws.close_code, gateway.log())
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
    own_broker: OwnBroker, flow: str, settings: Settings
) -> None:
    """In process: the forced import shows up as websocket_forced_shutdowns_total{import} 1."""
    acked_before, stuck = 20, 10
    async with trio.open_nursery() as outer:
        gateway = await start_gateway(outer, settings, pulsar_url=own_broker.url,
                                      shutdown_timeout=1.0, publisher_drain_timeout=30.0)
        async with connect(ws_url(gateway, import_path(flow)), close_timeout=SHORT) as ws:
            client = ImportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.collect)
                await _import_then_freeze(client, gateway.port, own_broker, acked_before,
                                          stuck)
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
    print(f"\nforced (in process): close={ws.close_code} forced={forced} graceful={graceful} "
          f"publisher_dropped={dropped}")
    assert ws.close_code == 1011
    assert forced == 1
    assert not graceful


# ---------------------------------------------------------------- 5. second SIGINT


async def test_a_second_sigint_forces_the_drain_at_once(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """A second SIGINT ends a drain that would wait 30 s within a few seconds."""
    total = 10
    topic = topic_of("triples", flow)
    await trio.to_thread.run_sync(
        publish, pulsar_client, topic, [sample_message("triples", i) for i in range(total)])
    query = f"subscription=i-{uuid.uuid4().hex[:8]}&position=earliest&ack=client"
    env = {"QUIESCE_SUBSCRIBER_DRAIN_TIMEOUT": "30"}
    async with gateway_process(broker_url, tmp_path, "--shutdown-timeout", "30",
                               env=env) as gateway:
        async with connect(url_of(gateway, export_path(flow, query)),
                           close_timeout=SHORT) as ws:
            holder = ExportStream(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder.collect)
                with trio.fail_after(LONG):
                    await holder.wait_frames(total)  # never acked: the drain would wait 30 s
                mark = len(gateway.lines)
                first = gateway.signal(signal.SIGINT)
                with trio.fail_after(SHORT):
                    await gateway.wait_line(DRAINING_PATTERN, mark)
                second = gateway.signal(signal.SIGINT)
                with trio.fail_after(LONG):
                    await holder.done.wait()
                closed_at = trio.current_time()
        code = await gateway.wait_exit()
        exited_at = trio.current_time()
    print(f"\nsecond SIGINT: close={ws.close_code} closed_after={closed_at - second:.2f}s "
          f"exit={code} exited_after={exited_at - second:.2f}s "
          f"(first SIGINT {second - first:.2f}s before) "
          f"log={gateway.find(r'second SIGINT|shutdown complete')}")
    assert exited_at - second < 5.0, gateway.log()
    assert code == 0, gateway.log()
    assert ws.close_code == 1011
    assert gateway.find(r"second SIGINT: forcing")
