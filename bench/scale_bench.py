"""Scale: many import and export sockets at once on one gateway, then many idle ones.

Run from the repository root::

    .venv/bin/python bench/scale_bench.py                       # the issue's figures
    .venv/bin/python bench/scale_bench.py --importers 50 --exporters 50 --flows 5 --idle 50

Method. One pulsar-lite broker and one gateway process (``rig`` in bench/_common.py, as the
other benchmarks), then two phases, each bounded in time.

Load. ``--exporters`` export WebSockets (``ack=client``, each with a subscription of its own
at ``position=earliest`` on a topic that did not exist before, so none misses a message
however late it subscribes) and ``--importers`` import WebSockets (``receipts=true``) spread
round-robin over ``--flows`` flows (triples). All exporters connect first (at most
``CONNECT_CONCURRENCY`` handshakes at a time), then the importers; each importer, once
connected, sends ``--frames`` distinct ~1.2 KB frames paced at ``--rate`` frames/s (with a
random phase, so importers do not fire together), then closes, and reads until the server's
close: a *clean close* is code 1000 after a final ``{"ack": N}`` covering all its frames.
Each exporter acks every frame it gets (cumulative ``{"ack": seq}``) and is done once it has
every frame of its flow (importers of the flow x frames), or at the phase's deadline.
Reported: frames receipted and delivered per second (over the phase: from the first frame
sent to the last one delivered), the receipt latency of every frame (from its send to the
first ack covering it) as p50/p99/max, clean closes, exporters complete, the gateway's CPU
seconds (``/proc/<pid>/stat``), its peak RSS (``VmHWM``) and its thread count (most seen,
sampled every 0.5 s, and at the end).

Idle. Every load socket is closed, then ``--idle`` import sockets (receipts on, sending
nothing) are opened, then ``--idle`` export sockets (fresh subscriptions, on flows nobody
publishes to). After each set, once connected and ``SETTLE_S`` later, the gateway's CPU is
measured over ``--idle-seconds`` and reported as % of one core, with its threads and RSS; the
gateway with no socket at all is measured first, for reference.

The process raises its open-file limit to the hard limit (every socket counts twice on one
machine: the client's end here, the server's end in the gateway, which inherits the limit).
Exit status 1 if a phase timed out, a frame was refused, an importer did not close cleanly
or an exporter missed a frame.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from _common import (
    CpuMeter,
    cpu_seconds,
    import_path,
    new_flow,
    publish,
    rig,
    stored_form,
    topic_for,
)
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.trio.client import connect

from tests.data import sample_message

KIND = "triples"
# Handshakes in progress at once (the listen backlog and the handshake cost bound it anyway).
CONNECT_CONCURRENCY = 50
# After the last socket of a set is open, how long before idle CPU is measured.
SETTLE_S = 3.0
# Load phase: how long after the last import frame was sent the exporters may take to finish.
DRAIN_S = 60.0
# Load phase: an exporter still short of frames this long after the last frame was sent,
# and after this long without a frame, is stuck; one more frame is then published to its
# flow ("nudge"), which tells a broker that dispatches nothing until the next publish (it
# then catches up) from messages that are gone (it does not).
NUDGE_AFTER_S = 15.0
# Most time a whole run may take beyond the paced sending (a hang ends the benchmark).
SLACK_S = 300.0
# Opening handshake bound per socket (a gateway starved of CPU may take long to answer).
OPEN_TIMEOUT_S = 60.0
# What a failed connection attempt raises (counted, not fatal).
CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException)
# Thread and RSS sampling period during the load phase.
SAMPLE_S = 0.5
_SEQ_PREFIX = '{"seq":'
_MSG_SEP = ',"message":'


def proc_status(pid: int) -> dict[str, int]:
    """``Threads``, ``VmRSS`` and ``VmHWM`` (kB) of process ``pid`` from ``/proc``."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Threads", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def group_status(pids: tuple[int, ...]) -> dict[str, int]:
    """`proc_status` summed over the gateway's processes (the parent and its workers)."""
    total: dict[str, int] = {}
    for pid in pids:
        for key, value in proc_status(pid).items():
            total[key] = total.get(key, 0) + value
    return total


