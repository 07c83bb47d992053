"""``quiesce serve --workers N`` as real processes: one parent, N workers on one port.

Each test runs the parent (``open_gateway_process`` in tests/harness.py) with real WebSocket
clients on loopback and a real pulsar-lite broker, and signals or kills real processes. The
parent's log names each worker's pid (``worker 0 started (pid P)``) and every line a worker
logs carries ``worker_pid=P``, so the tests see which worker served which connection.
Nothing sleeps to synchronise: waits are on log lines, acks, closes and process exits, each
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import pulsar
import pytest
import trio
from websockets.exceptions import ConnectionClosed

from tests.data import doc_id, ids_of, sample_message
from tests.harness import (
    GatewayProcess,
    ImportClient,
    http_get,
    import_frames,
    import_path,
    metric_samples,
    open_gateway_process,
    open_import,
    persisted,
    topic_of,
    ws_url,
)

pytestmark = pytest.mark.slow

# Bounds of the waits (generous: they only matter when something is wrong).
SHORT = 15.0
LONG = 60.0
# --shutdown-timeout of the gateways here, and how long the parent may take to exit after a
# signal (the drain's bound plus closing the workers' broker clients).
SHUTDOWN_TIMEOUT = 10.0
EXIT_BOUND = SHUTDOWN_TIMEOUT + 15.0
# Frame numbers of import client c start at c * ID_STRIDE, so every frame has its own id.
ID_STRIDE = 1_000_000
# How many import clients the load test opens at least, and at most while it waits for
# connections to have reached both workers (the kernel spreads them by a hash).
MIN_CLIENTS, MAX_CLIENTS = 4, 24
# Acks every client must have before the SIGTERM: the load is flowing everywhere.
ACKS_BEFORE_SIGNAL = 200
WORKER_STARTED = r"worker (\d+) started \(pid (\d+)\)"
CONNECTION_RUNNING = r"connection \S+: opening -> running .*worker_pid=(\d+)"


def worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Worker index -> pid of its latest process, from the parent's ``started`` lines."""
    pids: dict[int, int] = {}
    for line in gateway.find(WORKER_STARTED):
        match = re.search(WORKER_STARTED, line)
        assert match is not None
        pids[int(match.group(1))] = int(match.group(2))
    return pids


def connections_by_worker(gateway: GatewayProcess) -> dict[int, int]:
    """Worker pid -> connections it admitted, from the workers' connection log lines."""
    served: dict[int, int] = {}
    for line in gateway.find(CONNECTION_RUNNING):
        match = re.search(CONNECTION_RUNNING, line)
        assert match is not None
        pid = int(match.group(1))
        served[pid] = served.get(pid, 0) + 1
    return served


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pids: list[int]) -> list[int]:
    """Wait (bounded, polling /proc: no event exists) until no process in ``pids`` is alive."""
    with trio.move_on_after(SHORT):
        while any(alive(pid) for pid in pids):  # noqa: ASYNC110  # a /proc figure: no event
            await trio.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


async def stream_until_draining(client: ImportClient, first: int) -> None:
    """Send frames numbered from ``first`` until the server says it drains, then stop."""
    i = first
    try:
        while not client.draining.is_set():
            await client.send(json.dumps(sample_message("triples", i)))
            i += 1
    except ConnectionClosed:
        pass


