"""Shared helpers for quiesce's benchmarks (``import_bench.py``, ``export_bench.py``).

The processes and clients come from the test harness, ``tests/harness.py`` (one copy for
tests and benchmarks):

* ``rig`` starts a pulsar-lite broker (the harness's ``pulsar_lite``: a free loopback port,
  metrics endpoint off, data in a temporary directory) and ``python -m quiesce.supervisor
  serve --port 0`` against it (``gateway_process``: ready once its ``ready on
  http://127.0.0.1:<port>`` line is logged, its stderr drained by a thread so its logging can
  never block on a full pipe, SIGTERMed at the end), with a client and a CPU meter;
* re-exported from the harness: ``publish`` (``send_async`` until every send is confirmed,
  timed), ``read_topic_counted`` (a topic read back under the harness's one de-duplication
  rule, whose message identity ``message_key`` the raw consumers use too), ``open_import``
  (an import WebSocket with receipts), ``ws_url`` and ``import_path``.

Here, for the benchmarks only:

* ``triples_payloads`` builds the ~1.2 KB triples JSON frames the benchmarks send;
* ``cpu_seconds`` / ``CpuMeter`` read a process's CPU time from ``/proc`` (Linux), to show
  where the machine's cores went during a measurement;
* ``Stats`` keeps the repeated timings of one measurement and gives best and median;
  ``print_table`` prints a list of them against a baseline (``fmt_cpu`` its CPU column);
* ``topic_for`` / ``new_flow`` name a fresh flow and its topic by the gateway's own rule;
* ``bench_arguments`` has the command-line options every benchmark has.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulsar

from quiesce.core import convert
from quiesce.core.config import load_settings
from quiesce.core.profiles import Profile

# The benchmarks run as scripts (`python bench/import_bench.py`), so only bench/ is on
# sys.path. This is the one place that adds the repository root, after bench/ and before
# site-packages, so that `tests.harness` and `tests.data` are this checkout's.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

from tests.data import sample_message, sample_message_tg2  # noqa: E402
from tests.harness import (  # noqa: E402
    Broker,
    GatewayProcess,
    PublishFailed,
    gateway_process,
    import_path,
    message_key,
    open_import,
    publish,
    pulsar_lite,
    read_topic_counted,
    ws_url,
)

__all__ = [
    "BenchFailure",
    "CpuMeter",
    "GatewayProcess",
    "PublishFailed",
    "Rig",
    "Stats",
    "apply_profile",
    "bench_arguments",
    "cpu_seconds",
    "exported_form",
    "fmt_cpu",
    "import_path",
    "message_key",
    "new_flow",
    "open_import",
    "print_table",
    "profile",
    "publish",
    "read_topic_counted",
    "rig",
    "stored_form",
    "timeout_for",
    "topic_for",
    "triples_payloads",
    "ws_url",
]


# The parent's line for each worker process it starts (``serve --workers N``).
WORKER_STARTED = r"worker (\d+) started \(pid (\d+)\)"


def triples_payloads(n: int, start: int = 0) -> list[str]:
    """``n`` distinct triples frames in the wire format of the profile under test.

    ``tg1``: ``json.dumps(sample_message("triples", i))``; ``tg2``: the same data as 2.x
    terms (`tests.data.sample_message_tg2`). The profile is ``QUIESCE_PROFILE`` (set by
    ``--profile``), the variable the gateway reads too.
    """
    if profile() is Profile.TG2:
        return [json.dumps(sample_message_tg2(i)) for i in range(start, start + n)]
    return [json.dumps(sample_message("triples", i)) for i in range(start, start + n)]


def profile() -> Profile:
    """The profile under test (``QUIESCE_PROFILE``, tg1 when unset)."""
    return Profile(os.environ.get("QUIESCE_PROFILE") or "tg1")


def stored_form(frames: list[str], kind: str = "triples") -> list[bytes]:
    """What the gateway publishes for ``frames``: the profile's Pulsar payloads."""
    return [convert.dumps(convert.convert_frame(kind, json.loads(f), profile()))
            for f in frames]