def group_cpu(pids: tuple[int, ...]) -> float | None:
    """CPU seconds used so far by the gateway's processes together (None if unreadable)."""
    used = [cpu_seconds(pid) for pid in pids]
    return None if any(u is None for u in used) else sum(u for u in used if u is not None)


def raise_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def frame_for(importer: int, k: int) -> str:
    """Frame ``k`` of importer ``importer``: a ~1.2 KB triples message with a unique id."""
    message = sample_message(KIND, importer * 1000 + k)
    message["metadata"]["id"] = f"scale-{importer}-{k}"
    return json.dumps(message)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Importer:
    """What one import socket saw."""

    sent: int = 0
    final_ack: int = 0
    close_code: int | None = None
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    failed: str | None = None

    @property
    def clean(self) -> bool:
        """Closed by the server with 1000 after an ack covering every frame."""
        return self.close_code == 1000 and self.final_ack == self.sent


@dataclass
class Exporter:
    """What one export socket saw."""

    expected: int
    flow: str = ""
    ids: set[str] = field(default_factory=set)
    nudged: bool = False
    frames: int = 0
    last_at: float = 0.0
    failed: str | None = None
    close_code: int | None = None

    @property
    def complete(self) -> bool:
        """Every frame of its flow arrived."""
        return len(self.ids) >= self.expected


@dataclass
class Load:
    """The load phase's outcome."""

    importers: list[Importer]
    exporters: list[Exporter]
    first_send: float = math.inf
    last_send: float = 0.0
    timed_out: bool = False
    max_threads: int = 0
    end_status: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None


async def run_importer(url: str, index: int, frames: int, rate: float, load: Load,
                       limiter: trio.CapacityLimiter) -> None:
    """Connect, send ``frames`` paced at ``rate``/s, close, read to the server's close."""
    me = load.importers[index]
    sent_at: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        async with limiter:
            try:
                ws = await stack.enter_async_context(connect(
                    url, compression=None, max_size=None, proxy=None,
                    open_timeout=OPEN_TIMEOUT_S, close_timeout=SLACK_S))
            except CONNECT_ERRORS as exc:
                me.failed = repr(exc)
                return
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def read() -> None:
            acked = 0
            try:
                while True:
                    reply = json.loads(await ws.recv())
                    if "ack" in reply:
                        now = time.perf_counter()
                        n = reply["ack"]
                        me.latencies.extend(now - sent_at[i] for i in range(acked, n))
                        acked = me.final_ack = n
                    elif "error" in reply:
                        me.errors += 1
            except ConnectionClosed as exc:
                me.close_code = exc.rcvd.code if exc.rcvd is not None else None

        nursery.start_soon(read)
        period = 1.0 / rate
        start = trio.current_time() + random.uniform(0, period)
        for k in range(frames):
            await trio.sleep_until(start + k * period)
            now = time.perf_counter()
            load.first_send = min(load.first_send, now)
            sent_at.append(now)
            me.sent += 1
            await ws.send(frame_for(index, k))
        load.last_send = max(load.last_send, time.perf_counter())
        await ws.aclose()


