"""The broker actor: the embedded pulsar-lite process (if any) and the one ``pulsar.Client``.

``open_broker`` is the only way in. It yields a ``Broker`` once the broker answers and, on
exit, closes the client (flushing every producer and closing every consumer) and only then
stops the embedded process: the broker is the last thing to go.

Embedded mode starts the ``pulsar-lite`` binary shipped in its PyPI wheel on a free loopback
port, with its own metrics endpoint disabled (it would otherwise listen on 0.0.0.0:8080) or,
if ``broker_metrics_port`` is set, bound to loopback. Its log goes to ``<data-dir>/broker.log``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pulsar
import trio

from quiesce.actors.subscriber import Arrivals
from quiesce.core.errors import BrokerError, BrokerUnavailable
from quiesce.core.prefetch import MessageSizes

if TYPE_CHECKING:
    from quiesce.actors.metrics import Metrics
    from quiesce.core.config import Settings
    from quiesce.machines.broker import BrokerMachine

LOGGER = logging.getLogger("quiesce.broker")
# pulsar-client's own log lines (its C++ core, through Python logging).
PULSAR_LOGGER = logging.getLogger("quiesce.pulsar")

# How long the embedded broker may take to accept TCP connections before start-up fails.
EMBEDDED_START_TIMEOUT = 15.0
# How long an external broker may take to accept a TCP connection at start-up.
CONNECT_TIMEOUT = 5.0
# How long a lookup (the "does the broker answer" probe) may take.
PROBE_TIMEOUT = 10.0
# How long closing the client (flushing producers) may take at shutdown.
CLIENT_CLOSE_TIMEOUT = 10.0
# How long the embedded process gets to exit after SIGTERM before it is killed.
PROCESS_STOP_TIMEOUT = 5.0
# pulsar-client's threads: the I/O thread(s) and the listener thread(s) that complete pending
# receives. Both are pulsar-client's defaults, stated: one of each serves every connection.
PULSAR_IO_THREADS = 1
PULSAR_LISTENER_THREADS = 1
# How long the monitor's probe may wait for the broker's answer (or the probe interval).
PROBE_ANSWER_TIMEOUT = 5.0
# The topic the probes look up (it need not exist: a lookup is answered either way).
PROBE_TOPIC = "persistent://public/default/quiesce-readiness-probe"
# Headroom the broker's own frame limit gets over max_message_bytes (the JSON is the payload;
# Pulsar adds metadata around it).
BROKER_FRAME_HEADROOM = 64 * 1024


class _ExpectedNoise(logging.Filter):
    """Demote pulsar-client's lines about a normal event to DEBUG.

    ``until=end`` asks an empty topic for its last message id; pulsar-lite answers with an
    error ("Topic has no messages") that the client logs at WARN and ERROR, although quiesce
    expects it and ends the dump at once. Those lines go to DEBUG; everything else passes.
    """

    PATTERNS = ("Topic has no messages", "Failed to getLastMessageId: UnknownError")

    def filter(self, record: logging.LogRecord) -> bool:
        """Demote an expected line (and drop it unless DEBUG is on); pass the rest."""
        message = record.getMessage()
        if not any(pattern in message for pattern in self.PATTERNS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return PULSAR_LOGGER.isEnabledFor(logging.DEBUG)


PULSAR_LOGGER.addFilter(_ExpectedNoise())


@dataclass
class Broker:
    """What the rest of the process uses: the broker's URL and the shared client.

    Attributes:
        url: the ``pulsar://`` URL in use.
        client: the one ``pulsar.Client`` of the process; its calls that block (creating a
            producer or a consumer, closing) must go through ``trio.to_thread.run_sync``.
        embedded: True when this process started the broker.
        arrivals: the one hand-off of received messages from pulsar-client's listener
            thread to Trio, for every subscriber (``actors/subscriber.py``).
        message_sizes: the largest message seen lately per topic, which sizes the
            consumers' prefetch (``core/prefetch.py``).
        size_probes: topics whose oldest message a subscriber is reading now, to size its
            prefetch (the others wait for its answer).
    """

    url: str
    client: pulsar.Client
    embedded: bool
    arrivals: Arrivals = field(default_factory=Arrivals)
    message_sizes: MessageSizes = field(default_factory=MessageSizes)
    size_probes: dict[str, trio.Event] = field(default_factory=dict)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    from pulsar_lite.binary_finder import find_pulsar_lite_binary

    try:
        return str(find_pulsar_lite_binary())
    except FileNotFoundError as exc:
        raise BrokerError(f"embedded broker: pulsar-lite binary not found ({exc})") from exc


def _tail(path: Path, lines: int = 3) -> str:
    """The broker log's last lines that say something: its error, not its stack backtrace."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in text if line.startswith("Error") or " ERROR " in line]
    if errors:
        return errors[-1]
    meaningful = [line.strip() for line in text if line.strip() and not line.startswith(" ")]
    return " | ".join(meaningful[-lines:])


