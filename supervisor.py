"""The quiesce process: the command line, signals, and the supervisor's root nursery.

Commands::

    quiesce serve [--host H] [--port P] [--pulsar-url URL] [--data-dir DIR] [--config FILE]
                  [--shutdown-timeout S] [--secret TOKEN] [--tokens-file FILE]
                  [--log-format text|json] [--log-level L] [--workers N]
    quiesce config [same flags]     print the effective settings and where each came from
    quiesce diagrams [--out DIR]    render every lifecycle to SVG and Mermaid
    quiesce import --url ws://HOST:PORT … FILE…   load JSON Lines or RDF (quiesce.client)
    quiesce export --url ws://HOST:PORT …         dump or follow a flow (quiesce.client)

The supervisor tree (see docs/architecture.md)::

    Supervisor            starting → serving → draining (→ forcing) → stopped
     ├─ Broker            open_broker(): embedded pulsar-lite or an external URL; closed last
     ├─ WebSocket server  websockets.trio, its handlers in a nursery of their own
     └─ Connection actors  one per socket (ImportActor / ExportActor), each with its worker

With ``--workers N`` (N > 1) this process is the parent of N such gateways sharing the port
(``actors/pool.py``); each worker runs ``serve --worker INDEX --notify-fd FD`` (internal flags:
settings on its stdin, see ``actors/pool_link.py``).

SIGHUP reloads the tokens file (``reload_tokens``): new handshakes use the new tokens, open
connections are left alone, and a file that does not load keeps the tokens in use.

Close events flow down (signal → supervisor drain → every connection's ``request_drain``),
completion flows up (a connection's ``run`` returns only after its socket is closed; the
supervisor's ``finish`` is guarded by "no connection open"; only then is the broker closed).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # `python supervisor.py …` from a checkout: load this checkout as the package `quiesce`
    # (its modules import each other by that one name) and run its command line from there.
    import importlib.util
    import sys
    from pathlib import Path

    _root = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location(
        "quiesce", _root / "__init__.py", submodule_search_locations=[str(_root)]
    )
    assert _spec is not None and _spec.loader is not None
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["quiesce"] = _package
    _spec.loader.exec_module(_package)
    from quiesce.supervisor import main as _main

    sys.exit(_main())

import argparse
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from websockets.trio.server import Server
from websockets.trio.server import serve as ws_serve

from quiesce.actors._observe import JsonFormatter, TextFormatter, TransitionLog
from quiesce.actors.broker import Broker, monitor_broker, open_broker
from quiesce.actors.connection import ConnectionActor, Services, Worker
from quiesce.actors.exporter import ExportWorker
from quiesce.actors.http import HttpFront
from quiesce.actors.importer import ImportWorker
from quiesce.actors.memory import Trimmer
from quiesce.actors.metrics import REFRESH_INTERVAL, Metrics
from quiesce.actors.pool import run_pool
from quiesce.actors.pool_link import WorkerFields, WorkerLink, read_settings
from quiesce.actors.reuseport import ReusePortError, open_shared_listeners
from quiesce.actors.subscriber import CONSUMER_CLOSE_TIMEOUT
from quiesce.actors.websocket import GatewayConnection, connection_class
from quiesce.client.cli import CLIENT_COMMANDS, add_client_commands, run_client
from quiesce.core.config import (
    LoadedSettings,
    Settings,
    load_settings,
    render_reference,
    render_settings,
)
from quiesce.core.errors import BrokerError, ConfigError, QuiesceError
from quiesce.core.memory import glibc
from quiesce.core.protocol import CloseCode, Direction
from quiesce.core.tokens import TokenSet, load_tokens
from quiesce.machines import ALL_MACHINES
from quiesce.machines.broker import BrokerMachine
from quiesce.machines.supervisor import SupervisorMachine

LOGGER = logging.getLogger("quiesce.supervisor")

# Keepalive: a ping every WS_PING_INTERVAL seconds, its pong due within WS_PING_TIMEOUT
# (websockets' defaults; GatewayConnection.keepalive forgives a pong behind unread data).
WS_PING_INTERVAL = 20.0
WS_PING_TIMEOUT = 20.0
# Longest wait for the tokens file on SIGHUP before the reload is given up.
TOKENS_RELOAD_TIMEOUT = 5.0
# Exit codes: 0 after a drain (graceful or forced), 1 when start-up failed, 2 for usage errors.
EXIT_OK, EXIT_STARTUP, EXIT_USAGE = 0, 1, 2


class StartupError(QuiesceError):
    """The supervisor could not reach ``serving`` (port in use, broker down…)."""


class Supervisor:
    """The root actor: owns the broker, the listener and every connection actor.

    Use ``await nursery.start(supervisor.serve)``; it returns once ready (``task_status``
    gets the supervisor back, with ``port`` and ``url`` set) and runs until a drain
    requested with ``request_shutdown`` has finished.

    Args:
        settings: the effective settings.
        worker: this process's link to its parent when it is one worker of ``--workers N``
            (it then listens with SO_REUSEPORT, its metrics are summed with the others', and
            it tells the parent when it is ready); None for a gateway of one process.

    Raises:
        ConfigError: the tokens file (``tokens_file``) cannot be read or is malformed.
    """

    def __init__(self, settings: Settings, worker: WorkerLink | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.machine = SupervisorMachine()
        self.machine.observe(TransitionLog(LOGGER, "supervisor", "supervisor"))
        self.metrics = Metrics(
            None if worker is None else os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.broker_health = BrokerMachine()
        self.broker_health.observe(TransitionLog(LOGGER, "broker", "broker"))
        self._monitor_scope = trio.CancelScope()
        # Freed heap goes back to the system after connections close (core/memory.py).
        self.trimmer = Trimmer(glibc(), settings.malloc_trim_interval)
        self._trim_scope = trio.CancelScope()
        self._refresh_scope = trio.CancelScope()
        # Read before the loop serves anything: a small local file, and a bad one stops
        # start-up (exit 2) rather than leaving the gateway open or shut.
        tokens = load_tokens(settings.tokens_file) if settings.tokens_file else TokenSet()
        self.front = HttpFront(settings, self.machine, self.metrics, self.broker_health,
                               tokens.with_secret(settings.secret))
        self.actors: set[ConnectionActor] = set()
        # Queue depths are read when scraped, not updated per message on the hot path.
        self.metrics.gauge_function(self.metrics.publisher_queue_depth, self._publisher_depth)
        self.metrics.gauge_function(self.metrics.subscriber_queue_depth, self._subscriber_depth)
        self.port = 0
        self.url = ""
        self.shutdown_requested = trio.Event()
        self._force_requested = False
        self._drain_scope: trio.CancelScope | None = None
        self._all_closed = trio.Event()
        self._no_connections = trio.Event()  # set while no connection is open
        self._no_connections.set()
        # Set when connections outlived even the forced path (a bug): exit 1, not 0.
        self.unclean = False

    def _depth(self, direction: Direction) -> float:
        return float(sum(a.worker.depth for a in list(self.actors) if a.direction is direction))

    def _publisher_depth(self) -> float:
        return self._depth(Direction.IMPORT)

    def _subscriber_depth(self) -> float:
        return self._depth(Direction.EXPORT)

    async def wait_no_connections(self) -> None:
        """Wait until no connection is open: each has drained, closed and let go of its
        producer or consumer (tests, and anything that must wait for a quiet gateway)."""
        await self._no_connections.wait()

    def request_shutdown(self) -> None:
        """Start the drain (what SIGTERM and a first SIGINT do); later requests change nothing."""
        if self.shutdown_requested.is_set():
            return
        self.machine.drain()
        self.shutdown_requested.set()

    async def reload_tokens(self) -> bool:
        """Read the tokens file again (what SIGHUP does); new handshakes use what it holds.

        Open connections are left as they are. A file that cannot be read or is malformed
        changes nothing: the tokens in use stay, and the error is logged.

        Returns:
            True if the new tokens are in use.
        """
        path = self.settings.tokens_file
        if path is None:
            LOGGER.info("tokens not reloaded: no tokens_file is configured")
            return False
        kept = len(self.front.tokens.tokens)
        try:
            # Bounded: a file on a hung mount must not hold up the signals after this one.
            with trio.fail_after(TOKENS_RELOAD_TIMEOUT):
                tokens = await trio.to_thread.run_sync(load_tokens, path, abandon_on_cancel=True)
        except ConfigError as exc:
            LOGGER.error("tokens not reloaded, keeping the %d in use: %s", kept, exc,
                         extra={"tokens_file": path})
            return False
        except trio.TooSlowError:
            LOGGER.error("tokens not reloaded, keeping the %d in use: tokens file '%s' not "
                         "read within %gs", kept, path, TOKENS_RELOAD_TIMEOUT,
                         extra={"tokens_file": path})
            return False
        self.front.tokens = tokens.with_secret(self.settings.secret)
        LOGGER.info("tokens reloaded from %s: %d tokens (%s)", path, len(tokens.tokens),
                    ", ".join(t.name for t in tokens.tokens) or "none",
                    extra={"tokens_file": path, "tokens": len(tokens.tokens)})
        return True

    def force(self) -> None:
        """Stop waiting for drains at once (a second SIGINT)."""
        self._force_requested = True
        self.shutdown_requested.set()
        if self._drain_scope is not None:
            self._drain_scope.cancel(reason="forced by a second signal")

    async def serve(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run the gateway until a requested drain completes.

        Raises:
            StartupError: the listener or the broker could not start (``failed``).
        """
        settings = self.settings
        failure: BaseException | None = None
        try:
            async with open_broker(settings) as broker:
                services = Services(settings, broker, self.metrics)
                async with trio.open_nursery() as nursery:
                    server = await self._listen(nursery, services)
                    self.machine.ready()
                    task_status.started(self)
                    if self.machine.finished:
                        LOGGER.info("stopping: a signal came during start-up")
                        await server.aclose()
                    else:
                        self._announce(broker)
                        nursery.start_soon(self._monitor, broker)
                        nursery.start_soon(self._trim)
                        if self.metrics.multiprocess_dir is not None:
                            nursery.start_soon(self._refresh_metrics)
                        await self.shutdown_requested.wait()
                        await self._drain(server, nursery)
                        self._monitor_scope.cancel(reason="stopped")
                        self._trim_scope.cancel(reason="stopped")
                        self._refresh_scope.cancel(reason="stopped")
        except* (BrokerError, OSError, StartupError) as group:
            # Errors from inside the nursery arrive wrapped in an ExceptionGroup.
            failure = group.exceptions[0]
        if failure is not None:
            self.machine.fail()
            if isinstance(failure, StartupError):
                raise failure
            raise StartupError(str(failure)) from failure
        if not self.unclean:  # after a failure the machine is already in ``failed``
            self.machine.exit()

    def _announce(self, broker: Broker) -> None:
        if self.worker is None:
            LOGGER.info("ready on %s (broker %s%s)", self.url, broker.url,
                        ", embedded" if broker.embedded else "",
                        extra={"url": self.url, "broker": broker.url})
            return
        # Not "ready on": that line is the parent's, once every worker serves.
        LOGGER.info("worker %d serving on %s (broker %s)", self.worker.index, self.url,
                    broker.url, extra={"url": self.url, "broker": broker.url})
        self.worker.notify_ready()

    async def _refresh_metrics(self) -> None:
        # Periodic by design: multiprocess mode has no set_function (actors/metrics.py).
        with self._refresh_scope:
            while True:
                self.metrics.refresh()
                await trio.sleep(REFRESH_INTERVAL)

    async def _monitor(self, broker: Broker) -> None:
        with self._monitor_scope:
            await monitor_broker(broker, self.broker_health, self.settings, self.metrics)

    async def _trim(self) -> None:
        with self._trim_scope:
            await self.trimmer.serve()

    async def _listen(self, nursery: trio.Nursery, services: Services) -> Server:
        settings = self.settings
        handler = functools.partial(self._handle, services=services)
        where: dict[str, Any] = {"port": settings.port, "host": settings.host}
        if self.worker is not None:
            try:
                where = {"listeners": open_shared_listeners(settings.host, settings.port)}
            except ReusePortError as exc:
                raise StartupError(str(exc)) from exc
        try:
            server: Server = await nursery.start(functools.partial(
                ws_serve,
                handler,
                **where,
                process_request=self.front,
                create_connection=connection_class(settings.import_buffer_bytes),
                compression=None,
                max_size=settings.max_message_bytes,
                # websockets' flow control counts frames and stops reading when they are
                # many, control frames included: GatewayConnection bounds bytes instead.
                max_queue=None,
                ping_interval=WS_PING_INTERVAL,
                ping_timeout=WS_PING_TIMEOUT,
                close_timeout=settings.socket_grace_period,
            ))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        sockname = server.listeners[0].socket.getsockname()
        self.port = int(sockname[1])
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        self.url = f"http://{host}:{self.port}"
        self.front.bound_url = self.url
        return server

    async def _handle(self, ws: GatewayConnection, services: Services) -> None:
        self.machine.admit()
        if not self.machine.admitted:
            # The handshake won the race against the drain's start: refuse politely.
            await ws.aclose(CloseCode.GOING_AWAY, "server draining")
            return
        make_worker: type[Worker] = (
            ImportWorker if ws.route.direction is Direction.IMPORT else ExportWorker)
        try:
            actor = ConnectionActor(ws, services, make_worker)
        except Exception:
            LOGGER.error("connection actor could not start", exc_info=True)
            self.machine.release()
            await ws.abort()
            raise
        if not self.actors:
            self._no_connections = trio.Event()
        self.actors.add(actor)
        self.metrics.connections.labels(actor.direction).inc()
        try:
            await actor.run()
        except Exception:
            # A bug: the actor's own boundary turns every expected failure into a drain.
            LOGGER.error("connection actor failed", exc_info=True, extra={"conn": actor.id})
            await ws.abort()
        finally:
            self.actors.discard(actor)
            if not self.actors:
                self._no_connections.set()
            self.metrics.connections.labels(actor.direction).dec()
            self.machine.release()
            self.trimmer.connection_closed()
            if self.machine.finished:
                self._all_closed.set()

    async def _drain(self, server: Server, nursery: trio.Nursery) -> None:
        started = trio.current_time()
        self.metrics.draining.set(1)
        deadline = started + self.settings.shutdown_timeout
        LOGGER.info("draining %d connections (deadline %.1fs)", len(self.actors),
                    self.settings.shutdown_timeout)
        for actor in list(self.actors):
            actor.request_drain(deadline)
        if self.machine.finished:  # the drain found no connection open
            self._all_closed.set()
        with trio.move_on_at(deadline) as self._drain_scope:
            if self._force_requested:
                self._drain_scope.cancel(reason="forced by a second signal")
            await self._all_closed.wait()
        self._drain_scope = None
        self.machine.deadline()  # in stopped: nothing to force (declared, ignored)
        if not self.machine.finished:
            LOGGER.warning("forcing %d connections still draining", len(self.actors))
            for actor in list(self.actors):
                actor.force_now()
            # Each forced actor's cleanup is bounded (socket grace, producer flush, consumer
            # close); this bound only catches a bug.
            with trio.move_on_after(self._forced_cleanup_bound()):
                await self._all_closed.wait()
            if not self.machine.finished:
                LOGGER.critical("%d connections did not close after being forced; exiting",
                                len(self.actors))
                self.unclean = True
                self.machine.fail()
                nursery.cancel_scope.cancel(reason="connections stuck after forcing")
                return
        self.metrics.shutdown_seconds.observe(trio.current_time() - started)
        await server.aclose(close_connections=False)
        if self.settings.queue_stats_on_shutdown:
            self._log_queue_stats()

    def _forced_cleanup_bound(self) -> float:
        s = self.settings
        return s.socket_grace_period + s.producer_flush_timeout + CONSUMER_CLOSE_TIMEOUT + 5

    def _log_queue_stats(self) -> None:
        m = self.metrics
        LOGGER.info(
            "shutdown complete: graceful=%d forced=%d publisher_queue_depth=%d",
            _total(m.graceful_shutdowns), _total(m.forced_shutdowns),
            int(self._publisher_depth()),
        )


