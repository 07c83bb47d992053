"""Shared fixtures: one real pulsar-lite broker per test session, and real gateways on it.

The broker is the same wheel the embedded default uses, started once (it takes ~0.5 s) on a
free loopback port with its metrics endpoint off. Every test gets topics of its own (a
unique flow name), so tests never see each other's messages.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio

from quiesce.core.config import Settings
from quiesce.supervisor import Supervisor

# How long a broker may take to listen at session start.
BROKER_START_TIMEOUT = 20.0
# read_topic: how long the reader must find nothing before the topic counts as read (ms).
QUIET_MS = 300
# http_get: bound of one plain HTTP request on loopback.
HTTP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_pulsar_lite(data: Path, port: int | None = None
                      ) -> tuple[subprocess.Popen[bytes], str]:
    """Start a real pulsar-lite broker on loopback (a free port unless ``port``), its data and
    log in ``data`` (give the same ``data`` and ``port`` to restart a broker).

    The same wheel the embedded default uses, with its metrics endpoint off. Returns the
    process (the caller terminates it) and its ``pulsar://`` URL once it accepts connections.
    """
    from pulsar_lite.binary_finder import find_pulsar_lite_binary

    config = data / "pulsar-lite.toml"
    config.write_text("max_message_size_bytes = 8388608\n[metrics]\nenabled = false\n")
    port = port or _free_port()
    with (data / "broker.log").open("ab") as log:
        process = subprocess.Popen(
            [find_pulsar_lite_binary(), "--config", str(config), "--addr", f"127.0.0.1:{port}",
             "--db-path", str(data / "db"), "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + BROKER_START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"pulsar://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                log_text = (data / "broker.log").read_text()
                raise RuntimeError(f"pulsar-lite did not start: {log_text}") from None
            time.sleep(0.05)  # polling a starting process's port; nothing to wait on instead


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process``, killing it if it has not exited after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a pulsar-lite broker shared by the session (real broker, loopback only)."""
    process, url = start_pulsar_lite(tmp_path_factory.mktemp("broker"))
    yield url
    stop_process(process)


@pytest.fixture(scope="session")
def pulsar_client(broker_url: str) -> Iterator[pulsar.Client]:
    """A plain pulsar-client on the session broker, to check what reached the topics."""
    client = pulsar.Client(broker_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    yield client
    client.close()


@pytest.fixture
def flow() -> str:
    """A flow name no other test uses, so its topics start empty."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Settings:
    """Gateway settings on the session broker, an ephemeral port, short drains."""
    return Settings(port=0, pulsar_url=broker_url, data_dir=str(tmp_path / "data"),
                    shutdown_timeout=10.0)


async def start_gateway(nursery: trio.Nursery, settings: Settings, **changes: Any) -> Supervisor:
    """Start a real gateway in ``nursery`` and return it once ready."""
    supervisor = Supervisor(replace(settings, **changes))
    await nursery.start(supervisor.serve)
    return supervisor


@pytest.fixture
async def gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Supervisor]:
    """A gateway serving on the session broker; drained at the end of the test."""
    supervisor = await start_gateway(nursery, settings)
    yield supervisor
    supervisor.request_shutdown()


def ws_url(gateway: Supervisor, path: str) -> str:
    """``ws://`` URL of ``path`` on ``gateway``."""
    return f"ws://127.0.0.1:{gateway.port}{path}"


def read_topic(client: pulsar.Client, topic: str, timeout_ms: int = 2000) -> list[dict[str, Any]]:
    """Every message in ``topic`` from the start, read with a Reader (acks nothing).

    pulsar-lite quirks handled here: its "more available?" answer turns false inside the
    last batched entry, so the read ends only after a short quiet period with nothing more
    to read; and it may hand a reader the same entry twice, so message ids are de-duplicated
    (a message the gateway published twice has a new id and would still count twice).
    Blocking: call it through ``trio.to_thread.run_sync`` from async tests.
    """
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    messages = []
    seen: set[tuple[int, int, int]] = set()
    try:
        while True:
            wait = timeout_ms if reader.has_message_available() else QUIET_MS
            try:
                msg = reader.read_next(wait)
            except pulsar.Timeout:
                break
            mid = msg.message_id()
            key = (mid.ledger_id(), mid.entry_id(), mid.batch_index())
            if key not in seen:
                seen.add(key)
                messages.append(json.loads(msg.data()))
    finally:
        reader.close()
    return messages


async def http_get(port: int, path: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, str]:
    """GET ``path`` over a plain TCP connection on loopback; returns (status, body)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with trio.fail_after(HTTP_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
            await stream.send_all(request.encode())
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", status_line)
    assert match, status_line
    return int(match.group(1)), body.decode()
