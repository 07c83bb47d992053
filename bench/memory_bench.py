"""Memory: does the gateway give back what a storm of large frames took?

Run from the repository root::

    .venv/bin/python bench/memory_bench.py                        # the issue: 6 x 500 of 1-2 MB
    .venv/bin/python bench/memory_bench.py --sockets 4 --frames 60 --fuzz 2000

Method. One pulsar-lite broker and one gateway process (``rig`` in bench/_common.py). The
gateway's RSS (``VmRSS`` in ``/proc/<pid>/status``) is read:

* *baseline*: after a warm-up (one small import with receipts and an ``until=end`` export of
  it, so every code path has run once), once the RSS has not moved by more than 1 MB for
  ``SETTLE_S`` seconds;
* *peak*: ``VmHWM`` after the storm;
* *after*: every ``SAMPLE_S`` seconds for ``--after`` seconds once every socket has closed,
  printed as a series; the last value is the figure.

Storm. ``--sockets`` import WebSockets (``receipts=true``, one flow each) send ``--frames``
triples frames each, one literal of ``--min-kb``..``--max-kb`` KiB (sizes drawn from a seeded
generator), while one export per flow (``ack=client``, ``position=earliest``) reads them back
and acks each. Counted and checked: sent, receipted (the final ack), delivered (distinct ids
exported). ``--fuzz N`` then sends N hostile frames (``tests/faults/_hostile.py``) over one
more import connection and checks each got its error frame.

Exit status 1 if a frame was lost or refused, or a phase timed out.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import trio
from _common import import_path, new_flow, open_import, rig, ws_url
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from tests.data import large_frame, sample_message

# Seconds the RSS must hold still (within SETTLE_MB) to count as the idle baseline.
SETTLE_S = 3.0
SETTLE_MB = 1.0
# Interval between RSS samples.
SAMPLE_S = 0.5
# Bound of the storm (frames sent, exported and every socket closed).
STORM_BOUND_S = 600.0
KIND = "triples"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def loadavg() -> str:
    """The load average line of ``/proc/loadavg``."""
    with open("/proc/loadavg") as f:
        return f.read().strip()


async def settled_rss(pid: int, bound: float = 60.0) -> float:
    """The RSS once it has held still for ``SETTLE_S`` seconds (or the last one after
    ``bound``)."""
    deadline = trio.current_time() + bound
    anchor, since = rss_mb(pid), trio.current_time()
    while trio.current_time() < deadline:
        await trio.sleep(SAMPLE_S)  # polling a /proc figure: nothing to wait on instead
        now = rss_mb(pid)
        if abs(now - anchor) > SETTLE_MB:
            anchor, since = now, trio.current_time()
        elif trio.current_time() - since >= SETTLE_S:
            return now
    return rss_mb(pid)


async def import_storm(url: str, frames: list[tuple[int, int]], ledger: dict[str, int]) -> None:
    """Send ``frames`` ((id, size) pairs) over one import connection; count sent/receipted."""
    async with open_import(url, max_size=None) as client:
        for i, size in frames:
            await client.send(large_frame(i, size))
            ledger["sent"] += 1
    if client.errors or client.violations:
        raise RuntimeError(f"errors {client.errors[:3]} violations {client.violations[:3]}")
    ledger["receipted"] += client.ack


async def export_all(url: str, expected: int, ledger: dict[str, int],
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Read one flow back (``ack=client``) until ``expected`` distinct ids came; count them."""
    seen: set[str] = set()
    async with connect(url, max_size=None, close_timeout=60) as ws:
        task_status.started()
        while len(seen) < expected:
            frame = json.loads(await ws.recv())
            seen.add(frame["message"]["metadata"]["id"])
            await ws.send(json.dumps({"ack": frame["seq"]}))
    ledger["delivered"] += len(seen)


