"""Fixtures of the interoperability suite: TrustGraph's released clients against ``quiesce serve``.

Every test here is marked ``interop`` (added below), which the default run deselects
(``addopts`` in pyproject.toml); ``python -m pytest -m interop`` runs them. They need the
registry once per TrustGraph version (see :mod:`tests.interop.envs`); later runs reuse the
cached venvs.

What the fixtures give:

- ``tg_env(version)``: the venv of a TrustGraph version (built or reused), its build time,
  cache state and size recorded for the end-of-run summary;
- ``gateway`` and ``gateway_tg2``: real ``python -m quiesce.supervisor serve`` *processes* on
  the session broker, one per profile (``QUIESCE_PROFILE=tg1``, the default, and ``tg2``), on
  free ports, ready once they logged ``ready on http://127.0.0.1:PORT``; shared by the session
  (every test uses flows of its own). Their JSON log is what tests synchronise on (an export
  connection is subscribed once it logs ``opening -> running``) and where they read each
  import connection's summary (frames received, persisted, rejected); their ``/metrics``
  counts rejected frames;
- helpers to run a tool with a bounded timeout, read what reached a topic (TrustGraph's own
  topic names, payloads in TrustGraph's schema encoding of the profile), and publish to one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pulsar
import pytest
import trio

from quiesce.core import convert
from quiesce.core.profiles import Profile
from tests.harness import GatewayProcess, read_topic_counted, to_payload, topic_of
from tests.interop.envs import TgEnv, ensure_env

HERE = Path(__file__).parent
DRIVER = HERE / "tg_driver.py"
SCHEMA_DRIVER = HERE / "tg_schema_driver.py"
# Bounds: gateway start and stop, one tool run, an exporter's whole run.
GATEWAY_START_TIMEOUT = 30.0
GATEWAY_STOP_TIMEOUT = 40.0
TOOL_TIMEOUT = 120.0
EXPORT_TIMEOUT = 60.0
# END marks the end of what a test published straight to a topic (after a tool's frames).
END = "quiesce-end"
# How long a read of a topic must find nothing for the topic to count as empty.
EMPTY_PROOF_MS = 2000

_ENV_REPORT: dict[str, TgEnv] = {}
_COUNTS: dict[str, dict[str, Any]] = {}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/interop ``interop``."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report each test's counts, and per TrustGraph version its build, cache state, size."""
    if _COUNTS:
        terminalreporter.section("interop counts")
        for nodeid, counts in _COUNTS.items():
            shown = ", ".join(f"{k}={v}" for k, v in counts.items())
            terminalreporter.write_line(f"{nodeid.rsplit('/', 1)[-1]}: {shown}")
    if SHORT_READS:
        terminalreporter.section("topic reads made again")
        for name, first, again in SHORT_READS:
            terminalreporter.write_line(f"{name}: {first} read, then {again}")
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
    """``counts(sent=…, persisted=…, …)``: print this test's counts and record them for the
    end-of-run summary."""

    def record(**values: Any) -> None:
        _COUNTS.setdefault(request.node.nodeid, {}).update(values)
        print(f"\n{request.node.name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))

    return record


# --------------------------------------------------------------------------------------------
# Gateways
# --------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """A running ``quiesce serve`` process of one profile, and what it logged (JSON lines)."""

    process: GatewayProcess
    profile: str

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.process.port

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

    def mark(self) -> int:
        """The index of the next log line (wait for what is logged after an action)."""
        return len(self.process.lines)

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        """The JSON log records from line ``start`` on (other output skipped)."""
        out = []
        for line in self.process.lines[start:]:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    async def export_running(self, flow: str, kind: str, start: int = 0) -> None:
        """Wait until an export connection of (flow, kind) runs: its subscription exists.

        Exporters connect without a subscription name, so they get only what is published
        after their subscription exists; the connection enters ``running`` once it does.
        """
        pattern = (rf'^(?=.*"machine": "connection")(?=.*"direction": "export")'
                   rf'(?=.*"flow": "{re.escape(flow)}")(?=.*"kind": "{re.escape(kind)}")'
                   rf'(?=.*"target": "running")')
        with trio.fail_after(EXPORT_TIMEOUT):
            await self.process.wait_line_async(pattern, start)

    async def import_closed(self, flow: str, kind: str, connections: int = 1
                            ) -> dict[str, int]:
        """Wait until ``connections`` import connections of (flow, kind) have logged their
        summary; return the totals (`import_totals`)."""
        pattern = (rf'^(?=.*"message": "import closed)(?=.*"flow": "{re.escape(flow)}")'
                   rf'(?=.*"kind": "{re.escape(kind)}")')
        start = 0
        with trio.fail_after(EXPORT_TIMEOUT):
            for _ in range(connections):
                await self.process.wait_line_async(pattern, start)
                start = next(i for i in range(start, len(self.process.lines))
                             if re.search(pattern, self.process.lines[i])) + 1
        return self.import_totals(flow, kind)

    def import_summaries(self, flow: str, kind: str) -> list[dict[str, Any]]:
        """The ``import closed`` records of (flow, kind): frames received, persisted and
        rejected per connection."""
        return [r for r in self.records() if r.get("message", "").startswith("import closed")
                and r.get("flow") == flow and r.get("kind") == kind]

    def import_totals(self, flow: str, kind: str) -> dict[str, int]:
        """Frames received, persisted and rejected over every import connection of (flow,
        kind) that has closed."""
        summaries = self.import_summaries(flow, kind)
        return {key: sum(int(s[key]) for s in summaries)
                for key in ("received", "persisted", "rejected")}

    def rejections(self, flow: str, kind: str) -> list[str]:
        """The rejection details the gateway logged for (flow, kind) (rate-limited: the first
        of each connection at least)."""
        return [r["message"] for r in self.records() if "rejected (" in r.get("message", "")
                and r.get("flow") == flow and r.get("kind") == kind]


def start_gateway_process(broker_url: str, data: Path, profile: str,
                          env: dict[str, str] | None = None) -> Gateway:
    """Start a gateway process of ``profile`` (``QUIESCE_PROFILE``) and wait until ready."""
    process = GatewayProcess.start(
        "--log-format", "json", pulsar_url=broker_url, data_dir=data,
        env={"QUIESCE_PROFILE": profile, **(env or {})})
    try:
        process.wait_ready(GATEWAY_START_TIMEOUT)
    except BaseException:
        process.stop(0)
        raise
    return Gateway(process, profile)


def stop_gateway_process(gateway: Gateway) -> int | None:
    """SIGTERM ``gateway`` and return its exit code (None: it had to be killed)."""
    gateway.process.signal(signal.SIGTERM)
    code = gateway.process.wait_exit(GATEWAY_STOP_TIMEOUT)
    if code is None:
        gateway.process.stop(0)
    return code


@pytest.fixture(scope="session")
def gateway(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A tg1 gateway process on the session broker (the default profile, nothing set)."""
    gw = start_gateway_process(broker_url, tmp_path_factory.mktemp("gateway"), "tg1")
    yield gw
    code = stop_gateway_process(gw)
    assert code == 0, gw.process.log()


@pytest.fixture(scope="session")
def gateway_tg2(broker_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Gateway]:
    """A gateway process with ``QUIESCE_PROFILE=tg2`` on the session broker."""
    gw = start_gateway_process(broker_url, tmp_path_factory.mktemp("gateway-tg2"), "tg2")
    yield gw
    code = stop_gateway_process(gw)
    assert code == 0, gw.process.log()


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
    seconds: float = 0.0

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
    started = trio.current_time()
    with trio.fail_after(within):
        result = await trio.run_process(args, capture_stdout=True, capture_stderr=True,
                                        check=False, env=tool_env(),
                                        stdin=subprocess.DEVNULL)
    return ToolRun(args, result.returncode, result.stdout.decode(errors="replace"),
                   result.stderr.decode(errors="replace"), trio.current_time() - started)


class LineReader:
    """Collects a running process's output lines and lets a test wait for one that matches.

    Attributes:
        lines: the lines of ``stream`` so far (stdout unless told).
        stderr: the reader of the process's stderr, when `start` was asked to capture it.
    """

    def __init__(self, process: trio.Process, stream: Any = None) -> None:
        self.process = process
        self.stream = stream if stream is not None else process.stdout
        self.lines: list[str] = []
        self.stderr: LineReader | None = None
        self._changed = trio.Event()
        self.closed = False

    async def pump(self) -> None:
        """Read the stream until EOF (run in a nursery)."""
        assert self.stream is not None
        buffer = b""
        async for chunk in self.stream:
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


async def start(nursery: trio.Nursery, argv: list[str | Path], capture_stderr: bool = False
                ) -> tuple[trio.Process, LineReader]:
    """Start ``argv`` in ``nursery`` with its stdout (and, if asked, stderr: ``.stderr`` of
    the reader) collected line by line; otherwise pytest captures its stderr."""
    process: trio.Process = await nursery.start(partial(
        trio.run_process, [str(a) for a in argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        stdin=subprocess.DEVNULL, check=False, env=tool_env()))
    reader = LineReader(process)
    nursery.start_soon(reader.pump)
    if capture_stderr:
        reader.stderr = LineReader(process, process.stderr)
        nursery.start_soon(reader.stderr.pump)
    return process, reader


async def start_exporter(nursery: trio.Nursery, env: TgEnv, gateway: Gateway, flow: str,
                         kind: str, count: int) -> tuple[trio.Process, LineReader]:
    """Start the bulk client's exporter of ``env`` (``tg_driver.py export``) for ``count``
    items of (flow, kind); return once its subscription exists (the gateway says so)."""
    mark = gateway.mark()
    exporter = await start(nursery, [env.python, DRIVER, "export", kind, "--url",
                                     gateway.http_url, "--flow", flow, "--count", str(count)])
    await gateway.export_running(flow, kind, mark)
    return exporter


async def finished(process: trio.Process, within: float = EXPORT_TIMEOUT) -> int:
    """Wait (at most ``within`` s) for ``process`` to exit; return its exit code."""
    with trio.fail_after(within):
        return await process.wait()


# --------------------------------------------------------------------------------------------
# Reading and writing topics
# --------------------------------------------------------------------------------------------


def topic(flow: str, kind: str, profile: str = "tg1") -> str:
    """Where a gateway of ``profile`` publishes (flow, kind): TrustGraph's own topic
    (``persistent://tg/flow/triples-store:FLOW``; tg2 with the workspace ``default``)."""
    return topic_of(kind, flow, profile)


# Reads of a topic that came up short of what the test expected and were made again.
SHORT_READS: list[tuple[str, int, int]] = []
READ_TRIES = 3


def _read_or_empty(client: pulsar.Client, name: str, expected: int) -> list[bytes]:
    try:
        best = read_topic_counted(client, name, expected).payloads
        # pulsar-lite's dispatch to a reader sometimes stops short of the end while saying
        # nothing more is available (seen once in ~40 reads of 300 batched messages: 299). A
        # fresh reader then gets everything; a message that is not stored is never found.
        tries = 1
        while len(best) < expected and tries < READ_TRIES:
            tries += 1
            again = read_topic_counted(client, name, expected).payloads
            SHORT_READS.append((name, len(best), len(again)))
            if len(again) > len(best):
                best = again
        return best
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


async def stored(client: pulsar.Client, flow: str, kind: str, profile: str = "tg1",
                 expected: int = 0) -> list[dict[str, Any]]:
    """Every payload in the topic of (flow, kind), JSON-decoded as stored: TrustGraph's
    schema encoding of ``profile`` (1.x ``JsonSchema`` records, 2.x dataclass dicts)."""
    payloads = await trio.to_thread.run_sync(_read_or_empty, client,
                                             topic(flow, kind, profile), expected)
    return [json.loads(p) for p in payloads]


async def persisted(client: pulsar.Client, flow: str, kind: str, profile: str = "tg1",
                    expected: int = 0) -> list[dict[str, Any]]:
    """Every message in the topic of (flow, kind), as the profile's wire format (what the
    gateway exports; ``tests.harness.from_payload``), one per message id."""
    return [convert.from_pulsar(kind, p, Profile(profile))
            for p in await stored(client, flow, kind, profile, expected)]


async def publish(client: pulsar.Client, flow: str, kind: str, message: dict[str, Any],
                  profile: str = "tg1") -> None:
    """Publish wire ``message`` to the topic of (flow, kind) as the profile's payload."""
    name = topic(flow, kind, profile)

    def send() -> None:
        producer = client.create_producer(name)
        try:
            producer.send(to_payload(name, message))
        finally:
            producer.close()

    await trio.to_thread.run_sync(send)


def rejected(gateway: Gateway, kind: str) -> float:
    """Frames of ``kind`` the gateway has rejected as ``invalid-message`` so far."""
    return gateway.metric("messages_rejected_total", kind=kind, code="invalid-message")
