"""One harness for the tests and the benchmarks: real processes and real clients on loopback.

Tests import it as ``tests.harness``; the benchmarks through ``bench/_common.py`` (which puts
the repository root on ``sys.path``). Each helper exists once:

* `free_port`, `wait_for_port`, `stop_process`, `clean_env`: ports and child processes;
* `Broker`, `pulsar_lite`: a pulsar-lite broker (loopback only, metrics endpoint off) that can
  be killed, frozen, and started again on the same port and data;
* `GatewayProcess`, `gateway_process`, `open_gateway_process`: ``python -m quiesce.supervisor
  serve --port 0 …`` as a child process, ready once its ``ready on`` line names its real port;
* `start_gateway`, `ws_url`, `topic_of`: a gateway inside the test's own Trio nursery, URLs
  on either kind of gateway, the default topic of a flow;
* `read_topic`, `read_topic_counted`, `persisted`: what a topic holds, under one documented
  de-duplication rule (by `message_key`);
* `publish`, `publish_messages`: payloads straight into a topic, confirmed by the broker;
* `ImportClient`, `open_import`, `import_frames`, `import_path`: an import WebSocket with
  receipts, its ``{"ack": N}`` and error frames collected; `ExportStream`: an ``ack=client``
  export WebSocket, its ``{"seq", "message"}`` frames collected;
* `http_get`, `metric_samples`, `expect_status`, `refused_status`: plain HTTP and what
  /metrics says, and handshakes refused with HTTP;
* `command_process`, `wait_count`: a ``quiesce import``/``export`` (any command) as a child
  process, and a wait on a number in its output; `import_files`, `export_flow`, `Watch`:
  the same runs inside the test's Trio loop, and how far they got.

Nothing here sleeps to synchronise, except the polling of a starting process's port. Test data
(`sample_message` and friends) lives in ``tests/data.py``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

import pulsar
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.trio.client import ClientConnection, connect

from quiesce.client.exporter import Exporter, ExportOptions, ExportReport, default_subscription
from quiesce.client.importer import Importer, ImportOptions, ImportReport, prepare_import
from quiesce.client.sources import SourceOptions
from quiesce.client.writers import open_writer
from quiesce.core import convert
from quiesce.core.config import Settings
from quiesce.core.profiles import INTERFACES, Profile
from quiesce.supervisor import Supervisor

__all__ = [
    "Broker",
    "ExportStream",
    "GatewayProcess",
    "ImportClient",
    "Listening",
    "PublishFailed",
    "TopicRead",
    "Watch",
    "clean_env",
    "command_process",
    "expect_status",
    "export_flow",
    "free_port",
    "gateway_process",
    "http_get",
    "import_files",
    "import_frames",
    "import_path",
    "message_key",
    "metric_samples",
    "open_gateway_process",
    "open_import",
    "persisted",
    "publish",
    "publish_messages",
    "pulsar_lite",
    "read_topic",
    "read_topic_counted",
    "refused_status",
    "start_gateway",
    "stop_process",
    "topic_of",
    "wait_count",
    "wait_for_port",
    "ws_url",
]

# Bounds (generous: they only matter when something is wrong).
BROKER_START_TIMEOUT = 20.0   # a broker listening after start
GATEWAY_START_TIMEOUT = 30.0  # a gateway process logging "ready on …"
STOP_TIMEOUT = 15.0           # a SIGTERMed process exiting before it is killed
HTTP_TIMEOUT = 10.0           # one plain HTTP request on loopback
HANDSHAKE_TIMEOUT = 10.0      # a refused WebSocket handshake
LONG = 60.0                   # a whole import connection, a whole topic read
# The broker's configuration: 8 MiB messages (tests rely on a frame between the broker's limit
# and a gateway's 16 MiB being refused by the broker) and no metrics endpoint (no fixed port).
BROKER_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
BROKER_CONFIG = f"max_message_size_bytes = {BROKER_MAX_MESSAGE_BYTES}\n[metrics]\nenabled = false\n"
# The line a gateway logs once it serves, with the port it really listens on.
READY_PATTERN = r"ready on http://127\.0\.0\.1:(\d+)"
# read_topic: one read's wait while messages are due, the quiet period that ends a read (ms),
# and how many times a stalled read starts again from the earliest message.
READ_STALL_MS = 10_000
READ_QUIET_MS = 300
READ_PASSES = 3


# ---------------------------------------------------------------- ports and processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
                  ) -> None:
    """Wait until 127.0.0.1:``port`` accepts a TCP connection.

    Args:
        port: the port a starting process will listen on.
        timeout: seconds to wait at most.
        process: the starting process; its exit ends the wait at once.

    Raises:
        RuntimeError: ``process`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode} before listening on "
                                   f"127.0.0.1:{port}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s"
                                   ) from None
            time.sleep(0.05)  # polling a starting process's port; nothing to wait on instead


def stop_process(process: subprocess.Popen[bytes], grace: float = STOP_TIMEOUT) -> int:
    """Stop ``process``: SIGTERM, then SIGKILL if it still runs after ``grace`` seconds.

    Args:
        process: the process; one that has exited already is only reaped.
        grace: seconds between SIGTERM and SIGKILL; 0 sends SIGKILL at once.

    Returns:
        Its exit code (negative: the signal that ended it).
    """
    if process.poll() is None:
        if grace > 0:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
        else:
            process.kill()
    return process.wait()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``QUIESCE_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIESCE_")}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- the broker


@dataclass
class Broker:
    """A real pulsar-lite broker on 127.0.0.1, which a test may kill, freeze or restart.

    The binary is the one from the pulsar-lite wheel (as the gateway's embedded default); its
    metrics endpoint is off. Start it with `Broker.start` or `pulsar_lite`.

    Attributes:
        data: its directory: configuration, database (``db/``) and log (``broker.log``, kept
            across restarts).
        port: its port on 127.0.0.1 (the same after a restart).
        process: the running broker process (a new one after a restart).
        frozen: the process is stopped by SIGSTOP (see `freeze`).
    """

    data: Path
    port: int
    process: subprocess.Popen[bytes]
    frozen: bool = False

    @classmethod
    def start(cls, data: Path, port: int | None = None) -> Broker:
        """Start a broker with its files in ``data`` and return it once it accepts connections.

        Args:
            data: its directory (created if missing); give the same one to keep its topics.
            port: its port; a free one when None.

        Raises:
            RuntimeError: it exited or did not listen within ``BROKER_START_TIMEOUT``; the
                message ends with its log.
        """
        data.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        return cls(data, port, _launch_pulsar_lite(data, port))

    @property
    def url(self) -> str:
        """Its ``pulsar://127.0.0.1:<port>`` URL."""
        return f"pulsar://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running broker process's id."""
        return self.process.pid

    def client(self) -> pulsar.Client:
        """A plain pulsar-client on this broker, logging errors only (the caller closes it)."""
        return pulsar.Client(self.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing is flushed or closed) and reap it."""
        self.process.kill()
        self.process.wait()
        self.frozen = False

    def restart(self) -> None:
        """Start the broker again on the same port and data (after `kill` or `stop`).

        Blocks until it listens: call it through ``trio.to_thread.run_sync`` from Trio.
        """
        self.process = _launch_pulsar_lite(self.data, self.port)

    def freeze(self) -> None:
        """SIGSTOP the broker: it keeps its sockets open but answers nothing."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """Let a frozen broker run again (nothing if it is not frozen)."""
        if self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self) -> None:
        """Thaw the broker if frozen and stop it (SIGTERM, then SIGKILL)."""
        self.thaw()
        stop_process(self.process)


def _launch_pulsar_lite(data: Path, port: int) -> subprocess.Popen[bytes]:
    from pulsar_lite.binary_finder import find_pulsar_lite_binary

    config = data / "pulsar-lite.toml"
    config.write_text(BROKER_CONFIG)
    log_path = data / "broker.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(find_pulsar_lite_binary()), "--config", str(config),
             "--addr", f"127.0.0.1:{port}", "--db-path", str(data / "db"),
             "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, BROKER_START_TIMEOUT, process)
    except RuntimeError as exc:
        stop_process(process)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"pulsar-lite did not start: {exc}\n{tail}") from None
    return process


@contextmanager
def pulsar_lite(data: Path | None = None) -> Iterator[Broker]:
    """Run a broker (see `Broker`) for the body of the ``with``; stop it at the end.

    Args:
        data: its directory; a temporary one, removed at the end, when None.
    """
    with ExitStack() as stack:
        if data is None:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quiesce-")))
        broker = Broker.start(data)
        stack.callback(broker.stop)  # before the temporary directory goes
        yield broker


# ---------------------------------------------------------------- the gateway as a process


class GatewayProcess:
    """A ``python -m quiesce.supervisor serve`` child process.

    A thread reads its output (stderr, where it logs, with stdout merged in: pulsar-client's
    C++ core prints there unless told otherwise) into `lines` as they come, so the child never
    blocks on a full pipe and a caller can wait on a line, from plain code (`wait_line`) or
    from Trio (`wait_line_async`). Start one with `gateway_process` or `open_gateway_process`.

    Attributes:
        process: the child process.
        lines: every output line so far, without its newline.
        port: the port from its ``ready on`` line (0 until then).
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.port = 0
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="gateway-stderr", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, *args: str, pulsar_url: str | None = None, data_dir: Path | None = None,
              env: Mapping[str, str] | None = None, keep_quiesce_env: bool = False,
              cwd: Path | None = None) -> GatewayProcess:
        """Start ``python -m quiesce.supervisor serve --port 0 …`` (without waiting for it).

        Args:
            *args: further command-line arguments.
            pulsar_url: its ``--pulsar-url``; the embedded broker when None.
            data_dir: its ``--data-dir``; the default when None.
            env: environment variables to set for it (e.g. ``QUIESCE_*`` settings).
            keep_quiesce_env: pass on this environment's ``QUIESCE_*`` variables (the
                benchmarks do, so a run can be tuned); otherwise they are removed, so nothing
                leaks into a test.
            cwd: its working directory; this one when None.
        """
        command = [sys.executable, "-m", "quiesce.supervisor", "serve", "--port", "0"]
        if pulsar_url is not None:
            command += ["--pulsar-url", pulsar_url]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        child_env = {**os.environ, **(env or {})} if keep_quiesce_env else clean_env(env)
        process = subprocess.Popen(
            [*command, *args], cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        return cls(process)

    def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        """The process id (for ``cpu_seconds`` or py-spy)."""
        return self.process.pid

    def wait_line(self, pattern: str, start: int = 0, timeout: float | None = None
                  ) -> re.Match[str]:
        """Wait for a stderr line matching ``pattern``.

        Args:
            pattern: a regular expression, searched in each line.
            start: the index in `lines` to look from (``len(lines)`` before an action: only
                lines logged after it).
            timeout: seconds to wait at most; None waits until stderr ends.

        Returns:
            The match in the first such line.

        Raises:
            RuntimeError: stderr ended (the process exited), or ``timeout`` passed, first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    match = re.search(pattern, self.lines[index])
                    if match:
                        return match
                    index += 1
                if self._eof:
                    raise RuntimeError(f"stderr ended without {pattern!r}:\n{self.log()}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RuntimeError(f"no line matching {pattern!r} in {timeout:g}s:\n"
                                       + self.log())
                self._changed.wait(remaining)

    async def wait_line_async(self, pattern: str, start: int = 0) -> re.Match[str]:
        """`wait_line` without blocking Trio; bound it with ``trio.fail_after``.

        The wait runs in a thread that is abandoned on cancellation (it ends when stderr does).
        """
        wait = functools.partial(self.wait_line, pattern, start)
        return await trio.to_thread.run_sync(wait, abandon_on_cancel=True)

    def wait_ready(self, timeout: float = GATEWAY_START_TIMEOUT) -> int:
        """Wait for the ``ready on`` line; set and return `port`."""
        self.port = int(self.wait_line(READY_PATTERN, 0, timeout).group(1))
        return self.port

    async def wait_ready_async(self) -> int:
        """`wait_ready` without blocking Trio; bound it with ``trio.fail_after``."""
        self.port = int((await self.wait_line_async(READY_PATTERN)).group(1))
        return self.port

    def find(self, pattern: str) -> list[str]:
        """Every stderr line so far in which ``pattern`` is found."""
        with self._changed:
            return [line for line in self.lines if re.search(pattern, line)]

    def log(self, last: int = 60) -> str:
        """The last ``last`` stderr lines, for failure messages."""
        return "\n".join(self.lines[-last:])

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float | None) -> int | None:
        """Wait for the process to exit and its stderr to be read to the end.

        Args:
            timeout: seconds to wait at most; None waits as long as it takes.

        Returns:
            Its exit code, or None if it is still running after ``timeout`` seconds (the
            caller asserts; the context manager that started it stops it).
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(STOP_TIMEOUT)
        return code

    async def wait_exit_async(self, within: float) -> int | None:
        """`wait_exit` without blocking Trio: its exit code, or None after ``within`` s."""
        with trio.move_on_after(within):
            return await trio.to_thread.run_sync(self.wait_exit, None, abandon_on_cancel=True)
        return None

    def stop(self, grace: float = STOP_TIMEOUT) -> int:
        """Stop the process if it still runs (see `stop_process`); return its exit code."""
        code = stop_process(self.process, grace)
        self._reader.join(STOP_TIMEOUT)
        return code


@contextmanager
def gateway_process(*args: str, pulsar_url: str | None = None, data_dir: Path | None = None,
                    env: Mapping[str, str] | None = None, keep_quiesce_env: bool = False,
                    cwd: Path | None = None) -> Iterator[GatewayProcess]:
    """Run a gateway process (see `GatewayProcess.start`) for the body of the ``with``.

    Yields it once it has logged ``ready on`` (its `GatewayProcess.port` set). At the end, a
    process still running gets SIGTERM and, after ``STOP_TIMEOUT`` seconds, SIGKILL.

    Raises:
        RuntimeError: it exited or did not log ``ready on`` within ``GATEWAY_START_TIMEOUT``.
    """
    gateway = GatewayProcess.start(*args, pulsar_url=pulsar_url, data_dir=data_dir, env=env,
                                   keep_quiesce_env=keep_quiesce_env, cwd=cwd)
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


@asynccontextmanager
async def open_gateway_process(
    *args: str, pulsar_url: str | None = None, data_dir: Path | None = None,
    env: Mapping[str, str] | None = None, keep_quiesce_env: bool = False,
    cwd: Path | None = None,
) -> AsyncIterator[GatewayProcess]:
    """`gateway_process` for Trio code: the waits do not block Trio.

    A process still running at the end is killed at once: a test that leaves its gateway
    running has failed already.

    Raises:
        trio.TooSlowError: it did not log ``ready on`` within ``GATEWAY_START_TIMEOUT``.
        RuntimeError: it exited first.
    """
    gateway = GatewayProcess.start(*args, pulsar_url=pulsar_url, data_dir=data_dir, env=env,
                                   keep_quiesce_env=keep_quiesce_env, cwd=cwd)
    try:
        with trio.fail_after(GATEWAY_START_TIMEOUT):
            await gateway.wait_ready_async()
        yield gateway
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(gateway.stop, 0.0)


# ---------------------------------------------------------------- the gateway in process


class Listening(Protocol):
    """Anything with the loopback port a gateway listens on (`Supervisor`, `GatewayProcess`)."""

    port: int


async def start_gateway(nursery: trio.Nursery, settings: Settings, **changes: Any) -> Supervisor:
    """Start a real gateway in ``nursery`` and return it once ready.

    Args:
        nursery: where it runs; stop it with ``request_shutdown()``.
        settings: its settings, with ``changes`` applied (field names of `Settings`).
    """
    supervisor = Supervisor(replace(settings, **changes))
    await nursery.start(supervisor.serve)
    return supervisor


def ws_url(gateway: Listening, path: str) -> str:
    """``ws://`` URL of ``path`` on ``gateway`` (in process or a process of its own)."""
    return f"ws://127.0.0.1:{gateway.port}{path}"


def topic_of(kind: str, flow: str, profile: str = "tg1", workspace: str = "default") -> str:
    """The default topic of (flow, kind) under ``profile`` (CONTRACT §5, §8): TrustGraph's."""
    return Settings(profile=profile).topic_for(flow, kind, workspace)


def kind_of_topic(topic: str) -> tuple[str, Profile] | None:
    """(kind, profile) of a TrustGraph default topic (``…/triples-store:FLOW``), else None.

    A tg2 topic names a workspace too (``…/triples-store:WORKSPACE:FLOW``).
    """
    prefix = "persistent://tg/flow/"
    if not topic.startswith(prefix):
        return None
    name, *rest = topic[len(prefix):].split(":")
    for kind, interface_name in INTERFACES.items():
        if interface_name == name:
            return kind, Profile.TG2 if len(rest) == 2 else Profile.TG1
    return None


def to_payload(topic: str, message: dict[str, Any]) -> bytes:
    """What the gateway publishes for wire ``message`` on ``topic``: the profile's payload.

    On a TrustGraph default topic the message is converted into that profile's Pulsar
    encoding (TrustGraph's schema, as the gateway does); elsewhere it is published as is.
    """
    known = kind_of_topic(topic)
    if known is None:
        return json.dumps(message).encode()
    kind, profile = known
    return convert.dumps(convert.convert_frame(kind, message, profile))


def from_payload(topic: str, payload: bytes) -> dict[str, Any]:
    """A stored payload as the wire format of its profile (what the gateway would export).

    The inverse of `to_payload`, so a test compares what it sent with what was stored.
    """
    decoded = json.loads(payload)
    known = kind_of_topic(topic)
    if known is None:
        return cast("dict[str, Any]", decoded)
    kind, profile = known
    return convert.from_pulsar(kind, decoded, profile)


def import_path(flow: str, kind: str = "triples", *, receipts: bool = True) -> str:
    """Path of the import WebSocket of (flow, kind), with ``?receipts=true`` unless told."""
    return f"/api/v1/flow/{flow}/import/{kind}" + ("?receipts=true" if receipts else "")


# ---------------------------------------------------------------- reading and writing topics


@dataclass(frozen=True)
class TopicRead:
    """What `read_topic_counted` found in a topic.

    Attributes:
        payloads: the payload of each stored message, in topic order, one per message id.
        duplicates: deliveries of a message id the same read had delivered already (skipped).
    """

    topic: str
    payloads: list[bytes]
    duplicates: int

    def messages(self) -> list[dict[str, Any]]:
        """The payloads decoded, in the wire format of the topic's profile (`from_payload`)."""
        return [from_payload(self.topic, p) for p in self.payloads]


def message_key(msg: pulsar.Message) -> tuple[int, int, int]:
    """What identifies a stored message for de-duplication: (ledger, entry, batch index)."""
    mid = msg.message_id()
    return (mid.ledger_id(), mid.entry_id(), mid.batch_index())


def read_topic_counted(client: pulsar.Client, topic: str, expected: int = 0, *,
                       receiver_queue_size: int = 1000) -> TopicRead:
    """Every message stored in ``topic``, read from the earliest with a Reader (acks nothing).

    **De-duplication, the one rule.** pulsar-lite may hand a reader the same stored entry
    twice. A message is therefore counted once per message id (ledger, entry, batch index):
    a delivery of an id already read is a duplicate and is skipped (`TopicRead.duplicates`
    counts them). A message the gateway published twice is stored twice, under two ids, and
    counts twice: a double publish is never hidden.

    When the read ends: while fewer than ``expected`` messages are in, or the broker says more
    are available, each read may wait ``READ_STALL_MS``. Then the read ends after
    ``READ_QUIET_MS`` with nothing to read, not at the first "none available": pulsar-lite
    says so already inside the topic's last batched entry. If nothing comes although the
    broker says more are available (pulsar-lite's dispatch can stall on large topics), the
    read starts again from the earliest message, up to ``READ_PASSES`` times; ids read in an
    earlier pass are neither counted again nor duplicates.

    Blocking: from Trio, call it through ``trio.to_thread.run_sync`` (or use `persisted`).

    Args:
        client: a client on the broker.
        topic: the topic.
        expected: how many messages the caller knows are there or on their way (0:
            unknown). More are still read; fewer are returned if no more come. With 0 the
            topic must not be empty (pulsar-lite then fails the "more available?" question
            with ``pulsar.UnknownError``).
        receiver_queue_size: the reader's prefetch, in messages (pulsar-client's default,
            1000). Give a few for messages of ~1 MB: pulsar-lite stalls a reader whose
            prefetch is that large after ~100 of them (docs/performance.md).
    """
    stored: dict[tuple[int, int, int], bytes] = {}
    duplicates = 0
    for _ in range(READ_PASSES):
        stalled = False
        this_pass: set[tuple[int, int, int]] = set()
        reader = client.create_reader(topic, pulsar.MessageId.earliest,
                                      receiver_queue_size=receiver_queue_size)
        try:
            while True:
                # Asked only once the expected messages are in: pulsar-lite fails "more
                # available?" on a topic with nothing stored yet (they may be on their way).
                due = len(stored) < expected or reader.has_message_available()
                try:
                    msg = reader.read_next(READ_STALL_MS if due else READ_QUIET_MS)
                except pulsar.Timeout:
                    # Nothing came although more was due: a stall if the broker has more.
                    stalled = due and bool(this_pass) and reader.has_message_available()
                    break
                key = message_key(msg)
                if key in this_pass:
                    duplicates += 1
                    continue
                this_pass.add(key)
                if key not in stored:
                    stored[key] = msg.data()
        finally:
            reader.close()
        if not stalled:
            break
    return TopicRead(topic, list(stored.values()), duplicates)


def read_topic(client: pulsar.Client, topic: str, expected: int = 0) -> list[dict[str, Any]]:
    """Every message stored in ``topic``, decoded; see `read_topic_counted` (same rules)."""
    return read_topic_counted(client, topic, expected).messages()


async def persisted(client: pulsar.Client, topic: str, expected: int = 0
                    ) -> list[dict[str, Any]]:
    """`read_topic` without blocking Trio, bounded by ``LONG`` seconds."""
    with trio.fail_after(LONG):
        return await trio.to_thread.run_sync(read_topic, client, topic, expected)


class PublishFailed(RuntimeError):
    """The broker refused a message, or did not confirm them all in time."""


def publish(client: pulsar.Client, topic: str, payloads: Sequence[bytes], *,
            batching: bool = False, timeout: float | None = None) -> float:
    """Send ``payloads`` to ``topic`` with ``send_async``; wait until the broker confirmed all.

    The producer blocks when its queue is full, never times a send out, and holds up to all
    the payloads (100,000 at most) in flight; it is created before the timing starts.

    Args:
        client: a client on the broker.
        topic: the topic.
        payloads: the message payloads, in order.
        batching: the producer batches messages, or (pulsar-client's default) sends each
            as an entry of its own. It matters to consumers: a batch is redelivered whole
            until every message in it is acknowledged.
        timeout: seconds to wait for the confirmations; ``60 + len(payloads) / 200`` if None.

    Returns:
        Seconds from the first send until the last confirmation.

    Raises:
        PublishFailed: a send failed, or not all were confirmed within ``timeout``.
    """
    n = len(payloads)
    if timeout is None:
        timeout = 60.0 + n / 200.0
    producer = client.create_producer(
        topic, batching_enabled=batching, block_if_queue_full=True,
        max_pending_messages=max(1000, min(n, 100_000)), send_timeout_millis=0,
    )
    done = threading.Event()
    confirmed = itertools.count(1)
    failures: list[Any] = []
    ok = pulsar.Result.Ok

    def callback(result: Any, _msg_id: Any) -> None:
        if result != ok:
            failures.append(result)
        if next(confirmed) == n:
            done.set()

    try:
        send = producer.send_async
        start = time.perf_counter()
        for payload in payloads:
            send(payload, callback)
        if batching:
            producer.flush()
        if n and not done.wait(timeout):
            raise PublishFailed(f"{topic}: not all {n} sends confirmed within {timeout:g}s")
        elapsed = time.perf_counter() - start
    finally:
        producer.close()
    if failures:
        raise PublishFailed(f"{topic}: {len(failures)} sends failed, e.g. {failures[0]}")
    return elapsed


async def publish_messages(client: pulsar.Client, topic: str,
                           messages: Iterable[dict[str, Any]], *, batching: bool = False
                           ) -> None:
    """`publish` wire ``messages`` as the topic's payloads (`to_payload`) without blocking
    Trio; returns once all are confirmed."""
    payloads = [to_payload(topic, m) for m in messages]
    await trio.to_thread.run_sync(functools.partial(publish, client, topic, payloads,
                                                    batching=batching))


# ---------------------------------------------------------------- import clients


class ImportClient:
    """An import WebSocket (``?receipts=true``) whose server frames a task collects.

    Run `collect` in a nursery (`open_import` does), `send` frames, and wait for acks with
    `wait_ack` or `wait_until`. Ack violations are recorded, not raised, so a test can assert
    on them at the end.

    Attributes:
        ws: the connection.
        received: every server frame, decoded, in arrival order.
        acks: the N of every ``{"ack": N}``, in arrival order.
        errors: every ``{"error": ...}`` body, in arrival order.
        sent: frames handed to `send` so far (counted before sending, so an ack can never
            legitimately exceed it).
        violations: an ack not above the previous one or above ``sent``; an unknown frame.
        draining: set when the server said it drains (``{"draining": …}``): a client that
            reads replies stops sending then.
        closed: the ConnectionClosed that ended the connection, once it has.
        done: set once `collect` has ended.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.acks: list[int] = []
        self.errors: list[dict[str, Any]] = []
        self.sent = 0
        self.violations: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.done = trio.Event()
        self.draining = trio.Event()
        self._changed = trio.Event()

    @property
    def ack(self) -> int:
        """The last ack received (0 before any)."""
        return self.acks[-1] if self.acks else 0

    async def collect(self) -> None:
        """Read server frames until the connection closes, checking acks as they come."""
        try:
            while True:
                frame = json.loads(await self.ws.recv())
                self.received.append(frame)
                if "ack" in frame:
                    n = frame["ack"]
                    if n <= self.ack:
                        self.violations.append(f"ack {n} after ack {self.ack}")
                    if n > self.sent:
                        self.violations.append(f"ack {n} with only {self.sent} frames sent")
                    self.acks.append(n)
                elif "error" in frame:
                    self.errors.append(frame["error"])
                elif "draining" in frame:
                    if self.draining.is_set():
                        self.violations.append("a second draining frame")
                    self.draining.set()
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

    async def send(self, frame: str | bytes) -> None:
        """Send one frame (text for ``str``, binary for ``bytes``)."""
        self.sent += 1
        await self.ws.send(frame)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds.

        Raises:
            AssertionError: the connection ended first.
        """
        while not predicate():
            if self.done.is_set():
                raise AssertionError(f"connection ended ({self.closed!r}) while waiting; "
                                     f"last ack {self.ack}")
            await self._changed.wait()

    async def wait_ack(self, n: int) -> None:
        """Wait until an ack of at least ``n`` has arrived (see `wait_until`)."""
        await self.wait_until(lambda: self.ack >= n)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        await self.done.wait()


class ExportStream:
    """An ``ack=client`` export connection: collects ``{"seq", "message"}`` frames.

    Run `collect` in a nursery; it ends when the connection does. Attributes: ``frames``, the
    ``(seq, metadata id)`` of every message frame in arrival order; ``others``, every other
    server frame (``{"end": true}``, error frames); ``closed``, the ConnectionClosed that
    ended it; ``done``, set once `collect` has ended.
    """

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
        """Wait until ``n`` message frames have arrived.

        Raises:
            AssertionError: the connection ended first.
        """
        while len(self.frames) < n:
            if self.done.is_set():
                raise AssertionError(f"closed ({self.closed!r}) after {len(self.frames)} frames")
            await self._changed.wait()

    async def wait_news(self, seen: int) -> None:
        """Wait until more than ``seen`` message frames have arrived, or the connection ended."""
        while len(self.frames) <= seen and not self.done.is_set():
            await self._changed.wait()

    async def ack(self, n: int) -> None:
        """Acknowledge every frame up to seq ``n``."""
        await self.ws.send(json.dumps({"ack": n}))


@asynccontextmanager
async def open_import(url: str, **options: Any) -> AsyncIterator[ImportClient]:
    """Connect, collect server frames in the background, and close normally at the end.

    The close is the client's: a close frame as soon as the body is done (without waiting for
    acks), then every server frame is read until the server's close frame (the final ack comes
    before it).

    Args:
        url: the import WebSocket's URL (see `import_path`).
        **options: for websockets' ``connect``; ``close_timeout`` is ``LONG`` unless given.
    """
    options.setdefault("close_timeout", LONG)
    async with connect(url, **options) as ws:
        client = ImportClient(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.collect)
            yield client
            await ws.aclose()
            await client.wait_closed()


async def import_frames(url: str, frames: Iterable[str | bytes], **options: Any
                        ) -> ImportClient:
    """Send ``frames`` over one import connection (`open_import`) and close it.

    Returns:
        The client, after the server's close: its acks (the last one is the final ack), its
        error frames, and how the connection closed.
    """
    async with open_import(url, **options) as client:
        for frame in frames:
            await client.send(frame)
    return client


# ---------------------------------------------------------------- HTTP


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


def metric_samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of metric ``name`` in Prometheus text (e.g. /metrics): label set -> value.

    An unlabelled sample's label set is ``frozenset()``.
    """
    samples: dict[frozenset[tuple[str, str]], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            samples[labels] = float(match.group(2))
    return samples


async def _refusal(url: str, **options: Any) -> Response:
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            async with connect(url, **options):
                pass
    except InvalidStatus as refused:
        return refused.response
    raise AssertionError(f"the handshake at {url} was accepted")


async def refused_status(url: str, **options: Any) -> int:
    """The HTTP status the WebSocket handshake at ``url`` is refused with.

    Args:
        url: the WebSocket URL.
        **options: for websockets' ``connect`` (e.g. ``additional_headers``).

    Raises:
        AssertionError: the handshake was accepted.
    """
    return int((await _refusal(url, **options)).status_code)


async def expect_status(url: str, status: int) -> None:
    """Assert that the WebSocket handshake at ``url`` is refused with HTTP ``status``."""
    response = await _refusal(url)
    assert response.status_code == status, response.body


# ---------------------------------------------------------------- quiesce commands as processes


def command_process(*args: str, cwd: Path | None = None,
                    env: Mapping[str, str] | None = None) -> GatewayProcess:
    """Start ``python -m quiesce.supervisor ARGS…`` (``import``, ``export``…) without waiting.

    Its output (stderr, with stdout merged in) is read line by line as a gateway's is, so a test
    waits on a line with `GatewayProcess.wait_line_async`, on the exit with
    `GatewayProcess.wait_exit_async`, and ends it with `GatewayProcess.stop` (grace 0: SIGKILL).
    ``QUIESCE_*`` variables are removed from its environment, then ``env`` is added.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "quiesce.supervisor", *args], cwd=cwd, env=clean_env(env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    return GatewayProcess(process)


async def wait_count(process: GatewayProcess, pattern: str, at_least: int) -> int:
    """Wait for an output line where ``pattern``'s first group, a number, is ``at_least``.

    Bound it with ``trio.fail_after``. Returns the number found.

    Raises:
        RuntimeError: the process's output ended first.
    """
    start = 0
    while True:
        match = await process.wait_line_async(pattern, start)
        start = process.lines.index(match.string, start) + 1
        if int(match.group(1)) >= at_least:
            return int(match.group(1))


# ---------------------------------------------------------------- quiesce import/export in process


class Watch:
    """A `quiesce.client.progress.Progress` that tests read: the count so far and every note.

    `reached` lets a test wait, without sleeping, until a run got that far.

    Attributes:
        completed: the last count reported.
        total: the total announced by ``start``.
        notes: every note, in order.
    """

    def __init__(self) -> None:
        self.completed = 0
        self.total: int | None = None
        self.notes: list[str] = []
        self._changed = trio.Event()

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """Record the total and the starting count."""
        self.total = total
        self.update(completed)

    def update(self, completed: int) -> None:
        """Record the count and wake the waiters."""
        self.completed = completed
        self._changed.set()
        self._changed = trio.Event()

    def note(self, text: str) -> None:
        """Keep the note."""
        self.notes.append(text)

    def stop(self) -> None:
        """Nothing to stop."""

    async def reached(self, count: int) -> None:
        """Wait until the count is at least ``count`` (bound it with ``trio.fail_after``)."""
        while self.completed < count:
            await self._changed.wait()


async def import_files(gateway: Listening, flow: str, paths: Sequence[Path | str], *,
                       watch: Watch | None = None, stop: trio.Event | None = None,
                       **options: Any) -> ImportReport:
    """Run ``quiesce import`` in this process against ``gateway``; return its report.

    Args:
        gateway: the gateway (in process or a process of its own).
        flow: the flow.
        paths: the inputs.
        watch: the progress reporter; a fresh `Watch` when None.
        stop: set it to stop the run as Ctrl-C does.
        **options: `ImportOptions` fields; ``source`` options (``wire``, ``batch``…) may be
            given here too.
    """
    source_fields = {f for f in SourceOptions.__dataclass_fields__ if f != "kind"}
    source = {k: options.pop(k) for k in list(options) if k in source_fields}
    kind = options.get("kind", "triples")
    import_options = ImportOptions(url=f"ws://127.0.0.1:{gateway.port}", flow=flow,
                                   source=SourceOptions(kind=kind, **source), **options)
    inputs = prepare_import(import_options, [str(p) for p in paths])
    importer = Importer(import_options, inputs, watch or Watch())
    with trio.fail_after(LONG):
        return await importer.run(stop)


async def export_flow(gateway: Listening, flow: str, out: Path, fmt: str = "jsonl", *,
                      watch: Watch | None = None, **options: Any) -> ExportReport:
    """Run ``quiesce export --until-end`` in this process into ``out``; return its report.

    Args:
        gateway: the gateway.
        flow: the flow.
        out: the output file (appended to).
        fmt: jsonl, nt, nq or ttl.
        watch: the progress reporter; a fresh `Watch` when None.
        **options: `ExportOptions` fields (``until_end`` is True unless given).
    """
    kind = options.setdefault("kind", "triples")
    options.setdefault("until_end", True)
    options.setdefault("subscription", default_subscription(flow, kind, out))
    export_options = ExportOptions(url=f"ws://127.0.0.1:{gateway.port}", flow=flow,
                                   out=str(out), **options)
    writer = open_writer(fmt, out, kind)
    try:
        with trio.fail_after(LONG):
            return await Exporter(export_options, writer, watch or Watch()).run()
    finally:
        writer.close()
