"""Broker outages show: in quiesce's own log, in a gauge, and in /readyz after a while.

A real pulsar-lite of the test's own is killed (or frozen with SIGSTOP) and brought back;
the gateway runs in process, so the test waits on its log records, never on the clock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import trio

from quiesce.core.config import Settings
from tests.harness import Broker, http_get, metric_samples, start_gateway

# Bound of each wait (generous: it only matters when something is wrong).
LONG = 30.0
PROBE = 0.2  # broker_probe_interval in these tests
UNREADY = 1.0  # broker_unready_after in these tests


class LogWatch(logging.Handler):
    """Records the broker monitor's lines and wakes a waiting test on each one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the line and wake the waiter (the monitor logs from the Trio thread)."""
        self.lines.append(record.getMessage())
        self._changed.set()

    async def wait_for(self, pattern: str, start: int = 0) -> int:
        """Wait until a line from ``start`` on matches ``pattern``; return its index."""
        while True:
            for i in range(start, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    return i
            self._changed = trio.Event()
            await self._changed.wait()


@pytest.fixture
def watch() -> Iterator[LogWatch]:
    """A LogWatch on the ``quiesce.broker`` logger."""
    handler = LogWatch()
    logger = logging.getLogger("quiesce.broker")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def broker_up(port: int) -> float:
    """The gateway's ``broker_up`` gauge."""
    _, body = await http_get(port, "/metrics")
    return metric_samples(body, "broker_up")[frozenset()]


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_a_broker_outage_is_logged_gauged_and_turns_readyz_503_until_it_is_back(
    nursery: trio.Nursery, settings: Settings, own_broker: Broker, watch: LogWatch,
    outage: str
) -> None:
    """Lost: a warning; lost for over broker_unready_after: /readyz 503; back: 200 again."""
    gateway = await start_gateway(nursery, replace(
        settings, pulsar_url=own_broker.url, broker_probe_interval=PROBE,
        broker_unready_after=UNREADY))
    try:
        assert (await http_get(gateway.port, "/readyz"))[0] == 200
        assert await broker_up(gateway.port) == 1
        if outage == "killed":
            own_broker.kill()
        else:
            own_broker.freeze()
        with trio.fail_after(LONG):
            lost = await watch.wait_for(r"unreachable: ")
            assert await broker_up(gateway.port) == 0
            await watch.wait_for(r"unreachable for \d+s: /readyz answers 503", lost)
        status, body = await http_get(gateway.port, "/readyz")
        during = (status, body.strip())
        if outage == "killed":
            own_broker.restart()
        else:
            own_broker.thaw()
        with trio.fail_after(LONG):
            back = await watch.wait_for(r"reachable again after \d+\.\ds", lost)
        status_after, _ = await http_get(gateway.port, "/readyz")
        up_after = await broker_up(gateway.port)
        print(f"\n{outage}: {watch.lines[lost]!r} / readyz during {during} / "
              f"{watch.lines[back]!r} / readyz after {status_after}, broker_up {up_after}")
        assert during[0] == 503 and "broker" in during[1]
        assert status_after == 200 and up_after == 1
        _, metrics = await http_get(gateway.port, "/metrics")
        assert metric_samples(metrics, "broker_outage_duration_seconds_count")[frozenset()] == 1
    finally:
        own_broker.thaw()
        gateway.request_shutdown()
