"""Aggregate import and export throughput of one gateway with 1 and with N worker processes.

Run from the repository root::

    .venv/bin/python bench/workers_bench.py [--workers 1 2] [--connections 8]
                                            [--messages 40000] [--repeat 3] [--json]

Method. For each round and each worker count (interleaved: 1, 2, 1, 2…, so a change in the
machine's load falls on both), a fresh pulsar-lite broker and a fresh gateway
(``serve --workers N``; plain ``serve`` for 1) are started (``rig`` in bench/_common.py), then:

* ``import``: ``--connections`` WebSockets at once, each to a flow of its own with
  ``?receipts=true``, each sending its share of ``--messages`` ~1.2 KB triples frames as fast
  as the socket takes them. Timed from the first send until every connection has its final
  ``{"ack": n}``. Every topic is read back afterwards (the harness's ``read_topic_counted``):
  all frames must be there, or the script exits 1.
* ``export``: the same number of topics are filled first with raw pulsar-client sends
  (untimed), then ``--connections`` export WebSockets at once (a new subscription,
  ``position=earliest``, ``ack=auto``) each read their topic. Timed from the first handshake
  until every one has received all its topic's messages (each frame is a message; anything
  else fails the run).

The figure is messages over seconds for all connections together. The kernel spreads the
connections over the workers by a hash (SO_REUSEPORT), so the split is not even; it is
printed (``split``). The load average is printed before each measurement: the machine is
shared, and the broker, the gateway's processes and this client (which also runs every
WebSocket) share its cores, so a worker count can only help as far as free cores exist.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from typing import Any

import trio
from _common import (
    BenchFailure,
    Rig,
    fmt_cpu,
    import_path,
    new_flow,
    open_import,
    publish,
    read_topic_counted,
    rig,
    stored_form,
    timeout_for,
    topic_for,
    triples_payloads,
)
from websockets.trio.client import connect

# An export measurement in which no connection receives anything for this long has stalled.
EXPORT_STALL_S = 10.0
# The workers' connection log line: which worker admitted a connection.
CONNECTION_RUNNING = r"connection \S+: opening -> running .*worker_pid=(\d+)"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def _import_all(port: int, flows: list[str], share: int) -> float:
    frames = triples_payloads(share)
    errors: list[Any] = []

    async def one(flow: str) -> None:
        url = f"ws://127.0.0.1:{port}{import_path(flow)}"
        async with open_import(url, compression=None, proxy=None) as client:
            for frame in frames:
                await client.send(frame)
            await client.wait_ack(share)
            errors.extend(client.errors)

    start = time.perf_counter()
    with trio.fail_after(timeout_for(share * len(flows))):
        async with trio.open_nursery() as nursery:
            for flow in flows:
                nursery.start_soon(one, flow)
    seconds = time.perf_counter() - start
    if errors:
        raise BenchFailure(f"{len(errors)} error frames, e.g. {errors[0]}")
    return seconds


async def _export_all(port: int, flows: list[str], share: int) -> float:
    received = dict.fromkeys(flows, 0)
    others: dict[str, str] = {}

    async def one(flow: str) -> None:
        # Read until the topic's ``share`` messages are in, not to ``until=end``: under
        # concurrent exports pulsar-lite's last-message-id answer can end a dump early (seen
        # here: {"end": true} after 264 of 5000, or at once), which is not what is measured.
        url = (f"ws://127.0.0.1:{port}/api/v1/flow/{flow}/export/triples"
               f"?subscription={new_flow('bench')}&position=earliest")
        async with connect(url, compression=None, proxy=None, max_size=None) as ws:
            async for frame in ws:
                if isinstance(frame, str) and not frame.startswith('{"metadata"'):
                    others[flow] = frame[:200]
                    break
                received[flow] += 1
                if received[flow] == share:
                    break

    async def watchdog(scope: trio.CancelScope) -> None:
        before, quiet = -1, 0.0
        while True:
            await trio.sleep(1.0)
            total = sum(received.values())
            quiet = quiet + 1.0 if total == before else 0.0
            before = total
            if quiet >= EXPORT_STALL_S:
                scope.cancel(reason="export stalled")
                return

    start = time.perf_counter()
    with trio.fail_after(timeout_for(share * len(flows))):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog, nursery.cancel_scope)
            async with trio.open_nursery() as readers:
                for flow in flows:
                    readers.start_soon(one, flow)
            nursery.cancel_scope.cancel(reason="every export is complete")
    seconds = time.perf_counter() - start
    wrong = {f[-8:]: n for f, n in received.items() if n != share}
    if wrong:
        raise BenchFailure(f"export counts differ from {share} (nothing more came for "
                           f"{EXPORT_STALL_S:g}s): {wrong}; {others}")
    return seconds


def split(on: Rig, since: int) -> list[int]:
    """Connections admitted per worker process since log line ``since`` (one process: [n])."""
    counts: dict[str, int] = {}
    for line in on.gateway.lines[since:]:
        match = re.search(CONNECTION_RUNNING, line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        elif "connection " in line and "opening -> running" in line:
            counts["-"] = counts.get("-", 0) + 1
    return sorted(counts.values(), reverse=True)


def measure(workers: int, connections: int, messages: int) -> dict[str, Any]:
    """One round at ``workers``: aggregate import, then aggregate export, on a fresh rig."""
    share = messages // connections
    args = ("--workers", str(workers)) if workers > 1 else ()
    result: dict[str, Any] = {"workers": workers, "connections": connections,
                              "messages": share * connections}
    with rig(*args) as on:
        port = on.gateway.port
        # Warm-up, untimed: one connection each way through a worker.
        warm = new_flow("warm")
        trio.run(_import_all, port, [warm], 200)
        trio.run(_export_all, port, [warm], 200)
        # Import.
        flows = [new_flow("wimp") for _ in range(connections)]
        result["load_import"] = load_average()
        mark = len(on.gateway.lines)
        on.meter.start()
        seconds = trio.run(_import_all, port, flows, share)
        result["import_cpu"] = fmt_cpu(on.meter.stop())
        result["import_s"] = round(seconds, 3)
        result["import_msg_s"] = round(share * connections / seconds)
        result["import_split"] = split(on, mark)
        for flow in flows:
            read = read_topic_counted(on.client, topic_for(flow, "triples"), share)
            if len(read.payloads) != share:
                raise BenchFailure(f"{flow}: {len(read.payloads)} of {share} in the topic")
        # Export.
        flows = [new_flow("wexp") for _ in range(connections)]
        payloads = stored_form(triples_payloads(share))
        for flow in flows:
            publish(on.client, topic_for(flow, "triples"), payloads, batching=True)
        result["load_export"] = load_average()
        mark = len(on.gateway.lines)
        on.meter.start()
        try:
            seconds = trio.run(_export_all, port, flows, share)
        except BenchFailure as exc:
            # Reported and kept out of the figures, not fatal: see EXPORT_STALL_S.
            on.meter.stop()
            result.update(export_failed=str(exc), export_s=None, export_msg_s=None,
                          export_cpu="-", export_split=split(on, mark))
            print(f"export stalled (workers={workers}): {exc}", file=sys.stderr)
        else:
            result["export_cpu"] = fmt_cpu(on.meter.stop())
            result["export_s"] = round(seconds, 3)
            result["export_msg_s"] = round(share * connections / seconds)
            result["export_split"] = split(on, mark)
        result["cpu_columns"] = "/".join(on.meter.pids)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; print one line per measurement (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare, in this order each round (1 2)")
    parser.add_argument("--connections", type=int, default=8,
                        help="WebSockets at once, each way (8)")
    parser.add_argument("--messages", type=int, default=40_000,
                        help="messages per measurement, all connections together (40000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per run")
    args = parser.parse_args(argv)
    os.environ.pop("QUIESCE_WORKERS", None)  # the worker count is this script's to set
    print(f"cores={os.cpu_count()} connections={args.connections} messages={args.messages}")
    results = []
    try:
        for round_ in range(args.repeat):
            for workers in args.workers:
                r = measure(workers, args.connections, args.messages)
                results.append(r)
                print(f"round {round_ + 1} workers={workers}: "
                      f"import {r['import_msg_s']:>6} msg/s ({r['import_s']:.2f}s, split "
                      f"{r['import_split']}, load {r['load_import']}, cpu {r['import_cpu']}) | "
                      f"export {r['export_msg_s'] or 'STALLED':>6} msg/s ({r['export_s']}s, "
                      f"split {r['export_split']}, load {r['load_export']}, cpu "
                      f"{r['export_cpu']}) [cpu s {r['cpu_columns']}]", flush=True)
                if args.json:
                    print(json.dumps(r), flush=True)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    for workers in args.workers:
        mine = [r for r in results if r["workers"] == workers]
        imports = sorted(r["import_msg_s"] for r in mine)
        exports = sorted(r["export_msg_s"] for r in mine if r["export_msg_s"] is not None)
        print(f"workers={workers}: import best {imports[-1]} median "
              f"{statistics.median(imports):.0f} msg/s; export best "
              f"{exports[-1] if exports else '-'} median "
              f"{statistics.median(exports) if exports else '-'} msg/s ({len(mine)} rounds, "
              f"{len(mine) - len(exports)} exports stalled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
