"""Shared fixtures: one real pulsar-lite broker per test session, and real gateways on it.

The broker is the same wheel the embedded default uses, started once (it takes ~0.5 s) on a
free loopback port with its metrics endpoint off. Every test gets topics of its own (a
unique flow name), so tests never see each other's messages. The helpers behind these
fixtures (and every other shared helper) are in ``tests/harness.py``; test data in
``tests/data.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pulsar
import pytest
import trio

from quiesce.core.config import Settings
from quiesce.supervisor import Supervisor
from tests.harness import Broker, pulsar_lite, start_gateway


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a pulsar-lite broker shared by the session (real broker, loopback only)."""
    with pulsar_lite(tmp_path_factory.mktemp("broker")) as broker:
        yield broker.url


@pytest.fixture(scope="session")
def pulsar_client(broker_url: str) -> Iterator[pulsar.Client]:
    """A plain pulsar-client on the session broker, to check what reached the topics."""
    client = pulsar.Client(broker_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    yield client
    client.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A pulsar-lite broker of this test's own, which it may kill, freeze or restart (the
    session broker must never be); thawed and stopped at the end whatever happened."""
    with pulsar_lite(tmp_path / "own-broker") as broker:
        yield broker


@pytest.fixture
def flow() -> str:
    """A flow name no other test uses, so its topics start empty."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Settings:
    """Gateway settings on the session broker, an ephemeral port, short drains."""
    return Settings(port=0, pulsar_url=broker_url, data_dir=str(tmp_path / "data"),
                    shutdown_timeout=10.0)


@pytest.fixture
async def gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Supervisor]:
    """A gateway serving on the session broker; drained at the end of the test."""
    supervisor = await start_gateway(nursery, settings)
    yield supervisor
    supervisor.request_shutdown()
