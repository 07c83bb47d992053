"""Fixtures of the interoperability suite: TrustGraph's released clients against ``quiesce serve``.

Every test here is marked ``interop`` (added below), which the default run deselects
(``addopts`` in pyproject.toml); ``python -m pytest -m interop`` runs them. They need the
registry once per TrustGraph version (see :mod:`tests.interop.envs`); later runs reuse the
cached venvs.

What the fixtures give:

- ``tg_env(version)``: the venv of a TrustGraph version (built or reused), its build time,
  cache state and size recorded for the end-of-run summary;
- ``gateway``: a real ``python -m quiesce.supervisor serve`` *process* on the session broker,
  on a free port, ready once it logged ``ready on http://127.0.0.1:PORT``; shared by the
  session (every test uses flows of its own), with its ``/metrics`` readable for the counts
  of frames it rejected;
- helpers to run a tool with a bounded timeout, read what reached a topic, and publish probes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio

from quiesce.core.config import Settings
from tests.harness import read_topic
from tests.interop.envs import TgEnv, ensure_env

HERE = Path(__file__).parent
DRIVER = HERE / "tg_driver.py"
# Bounds: gateway start and stop, one tool run.
GATEWAY_START_TIMEOUT = 30.0
GATEWAY_STOP_TIMEOUT = 40.0
TOOL_TIMEOUT = 120.0
# Probes (metadata id PROBE) find out when an exporter's subscription exists; END marks the
# end of what a test published. A probe not reported within PROBE_WAIT is taken as published
# before the subscription existed.
PROBE = "quiesce-probe"
END = "quiesce-end"
PROBE_WAIT = 5.0
PROBE_TRIES = 8
EXPORT_TIMEOUT = 60.0
# How long a read of a topic must find nothing for the topic to count as empty.
EMPTY_PROOF_MS = 2000

_ENV_REPORT: dict[str, TgEnv] = {}
_COUNTS: dict[str, dict[str, int]] = {}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/interop ``interop``."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report, per TrustGraph version used, its packages, build time, cache state and size."""
    if _COUNTS:
        terminalreporter.section("interop counts")
        for nodeid, counts in _COUNTS.items():
            shown = ", ".join(f"{k}={v}" for k, v in counts.items())
            terminalreporter.write_line(f"{nodeid.rsplit('/', 1)[-1]}: {shown}")
    if not _ENV_REPORT:
        return
    terminalreporter.section("TrustGraph environments")
    for version, env in sorted(_ENV_REPORT.items()):
        state = "reused from cache" if env.cached else "built"
        terminalreporter.write_line(
            f"{version}: {' '.join(env.packages)}; {state} in {env.seconds:.1f} s "
            f"(its build took {env.built_seconds:.1f} s); {env.size_bytes / 2**20:.0f} MiB "
            f"at {env.path}")


@pytest.fixture(scope="session")
def tg_env() -> Callable[[str], TgEnv]:
    """``tg_env(version)``: the (cached) venv of that TrustGraph version."""

    def get(version: str) -> TgEnv:
        if version not in _ENV_REPORT:
            _ENV_REPORT[version] = ensure_env(version)
        return _ENV_REPORT[version]

    return get


Counts = Callable[..., None]


@pytest.fixture
def counts(request: pytest.FixtureRequest) -> Counts:
    """``counts(sent=…, persisted=…, …)``: record this test's counts for the summary."""

    def record(**values: int) -> None:
        _COUNTS.setdefault(request.node.nodeid, {}).update(values)

    return record


@dataclass
class GatewayProcess:
    """A running ``quiesce serve`` process and what it logged."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT/``: the form 1.9+/2.x tools take."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/``: the form 1.4 tools need (they use the URL as given)."""
        return f"ws://127.0.0.1:{self.port}/"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of metric ``name`` over the samples whose labels include ``labels``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if not match:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(2))
        return total


