"""Export throughput: quiesce's WebSocket export path against raw pulsar-client, on one broker.

Run from the repository root::

    .venv/bin/python bench/export_bench.py [--messages N] [--repeat R] [--json]

Method. One pulsar-lite broker (started here, metrics off, data in a temporary directory) and
one gateway (``python -m quiesce.supervisor serve --pulsar-url ...``, a separate process, as
in a real deployment) serve every measurement. For each repetition a topic that did not exist
before (``persistent://tg/flow/triples:{flow}``, the gateway's own naming rule) is filled,
untimed, with N distinct ~1.2 KB triples messages
(``json.dumps(tests.data.sample_message("triples", i))``) by a batched ``send_async``
producer; every send must be confirmed. Then the same backlog is read three times, each
time through a subscription that did not exist before, starting at the earliest message:

* ``raw consume+ack``: this process's own ``pulsar.Client``, a Shared consumer
  (``receiver_queue_size=1000``, as the gateway's), with either a **receive loop**
  (``consumer.receive`` then ``consumer.acknowledge`` per message, on this thread; the
  default) or a **message_listener** (the callback acknowledges and counts; the main thread
  waits on a ``threading.Event``), chosen with ``--raw-mode``. Timed from ``subscribe`` (so
  the consumer's prefetch is inside the timing, as it is for the gateway) until N distinct
  message ids have been received and acknowledged. This is the ceiling: what one Python
  consumer reaches with nothing in front of it.
* ``gateway export ack=auto``: ONE WebSocket to ``/api/v1/flow/{flow}/export/triples?
  subscription=<new>&position=earliest&until=end`` (``websockets.trio`` client,
  ``compression=None``, ``max_size=None``). Timed from before the connect (handshake,
  subscribe and the ``until=end`` last-id lookup are inside) until N distinct messages
  arrived. Each frame must be byte-identical to one of the published payloads.
* ``gateway export ack=client``: the same with ``ack=client&window=1000``; frames are
  ``{"seq": N, "message": {...}}`` and the client sends a cumulative ``{"ack": seq}`` every
  ``--ack-every`` frames (100) and once N distinct messages arrived; timed until that final
  ack has been sent. (An idle timer also acks after 0.25 s without progress, so a stall
  cannot deadlock the window; it never fires in a healthy run.) A gateway client that gets
  no frame for 10 s gives up (a failure), so a stalled export cannot hang the benchmark.

After N distinct messages the gateway clients keep reading, untimed, until ``{"end": true}``
and the close (expected: code 1000); the time the end frame took is reported as ``end +s``.
A missing end frame or another close code is a failure.

Counting. Messages are counted once each: by message id (ledger, entry, batch index) for the
raw consumer, by payload for the gateway (the frames carry no id; every payload is distinct).
pulsar-lite 0.2.0 may hand a consumer the same entries again (see ``read_topic_counted`` in
``tests/harness.py``); such duplicates are counted and reported in the ``dups`` column, and do
not count toward throughput. The script exits with status 1 if any message is missing, any
frame is not one of the payloads, the gateway sends an error frame or no end frame, or a
measurement times out.

``--warmup`` messages (default 1,000) are published and read through all three paths once
before anything is timed, so no side pays for first-use costs. With ``--repeat R`` each
repetition publishes a fresh topic and runs the three measurements interleaved (raw, auto,
client); best and median are reported, and ratios use best/best and median/median.

What the ratio means. ``gateway / raw`` is the gateway's export rate over the rate one raw
pulsar-client consumer reaches on the same broker and backlog: the share of the achievable
consume throughput that survives the listener-thread -> Trio handoff, the per-connection
queue, WebSocket framing and the acks (plus, with ``ack=client``, the seq wrapping and the
client's acks). The target is >= 0.5. It is not a capacity figure for a deployment: this
machine's cores are shared by the broker, the gateway and this client (which also decodes
the frames), so the gateway's figure is also limited by the CPU the others take; the
``cpu s`` column shows each process's CPU seconds during the run (gateway / broker / bench).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulsar
import trio
from _common import (
    BenchFailure,
    CpuMeter,
    GatewayProcess,
    PublishFailed,
    Stats,
    apply_profile,
    bench_arguments,
    exported_form,
    message_key,
    new_flow,
    print_table,
    profile,
    publish,
    rig,
    stored_form,
    timeout_for,
    topic_for,
    triples_payloads,
    ws_url,
)
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

KIND = "triples"
TARGET_RATIO = 0.5
WINDOW = 1000
RECEIVER_QUEUE_SIZE = 1000      # the gateway's own (actors/subscriber.py)
STALL_MS = 5000                 # raw receive loop: a receive this slow means the rest is lost
IDLE_ACK_S = 0.25               # ack=client: ack what we have after this long without frames
STALL_S = 10.0                  # gateway: give up after this long without a frame
END_WAIT_S = 15.0               # after N distinct: how long to wait for {"end": true}

RAW_NAMES = {"receive": "raw consume+ack (receive loop)",
             "listener": "raw consume+ack (msg listener)"}
AUTO = "gateway export ack=auto (1 ws)"
CLIENT = f"gateway export ack=client w={WINDOW}"

_SEQ_PREFIX = '{"seq":'
_MSG_SEP = ',"message":'


@dataclass
class Delivery:
    """What one consume measurement saw.

    Attributes:
        seconds: time until N distinct messages were received (and acked, see the docstring).
        distinct: distinct messages received (N when complete).
        duplicates: deliveries of a message already received (not counted).
        unknown: frames that were neither a published payload nor a control frame.
        errors: error frames from the gateway.
        end_after: gateway: seconds after the N-th distinct message until ``{"end": true}``
            (after the connect, if it came before all N).
        close_code: gateway: the close code received.
        stalled: gateway: the client gave up after this many seconds without a frame.
    """

    seconds: float
    distinct: int
    duplicates: int = 0
    unknown: int = 0
    errors: list[Any] = field(default_factory=list)
    end_after: float | None = None
    close_code: int | None = None
    stalled: float | None = None

    def problems(self, n: int, gateway_run: bool) -> list[str]:
        """Everything wrong with this run (empty when it is correct)."""
        out = []
        if self.distinct != n:
            out.append(f"{n - self.distinct} of {n} messages missing")
        if self.unknown:
            out.append(f"{self.unknown} frames not among the published payloads")
        if self.errors:
            out.append(f"{len(self.errors)} error frames, e.g. {self.errors[0]}")
        if self.stalled is not None:
            out.append(f"gave up after {self.stalled:g}s without a frame")
        if gateway_run and self.end_after is None:
            out.append('no {"end": true} frame')
        if gateway_run and self.close_code != 1000:
            out.append(f"close code {self.close_code}, expected 1000")
        return out


# ------------------------------------------------------------------ setup


def fill(client: pulsar.Client, topic: str, payloads: list[bytes]) -> float:
    """Publish ``payloads`` with a batched ``send_async`` producer; all must be confirmed.

    Returns the seconds it took (for information; the benchmark does not time it).
    """
    return publish(client, topic, payloads, batching=True, timeout=timeout_for(len(payloads)))


# ------------------------------------------------------------------ raw pulsar-client


def _subscribe(client: pulsar.Client, topic: str, subscription: str, **kwargs: Any) -> Any:
    return client.subscribe(
        topic, subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=RECEIVER_QUEUE_SIZE,
        **kwargs,
    )


def raw_receive_loop(client: pulsar.Client, topic: str, index: dict[bytes, int]) -> Delivery:
    """Consume and ack the backlog with ``receive`` + ``acknowledge`` on this thread."""
    n = len(index)
    seen: set[tuple[int, int, int]] = set()
    got = bytearray(n)
    duplicates = unknown = 0
    deadline = time.monotonic() + timeout_for(n)
    start = time.perf_counter()
    consumer = _subscribe(client, topic, new_flow("raw-sub"))
    try:
        receive, acknowledge = consumer.receive, consumer.acknowledge
        while len(seen) < n and time.monotonic() < deadline:
            try:
                msg = receive(STALL_MS)
            except pulsar.Timeout:
                break
            acknowledge(msg)
            key = message_key(msg)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            i = index.get(msg.data())
            if i is None or got[i]:
                unknown += 1
            else:
                got[i] = 1
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    return Delivery(elapsed, sum(got), duplicates, unknown)


def raw_listener(client: pulsar.Client, topic: str, index: dict[bytes, int]) -> Delivery:
    """Consume and ack the backlog in a ``message_listener`` (pulsar-client's thread)."""
    n = len(index)
    seen: set[tuple[int, int, int]] = set()
    got = bytearray(n)
    counts = {"duplicates": 0, "unknown": 0}
    done = threading.Event()
    finished: list[float] = []

    def listener(consumer: Any, msg: Any) -> None:
        consumer.acknowledge(msg)
        key = message_key(msg)
        if key in seen:
            counts["duplicates"] += 1
            return
        seen.add(key)
        i = index.get(msg.data())
        if i is None or got[i]:
            counts["unknown"] += 1
        else:
            got[i] = 1
        if len(seen) == n:
            finished.append(time.perf_counter())
            done.set()

    start = time.perf_counter()
    consumer = _subscribe(client, topic, new_flow("raw-sub"), message_listener=listener)
    try:
        done.wait(timeout_for(n))
        elapsed = (finished[0] if finished else time.perf_counter()) - start
    finally:
        consumer.close()
    return Delivery(elapsed, sum(got), counts["duplicates"], counts["unknown"])


RAW_MODES: dict[str, Callable[[pulsar.Client, str, dict[bytes, int]], Delivery]] = {
    "receive": raw_receive_loop,
    "listener": raw_listener,
}


# ------------------------------------------------------------------ gateway over WebSocket


async def _gateway_export(url: str, index: dict[str, int], client_mode: bool,
                          ack_every: int, limit_s: float) -> Delivery:
    n = len(index)
    got = bytearray(n)
    state = {"frames": 0, "distinct": 0, "duplicates": 0, "unknown": 0, "last_seq": 0,
             "acked": 0}
    errors: list[Any] = []
    marks: dict[str, float] = {}
    close_code: list[int | None] = [None]
    start = time.perf_counter()

    async def send_ack(ws: Any) -> None:
        seq = state["last_seq"]
        await ws.send(f'{{"ack":{seq}}}')
        state["acked"] = seq

    async def watchdog(ws: Any, cancel: trio.CancelScope) -> None:
        # A stall (e.g. messages missing): with ack=client never leave frames unacked for
        # long; give up after STALL_S without a single frame.
        before, quiet = (-1, -1), 0.0
        while True:
            await trio.sleep(IDLE_ACK_S)
            now = (state["frames"], state["last_seq"])
            if now != before:
                before, quiet = now, 0.0
                continue
            quiet += IDLE_ACK_S
            if client_mode and state["last_seq"] > state["acked"]:
                await send_ack(ws)
            if quiet >= STALL_S:
                marks["stalled"] = quiet
                cancel.cancel()
                return

    async def reader(ws: Any, cancel: trio.CancelScope) -> None:
        recv, lookup = ws.recv, index.get
        try:
            while True:
                frame = await recv()
                state["frames"] += 1
                if client_mode and frame.startswith(_SEQ_PREFIX):
                    cut = frame.find(_MSG_SEP, 7)
                    state["last_seq"] = int(frame[7:cut])
                    i = lookup(frame[cut + len(_MSG_SEP):-1])
                else:
                    i = lookup(frame)
                if i is None:
                    control = _parse(frame)
                    if isinstance(control, dict) and control.get("end") is True:
                        marks["end"] = time.perf_counter()
                    elif isinstance(control, dict) and "error" in control:
                        errors.append(control)
                    else:
                        state["unknown"] += 1
                    continue
                if got[i]:
                    state["duplicates"] += 1
                else:
                    got[i] = 1
                    state["distinct"] += 1
                    if state["distinct"] == n:
                        if client_mode:
                            await send_ack(ws)
                        marks["done"] = time.perf_counter()
                        continue
                if client_mode and (state["last_seq"] - state["acked"] >= ack_every
                                    or state["distinct"] == n):
                    await send_ack(ws)
        except ConnectionClosed as exc:
            close_code[0] = exc.rcvd.code if exc.rcvd is not None else None
        cancel.cancel()

    with trio.move_on_after(limit_s):
        async with connect(url, compression=None, max_size=None, proxy=None) as ws:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    nursery.start_soon(watchdog, ws, scope)
                    await reader(ws, scope)
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
    done = marks.get("done")
    end = marks.get("end")
    return Delivery(
        seconds=(done if done is not None else time.perf_counter()) - start,
        distinct=state["distinct"],
        duplicates=state["duplicates"],
        unknown=state["unknown"],
        errors=errors,
        end_after=None if end is None else end - (done if done is not None else start),
        close_code=close_code[0],
        stalled=marks.get("stalled"),
    )


def _parse(frame: str | bytes) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return None


def gateway_export(gateway: GatewayProcess, flow: str, index: dict[str, int], client_mode: bool,
                   ack_every: int = 100) -> Delivery:
    """Export the backlog over one WebSocket through a new subscription at the earliest."""
    query = f"subscription={new_flow('gw-sub')}&position=earliest&until=end"
    if client_mode:
        query += f"&ack=client&window={WINDOW}"
    url = ws_url(gateway, f"/api/v1/flow/{flow}/export/{KIND}?{query}")
    n = len(index)
    return trio.run(_gateway_export, url, index, client_mode, ack_every,
                    timeout_for(n) + END_WAIT_S)


# ------------------------------------------------------------------ reporting


@dataclass
class Runs:
    """Timings (``stats``) and what each run saw (``deliveries``) for one measurement."""

    stats: Stats
    deliveries: list[Delivery] = field(default_factory=list)


def _measure(runs: Runs, meter: CpuMeter, run: Callable[[], Delivery]) -> Delivery:
    meter.start()
    delivery = run()
    runs.stats.add(delivery.seconds, meter.stop())
    runs.deliveries.append(delivery)
    return delivery


def _counts_line(name: str, deliveries: list[Delivery], gateway_run: bool, n: int) -> str:
    parts = []
    for d in deliveries:
        part = f"{d.distinct} distinct, {d.duplicates} dups"
        if gateway_run:
            if d.end_after is None:
                end = "no end"
            elif d.distinct < n:  # then end_after counts from the connect
                end = f"end at {d.end_after:.3f}s, before all arrived"
            else:
                end = f"end +{d.end_after:.3f}s"
            part += f", {end}, close {d.close_code}"
            if d.stalled is not None:
                part += f", stalled {d.stalled:g}s"
        parts.append(part)
    return f"  {name:<33} " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if a measurement failed)."""
    parser = bench_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--raw-mode", choices=sorted(RAW_MODES), default="receive",
                        help="raw consumer: receive loop or message_listener (receive)")
    parser.add_argument("--ack-every", type=int, default=100,
                        help="ack=client: frames per cumulative ack (100)")
    args = parser.parse_args(argv)
    n, repeat = args.messages, args.repeat
    if n < 1 or repeat < 1 or args.warmup < 0 or args.ack_every < 1:
        parser.error("--messages, --repeat and --ack-every must be >= 1, --warmup >= 0")

    apply_profile(args)
    # Published: the profile's payloads (what TrustGraph's producers write); written to the
    # socket: the profile's wire format of each.
    payloads = stored_form(triples_payloads(n))
    text_index = {f: i for i, f in enumerate(exported_form(payloads))}
    bytes_index = {p: i for i, p in enumerate(payloads)}
    raw_consume = RAW_MODES[args.raw_mode]
    raw = Runs(Stats(RAW_NAMES[args.raw_mode], n))
    auto = Runs(Stats(AUTO, n))
    client_runs = Runs(Stats(CLIENT, n))
    publish_s: list[float] = []
    failures: list[str] = []

    print(f"export bench ({profile().value}): {n} triples messages of "
          f"~{sum(map(len, payloads)) // n} bytes, "
          f"repeat {repeat}, {os.cpu_count()} cores shared by broker, gateway and client")
    with rig() as on:
        client, meter, gw_proc = on.client, on.meter, on.gateway
        try:
            if args.warmup:
                warm = stored_form(triples_payloads(args.warmup, start=n))
                flow = new_flow("warm")
                fill(client, topic_for(flow, KIND), warm)
                raw_consume(client, topic_for(flow, KIND), {w: i for i, w in enumerate(warm)})
                warm_index = {w: i for i, w in enumerate(exported_form(warm))}
                for client_mode in (False, True):
                    warm_run = gateway_export(gw_proc, flow, warm_index, client_mode,
                                              args.ack_every)
                    for problem in warm_run.problems(len(warm), True):
                        # Not a failure (nothing is timed), but worth knowing.
                        mode = "client" if client_mode else "auto"
                        print(f"warning: warm-up export (ack={mode}): {problem}",
                              file=sys.stderr)
            for _ in range(repeat):
                flow = new_flow("export")
                topic = topic_for(flow, KIND)
                publish_s.append(fill(client, topic, payloads))
                _measure(raw, meter, lambda t=topic: raw_consume(client, t, bytes_index))
                _measure(auto, meter, lambda f=flow: gateway_export(
                    gw_proc, f, text_index, False))
                _measure(client_runs, meter, lambda f=flow: gateway_export(
                    gw_proc, f, text_index, True, args.ack_every))
        except (BenchFailure, PublishFailed) as exc:
            failures.append(str(exc))
        if failures:
            on.print_log_tail()

    for runs, gateway_run in ((raw, False), (auto, True), (client_runs, True)):
        for k, d in enumerate(runs.deliveries, 1):
            failures.extend(f"{runs.stats.name} run {k}: {p}"
                            for p in d.problems(n, gateway_run))
    if not (raw.stats.seconds and auto.stats.seconds and client_runs.stats.seconds):
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1

    print(f"setup: published {n} x {repeat} with a batched send_async producer in "
          f"{', '.join(f'{s:.2f}' for s in publish_s)} s (untimed)")
    print()
    print_table([raw.stats, auto.stats, client_runs.stats], raw.stats, repeat)
    print()
    ratios: dict[str, dict[str, float]] = {}
    for label, runs in (("ack=auto", auto), ("ack=client", client_runs)):
        s, r = runs.stats, raw.stats
        best, median = s.rate(s.best) / r.rate(r.best), s.rate(s.median) / r.rate(r.median)
        ratios[label] = {"best": best, "median": median}
        verdict = "meets" if best >= TARGET_RATIO else "BELOW"
        figure = f"{best:.2f} best, {median:.2f} median" if repeat > 1 else f"{best:.2f}"
        print(f"gateway {label:<10} / raw: {figure}  (target >= {TARGET_RATIO}: {verdict})")
    print("delivery check (distinct messages, duplicate deliveries not counted):")
    print(_counts_line(raw.stats.name, raw.deliveries, False, n))
    print(_counts_line(auto.stats.name, auto.deliveries, True, n))
    print(_counts_line(client_runs.stats.name, client_runs.deliveries, True, n))
    ok = not failures
    print(f"  -> {'OK' if ok else 'FAIL'}")

    if args.json:
        def figures(runs: Runs) -> dict[str, Any]:
            return {
                **runs.stats.summary(),
                "distinct": [d.distinct for d in runs.deliveries],
                "duplicates": [d.duplicates for d in runs.deliveries],
                "end_after_s": [None if d.end_after is None else round(d.end_after, 4)
                                for d in runs.deliveries],
            }

        print(json.dumps({
            "bench": "export",
            "kind": KIND,
            "messages": n,
            "repeat": repeat,
            "cores": os.cpu_count(),
            "raw_mode": args.raw_mode,
            "ack_every": args.ack_every,
            "window": WINDOW,
            "raw_consume": figures(raw),
            "gateway_export_auto": figures(auto),
            "gateway_export_client": figures(client_runs),
            "ratio_gateway_raw": {k: {m: round(v, 4) for m, v in r.items()} | {
                "target": TARGET_RATIO} for k, r in ratios.items()},
            "ok": ok,
            "failures": failures,
        }, separators=(",", ":")))
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
