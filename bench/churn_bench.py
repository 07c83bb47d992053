"""RSS of one gateway across cycles of many short connections: does it level off?

Run from the repository root::

    .venv/bin/python bench/churn_bench.py                      # 6 cycles of 300 + 300
    .venv/bin/python bench/churn_bench.py --sockets 100 --cycles 10 --new-flows

Method. One pulsar-lite broker and one gateway process (the harness's, as ``rig``). Each
cycle opens ``--sockets`` export WebSockets (fresh subscriptions, read and discarded)
and then ``--sockets`` import WebSockets with receipts (at most 50 handshakes at a time),
each sending 5 ~1.2 KB frames and closing, over 10 flows; then closes the exports. The
gateway's RSS (``VmRSS``) is printed before the first cycle and 4 s after each (its heap
trim runs ``malloc_trim_interval``, 2 s, after the last close). The flows are the same in
every cycle unless ``--new-flows`` (new topics each cycle).

A gateway that keeps something per connection grows by the same amount every cycle; one
that only keeps its high-water mark levels off after the first.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import trio
from _common import gateway_process, pulsar_lite
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from tests.data import sample_message

FLOWS = 10
FRAMES = 5
HANDSHAKES = 50
SETTLE_S = 4.0
BOUND_S = 120.0


def rss_mb(pid: int) -> int:
    """The process's resident set, MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


async def cycle(port: int, flow: str, sockets: int) -> None:
    """One cycle: open the exports, run the imports, close the exports."""
    base = f"ws://127.0.0.1:{port}/api/v1/flow"
    frame = json.dumps(sample_message("triples", 1))
    handshakes = trio.CapacityLimiter(HANDSHAKES)
    opened = trio.Semaphore(0)
    release = trio.Event()

    async def export(i: int) -> None:
        async with connect(f"{base}/{flow}{i % FLOWS}/export/triples", open_timeout=60,
                           close_timeout=60) as ws, trio.open_nursery() as nursery:
            opened.release()

            async def discard() -> None:
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass

            nursery.start_soon(discard)
            await release.wait()
            nursery.cancel_scope.cancel()

    async def import_(i: int) -> None:
        async with handshakes, connect(
                f"{base}/{flow}{i % FLOWS}/import/triples?receipts=true", open_timeout=60,
                close_timeout=60) as ws:
            for _ in range(FRAMES):
                await ws.send(frame)

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            for i in range(sockets):
                nursery.start_soon(export, i)
            for _ in range(sockets):
                await opened.acquire()
            async with trio.open_nursery() as imports:
                for i in range(sockets):
                    imports.start_soon(import_, i)
            release.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=300,
                        help="exports and imports per cycle, each (300)")
    parser.add_argument("--cycles", type=int, default=6, help="cycles (6)")
    parser.add_argument("--new-flows", action="store_true", help="new topics every cycle")
    args = parser.parse_args()
    with pulsar_lite() as broker, gateway_process(pulsar_url=broker.url) as gateway:
        time.sleep(SETTLE_S)
        print(f"baseline: RSS {rss_mb(gateway.pid)} MB", flush=True)
        flow = f"churn{uuid.uuid4().hex[:6]}"
        for n in range(1, args.cycles + 1):
            if args.new_flows:
                flow = f"churn{uuid.uuid4().hex[:6]}"
            trio.run(cycle, gateway.port, flow, args.sockets)
            time.sleep(SETTLE_S)
            print(f"after cycle {n} ({args.sockets} exports + {args.sockets} imports): "
                  f"RSS {rss_mb(gateway.pid)} MB", flush=True)


if __name__ == "__main__":
    main()