@pytest.fixture(scope="session")
def gateway(broker_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayProcess]:
    """A real gateway process on the session broker, on a free port, stopped with SIGTERM."""
    data = tmp_path_factory.mktemp("gateway")
    process = subprocess.Popen(
        [sys.executable, "-m", "quiesce.supervisor", "serve", "--port", "0",
         "--pulsar-url", broker_url, "--data-dir", str(data), "--log-format", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    port: list[int] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"ready on http://127\.0\.0\.1:(\d+)", line)
            if match and not port:
                port.append(int(match.group(1)))
                ready.set()
        ready.set()  # the process ended: wake the waiter

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(GATEWAY_START_TIMEOUT) or not port:
        process.kill()
        raise RuntimeError("gateway did not get ready:\n" + "".join(lines[-30:]))
    gw = GatewayProcess(process, port[0], lines)
    yield gw
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(GATEWAY_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert code == 0, "".join(lines[-30:])


# --------------------------------------------------------------------------------------------
# Running tools
# --------------------------------------------------------------------------------------------


@dataclass
class ToolRun:
    """The outcome of one tool process."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"$ {' '.join(self.argv)}\n-> exit {self.returncode}\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-3000:]}")

    __repr__ = __str__  # assertion messages show the whole outcome


def tool_env() -> dict[str, str]:
    """The environment of a tool: unbuffered output, no TrustGraph settings of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTGRAPH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_tool(argv: list[str | Path], within: float = TOOL_TIMEOUT) -> ToolRun:
    """Run ``argv`` to completion (at most ``within`` s) and return its outcome."""
    args = [str(a) for a in argv]
    with trio.fail_after(within):
        result = await trio.run_process(args, capture_stdout=True, capture_stderr=True,
                                        check=False, env=tool_env(),
                                        stdin=subprocess.DEVNULL)
    return ToolRun(args, result.returncode, result.stdout.decode(errors="replace"),
                   result.stderr.decode(errors="replace"))


class LineReader:
    """Collects a running process's stdout lines and lets a test wait for one that matches."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.closed = False

    async def pump(self) -> None:
        """Read stdout until EOF (run in a nursery)."""
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                self.lines.append(line.decode(errors="replace"))
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode(errors="replace"))
        self.closed = True
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[str]], bool], within: float) -> bool:
        """Wait until ``predicate(lines)`` holds; False after ``within`` s or at EOF."""
        with trio.move_on_after(within):
            while not predicate(self.lines):
                if self.closed:
                    return predicate(self.lines)
                await self._changed.wait()
            return True
        return False


# --------------------------------------------------------------------------------------------
# Reading and writing topics
# --------------------------------------------------------------------------------------------


def topic(flow: str, kind: str) -> str:
    """Where today's gateway publishes (flow, kind) (CONTRACT §5)."""
    return Settings().topic_for(flow, kind)


def _read_or_empty(client: pulsar.Client, name: str) -> list[dict[str, Any]]:
    try:
        return read_topic(client, name)
    except pulsar.PulsarException:
        # pulsar-lite fails "more available?" (getLastMessageId) on a topic that never had a
        # message; it is empty only if a plain read finds nothing either.
        reader = client.create_reader(name, pulsar.MessageId.earliest)
        try:
            reader.read_next(EMPTY_PROOF_MS)
        except pulsar.Timeout:
            return []
        finally:
            reader.close()
        raise


async def persisted(client: pulsar.Client, flow: str, kind: str) -> list[dict[str, Any]]:
    """Every message in the topic of (flow, kind), de-duplicated by message id."""
    return await trio.to_thread.run_sync(_read_or_empty, client, topic(flow, kind))


async def publish(client: pulsar.Client, flow: str, kind: str, message: dict[str, Any]) -> None:
    """Publish ``message`` straight to the topic of (flow, kind) (probes, end markers)."""

    def send() -> None:
        producer = client.create_producer(topic(flow, kind))
        try:
            producer.send(json.dumps(message).encode())
        finally:
            producer.close()

    await trio.to_thread.run_sync(send)


async def start(nursery: trio.Nursery, argv: list[str | Path]) -> tuple[trio.Process, LineReader]:
    """Start ``argv`` in ``nursery`` with its stdout collected line by line."""
    process: trio.Process = await nursery.start(partial(
        trio.run_process, [str(a) for a in argv], stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL, check=False, env=tool_env()))  # stderr: pytest captures it
    reader = LineReader(process)
    nursery.start_soon(reader.pump)
    return process, reader


async def await_subscription(client: pulsar.Client, flow: str, kind: str,
                             probe: dict[str, Any], reader: LineReader,
                             seen: Callable[[list[str]], bool]) -> int:
    """Publish ``probe`` to the topic of (flow, kind) until ``seen(lines)`` holds for the
    exporter's output; return how many probes were published.

    Exporters connect without a subscription name, so they get only what is published after
    their subscription exists; no event says when that is, so this asks the exporter itself.
    """
    for tries in range(1, PROBE_TRIES + 1):
        await publish(client, flow, kind, probe)
        if await reader.wait_for(seen, PROBE_WAIT):
            return tries
        assert not reader.closed, "the exporter ended before any probe reached it"
    raise AssertionError(f"no probe reached the exporter in {PROBE_TRIES} tries")


# --------------------------------------------------------------------------------------------
# Failing for the expected reason
# --------------------------------------------------------------------------------------------


class NeedsProfiles(AssertionError):
    """The gateway refused TrustGraph 2.x traffic (what the ``tg2`` profile work must fix)."""


class FramesRejected(NeedsProfiles):
    """Frames of a 2.x client were answered with errors instead of being published."""


class KindRefused(NeedsProfiles):
    """The handshake of a 2.x-only kind (``rows``) was refused with HTTP 404."""


def outside_trio_mode(test: Callable[..., Any]) -> Callable[..., None]:
    """Run the async ``test`` with ``trio.run`` instead of pytest-trio.

    pytest-trio runs a test inside a nursery, so whatever it raises reaches pytest wrapped in
    an ExceptionGroup, and ``xfail(raises=…)`` cannot see the exception's type. Run this way,
    the test's own exception reaches pytest as it is. Fixtures must then be synchronous.
    """

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        trio.run(partial(test, *args, **kwargs))

    return run


def rejected(gateway: GatewayProcess, kind: str) -> float:
    """Frames of ``kind`` the gateway has rejected as ``invalid-message`` so far."""
    return gateway.metric("messages_rejected_total", kind=kind, code="invalid-message")
