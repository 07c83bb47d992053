"""Import throughput: quiesce's WebSocket import path against raw pulsar-client, on one broker.

Run from the repository root::

    /work/venv/bin/python bench/import_bench.py [--messages N] [--repeat R] [--json]

Method. One pulsar-lite broker (started here, metrics off, data in a temporary directory) and
one gateway (``python -m supervisor serve --pulsar-url ...``, a separate process, as in a real
deployment) serve every measurement. Each measurement writes N distinct ~1.2 KB triples frames
(``json.dumps(tests.data.sample_message("triples", i))``) to a topic that did not exist before:

* ``raw send_async``: this process's own ``pulsar.Client``, an unbatched producer
  (``batching_enabled=False``, ``block_if_queue_full=True``, ``send_timeout_millis=0``,
  ``max_pending_messages`` >= N up to 100,000), payloads pre-encoded to bytes. Timed from the
  first ``send_async`` until the callback count reaches N (a ``threading.Event``). Producer
  creation is outside the timing. This is the ceiling: what one Python producer reaches with
  nothing in front of it.
* ``gateway import``: ONE WebSocket to ``/api/v1/flow/{uuid}/import/triples?receipts=true``
  (``websockets.trio`` client, ``compression=None``); a sender task sends all N frames while a
  reader task reads receipts. Timed from the first send until ``{"ack": N}`` arrives, i.e.
  until the gateway says every frame is persisted. The gateway creates its producer after the
  handshake, so that round trip is inside the timing (it is a few milliseconds). The gateway
  uses its default settings (producer batching on, 1,000 frames in flight).
* ``blocking send``: ``producer.send`` per message, one round trip each (as the publisher in
  TrustGraph's spec does), on ``--blocking-messages`` messages (2,000); msg/s is extrapolated.

After each gateway run the topic is read back (a ``pulsar.Reader`` from the earliest message
until ``has_message_available()`` is False): all N must be there, identical and in order,
otherwise the script exits with status 1 (also on a gateway error frame or a timeout).
Messages are counted once per message id, because pulsar-lite 0.2.0 re-delivers entries to
readers on topics this size (see ``read_back``); the re-deliveries are reported, not counted.

``--warmup`` messages (default 1,000) go through raw and gateway once before anything is timed,
so neither side pays for first-use costs (imports, connection set-up, JIT-less warm caches).
With ``--repeat R`` the three measurements run R times, interleaved, and best and median are
reported; the ratio is computed on best/best and median/median.

What the ratio means. ``gateway / raw`` is the gateway's import rate over the rate one raw
pulsar-client producer reaches on the same broker: the share of the achievable throughput that
survives WebSocket framing, JSON validation, receipts and the Trio <-> pulsar-client handoff.
The target is >= 0.5. It is not a capacity figure for a deployment: this machine has 2 cores
and the broker, the gateway, and this client (which also runs the WebSocket sender and reader)
share them, so the gateway's figure is also limited by the CPU the client and broker take; the
``cpu s`` column shows each process's CPU seconds during the run (gateway / broker / bench).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pulsar
import trio
from _common import (
    BenchFailure,
    CpuMeter,
    Stats,
    gateway,
    pulsar_lite,
    send_all_async,
    timeout_for,
    triples_payloads,
)
from websockets.trio.client import connect

from quiesce.core.config import load_settings

KIND = "triples"
TARGET_RATIO = 0.5
# Read-back: passes from the earliest message, and how long one read may stall (see read_back).
READ_PASSES = 5
READ_STALL_MS = 3000

RAW = "raw send_async (unbatched)"
GATEWAY = "gateway import (1 ws, receipts)"
BLOCKING = "raw blocking send (per msg)"




def _topic_for(flow: str) -> str:
    # The gateway's own rule, with the same environment it sees (QUIESCE_* variables).
    settings = load_settings({}, os.environ, None).settings
    return settings.topic_for(flow, KIND)


def _new_flow(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ------------------------------------------------------------------ raw pulsar-client


def raw_send_async(client: pulsar.Client, topic: str, payloads: list[bytes]) -> float:
    """Send ``payloads`` with an unbatched ``send_async``; seconds until all are confirmed."""
    return send_all_async(client, topic, payloads, batching=False, what="raw send_async")


def raw_blocking_send(client: pulsar.Client, topic: str, payloads: list[bytes]) -> float:
    """Send ``payloads`` one ``producer.send`` at a time; return the seconds taken."""
    producer = client.create_producer(topic, batching_enabled=False, send_timeout_millis=0)
    try:
        send = producer.send
        start = time.perf_counter()
        for payload in payloads:
            send(payload)
        return time.perf_counter() - start
    finally:
        producer.close()


def read_back(client: pulsar.Client, topic: str, expected: list[bytes]) -> tuple[int, bool, int]:
    """Read ``topic`` from the earliest message and check it holds ``expected``, in order.

    pulsar-lite 0.2.0's dispatch to readers is not exact on topics this size: a reader may be
    handed the same entries again (same message id) or stall with ``has_message_available()``
    still True. So messages are keyed by message id (what the broker *stores* is what counts),
    and a pass that stalls is followed by another from the earliest message, up to
    ``READ_PASSES``, until one ends cleanly.

    Returns:
        (distinct messages stored, identical to ``expected`` and in order, redundant
        deliveries the reader saw).
    """
    stored: dict[tuple[int, int, int], bytes] = {}
    redundant = 0
    for _ in range(READ_PASSES):
        reader = client.create_reader(topic, pulsar.MessageId.earliest,
                                      receiver_queue_size=1000)
        clean = True
        try:
            while reader.has_message_available():
                try:
                    msg = reader.read_next(timeout_millis=READ_STALL_MS)
                except pulsar.Timeout:
                    clean = False
                    break
                mid = msg.message_id()
                key = (mid.ledger_id(), mid.entry_id(), mid.batch_index())
                if key in stored:
                    redundant += 1
                else:
                    stored[key] = msg.data()
        finally:
            reader.close()
        if clean:
            break
    in_order = [stored[k] for k in sorted(stored)]
    return len(stored), in_order == expected, redundant


# ------------------------------------------------------------------ gateway over WebSocket


async def _gateway_import(url: str, frames: list[str], limit_s: float) -> float:
    n = len(frames)
    errors: list[Any] = []
    finished: list[float] = []
    async with connect(url, compression=None, proxy=None) as ws:
        start = time.perf_counter()

        async def sender() -> None:
            send = ws.send
            for frame in frames:
                await send(frame)

        async def reader() -> None:
            while True:
                receipt = json.loads(await ws.recv())
                if "ack" in receipt:
                    if receipt["ack"] >= n:
                        finished.append(time.perf_counter())
                        return
                else:
                    errors.append(receipt)
                    if len(errors) >= 10:
                        return

        with trio.move_on_after(limit_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(reader)
    if errors:
        raise BenchFailure(f"gateway sent {len(errors)}+ error frames, e.g. {errors[0]}")
    if not finished:
        raise BenchFailure(f"gateway: no final ack {n} within {limit_s:g}s")
    return finished[0] - start


def gateway_import(ws_base: str, flow: str, frames: list[str]) -> float:
    """Import ``frames`` over one WebSocket; return the seconds until ``{"ack": N}``."""
    url = f"{ws_base}/api/v1/flow/{flow}/import/{KIND}?receipts=true"
    return trio.run(_gateway_import, url, frames, timeout_for(len(frames)))


# ------------------------------------------------------------------ reporting


def _fmt_cpu(cpu: dict[str, float | None]) -> str:
    parts = [f"{v:.1f}" if v is not None else "?" for v in cpu.values()]
    return "/".join(parts) if parts else "-"


def print_table(rows: list[Stats], raw: Stats, repeat: int) -> None:
    """Print name, messages, seconds, msg/s, ratio (best, and median when repeated)."""
    header = f"{'name':<33} {'messages':>8} {'seconds':>8} {'msg/s':>9} {'ratio':>6}"
    if repeat > 1:
        header += f" {'med s':>8} {'med msg/s':>9} {'med ratio':>9}"
    header += f"  {'cpu s gw/broker/bench':>21}"
    print(header)
    print("-" * len(header))
    for s in rows:
        line = (f"{s.name:<33} {s.messages:>8} {s.best:>8.3f} {s.rate(s.best):>9.0f} "
                f"{s.rate(s.best) / raw.rate(raw.best):>6.2f}")
        if repeat > 1:
            line += (f" {s.median:>8.3f} {s.rate(s.median):>9.0f} "
                     f"{s.rate(s.median) / raw.rate(raw.median):>9.2f}")
        line += f"  {_fmt_cpu(s.best_cpu()):>21}"
        print(line)


def _measure(stats: Stats, meter: CpuMeter, run: Callable[[], float]) -> float:
    meter.start()
    seconds = run()
    stats.add(seconds, meter.stop())
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if a measurement failed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="frames per run (20000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (1)")
    parser.add_argument("--blocking-messages", type=int, default=2_000,
                        help="messages for the blocking-send figure (2000)")
    parser.add_argument("--warmup", type=int, default=1_000,
                        help="untimed messages through raw and gateway first (1000; 0: none)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    n, repeat = args.messages, args.repeat
    if n < 1 or repeat < 1 or args.blocking_messages < 1 or args.warmup < 0:
        parser.error("--messages, --repeat and --blocking-messages must be >= 1")

    frames = triples_payloads(n)
    payloads = [f.encode() for f in frames]
    blocking_payloads = [f.encode() for f in triples_payloads(args.blocking_messages)]
    raw = Stats(RAW, n)
    gw = Stats(GATEWAY, n)
    blocking = Stats(BLOCKING, args.blocking_messages)
    counts: list[int] = []
    redeliveries: list[int] = []
    failure: str | None = None

    print(f"import bench: {n} triples frames of ~{sum(map(len, payloads)) // n} bytes, "
          f"repeat {repeat}, {os.cpu_count()} cores shared by broker, gateway and client")
    with pulsar_lite() as broker, gateway(broker.url) as gw_proc:
        client = pulsar.Client(broker.url, operation_timeout_seconds=30,
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
        meter = CpuMeter({"gateway": gw_proc.pid, "broker": broker.pid, "bench": os.getpid()})
        try:
            if args.warmup:
                warm = triples_payloads(args.warmup, start=n)
                raw_send_async(client, _topic_for(_new_flow("warm-raw")),
                               [w.encode() for w in warm])
                gateway_import(gw_proc.ws_base, _new_flow("warm-gw"), warm)
            for _ in range(repeat):
                topic = _topic_for(_new_flow("raw"))
                _measure(raw, meter, lambda t=topic: raw_send_async(client, t, payloads))

                flow = _new_flow("gw")
                _measure(gw, meter, lambda f=flow: gateway_import(gw_proc.ws_base, f, frames))
                count, same, redundant = read_back(client, _topic_for(flow), payloads)
                counts.append(count)
                redeliveries.append(redundant)
                if count != n or not same:
                    failure = (f"gateway topic holds {count} of {n} messages"
                               + ("" if count != n else " (not identical or not in order)"))

                topic = _topic_for(_new_flow("blocking"))
                _measure(blocking, meter,
                         lambda t=topic: raw_blocking_send(client, t, blocking_payloads))
        except BenchFailure as exc:
            failure = str(exc)
        finally:
            client.close()
        if failure and not gw.seconds:
            print("gateway log tail:\n  " + "\n  ".join(list(gw_proc.log_tail)[-15:]),
                  file=sys.stderr)

    if not raw.seconds or not gw.seconds or not blocking.seconds:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print()
    print_table([raw, gw, blocking], raw, repeat)
    print()
    ratio_best = gw.rate(gw.best) / raw.rate(raw.best)
    ratio_median = gw.rate(gw.median) / raw.rate(raw.median)
    verdict = "meets" if ratio_best >= TARGET_RATIO else "BELOW"
    if repeat > 1:
        print(f"gateway / raw: {ratio_best:.2f} best, {ratio_median:.2f} median  "
              f"(target >= {TARGET_RATIO}: {verdict})")
    else:
        print(f"gateway / raw: {ratio_best:.2f}  (target >= {TARGET_RATIO}: {verdict})")
    blocking_ratio = blocking.rate(blocking.best) / raw.rate(raw.best)
    print(f"blocking send / raw: {blocking_ratio:.3f}  "
          f"(per-message round trips, extrapolated from {blocking.messages})")
    count_ok = all(c == n for c in counts) and failure is None
    print(f"gateway count check: {', '.join(map(str, counts))} of {n} arrived"
          f" -> {'OK' if count_ok else 'FAIL'}")
    if any(redeliveries):
        print(f"  (read-back: the broker re-delivered {', '.join(map(str, redeliveries))} "
              "messages to the reader; counted once each, by message id)")

    if args.json:
        def figures(s: Stats) -> dict[str, Any]:
            return {
                "messages": s.messages,
                "seconds": [round(x, 4) for x in s.seconds],
                "best_s": round(s.best, 4),
                "median_s": round(s.median, 4),
                "best_msg_s": round(s.rate(s.best), 1),
                "median_msg_s": round(s.rate(s.median), 1),
                "cpu_s_best_run": {k: None if v is None else round(v, 3)
                                   for k, v in s.best_cpu().items()},
            }

        print(json.dumps({
            "bench": "import",
            "kind": KIND,
            "messages": n,
            "repeat": repeat,
            "cores": os.cpu_count(),
            "raw_send_async": figures(raw),
            "gateway_import": figures(gw),
            "raw_blocking_send": figures(blocking),
            "ratio_gateway_raw": {"best": round(ratio_best, 4),
                                  "median": round(ratio_median, 4),
                                  "target": TARGET_RATIO},
            "ratio_blocking_raw": round(blocking_ratio, 4),
            "gateway_counts": counts,
            "readback_redeliveries": redeliveries,
            "ok": count_ok,
            "failure": failure,
        }, separators=(",", ":")))
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