async def _wait_for_port(host: str, port: int, limit: float, process: trio.Process | None,
                         log_path: Path | None) -> None:
    with trio.move_on_after(limit):
        while True:
            if process is not None and process.poll() is not None:
                tail = _tail(log_path) if log_path else ""
                hint = ""
                if "LOCK" in tail:
                    hint = " (is another quiesce using this --data-dir?)"
                raise BrokerError(
                    f"embedded broker exited with code {process.returncode} before accepting "
                    f"connections: {tail or 'no log output'}{hint}"
                )
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.05)  # polling a port that is not open yet; no event exists
                continue
            await stream.aclose()
            return
    raise BrokerUnavailable(f"nothing answers at pulsar://{host}:{port} after {limit:g}s")


async def _start_embedded(settings: Settings) -> tuple[trio.Process, str]:
    # Start-up runs once, before serving: blocking file calls here delay nothing else.
    data_dir = Path(settings.data_dir).absolute()  # noqa: ASYNC240
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"data dir '{data_dir}': {exc.strerror}") from exc
    config_path = data_dir / "pulsar-lite.toml"
    metrics = (
        f'[metrics]\nenabled = true\naddr = "127.0.0.1:{settings.broker_metrics_port}"\n'
        if settings.broker_metrics_port
        else "[metrics]\nenabled = false\n"
    )
    config_path.write_text(
        "# Written by quiesce at each start: loopback only, metrics off unless asked for.\n"
        f"max_message_size_bytes = {settings.max_message_bytes + BROKER_FRAME_HEADROOM}\n"
        + metrics
    )
    port = _free_loopback_port()
    log_path = data_dir / "broker.log"
    log_file = log_path.open("ab")
    try:
        process = await trio.lowlevel.open_process(
            [
                _binary(),
                "--config", str(config_path),
                "--addr", f"127.0.0.1:{port}",
                "--db-path", str(data_dir / "broker"),
                "--log-level", "warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log_file.close()
    try:
        await _wait_for_port("127.0.0.1", port, EMBEDDED_START_TIMEOUT, process, log_path)
    except BaseException:
        await _stop_process(process)
        raise
    return process, f"pulsar://127.0.0.1:{port}"


async def _stop_process(process: trio.Process) -> None:
    with trio.move_on_after(PROCESS_STOP_TIMEOUT + 1, shield=True):
        if process.poll() is None:
            process.terminate()
            with trio.move_on_after(PROCESS_STOP_TIMEOUT):
                await process.wait()
            if process.poll() is None:
                LOGGER.warning("embedded broker ignored SIGTERM; killing it")
                process.kill()
                await process.wait()


def _parse_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("pulsar", "pulsar+ssl") or not parsed.hostname:
        raise BrokerError(f"pulsar url '{url}': expected pulsar://host:port")
    return parsed.hostname, parsed.port or (6651 if parsed.scheme == "pulsar+ssl" else 6650)


async def _probe(client: pulsar.Client, url: str) -> None:
    """Ask the broker one question, so that "ready" means it answers, not only that it listens."""

    def lookup() -> None:
        client.get_topic_partitions(PROBE_TOPIC)

    with trio.move_on_after(PROBE_TIMEOUT) as scope:
        try:
            await trio.to_thread.run_sync(lookup, abandon_on_cancel=True)
        except Exception as exc:
            raise BrokerUnavailable(f"broker at {url} does not answer: {exc}") from exc
    if scope.cancelled_caught:
        raise BrokerUnavailable(f"broker at {url} did not answer within {PROBE_TIMEOUT:g}s")


@contextlib.asynccontextmanager
async def open_embedded_broker(settings: Settings) -> AsyncIterator[str]:
    """Start the embedded broker alone, yield its ``pulsar://`` URL, and stop it on exit.

    The parent of ``--workers N`` runs one for all its workers (each is given the URL as its
    ``pulsar_url``); a single process starts it inside `open_broker` instead.

    Raises:
        BrokerError: it could not start (the message carries its log tail).
    """
    process, url = await _start_embedded(settings)
    LOGGER.info("embedded broker started", extra={"url": url, "pid": process.pid})
    try:
        yield url
    finally:
        await _stop_process(process)
        LOGGER.info("embedded broker stopped", extra={"url": url})


@contextlib.asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """Start (or reach) the broker, yield it, and stop it last.

    Raises:
        BrokerUnavailable: nothing answers at ``settings.pulsar_url``.
        BrokerError: the embedded broker could not start (the message carries its log tail).
    """
    process: trio.Process | None = None
    if settings.pulsar_url:
        url = settings.pulsar_url
        host, port = _parse_url(url)
        await _wait_for_port(host, port, CONNECT_TIMEOUT, None, None)
    else:
        process, url = await _start_embedded(settings)
        LOGGER.info("embedded broker started", extra={"url": url, "pid": process.pid})
    try:
        client = pulsar.Client(
            url,
            operation_timeout_seconds=30,
            # Where received messages and ack results are handed over; every consumer shares
            # them, so the thread count does not grow with the connections.
            io_threads=PULSAR_IO_THREADS,
            message_listener_threads=PULSAR_LISTENER_THREADS,
            # Through Python logging: the process's format (text or JSON) and filters apply.
            logger=PULSAR_LOGGER,
        )
        try:
            await _probe(client, url)
            yield Broker(url=url, client=client, embedded=process is not None)
        finally:
            with trio.move_on_after(CLIENT_CLOSE_TIMEOUT, shield=True):
                try:
                    await trio.to_thread.run_sync(client.close, abandon_on_cancel=True)
                except Exception as exc:  # AlreadyClosed after a failure, a broker gone…
                    LOGGER.warning("closing the pulsar client failed: %s", exc)
    finally:
        if process is not None:
            await _stop_process(process)
            LOGGER.info("embedded broker stopped", extra={"url": url})


async def monitor_broker(broker: Broker, machine: BrokerMachine, settings: Settings,
                         metrics: Metrics) -> None:
    """Probe the broker every ``broker_probe_interval`` seconds and report each answer.

    A probe is one lookup through the shared client, bounded by ``PROBE_ANSWER_TIMEOUT`` (or
    the interval, if longer): a saturated event loop can take seconds to see an answer the
    broker gave at once, and must not read as an outage (seen at 500+500 sockets); a probe still
    waiting from before (a frozen broker) counts as unanswered without starting another
    thread. The machine (``BrokerMachine``) decides what the answers mean; this logs the
    outage once when it starts and once when it ends, with its length, and keeps the
    ``broker_up`` gauge. Runs until cancelled.

    pulsar-client reconnects producers and consumers by itself, with a backoff its Python
    API does not let us bound (it starts at 100 ms and doubles up to a minute); the probe
    only reports, so an operator sees the outage in quiesce's own log and metrics.
    """
    interval, unready_after = settings.broker_probe_interval, settings.broker_unready_after
    bound = max(interval, PROBE_ANSWER_TIMEOUT)
    limiter = trio.CapacityLimiter(1)  # one probe thread at a time, however long it hangs

    def lookup() -> None:
        broker.client.get_topic_partitions(PROBE_TOPIC)

    lost_at: float | None = None
    long_reported = False
    metrics.broker_up.set(1)
    while True:
        # Periodic by design: one probe for the whole process, not per connection.
        await trio.sleep(interval)
        problem = ""
        with trio.move_on_after(bound) as scope:
            try:
                await trio.to_thread.run_sync(lookup, abandon_on_cancel=True, limiter=limiter)
            except Exception as exc:
                problem = str(exc) or type(exc).__name__
        if scope.cancelled_caught:
            problem = f"no answer within {bound:g}s"
        now = trio.current_time()
        if not problem:
            machine.probe_ok()
            if lost_at is not None:
                LOGGER.info("broker at %s reachable again after %.1fs", broker.url, now - lost_at,
                            extra={"url": broker.url, "outage_s": round(now - lost_at, 1)})
                metrics.broker_outage_seconds.observe(now - lost_at)
                lost_at, long_reported = None, False
        else:
            machine.probe_failed()
            if lost_at is None:
                lost_at = now - interval  # it went away at most one probe ago
                LOGGER.warning("broker at %s unreachable: %s", broker.url, problem,
                               extra={"url": broker.url})
            elif not long_reported and now - lost_at >= unready_after:
                long_reported = True
                machine.outage_long()
                LOGGER.error("broker at %s unreachable for %.0fs: /readyz answers 503",
                             broker.url, now - lost_at, extra={"url": broker.url})
        metrics.broker_up.set(1 if machine.up else 0)