async def run_exporter(url: str, me: Exporter, limiter: trio.CapacityLimiter,
                       connected: trio.Semaphore, done: trio.Event) -> None:
    """Read frames, ack each, until every frame of the flow arrived or ``done`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        async with limiter:
            try:
                ws = await stack.enter_async_context(connect(
                    url, compression=None, max_size=None, proxy=None,
                    open_timeout=OPEN_TIMEOUT_S, close_timeout=10))
            except CONNECT_ERRORS as exc:
                me.failed = repr(exc)
                connected.release()
                return
        connected.release()
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def stop_when_done() -> None:
            await done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_done)
        try:
            while not me.complete:
                frame = await ws.recv()
                if not frame.startswith(_SEQ_PREFIX):
                    continue  # an error frame: counted as missing frames in the end
                cut = frame.find(_MSG_SEP, 7)
                seq = int(frame[7:cut])
                start = frame.find('"id":"', cut) + 6
                frame_id = frame[start:frame.find('"', start)]
                if frame_id.startswith("scale-"):
                    me.ids.add(frame_id)
                me.frames += 1
                me.last_at = time.perf_counter()
                await ws.send(f'{{"ack":{seq}}}')
        except ConnectionClosed as exc:
            me.close_code = exc.rcvd.code if exc.rcvd is not None else None
        nursery.cancel_scope.cancel()


async def load_phase(port: int, gw_pids: tuple[int, ...], args: Any,
                     nudge: Callable[[str], None]) -> Load:
    """Run the load phase (see the module docstring)."""
    flows = [new_flow("scale") for _ in range(args.flows)]
    per_flow = [0] * args.flows
    for i in range(args.importers):
        per_flow[i % args.flows] += 1
    load = Load([Importer() for _ in range(args.importers)],
                [Exporter(per_flow[i % args.flows] * args.frames, flows[i % args.flows])
                 for i in range(args.exporters)])
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    connected = trio.Semaphore(0)
    exports_done = trio.Event()
    meter = CpuMeter({f"gateway{i}": pid for i, pid in enumerate(gw_pids)})
    budget = args.frames / args.rate + DRAIN_S + SLACK_S

    async def sample() -> None:
        while True:
            load.max_threads = max(load.max_threads, group_status(gw_pids).get("Threads", 0))
            await trio.sleep(SAMPLE_S)

    async def finish_exports() -> None:
        # Exporters stop once complete, or DRAIN_S after the last frame was sent.
        while not all(e.complete for e in load.exporters):
            now = time.perf_counter()
            if load.last_send and now > load.last_send + DRAIN_S:
                break
            stuck = [e for e in load.exporters
                     if load.last_send and not e.complete and not e.nudged
                     and now > load.last_send + NUDGE_AFTER_S
                     and now > e.last_at + NUDGE_AFTER_S / 3]
            for flow in sorted({e.flow for e in stuck}):
                await trio.to_thread.run_sync(nudge, flow)
            for e in stuck:
                e.nudged = True
            await trio.sleep(SAMPLE_S)
        exports_done.set()

    meter.start()
    with trio.move_on_after(budget) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            async with trio.open_nursery() as clients:
                for i, exporter in enumerate(load.exporters):
                    path = (f"/api/v1/flow/{flows[i % args.flows]}/export/{KIND}?ack=client"
                            f"&subscription=scale-{i}&position=earliest")
                    clients.start_soon(run_exporter, ws_url_for(port, path), exporter, limiter,
                                       connected, exports_done)
                for _ in load.exporters:
                    await connected.acquire()
                async with trio.open_nursery() as importers:
                    for i in range(args.importers):
                        url = ws_url_for(port, import_path(flows[i % args.flows], KIND))
                        importers.start_soon(run_importer, url, i, args.frames, args.rate,
                                             load, limiter)
                clients.start_soon(finish_exports)
            nursery.cancel_scope.cancel()
    load.timed_out = scope.cancelled_caught
    used = meter.stop().values()
    load.cpu_s = None if None in used else sum(u for u in used if u is not None)
    load.end_status = group_status(gw_pids)
    return load


def ws_url_for(port: int, path: str) -> str:
    """``ws://127.0.0.1:<port><path>``."""
    return f"ws://127.0.0.1:{port}{path}"


@dataclass
class Idle:
    """Idle CPU (% of a core), threads and RSS (MB) with some idle sockets open."""

    label: str
    sockets: int
    cpu_pct: float
    threads: int
    rss_mb: float
    failed: int = 0


async def measure_idle(gw_pids: tuple[int, ...], label: str, sockets: int, seconds: float) -> Idle:
    """The gateway's CPU over ``seconds`` (after ``SETTLE_S``), as % of one core."""
    await trio.sleep(SETTLE_S)
    before, start = group_cpu(gw_pids), time.perf_counter()
    await trio.sleep(seconds)
    after, elapsed = group_cpu(gw_pids), time.perf_counter() - start
    status = group_status(gw_pids)
    pct = math.nan if before is None or after is None else 100 * (after - before) / elapsed
    return Idle(label, sockets, pct, status.get("Threads", 0), status.get("VmRSS", 0) / 1024)