async def test_sigterm_to_a_two_worker_gateway_under_load_loses_no_receipted_frame(
    broker_url: str, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGTERM while import clients stream to both workers: every receipted frame persisted,
    every connection closed 1001, every worker exits 0, then the parent exits 0."""
    url = ws_url
    async with open_gateway_process("--workers", "2", "--shutdown-timeout",
                                    str(SHUTDOWN_TIMEOUT), pulsar_url=broker_url,
                                    data_dir=tmp_path) as gateway:
        pids = worker_pids(gateway)
        assert sorted(pids) == [0, 1], gateway.log()
        clients: list[ImportClient] = []
        async with trio.open_nursery() as nursery:

            async def run_client(c: int, task_status: trio.TaskStatus[ImportClient]) -> None:
                async with open_import(url(gateway, import_path(flow)),
                                       close_timeout=SHORT) as client:
                    task_status.started(client)
                    await stream_until_draining(client, c * ID_STRIDE)
                    # The server's drain closes it (1001), not the client.
                    await client.wait_closed()

            with trio.fail_after(LONG):
                while len(clients) < MIN_CLIENTS or (
                        len(connections_by_worker(gateway)) < 2 and len(clients) < MAX_CLIENTS):
                    clients.append(await nursery.start(run_client, len(clients)))
                    # Its connection is admitted by then (an ack needs it): the log names the
                    # worker before the next client is counted.
                    await clients[-1].wait_ack(1)
                for client in clients:
                    await client.wait_ack(ACKS_BEFORE_SIGNAL)
            gateway.signal(signal.SIGTERM)
            with trio.fail_after(LONG):
                for client in clients:
                    await client.wait_closed()
        code = await gateway.wait_exit_async(EXIT_BOUND)
        left = await wait_gone(list(pids.values()))
        served = connections_by_worker(gateway)  # every line is read once it has exited
    sent = sum(c.sent for c in clients)
    receipted = sum(c.ack for c in clients)
    stored = ids_of(await persisted(pulsar_client, topic_of("triples", flow), receipted))
    print(f"\nworkers=2 SIGTERM under load: clients={len(clients)} sent={sent} "
          f"receipted={receipted} persisted={len(stored)} duplicates="
          f"{len(stored) - len(set(stored))} served_by_pid={served} "
          f"closes={sorted({c.ws.close_code for c in clients}, key=str)} exit={code}")
    assert code == 0, gateway.log()
    assert left == [], f"workers still running after the parent exited: {left}"
    assert set(served) == set(pids.values()), f"not both workers served: {served} {pids}"
    for c, client in enumerate(clients):
        assert client.violations == [] and client.errors == [], (c, client.violations)
        assert client.draining.is_set(), f"client {c} was never told the server drains"
        assert client.ws.close_code == 1001, (c, client.ws.close_code, gateway.log())
        assert client.ack == client.sent, f"client {c}: sent {client.sent}, acked {client.ack}"
    stored_set = set(stored)
    missing = [c for c, client in enumerate(clients)
               for k in range(client.ack) if doc_id(c * ID_STRIDE + k) not in stored_set]
    assert missing == [], f"{len(missing)} receipted frames are not in the topic"
    assert len(stored) == len(stored_set) == receipted == sent
    assert gateway.find(r"pool pool: draining -> stopped"), gateway.log()


async def test_a_killed_worker_is_restarted_counted_and_the_gateway_keeps_serving(
    flow: str, tmp_path: Path
) -> None:
    """SIGKILL of one worker: the parent logs it, restarts it, counts it in
    quiesce_worker_restarts_total, and imports still work; one embedded broker for all."""
    async with open_gateway_process("--workers", "2", "--shutdown-timeout",
                                    str(SHUTDOWN_TIMEOUT), data_dir=tmp_path) as gateway:
        broker = re.search(r"broker (pulsar://\S+?),", gateway.find("ready on")[0])
        assert broker is not None, gateway.log()
        pids = worker_pids(gateway)
        victim = pids[0]
        mark = len(gateway.lines)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(SHORT):
            crash = await gateway.wait_line_async(
                rf"worker 0 \(pid {victim}\) exited with code -9 while serving: restart 1 ",
                mark)
            again = await gateway.wait_line_async(r"worker 0 ready \(pid (\d+)\)",
                                                  gateway.lines.index(crash.string))
        successor = int(again.group(1))
        frames = [json.dumps(sample_message("triples", i)) for i in range(50)]
        with trio.fail_after(LONG):
            # Several connections: whichever worker each lands on, it is served.
            results = [await import_frames(ws_url(gateway, import_path(flow)), frames)
                       for _ in range(4)]
        status, metrics = await http_get(gateway.port, "/metrics")
        client = pulsar.Client(broker.group(1),
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        try:
            stored = ids_of(await persisted(client, topic_of("triples", flow), 200))
        finally:
            client.close()
        gateway.signal(signal.SIGTERM)
        code = await gateway.wait_exit_async(EXIT_BOUND)
        left = await wait_gone([victim, successor, pids[1]])
    restarts = metric_samples(metrics, "quiesce_worker_restarts_total")
    print(f"\nkilled worker 0 (pid {victim}), restarted as pid {successor}: restarts={restarts} "
          f"acks={[r.ack for r in results]} persisted={len(stored)} exit={code}")
    assert successor != victim
    assert [r.ack for r in results] == [50] * 4
    assert all(r.ws.close_code == 1000 and r.errors == [] for r in results)
    assert len(stored) == 200 and sorted(set(stored)) == sorted(map(doc_id, range(50)))
    assert status == 200
    assert restarts == {frozenset({("worker", "0")}): 1.0, frozenset({("worker", "1")}): 0.0}
    assert len(gateway.find(r"embedded broker started")) == 1, gateway.log()
    assert gateway.find(r"embedded broker stopped"), gateway.log()
    assert code == 0, gateway.log()
    assert left == []


async def test_metrics_from_any_worker_sum_every_workers_counters(
    broker_url: str, flow: str, tmp_path: Path
) -> None:
    """/metrics answers the same sums whichever worker a scrape reaches."""
    async with open_gateway_process("--workers", "2", pulsar_url=broker_url,
                                    data_dir=tmp_path) as gateway:
        frames = [json.dumps(sample_message("triples", i)) for i in range(10)]
        with trio.fail_after(LONG):
            for _ in range(8):
                await import_frames(ws_url(gateway, import_path(flow)), frames)
        scrapes = []
        for _ in range(6):
            status, text = await http_get(gateway.port, "/metrics")
            assert status == 200
            scrapes.append(metric_samples(text, "messages_imported_total"))
        served = connections_by_worker(gateway)
        gateway.signal(signal.SIGTERM)
        code = await gateway.wait_exit_async(EXIT_BOUND)
    print(f"\nmetrics: served_by_pid={served} imported={scrapes[0]}")
    assert all(s == {frozenset({("kind", "triples")}): 80.0} for s in scrapes), scrapes
    assert code == 0, gateway.log()


async def test_a_port_that_cannot_be_shared_fails_start_up_with_exit_1(tmp_path: Path) -> None:
    """A port held by a socket without SO_REUSEPORT: the parent exits 1 naming the problem."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gateway = GatewayProcess.start("--workers", "2", "--port", str(port),
                                       pulsar_url="pulsar://127.0.0.1:1", data_dir=tmp_path)
        try:
            code = await gateway.wait_exit_async(SHORT)
        finally:
            gateway.stop(0.0)
    assert code == 1, gateway.log()
    assert gateway.find(rf"quiesce: error: cannot listen on 127\.0\.0\.1:{port}"), gateway.log()


