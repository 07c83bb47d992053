"""Prometheus metrics of one gateway, on a registry of its own.

A registry per ``Metrics`` (not prometheus-client's global one) lets several gateways live in
one process, as they do in the test suite, without "Duplicated timeseries" errors.

The names are CONTRACT §6's: the tech spec's five metrics with dots turned into underscores
(``publisher.queue.depth`` → ``publisher_queue_depth``), plus per-kind message counters,
in-flight gauges and a drain-duration histogram. ``docs/alerts.yml`` is written against them.

Several processes (``--workers N``): the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before it starts the workers, so prometheus-client keeps every value in a file per
process there (its multiprocess mode), and ``Metrics(multiprocess_dir=...)`` renders the sum
over all of them (``MultiProcessCollector``): whichever worker a scrape reaches answers for the
whole gateway. Gauges say how the processes' values combine (``multiprocess_mode``: live
values summed, ``broker_up`` the lowest, ``supervisor_draining`` the highest); gauges read
when scraped (``gauge_function``) are set from their function every ``REFRESH_INTERVAL``
seconds by the process that owns them, as multiprocess mode has no ``set_function``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "REFRESH_INTERVAL", "Metrics", "PoolMetrics"]

# How often a worker sets its scrape-time gauges (queue depths) in multiprocess mode, seconds:
# a scrape may see them this much out of date.
REFRESH_INTERVAL = 1.0


class Metrics:
    """The metrics one supervisor exports. Counters only ever go up; gauges are live values.

    Args:
        multiprocess_dir: the directory of prometheus-client's multiprocess mode when this
            process is one worker of several (its ``PROMETHEUS_MULTIPROC_DIR``, set before
            prometheus-client was imported); None for a gateway of one process.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._functions: list[tuple[Gauge, Callable[[], float]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publisher_queue_depth = Gauge(
            "publisher_queue_depth",
            "Frames handed to a producer and not yet confirmed by the broker, all connections",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.publisher_queue_capacity = Gauge(
            "publisher_queue_capacity",
            "Sum of the open import connections' publisher queue limits "
            "(alert on depth / capacity > 0.8)",
            multiprocess_mode="livesum",
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
            multiprocess_mode="livesum",
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
        self.export_stall_recoveries = Counter(
            "export_stall_recoveries",
            "Exports that received nothing while the topic held more (a pulsar-lite stall) "
            "and subscribed again, by kind",
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
            multiprocess_mode="livesum",
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
            multiprocess_mode="livemin",
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
            multiprocess_mode="livemax",
            registry=r,
        )

    def gauge_function(self, gauge: Gauge, function: Callable[[], float]) -> None:
        """Have ``gauge`` read ``function()`` when scraped (its ``set_function``).

        In multiprocess mode the value is set by `refresh` instead (every
        ``REFRESH_INTERVAL`` seconds, and before this process renders).
        """
        if self.multiprocess_dir is None:
            gauge.set_function(function)
        else:
            self._functions.append((gauge, function))

    def refresh(self) -> None:
        """Set every `gauge_function` gauge from its function (multiprocess mode only)."""
        for gauge, function in self._functions:
            gauge.set(function())

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, if several)."""
        if self.multiprocess_dir is None:
            return bytes(generate_latest(self.registry))
        self.refresh()
        # A registry of its own per scrape, holding only the collector of the files (the
        # multiprocess docs: a metric registered beside it would be exported twice).
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped upstream
        return bytes(generate_latest(registry))


class PoolMetrics:
    """The parent's own metric of ``--workers N``, written to the multiprocess directory.

    The parent serves no HTTP: the workers' ``/metrics`` show it with their own, summed
    from the same directory. Create it only after multiprocess mode is on in this process.

    Args:
        size: the number of workers (each index's counter starts at 0, so it is visible
            before any restart).
    """

    def __init__(self, size: int) -> None:
        self.registry = CollectorRegistry()
        self.worker_restarts = Counter(
            "quiesce_worker_restarts",
            "Worker processes restarted after exiting while no shutdown was asked, by index",
            ["worker"],
            registry=self.registry,
        )
        for index in range(size):
            self.worker_restarts.labels(str(index))