async def fuzz(url: str, count: int) -> tuple[int, int]:
    """Send ``count`` hostile frames over one import; return (sent, error frames)."""
    from tests.faults._hostile import hostile_frames

    frames = hostile_frames(max(1, count // 17), 17)[:count]
    async with open_import(url, max_size=None) as client:
        for frame in frames:
            client.sent += 1
            await client.ws.send(frame.payload, text=frame.text)
    return client.sent, len(client.errors)


async def run(args: argparse.Namespace) -> int:
    with rig() as r:
        pid, gateway = r.gateway.pid, r.gateway
        warm = new_flow("warm")
        async with open_import(ws_url(gateway, import_path(warm, KIND))) as client:
            for i in range(20):
                await client.send(json.dumps(sample_message(KIND, i)))
        async with connect(ws_url(gateway, f"/api/v1/flow/{warm}/export/{KIND}"
                                           "?position=earliest&until=end&subscription=w")) as ws:
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass
        baseline = await settled_rss(pid)
        print(f"baseline RSS {baseline:.1f} MB (load {loadavg().split()[0]})")

        rng = random.Random(11)
        low, high = args.min_kb * 1024, args.max_kb * 1024
        ledger = {"sent": 0, "receipted": 0, "delivered": 0}
        flows = [new_flow("storm") for _ in range(args.sockets)]
        plan = [[(s * args.frames + i, rng.randint(low, high)) for i in range(args.frames)]
                for s in range(args.sockets)]
        total_mb = sum(size for frames in plan for _, size in frames) / 2**20
        start = time.monotonic()
        with trio.fail_after(STORM_BOUND_S):
            async with trio.open_nursery() as nursery:
                for flow, frames in zip(flows, plan, strict=True):
                    if args.export:
                        await nursery.start(export_all, ws_url(
                            gateway, f"/api/v1/flow/{flow}/export/{KIND}?ack=client"
                                     f"&position=earliest&subscription=back"),
                            len(frames), ledger)
                    nursery.start_soon(import_storm, ws_url(gateway, import_path(flow, KIND)),
                                       frames, ledger)
        storm_s = time.monotonic() - start
        peak = rss_mb(pid, "VmHWM")
        print(f"storm: {args.sockets} sockets x {args.frames} frames of {args.min_kb}-"
              f"{args.max_kb} KiB ({total_mb:.0f} MB) in {storm_s:.1f}s; ledger {ledger}; "
              f"peak RSS {peak:.1f} MB")
        expected = args.sockets * args.frames
        ok = ledger["sent"] == ledger["receipted"] == expected and (
            not args.export or ledger["delivered"] == expected)
        after = await series(pid, args.after)
        print(f"after storm, every socket closed: RSS {after:.1f} MB "
              f"({after / baseline:.2f} x baseline)")
        if args.fuzz:
            sent, errors = await fuzz(ws_url(gateway, import_path(new_flow("fuzz"), KIND)),
                                      args.fuzz)
            ok = ok and sent == errors
            after_fuzz = await series(pid, args.after)
            print(f"fuzz: {sent} hostile frames, {errors} error frames; RSS {after_fuzz:.1f} MB "
                  f"({after_fuzz / baseline:.2f} x baseline)")
        print(f"load average {loadavg()}")
        if not ok:
            r.print_log_tail()
        return 0 if ok else 1


async def series(pid: int, seconds: float) -> float:
    """Sample the RSS every ``SAMPLE_S`` for ``seconds``; print the series; return the last."""
    samples: list[float] = []
    for _ in range(max(1, int(seconds / SAMPLE_S))):
        await trio.sleep(SAMPLE_S)  # the interval being measured, not a wait for something
        samples.append(rss_mb(pid))
    print(f"  RSS every {SAMPLE_S:.1f}s: " + " ".join(f"{s:.0f}" for s in samples))
    return samples[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=6, help="import sockets (6)")
    parser.add_argument("--frames", type=int, default=500, help="frames per socket (500)")
    parser.add_argument("--min-kb", type=int, default=1024, help="smallest literal, KiB (1024)")
    parser.add_argument("--max-kb", type=int, default=2048, help="largest literal, KiB (2048)")
    parser.add_argument("--no-export", dest="export", action="store_false",
                        help="do not read the frames back")
    parser.add_argument("--fuzz", type=int, default=0, help="hostile frames afterwards (0)")
    parser.add_argument("--after", type=float, default=10.0,
                        help="seconds of RSS samples after the sockets closed (10)")
    args = parser.parse_args()
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())

