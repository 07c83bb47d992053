"""Tests of the shared secret (CONTRACT §2, §7): in-process gateways, real clients.

Every WebSocket and ``/metrics`` request needs ``?token=SECRET`` or ``Authorization: Bearer
SECRET`` once a secret is configured (HTTP 401 otherwise); ``/healthz`` and ``/readyz`` stay
open; without a secret nothing is asked. Waits are on messages, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pulsar
import pytest
import trio
from websockets.trio.client import connect

from quiesce.core.config import Settings
from quiesce.supervisor import Supervisor
from tests.data import sample_message
from tests.harness import (
    http_get,
    import_frames,
    import_path,
    open_import,
    persisted,
    refused_status,
    start_gateway,
    topic_of,
    ws_url,
)

SECRET = "s3cret"
LONG = 60.0

# Ways to present (or not) a credential: (query suffix, extra headers).
MISSING: tuple[str, dict[str, str]] = ("", {})
WRONG_QUERY: tuple[str, dict[str, str]] = ("token=wrong", {})
WRONG_BEARER: tuple[str, dict[str, str]] = ("", {"Authorization": "Bearer wrong"})
GOOD_QUERY: tuple[str, dict[str, str]] = (f"token={SECRET}", {})
GOOD_BEARER: tuple[str, dict[str, str]] = ("", {"Authorization": f"Bearer {SECRET}"})
REFUSED = {"missing": MISSING, "wrong-query": WRONG_QUERY, "wrong-bearer": WRONG_BEARER}
ACCEPTED = {"query": GOOD_QUERY, "bearer": GOOD_BEARER}


def with_query(path: str, query: str) -> str:
    """``path`` with ``query`` appended (after ``?`` or ``&``)."""
    if not query:
        return path
    return f"{path}{'&' if '?' in path else '?'}{query}"



async def import_some(gateway: Supervisor, flow: str, credential: tuple[str, dict[str, str]],
                      count: int, first: int = 0) -> int:
    """Import ``count`` triples with receipts; returns the final ack."""
    query, headers = credential
    url = ws_url(gateway, with_query(import_path(flow), query))
    frames = [json.dumps(sample_message("triples", i)) for i in range(first, first + count)]
    with trio.fail_after(LONG):
        client = await import_frames(url, frames, additional_headers=headers)
    assert client.ws.close_code == 1000
    return max(client.acks, default=0)


async def export_one(gateway: Supervisor, flow: str, credential: tuple[str, dict[str, str]]
                     ) -> dict[str, Any]:
    """Read the first message of the flow's triples through a new named subscription."""
    query, headers = credential
    path = (f"/api/v1/flow/{flow}/export/triples"
            f"?subscription=a-{uuid.uuid4().hex[:8]}&position=earliest")
    with trio.fail_after(LONG):
        async with connect(ws_url(gateway, with_query(path, query)),
                           additional_headers=headers) as ws:
            return dict(json.loads(await ws.recv()))


async def refused(gateway: Supervisor, path: str, credential: tuple[str, dict[str, str]]) -> int:
    """The HTTP status a WebSocket handshake on ``path`` with ``credential`` is refused with."""
    query, headers = credential
    return await refused_status(ws_url(gateway, with_query(path, query)),
                                additional_headers=headers)


async def persisted_count(client: pulsar.Client, flow: str) -> int:
    """How many messages the flow's triples topic holds."""
    return len(await persisted(client, topic_of("triples", flow)))


@pytest.fixture
async def secured(nursery: trio.Nursery, settings: Settings) -> Supervisor:
    """A gateway on the session broker with the secret ``s3cret`` configured."""
    gateway = await start_gateway(nursery, settings, secret=SECRET)
    yield gateway
    gateway.request_shutdown()


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("way", sorted(REFUSED))
async def test_import_and_export_handshakes_without_the_secret_get_401(
    secured: Supervisor, flow: str, way: str
) -> None:
    """No token, a wrong ?token= or a wrong Bearer is refused with 401 on both WebSockets."""
    credential = REFUSED[way]
    imp = await refused(secured, f"/api/v1/flow/{flow}/import/triples", credential)
    exp = await refused(secured, f"/api/v1/flow/{flow}/export/triples", credential)
    print(f"\n{way}: import={imp} export={exp}")
    assert (imp, exp) == (401, 401)


@pytest.mark.parametrize("way", sorted(ACCEPTED))
async def test_import_and_export_work_with_the_secret_as_query_or_bearer(
    secured: Supervisor, pulsar_client: pulsar.Client, flow: str, way: str
) -> None:
    """?token=s3cret and Authorization: Bearer s3cret both open working import and export."""
    credential = ACCEPTED[way]
    acked = await import_some(secured, flow, credential, 5)
    stored = await persisted_count(pulsar_client, flow)
    exported = await export_one(secured, flow, credential)
    print(f"\n{way}: sent=5 acked={acked} persisted={stored} "
          f"exported_first={exported['metadata']['id']}")
    assert acked == 5
    assert stored == 5
    assert exported == sample_message("triples", 0)


@pytest.mark.parametrize("way", sorted(REFUSED) + sorted(ACCEPTED))
async def test_metrics_needs_the_secret(secured: Supervisor, way: str) -> None:
    """/metrics answers 401 without the right secret and 200 with it (query or bearer)."""
    query, headers = {**REFUSED, **ACCEPTED}[way]
    status, body = await http_get(secured.port, with_query("/metrics", query), headers)
    print(f"\n/metrics {way}: {status}")
    if way in ACCEPTED:
        assert status == 200, body
        assert "websocket_forced_shutdowns_total" in body
    else:
        assert status == 401, body
        assert "websocket_" not in body


async def test_health_and_readiness_stay_open_with_a_secret(secured: Supervisor) -> None:
    """/healthz and /readyz answer 200 without a token even when a secret is configured."""
    health = await http_get(secured.port, "/healthz")
    ready = await http_get(secured.port, "/readyz")
    assert health[0] == 200, health
    assert ready[0] == 200, ready


async def test_without_a_secret_no_token_is_needed(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """With no secret configured, import, export and /metrics work without any token."""
    acked = await import_some(gateway, flow, MISSING, 3)
    exported = await export_one(gateway, flow, MISSING)
    status, _ = await http_get(gateway.port, "/metrics")
    stored = await persisted_count(pulsar_client, flow)
    print(f"\nno secret: sent=3 acked={acked} persisted={stored} metrics={status}")
    assert acked == 3
    assert stored == 3
    assert exported == sample_message("triples", 0)
    assert status == 200


async def test_a_refused_handshake_does_not_disturb_an_open_authorized_import(
    secured: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """401s on other connections leave an open authorized import importing to the end."""
    half, total = 50, 100
    url = ws_url(secured, f"{import_path(flow)}&token={SECRET}")
    with trio.fail_after(LONG):
        async with open_import(url) as client:
            for i in range(half):
                await client.send(json.dumps(sample_message("triples", i)))
            await client.wait_ack(half)
            refusals = [
                await refused(secured, f"/api/v1/flow/{flow}/{direction}/triples", credential)
                for direction in ("import", "export")
                for credential in REFUSED.values()
            ]
            for i in range(half, total):
                await client.send(json.dumps(sample_message("triples", i)))
    stored = await persisted_count(pulsar_client, flow)
    print(f"\nopen import beside 401s: sent={total} acked={client.ack} persisted={stored} "
          f"refusals={refusals} close={client.ws.close_code}")
    assert refusals == [401] * 6
    assert client.errors == [], client.errors
    assert client.ack == total
    assert client.ws.close_code == 1000
    assert stored == total