async def hold_open(url: str, limiter: trio.CapacityLimiter, opened: trio.Semaphore,
                    release: trio.Event, failed: list[str]) -> None:
    """Open a WebSocket, keep it open (reading nothing) until ``release``, then close it."""
    async with contextlib.AsyncExitStack() as stack:
        async with limiter:
            try:
                await stack.enter_async_context(connect(
                    url, compression=None, proxy=None, open_timeout=OPEN_TIMEOUT_S,
                    close_timeout=10))
            except CONNECT_ERRORS:
                failed.append(url)
                opened.release()
                return
        opened.release()
        await release.wait()


async def idle_phase(port: int, gw_pids: tuple[int, ...], args: Any) -> list[Idle]:
    """Measure the gateway idle with no socket, with idle imports, then with idle exports too."""
    results = [await measure_idle(gw_pids, "no socket", 0, args.idle_seconds)]
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    release = trio.Event()
    failed: list[str] = []
    flows = [new_flow("idle") for _ in range(max(1, args.flows))]
    with trio.move_on_after(2 * (SETTLE_S + args.idle_seconds) + SLACK_S):
        async with trio.open_nursery() as nursery:
            for label, direction in (("idle imports", "import"), ("+ idle exports", "export")):
                opened = trio.Semaphore(0)
                for i in range(args.idle):
                    flow = flows[i % len(flows)]
                    path = (import_path(flow, KIND) if direction == "import"
                            else f"/api/v1/flow/{flow}/export/{KIND}?ack=client")
                    nursery.start_soon(hold_open, ws_url_for(port, path), limiter, opened,
                                       release, failed)
                for _ in range(args.idle):
                    await opened.acquire()
                count = args.idle * (1 if direction == "import" else 2) - len(failed)
                results.append(await measure_idle(gw_pids, label, count, args.idle_seconds))
                results[-1].failed = len(failed)
            release.set()
    return results


