"""What pulsar-client itself costs the gateway's thread per message when messages trickle.

Run from the repository root::

    .venv/bin/python bench/trickle_cost.py                 # 100 consumers, 20,000 messages
    .venv/bin/python bench/trickle_cost.py --consumers 500 --rate 2000

Method. One pulsar-lite broker (the harness's), ``--consumers`` consumers on 10 topics (each
its own subscription, as quiesce's exports have), a producer thread publishing ``--messages``
1.2 KB messages round-robin over the topics at ``--rate`` per second. The main thread does
what ``actors/subscriber.py`` does, without Trio or WebSockets: every consumer has one
pending ``receive_async`` (the binding's); a completion on pulsar-client's listener thread is
handed over; the main thread then takes what else is queued with further ``receive_async``
calls (the last one stays pending) and acknowledges each message with ``acknowledge_async``.

Reported: the main thread's CPU per message (``time.thread_time``) in ``receive_async`` and
in the acks, and in all. When messages come one at a time every message costs one pending
``receive_async``; this is the floor below which no per-message design on this binding goes,
and what the scale benchmark's exports pay on top of Trio and the WebSocket.
"""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pulsar
from _common import Broker

TOPICS = 10
PAYLOAD = b"x" * 1200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", type=int, default=100, help="consumers (100)")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages published, each to all consumers of a topic (2000)")
    parser.add_argument("--rate", type=float, default=200.0, help="published per second (200)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.start(Path(tmp))
        try:
            run(broker.url, args.consumers, args.messages, args.rate)
        finally:
            broker.kill()


def run(url: str, n_consumers: int, n_messages: int, rate: float) -> None:
    client = pulsar.Client(url, logger=logging.getLogger("pulsar"))
    topics = [f"persistent://public/default/trickle-{uuid.uuid4().hex[:8]}-{i}"
              for i in range(TOPICS)]
    consumers = [client.subscribe(topics[i % TOPICS], f"s{i}",
                                  consumer_type=pulsar.ConsumerType.Shared)._consumer
                 for i in range(n_consumers)]
    producers = [client.create_producer(t, batching_enabled=True,
                                        batching_max_publish_delay_ms=1) for t in topics]
    main_thread = threading.get_ident()
    arrivals: collections.deque[tuple[int, Any]] = collections.deque()
    inline: list[Any] = []
    ready = threading.Condition()

    def callback_of(i: int) -> Any:
        def received(result: Any, message: Any) -> None:
            if threading.get_ident() == main_thread:
                inline.append(message)
                return
            arrivals.append((i, message))
            with ready:
                ready.notify()
        return received

    callbacks = [callback_of(i) for i in range(n_consumers)]

    def acked(result: Any) -> None:
        pass

    def publish() -> None:
        start = time.perf_counter()
        for k in range(n_messages):
            producers[k % TOPICS].send_async(PAYLOAD, None)
            pause = start + (k + 1) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        for producer in producers:
            producer.flush()

    for i, consumer in enumerate(consumers):
        consumer.receive_async(callbacks[i])
    expected = sum(n_messages // TOPICS + (1 if k < n_messages % TOPICS else 0)
                   for k in (i % TOPICS for i in range(n_consumers)))
    publisher = threading.Thread(target=publish)
    publisher.start()
    in_receive = in_ack = 0.0
    got = calls = 0
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    while got < expected:
        with ready:
            while not arrivals:
                if not ready.wait(30):
                    raise SystemExit(f"stuck: {got} of {expected} delivered")
        while arrivals:
            i, first = arrivals.popleft()
            burst = [first]
            while True:
                t = time.thread_time()
                consumers[i].receive_async(callbacks[i])
                in_receive += time.thread_time() - t
                calls += 1
                if not inline:
                    break  # pending: the next message comes through the listener thread
                burst.extend(inline)
                inline.clear()
            t = time.thread_time()
            for message in burst:
                consumers[i].acknowledge_async(message, acked)
            in_ack += time.thread_time() - t
            got += len(burst)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    publisher.join()
    client.close()
    print(f"{n_consumers} consumers, {got} messages delivered in {wall:.1f} s, "
          f"{calls / got:.2f} receive_async calls per message")
    print(f"main thread CPU per message: receive_async {in_receive / got * 1e6:.1f} us, "
          f"acknowledge_async {in_ack / got * 1e6:.1f} us, in all {cpu / got * 1e6:.1f} us")


if __name__ == "__main__":
    main()