def _total(counter: Any) -> int:
    return int(sum(s.value for metric in counter.collect() for s in metric.samples
                   if s.name.endswith("_total")))


async def _watch_signals(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                await supervisor.reload_tokens()
            elif not supervisor.shutdown_requested.is_set():
                LOGGER.info("%s received: draining", name, extra={"signal": name})
                supervisor.request_shutdown()
            elif signum == signal.SIGINT:
                LOGGER.warning("second SIGINT: forcing", extra={"signal": name})
                supervisor.force()


def apply_allocator_policy(settings: Settings) -> None:
    """Set the process's malloc thresholds (``malloc_mmap_threshold``, core/memory.py).

    Once, before serving: the thresholds apply to every allocation from then on, in every
    thread. Not glibc, or a threshold of 0: the allocator is left as it is.
    """
    allocator = glibc()
    threshold = settings.malloc_mmap_threshold
    if allocator is None or threshold == 0:
        return
    if allocator.apply_policy(threshold):
        LOGGER.debug("glibc %s: mmap and trim thresholds fixed at %d bytes", allocator.version,
                     threshold, extra={"malloc_mmap_threshold": threshold})
    else:
        LOGGER.warning("glibc %s refused an mmap threshold of %d bytes: large frames may "
                       "keep their memory after they are freed", allocator.version, threshold)


def _parent_gone(supervisor: Supervisor) -> None:
    if not supervisor.shutdown_requested.is_set():
        LOGGER.warning("stdin closed (the parent is gone, or stopped this worker as it "
                       "started): draining")
        supervisor.request_shutdown()


async def run_process(settings: Settings, worker: WorkerLink | None = None) -> int:
    """Serve until a signal's drain completes; return the exit code.

    Args:
        settings: the effective settings.
        worker: set when this process is one worker of ``--workers N`` (see `Supervisor`).
    """
    apply_allocator_policy(settings)
    try:
        supervisor = Supervisor(settings, worker)
    except ConfigError as exc:
        print(f"quiesce: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, supervisor)
        if worker is not None:
            nursery.start_soon(worker.watch_parent, functools.partial(_parent_gone, supervisor))
        try:
            await supervisor.serve()
        except StartupError as exc:
            LOGGER.error("start-up failed: %s", exc)
            print(f"quiesce: error: {exc}", file=sys.stderr)
            nursery.cancel_scope.cancel()
            return EXIT_STARTUP
        nursery.cancel_scope.cancel()
    LOGGER.info("stopped")
    return EXIT_STARTUP if supervisor.unclean else EXIT_OK


# ---------------------------------------------------------------- command line

def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    parser.add_argument("--host", default=s, help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", default=s, help="port to listen on, 0 for any (8088)")
    parser.add_argument("--pulsar-url", dest="pulsar_url", default=s,
                        help="use this broker instead of the embedded one")
    parser.add_argument("--data-dir", dest="data_dir", default=s,
                        help="embedded broker's storage (./.quiesce)")
    parser.add_argument("--config", dest="config", default=s, help="TOML settings file")
    parser.add_argument("--shutdown-timeout", dest="shutdown_timeout", default=s,
                        help="bound of the whole drain on SIGTERM/SIGINT, seconds (30)")
    parser.add_argument("--secret", default=s, help="token required by WebSockets and /metrics")
    parser.add_argument("--tokens-file", dest="tokens_file", default=s,
                        help="TOML file of scoped tokens, reloaded on SIGHUP")
    parser.add_argument("--log-format", dest="log_format", default=s, help="text or json")
    parser.add_argument("--log-level", dest="log_level", default=s,
                        help="debug, info, warning or error")
    parser.add_argument("--workers", default=s,
                        help="worker processes sharing the port, under one parent (1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quiesce",
        description="WebSocket <-> Apache Pulsar import/export gateway that never loses a message",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gateway")
    _add_setting_flags(serve)
    # Internal: how the parent of --workers N starts each worker (actors/pool_link.py).
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--notify-fd", dest="notify_fd", type=int, default=None,
                       help=argparse.SUPPRESS)
    config = sub.add_parser("config", help="print the effective settings and their sources")
    _add_setting_flags(config)
    config.add_argument("--reference", action="store_true",
                        help="print the reference of every setting (Markdown) instead")
    diagrams = sub.add_parser("diagrams", help="render every lifecycle to SVG and Mermaid")
    diagrams.add_argument("--out", default="docs/diagrams", help="folder (docs/diagrams)")
    add_client_commands(sub)
    return parser


def _load(args: argparse.Namespace) -> LoadedSettings:
    flags = {k: v for k, v in vars(args).items()
             if k not in ("command", "config", "reference", "worker", "notify_fd")}
    return load_settings(flags, os.environ, getattr(args, "config", None))


def configure_logging(settings: Settings, worker: int | None = None) -> None:
    """Send logs to stderr in the chosen format (the process's only logging set-up).

    A worker of ``--workers N`` (``worker``, its index) tags every line with its index and pid.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(WorkerFields(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # websockets logs every connection open/close at INFO; ours already say it.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
    # pulsar-client logs every producer and consumer it creates at INFO: warnings and up.
    logging.getLogger("quiesce.pulsar").setLevel(max(logging.WARNING, root.level))


def machine_file_stem(machine: type) -> str:
    """``ConnectionMachine`` → ``connection``: the file name of a machine's diagrams."""
    name = machine.__name__
    return name.removesuffix("Machine").lower()


def render_diagrams(out: Path) -> list[Path]:
    """Write ``<machine>.mmd`` and ``<machine>.svg`` for every machine into ``out``.

    SVG comes from python-statemachine's DOT output laid out by ``graphviz-pure`` (a
    pip-installed Graphviz port), so no system Graphviz is needed.

    Raises:
        QuiesceError: graphviz-pure is not installed or fails.
    """
    dot_binary = shutil.which("graphviz-pure") or str(Path(sys.executable).parent / "graphviz-pure")
    if not Path(dot_binary).exists():
        raise QuiesceError("graphviz-pure not found: pip install 'quiesce[diagrams]'")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for machine in ALL_MACHINES:
        stem = machine_file_stem(machine)
        mermaid = out / f"{stem}.mmd"
        mermaid.write_text(f"{machine:mermaid}".rstrip() + "\n")
        # The DOT names helper nodes after id(): make them stable so the SVG is reproducible.
        dot = re.sub(r"(__initial|cluster___atomic)_\d+", r"\1", f"{machine:dot}")
        result = subprocess.run([dot_binary, "-Tsvg"], input=dot.encode(), capture_output=True,
                                check=False)
        if result.returncode != 0:
            raise QuiesceError(f"graphviz-pure failed on {stem}: {result.stderr.decode()[:200]}")
        svg = out / f"{stem}.svg"
        svg.write_bytes(result.stdout)
        written += [mermaid, svg]
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quiesce`` command. Returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client(args)
    if args.command == "config" and args.reference:
        print(render_reference(), end="")
        return EXIT_OK
    if args.command == "diagrams":
        try:
            for path in render_diagrams(Path(args.out)):
                print(path)
        except QuiesceError as exc:
            print(f"quiesce: error: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        return EXIT_OK
    if args.command == "serve" and args.worker is not None:
        return _serve_worker(args.worker, args.notify_fd)
    try:
        loaded = _load(args)
    except ConfigError as exc:
        print(f"quiesce: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "config":
        print(render_settings(loaded), end="")
        return EXIT_OK
    configure_logging(loaded.settings)
    serve = run_pool if loaded.settings.workers > 1 else run_process
    try:
        code = trio.run(serve, loaded.settings)
    except KeyboardInterrupt:  # a SIGINT before the signal receiver was installed
        code = 130
    _leave(code)
    return code  # not reached


def _serve_worker(index: int, notify_fd: int | None) -> int:
    """Run as worker ``index`` of a pool: settings from stdin, ready on ``notify_fd``."""
    if notify_fd is None:
        print("quiesce: error: --worker needs --notify-fd", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = read_settings(sys.stdin.buffer)
    except ConfigError as exc:
        print(f"quiesce: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings, index)
    try:
        code = trio.run(run_process, settings, WorkerLink(index, notify_fd))
    except KeyboardInterrupt:  # a SIGINT before the signal receiver was installed
        code = 130
    _leave(code)
    return code  # not reached


def _leave(code: int) -> None:
    """Exit now, skipping the interpreter's teardown.

    pulsar-client's C++ core, once given a Python logger, can abort the teardown that
    follows (``terminate called without an active exception``, exit -6: seen in 2 of 4
    bench runs). By now the drain is complete, the client and the broker are closed and
    nothing is left to flush but the log, so the process leaves without that teardown.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