def report(args: Any, load: Load, idle: list[Idle], cores: int) -> list[str]:
    """Print the figures; return the problems found."""
    problems = []
    importers, exporters = load.importers, load.exporters
    receipted = sum(i.final_ack for i in importers)
    delivered = sum(len(e.ids) for e in exporters)
    duplicates = sum(e.frames - len(e.ids) for e in exporters)
    last_delivery = max((e.last_at for e in exporters), default=0.0)
    span = max(load.last_send, last_delivery) - load.first_send
    latencies = [x for i in importers for x in i.latencies]
    clean = sum(i.clean for i in importers)
    complete = sum(e.complete for e in exporters)
    errors = sum(i.errors for i in importers)
    failed = [c.failed for c in [*importers, *exporters] if c.failed]
    print(f"load: {args.importers} importers x {args.frames} frames at {args.rate:g}/s + "
          f"{args.exporters} exporters (ack=client) over {args.flows} flows; gateway "
          f"{args.workers} worker(s); {cores} cores shared by broker, gateway and this client; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  phase {span:.1f} s{' (TIMED OUT)' if load.timed_out else ''}: "
          f"{receipted} frames receipted ({receipted / span:.0f}/s), "
          f"{delivered} delivered ({delivered / span:.0f}/s), {duplicates} redelivered")
    print(f"  receipt latency: p50 {1000 * percentile(latencies, 0.5):.0f} ms, "
          f"p99 {1000 * percentile(latencies, 0.99):.0f} ms, "
          f"max {1000 * max(latencies, default=math.nan):.0f} ms")
    print(f"  client-closed imports ending 1000 with their final ack: {clean}/{len(importers)}"
          f"; exporters with every frame: {complete}/{len(exporters)}; error frames {errors}")
    unclean = [f"close {i.close_code}, ack {i.final_ack}/{i.sent}" for i in importers
               if not i.clean and not i.failed]
    if unclean:
        print(f"  unclean import closes: {len(unclean)}, e.g. {'; '.join(unclean[:3])}")
    short = collections.Counter(e.close_code for e in exporters
                                if not e.complete and not e.failed)
    if short:
        print(f"  exporters that missed frames, by the server's close code: {dict(short)}")
    nudged = [e for e in exporters if e.nudged]
    if nudged:
        print(f"  exporters stuck {NUDGE_AFTER_S:g} s after the last frame was sent: "
              f"{len(nudged)}; complete after one more publish to their flow: "
              f"{sum(e.complete for e in nudged)}")
    if failed:
        print(f"  sockets that could not connect: {len(failed)}, e.g. {failed[0]}")
    status = load.end_status
    print(f"  gateway: cpu {load.cpu_s or math.nan:.1f} s "
          f"({100 * (load.cpu_s or math.nan) / span:.0f} % of a core), "
          f"peak RSS {status.get('VmHWM', 0) / 1024:.0f} MB, "
          f"threads max {load.max_threads} / at end {status.get('Threads', 0)}")
    print("idle (gateway):")
    for row in idle:
        print(f"  {row.label:<16} {row.sockets:>5} sockets: cpu {row.cpu_pct:6.1f} % of a core, "
              f"{row.threads:>4} threads, RSS {row.rss_mb:.0f} MB"
              + (f" ({row.failed} could not connect)" if row.failed else ""))
    if load.timed_out:
        problems.append("the load phase timed out")
    if clean < len(importers):
        problems.append(f"{len(importers) - clean} importers did not close cleanly")
    if complete < len(exporters):
        problems.append(f"{len(exporters) - complete} exporters missed frames")
    if errors:
        problems.append(f"{errors} error frames")
    if failed:
        problems.append(f"{len(failed)} sockets could not connect")
    if args.json:
        print(json.dumps({
            "bench": "scale", "importers": args.importers, "exporters": args.exporters,
            "flows": args.flows, "frames": args.frames, "rate": args.rate, "cores": cores,
            "span_s": round(span, 3), "receipted": receipted, "delivered": delivered,
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "clean_closes": clean, "complete_exporters": complete,
            "cpu_s": load.cpu_s, "peak_rss_kb": status.get("VmHWM"),
            "max_threads": load.max_threads,
            "idle": [row.__dict__ for row in idle], "problems": problems,
        }, separators=(",", ":")))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if anything went wrong)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--importers", type=int, default=500, help="import sockets (500)")
    parser.add_argument("--exporters", type=int, default=500, help="export sockets (500)")
    parser.add_argument("--flows", type=int, default=50, help="flows they spread over (50)")
    parser.add_argument("--frames", type=int, default=20, help="frames per importer (20)")
    parser.add_argument("--rate", type=float, default=2.0, help="frames/s per importer (2)")
    parser.add_argument("--idle", type=int, default=500,
                        help="idle sockets of each direction (500)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="idle CPU measurement interval (10)")
    parser.add_argument("--workers", type=int, default=1,
                        help="the gateway's worker processes (1; >1 runs serve --workers N; "
                             "CPU, RSS and threads are then summed over parent and workers)")
    args = parser.parse_args(argv)
    if min(args.importers, args.exporters, args.idle) < 0 or min(
            args.flows, args.frames) < 1 or args.rate <= 0 or args.idle_seconds <= 0:
        parser.error("counts must be >= 0, --flows and --frames >= 1, rates > 0")
    limit = raise_file_limit()
    needed = 2 * max(args.importers + args.exporters, 2 * args.idle) + 200
    if limit < needed:
        print(f"warning: open-file limit {limit} < {needed} needed", file=sys.stderr)
    cores = os.cpu_count() or 0
    if args.workers > 1:
        os.environ["QUIESCE_WORKERS"] = str(args.workers)
    with rig() as on:
        port = on.gateway.port
        pids = tuple(pid for name, pid in on.meter.pids.items()
                     if name == "gateway" or re.fullmatch(r"w\d+", name))

        def nudge(flow: str) -> None:
            message = sample_message(KIND)
            message["metadata"]["id"] = f"nudge-{flow}"
            publish(on.client, topic_for(flow, KIND), stored_form([json.dumps(message)]))

        load = trio.run(load_phase, port, pids, args, nudge)
        idle = trio.run(idle_phase, port, pids, args)
        noteworthy = on.gateway.find(r" (WARNING|ERROR|CRITICAL) ")
    problems = report(args, load, idle, cores)
    if noteworthy:
        print(f"gateway log: {len(noteworthy)} warnings or errors, e.g.")
        for line in noteworthy[:5]:
            print(f"  {line[:300]}")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
