"""Prometheus metrics of one gateway, on a registry of its own.

A registry per ``Metrics`` (not prometheus-client's global one) lets several gateways live in
one process, as they do in the test suite, without "Duplicated timeseries" errors.

The names are CONTRACT §6's: the tech spec's five metrics with dots turned into underscores
(``publisher.queue.depth`` → ``publisher_queue_depth``), plus per-kind message counters,
in-flight gauges and a drain-duration histogram. ``docs/alerts.yml`` is written against them.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The metrics one supervisor exports. Counters only ever go up; gauges are live values."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publisher_queue_depth = Gauge(
            "publisher_queue_depth",
            "Frames handed to a producer and not yet confirmed by the broker, all connections",
            registry=r,
        )
        self.publisher_queue_capacity = Gauge(
            "publisher_queue_capacity",
            "Sum of the open import connections' publisher queue limits "
            "(alert on depth / capacity > 0.8)",
            registry=r,
        )
        self.publisher_messages_dropped = Counter(
            "publisher_messages_dropped",
            "Frames abandoned unconfirmed because a drain deadline passed (never receipted)",
            ["kind"],
            registry=r,
        )
        self.subscriber_messages_nacked = Counter(
            "subscriber_messages_negatively_acknowledged",
            "Messages negatively acknowledged in Pulsar (dropped by backpressure, or taken "
            "and not delivered or not client-acked when an export ended)",
            ["kind", "reason"],
            registry=r,
        )
        self.subscriber_queue_depth = Gauge(
            "subscriber_queue_depth",
            "Messages taken from Pulsar and not yet written to a socket, all connections",
            registry=r,
        )
        self.graceful_shutdowns = Counter(
            "websocket_graceful_shutdowns",
            "Connections closed after a complete drain",
            ["direction"],
            registry=r,
        )
        self.forced_shutdowns = Counter(
            "websocket_forced_shutdowns",
            "Connections force-closed (code 1011) because a drain deadline passed",
            ["direction"],
            registry=r,
        )
        self.shutdown_drops = Counter(
            "shutdown_messages_dropped",
            "Messages dropped or abandoned while the server was draining",
            registry=r,
        )
        self.imported = Counter(
            "messages_imported",
            "Frames persisted by the broker (producer send confirmed), by kind",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "messages_rejected",
            "Frames answered with an error frame instead of being published, by kind and code",
            ["kind", "code"],
            registry=r,
        )
        self.exported = Counter(
            "messages_exported",
            "Messages written to an export socket, by kind",
            ["kind"],
            registry=r,
        )
        self.invalid_payloads = Counter(
            "messages_invalid_payload",
            "Messages in a topic that were not payloads of the flow's profile (or that the "
            "requested wire format cannot carry): delivered as invalid-payload, by kind",
            ["kind"],
            registry=r,
        )
        self.acknowledged = Counter(
            "subscriber_messages_acknowledged",
            "Messages acknowledged in Pulsar after delivery, by kind",
            ["kind"],
            registry=r,
        )
        self.connections = Gauge(
            "websocket_connections",
            "Open WebSocket connections, by direction",
            ["direction"],
            registry=r,
        )
        self.drain_seconds = Histogram(
            "connection_drain_duration_seconds",
            "Time from a connection's drain to its close",
            ["direction"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.shutdown_seconds = Histogram(
            "supervisor_shutdown_duration_seconds",
            "Time from SIGTERM/SIGINT to the last connection closed",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.broker_up = Gauge(
            "broker_up",
            "1 while the broker answers the gateway's probe, 0 while it does not",
            registry=r,
        )
        self.broker_outage_seconds = Histogram(
            "broker_outage_duration_seconds",
            "How long the broker stayed unreachable, per outage (observed when it is back)",
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.draining = Gauge(
            "supervisor_draining",
            "1 from the moment a shutdown drain starts",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