async def test_sighup_to_the_parent_reloads_the_tokens_of_every_worker(tmp_path: Path) -> None:
    """SIGHUP is forwarded: each worker logs its reload, and a new token works on any worker."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[tokens.a]\ntoken = "tok-a"\nmetrics = true\n')
    async with open_gateway_process("--workers", "2", "--tokens-file", str(tokens),
                                    data_dir=tmp_path) as gateway:
        pids = worker_pids(gateway)
        status_before, _ = await http_get(gateway.port, "/metrics?token=tok-b")
        tokens.write_text('[tokens.a]\ntoken = "tok-a"\nmetrics = true\n'
                          '[tokens.b]\ntoken = "tok-b"\nmetrics = true\n')
        mark = len(gateway.lines)
        gateway.signal(signal.SIGHUP)
        reloaded: set[int] = set()
        with trio.fail_after(SHORT):
            while len(reloaded) < 2:
                line = (await gateway.wait_line_async(r"tokens reloaded from .*worker_pid=(\d+)",
                                                      mark)).string
                mark = gateway.lines.index(line, mark) + 1
                match = re.search(r"worker_pid=(\d+)", line)
                assert match is not None
                reloaded.add(int(match.group(1)))
        statuses = [(await http_get(gateway.port, "/metrics?token=tok-b"))[0] for _ in range(6)]
        gateway.signal(signal.SIGTERM)
        code = await gateway.wait_exit_async(EXIT_BOUND)
    print(f"\nSIGHUP: reloaded by {sorted(reloaded)} of {pids}; tok-b before {status_before}, "
          f"after {statuses}")
    assert status_before == 401
    assert reloaded == set(pids.values())
    assert statuses == [200] * 6
    assert code == 0, gateway.log()


async def test_sigterm_while_the_workers_start_stops_them_all_with_exit_0(tmp_path: Path) -> None:
    """A SIGTERM as soon as the workers are spawned: nothing is left running, exit 0."""
    gateway = GatewayProcess.start("--workers", "2", "--shutdown-timeout",
                                   str(SHUTDOWN_TIMEOUT), data_dir=tmp_path)
    try:
        with trio.fail_after(SHORT):
            await gateway.wait_line_async(r"worker 1 started")
        gateway.signal(signal.SIGTERM)
        code = await gateway.wait_exit_async(EXIT_BOUND)
    finally:
        gateway.stop(0.0)
    pids = list(worker_pids(gateway).values())
    left = await wait_gone(pids)
    print(f"\nSIGTERM at start-up: exit={code}, ready before it: "
          f"{bool(gateway.find('ready on'))}, workers {pids} left {left}")
    assert code == 0, gateway.log()
    assert left == []
    assert gateway.find(r"embedded broker stopped"), gateway.log()
