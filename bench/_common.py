"""Shared helpers for quiesce's benchmarks (``import_bench.py``, ``export_bench.py``).

Everything here runs real processes on loopback:

* ``pulsar_lite`` starts the pulsar-lite binary from its PyPI wheel on a free port, with its
  metrics endpoint disabled and its data in a temporary directory, and stops it on exit;
* ``gateway`` starts ``python -m supervisor serve`` as a separate process against that broker,
  waits for its ``ready on http://127.0.0.1:<port>`` log line, keeps draining its stderr (so
  its logging can never block on a full pipe), and SIGTERMs it on exit;
* ``triples_payloads`` builds the ~1.2 KB triples JSON frames the benchmarks send;
* ``cpu_seconds`` / ``CpuMeter`` read a process's CPU time from ``/proc`` (Linux), to show
  where the machine's cores went during a measurement;
* ``Stats`` keeps the repeated timings of one measurement and gives best and median;
  ``print_table`` prints a list of them against a baseline (``fmt_cpu`` its CPU column);
* ``topic_for`` / ``new_flow`` name a fresh flow and its topic by the gateway's own rule.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulsar

from quiesce.core.config import load_settings

# The benchmarks run as scripts (`python bench/import_bench.py`), so only bench/ is on
# sys.path. This is the one place that adds the repository root, after bench/ and before
# site-packages, so that `tests.data` is this checkout's.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

from tests.data import sample_message  # noqa: E402

__all__ = [
    "BenchFailure",
    "CpuMeter",
    "Gateway",
    "Stats",
    "cpu_seconds",
    "fmt_cpu",
    "free_port",
    "gateway",
    "new_flow",
    "print_table",
    "pulsar_lite",
    "send_all_async",
    "timeout_for",
    "topic_for",
    "triples_payloads",
    "wait_for_port",
]

BROKER_START_TIMEOUT = 20.0
GATEWAY_START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_READY_RE = re.compile(r"ready on http://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    """Poll until 127.0.0.1:``port`` accepts a TCP connection.

    Raises:
        RuntimeError: ``process`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def _stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Broker:
    """A running pulsar-lite broker.

    Attributes:
        url: its ``pulsar://127.0.0.1:<port>`` URL.
        pid: the broker process's id.
    """

    url: str
    pid: int


@contextlib.contextmanager
def pulsar_lite() -> Iterator[Broker]:
    """Start a pulsar-lite broker in a temporary directory; stop it (SIGTERM) on exit."""
    from pulsar_lite.binary_finder import find_pulsar_lite_binary

    with tempfile.TemporaryDirectory(prefix="quiesce-bench-") as tmp:
        config = Path(tmp) / "pulsar-lite.toml"
        config.write_text("[metrics]\nenabled = false\n")
        port = free_port()
        log = (Path(tmp) / "broker.log").open("wb")
        process = subprocess.Popen(
            [
                str(find_pulsar_lite_binary()),
                "--config", str(config),
                "--addr", f"127.0.0.1:{port}",
                "--db-path", str(Path(tmp) / "db"),
                "--log-level", "warn",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            try:
                wait_for_port(port, BROKER_START_TIMEOUT, process)
            except RuntimeError as exc:
                tail = (Path(tmp) / "broker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pulsar-lite did not start: {exc}\n{tail}") from exc
            yield Broker(url=f"pulsar://127.0.0.1:{port}", pid=process.pid)
        finally:
            _stop(process)


@dataclass
class Gateway:
    """A running gateway process.

    Attributes:
        port: the port it listens on (127.0.0.1).
        pid: its process id (for py-spy or ``cpu_seconds``).
        log_tail: the last lines of its output (stderr and stdout), for diagnostics.
    """

    port: int
    pid: int
    log_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=200)
    )

    @property
    def ws_base(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.port}"


@contextlib.contextmanager
def gateway(pulsar_url: str, *extra_args: str, log_level: str = "info") -> Iterator[Gateway]:
    """Run ``python -m supervisor serve`` against ``pulsar_url``; SIGTERM it on exit.

    Raises:
        RuntimeError: it exited or did not log ``ready on ...`` within the start-up timeout.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "quiesce.supervisor", "serve", "--port", "0",
         "--pulsar-url", pulsar_url, "--log-level", log_level, *extra_args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    tail: collections.deque[str] = collections.deque(maxlen=200)
    ready = threading.Event()
    found: list[int] = []

    def drain_stderr() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            if not found:
                match = _READY_RE.search(line)
                if match:
                    found.append(int(match.group(1)))
                    ready.set()
        ready.set()  # EOF: the process is gone

    reader = threading.Thread(target=drain_stderr, name="gateway-stderr", daemon=True)
    reader.start()
    try:
        if not ready.wait(GATEWAY_START_TIMEOUT) or not found:
            raise RuntimeError(
                "gateway did not become ready:\n" + "\n".join(list(tail)[-20:])
            )
        yield Gateway(port=found[0], pid=process.pid, log_tail=tail)
    finally:
        code = _stop(process)
        reader.join(5.0)
        if code not in (0, None):
            print(f"warning: gateway exited with code {code}", file=sys.stderr)


def triples_payloads(n: int, start: int = 0) -> list[str]:
    """``n`` distinct triples frames, ``json.dumps(sample_message("triples", i))``."""
    return [json.dumps(sample_message("triples", i)) for i in range(start, start + n)]


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuMeter:
    """CPU seconds used by a few named processes between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float | None] = {}
        self.used: dict[str, float | None] = {}

    def start(self) -> None:
        """Record the processes' CPU time now."""
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float | None]:
        """Return each process's CPU seconds since ``start`` (None if unreadable)."""
        used: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            now, before = cpu_seconds(pid), self._start.get(name)
            used[name] = None if now is None or before is None else now - before
        self.used = used
        return used


@dataclass
class Stats:
    """The repeated runs of one measurement: elapsed seconds and CPU use per run."""

    name: str
    messages: int
    seconds: list[float] = field(default_factory=list)
    cpu: list[dict[str, float | None]] = field(default_factory=list)

    def add(self, seconds: float, cpu: dict[str, float | None] | None = None) -> None:
        """Record one run."""
        self.seconds.append(seconds)
        self.cpu.append(cpu or {})

    @property
    def best(self) -> float:
        """The shortest run, seconds."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The median run, seconds."""
        return statistics.median(self.seconds)

    def rate(self, seconds: float) -> float:
        """Messages per second for a run of ``seconds``."""
        return self.messages / seconds if seconds > 0 else float("inf")

    def best_cpu(self) -> dict[str, float | None]:
        """The CPU use of the fastest run."""
        return self.cpu[self.seconds.index(self.best)]


def topic_for(flow: str, kind: str) -> str:
    """The Pulsar topic the gateway uses for ``kind`` on ``flow``.

    The gateway's own rule, with the same environment it sees (QUIESCE_* variables).
    """
    settings = load_settings({}, os.environ, None).settings
    return settings.topic_for(flow, kind)


def new_flow(prefix: str) -> str:
    """A flow name nobody used before: ``<prefix>-<uuid hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def fmt_cpu(cpu: dict[str, float | None]) -> str:
    """CPU seconds as ``a/b/c`` (``?`` where unreadable, ``-`` if none)."""
    parts = [f"{v:.1f}" if v is not None else "?" for v in cpu.values()]
    return "/".join(parts) if parts else "-"


def print_table(rows: list[Stats], baseline: Stats, repeat: int, name_width: int = 33,
                cpu_label: str = "cpu s gw/broker/bench") -> None:
    """Print name, messages, seconds, msg/s and the ratio to ``baseline`` for each row.

    Best run always; with ``repeat`` > 1 also the median run (ratio median/median). The last
    column is each process's CPU seconds during the fastest run.
    """
    header = (f"{'name':<{name_width}} {'messages':>8} {'seconds':>8} {'msg/s':>9} "
              f"{'ratio':>6}")
    if repeat > 1:
        header += f" {'med s':>8} {'med msg/s':>9} {'med ratio':>9}"
    header += f"  {cpu_label:>21}"
    print(header)
    print("-" * len(header))
    for s in rows:
        line = (f"{s.name:<{name_width}} {s.messages:>8} {s.best:>8.3f} "
                f"{s.rate(s.best):>9.0f} {s.rate(s.best) / baseline.rate(baseline.best):>6.2f}")
        if repeat > 1:
            line += (f" {s.median:>8.3f} {s.rate(s.median):>9.0f} "
                     f"{s.rate(s.median) / baseline.rate(baseline.median):>9.2f}")
        line += f"  {fmt_cpu(s.best_cpu()):>21}"
        print(line)


class BenchFailure(Exception):
    """A measurement did not complete correctly (lost messages, error frames, a timeout)."""


def timeout_for(n: int) -> float:
    """A generous bound, in seconds, for moving ``n`` messages (only a hang reaches it)."""
    return 60.0 + n / 200.0


def send_all_async(client: pulsar.Client, topic: str, payloads: list[bytes], *,
                   batching: bool, what: str) -> float:
    """Send ``payloads`` with ``send_async``; return the seconds until all are confirmed.

    Raises:
        BenchFailure: a send failed, or not all were confirmed within ``timeout_for``.
    """
    n = len(payloads)
    producer = client.create_producer(
        topic,
        batching_enabled=batching,
        block_if_queue_full=True,
        max_pending_messages=max(1000, min(n, 100_000)),
        send_timeout_millis=0,
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
        if not done.wait(timeout_for(n)):
            raise BenchFailure(f"{what}: not all {n} confirmed in time")
        elapsed = time.perf_counter() - start
    finally:
        producer.close()
    if failures:
        raise BenchFailure(f"{what}: {len(failures)} sends failed, e.g. {failures[0]}")
    return elapsed
