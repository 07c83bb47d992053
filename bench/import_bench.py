"""Import throughput: quiesce's WebSocket import path against raw pulsar-client, on one broker.

Run from the repository root::

    .venv/bin/python bench/import_bench.py [--messages N] [--repeat R] [--json]

Method. One pulsar-lite broker (started here, metrics off, data in a temporary directory) and
one gateway (``python -m quiesce.supervisor serve --pulsar-url ...``, a separate process, as
in a real deployment) serve every measurement. Each measurement writes N distinct ~1.2 KB
triples frames (``json.dumps(tests.data.sample_message("triples", i))``) to a topic that did
not exist before:

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

After each gateway run the topic is read back (``read_topic_counted`` in tests/harness.py, a
``pulsar.Reader`` from the earliest message): all N must be there, identical and in order,
otherwise the script exits with status 1 (also on a gateway error frame or a timeout).
Messages are counted once per message id, the harness's one de-duplication rule, because
pulsar-lite 0.2.0 re-delivers entries to readers on topics this size; the re-deliveries are
reported, not counted.

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

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pulsar
import trio
from _common import (
    BenchFailure,
    CpuMeter,
    PublishFailed,
    Stats,
    apply_profile,
    bench_arguments,
    import_path,
    new_flow,
    open_import,
    print_table,
    profile,
    publish,
    read_topic_counted,
    rig,
    stored_form,
    timeout_for,
    topic_for,
    triples_payloads,
    ws_url,
)

KIND = "triples"
TARGET_RATIO = 0.5

RAW = "raw send_async (unbatched)"
GATEWAY = "gateway import (1 ws, receipts)"
BLOCKING = "raw blocking send (per msg)"


# ------------------------------------------------------------------ raw pulsar-client


def raw_send_async(client: pulsar.Client, topic: str, payloads: list[bytes]) -> float:
    """Send ``payloads`` with an unbatched ``send_async``; seconds until all are confirmed."""
    return publish(client, topic, payloads, batching=False, timeout=timeout_for(len(payloads)))


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

    Returns:
        (distinct messages stored, identical to ``expected`` and in order, redundant
        deliveries the reader saw), under ``read_topic_counted``'s rules.
    """
    stored = read_topic_counted(client, topic, len(expected))
    return len(stored.payloads), stored.payloads == expected, stored.duplicates


# ------------------------------------------------------------------ gateway over WebSocket


async def _gateway_import(url: str, frames: list[str], limit_s: float) -> float:
    n = len(frames)
    seconds: list[float] = []
    errors: list[dict[str, Any]] = []
    with trio.move_on_after(limit_s):
        async with open_import(url, compression=None, proxy=None) as client:
            start = time.perf_counter()
            for frame in frames:
                await client.send(frame)
            with contextlib.suppress(AssertionError):  # the connection ended first
                await client.wait_ack(n)
                seconds.append(time.perf_counter() - start)
            errors = client.errors
    if errors:
        raise BenchFailure(f"gateway sent {len(errors)} error frames, e.g. {errors[0]}")
    if not seconds:
        raise BenchFailure(f"gateway: no final ack {n} within {limit_s:g}s")
    return seconds[0]


def gateway_import(url: str, frames: list[str]) -> float:
    """Import ``frames`` over one WebSocket at ``url``; return the seconds until ``{"ack": N}``."""
    return trio.run(_gateway_import, url, frames, timeout_for(len(frames)))


# ------------------------------------------------------------------ reporting


def _measure(stats: Stats, meter: CpuMeter, run: Callable[[], float]) -> float:
    meter.start()
    seconds = run()
    stats.add(seconds, meter.stop())
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if a measurement failed)."""
    parser = bench_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--blocking-messages", type=int, default=2_000,
                        help="messages for the blocking-send figure (2000)")
    args = parser.parse_args(argv)
    n, repeat = args.messages, args.repeat
    if n < 1 or repeat < 1 or args.blocking_messages < 1 or args.warmup < 0:
        parser.error("--messages, --repeat and --blocking-messages must be >= 1")
    apply_profile(args)

    frames = triples_payloads(n)
    # Raw pulsar-client sends what the gateway stores: the profile's payload of each frame.
    payloads = stored_form(frames)
    blocking_payloads = stored_form(triples_payloads(args.blocking_messages))
    raw = Stats(RAW, n)
    gw = Stats(GATEWAY, n)
    blocking = Stats(BLOCKING, args.blocking_messages)
    counts: list[int] = []
    redeliveries: list[int] = []
    failure: str | None = None

    print(f"import bench ({profile().value}): {n} triples frames of "
          f"~{sum(map(len, frames)) // n} bytes, "
          f"repeat {repeat}, {os.cpu_count()} cores shared by broker, gateway and client")
    with rig() as on:
        client, meter, gw_proc = on.client, on.meter, on.gateway
        try:
            if args.warmup:
                warm = triples_payloads(args.warmup, start=n)
                raw_send_async(client, topic_for(new_flow("warm-raw"), KIND), stored_form(warm))
                gateway_import(ws_url(gw_proc, import_path(new_flow("warm-gw"))), warm)
            for _ in range(repeat):
                topic = topic_for(new_flow("raw"), KIND)
                _measure(raw, meter, lambda t=topic: raw_send_async(client, t, payloads))

                flow = new_flow("gw")
                url = ws_url(gw_proc, import_path(flow, KIND))
                _measure(gw, meter, lambda u=url: gateway_import(u, frames))
                count, same, redundant = read_back(client, topic_for(flow, KIND), payloads)
                counts.append(count)
                redeliveries.append(redundant)
                if count != n or not same:
                    failure = (f"gateway topic holds {count} of {n} messages"
                               + ("" if count != n else " (not identical or not in order)"))

                topic = topic_for(new_flow("blocking"), KIND)
                _measure(blocking, meter,
                         lambda t=topic: raw_blocking_send(client, t, blocking_payloads))
        except (BenchFailure, PublishFailed) as exc:
            failure = str(exc)
        if failure and not gw.seconds:
            on.print_log_tail()

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
        print(json.dumps({
            "bench": "import",
            "kind": KIND,
            "messages": n,
            "repeat": repeat,
            "cores": os.cpu_count(),
            "raw_send_async": raw.summary(),
            "gateway_import": gw.summary(),
            "raw_blocking_send": blocking.summary(),
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