def exported_form(payloads: list[bytes], kind: str = "triples") -> list[str]:
    """What the gateway writes for stored ``payloads``: the profile's wire format."""
    return [convert.dumps(convert.from_pulsar(kind, json.loads(p), profile())).decode()
            for p in payloads]


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

    def summary(self) -> dict[str, Any]:
        """The figures for a ``--json`` line: every run, best and median, the best run's CPU."""
        return {
            "messages": self.messages,
            "seconds": [round(x, 4) for x in self.seconds],
            "best_s": round(self.best, 4),
            "median_s": round(self.median, 4),
            "best_msg_s": round(self.rate(self.best), 1),
            "median_msg_s": round(self.rate(self.median), 1),
            "cpu_s_best_run": {k: None if v is None else round(v, 3)
                               for k, v in self.best_cpu().items()},
        }


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


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has: --messages, --repeat, --warmup, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (20000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (1)")
    parser.add_argument("--warmup", type=int, default=1_000,
                        help="untimed messages through every path first (1000; 0: none)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--workers", type=int, default=1,
                        help="the gateway's worker processes (1; >1 runs serve --workers N, "
                             "sets QUIESCE_WORKERS)")
    parser.add_argument("--profile", choices=("tg1", "tg2"), default=None,
                        help="TrustGraph profile of the gateway and the data (tg1; sets "
                             "QUIESCE_PROFILE)")
    return parser


def apply_profile(args: argparse.Namespace) -> None:
    """Make ``--profile`` the profile of this run: the gateway and the data both follow it."""
    if args.profile is not None:
        os.environ["QUIESCE_PROFILE"] = args.profile
    if getattr(args, "workers", 1) > 1:
        os.environ["QUIESCE_WORKERS"] = str(args.workers)


@dataclass
class Rig:
    """What every measurement runs on.

    Attributes:
        broker: the pulsar-lite broker.
        gateway: the gateway process on it.
        client: this process's own client on the broker (the raw measurements').
        meter: CPU seconds of the gateway, the broker and this process.
    """

    broker: Broker
    gateway: GatewayProcess
    client: pulsar.Client
    meter: CpuMeter

    def print_log_tail(self) -> None:
        """Print the gateway's last log lines to stderr (after a failure)."""
        print("gateway log tail:\n  " + self.gateway.log(15).replace("\n", "\n  "),
              file=sys.stderr)


@contextlib.contextmanager
def rig(*args: str) -> Iterator[Rig]:
    """Start a broker, a gateway process on it and a client; stop them all at the end.

    The gateway logs at ``info`` and sees this environment's ``QUIESCE_*`` settings (so a run
    can be tuned, and `topic_for` agrees with it), then ``args`` (more ``serve`` flags, e.g.
    ``--workers 2``). A gateway that did not exit cleanly on SIGTERM is reported on stderr.
    With worker processes, the meter's ``gateway`` is the parent and each worker has its own
    entry (``w0``, ``w1``…) after ``bench``.
    """
    with (pulsar_lite() as broker,
          gateway_process("--log-level", "info", *args, pulsar_url=broker.url,
                          keep_quiesce_env=True) as gateway):
        client = pulsar.Client(broker.url, operation_timeout_seconds=30,
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
        pids = {"gateway": gateway.pid, "broker": broker.pid, "bench": os.getpid()}
        for line in gateway.find(WORKER_STARTED):
            match = re.search(WORKER_STARTED, line)
            assert match is not None
            pids[f"w{match.group(1)}"] = int(match.group(2))
        meter = CpuMeter(pids)
        try:
            yield Rig(broker, gateway, client, meter)
        finally:
            client.close()
    if gateway.process.returncode not in (0, None):
        print(f"warning: gateway exited with code {gateway.process.returncode}",
              file=sys.stderr)
