"""The parent of ``quiesce serve --workers N``: N gateway processes on one port.

Theory of operation. The parent serves nothing itself. It

1. binds the listening address with SO_REUSEPORT without listening (``actors/reuseport.py``):
   that fixes the port (``--port 0`` too) and holds it while workers come and go;
2. turns on prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh
   temporary directory) so any worker's ``/metrics`` answers for all (``actors/metrics.py``);
3. starts the one embedded broker when no ``pulsar_url`` is set, and stops it last, after
   every worker has exited;
4. spawns N workers, each a whole gateway (``Supervisor``) listening on the shared port with
   its own socket; their settings go over their stdin (``actors/pool_link.py``) and each says
   ``ready`` on a pipe. Once all have, the parent logs ``ready on http://HOST:PORT``;
5. forwards SIGTERM/SIGINT (drain; a second SIGINT forces) and SIGHUP (reload the tokens) to
   every live worker, waits for all to exit and exits 0 only if every one exited 0;
6. restarts a worker that exits while no drain was asked, after a bounded backoff, and counts
   it (``quiesce_worker_restarts_total``, and a log line with its index, pid and exit code).

The decisions are ``PoolMachine``'s (``machines/pool.py``): this actor spawns, waits, signals
and reports facts.

Workers run in sessions of their own, so a Ctrl-C at a terminal reaches only the parent and
each worker gets the signal once, from the parent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from quiesce.actors._observe import TransitionLog
from quiesce.actors.broker import open_embedded_broker
from quiesce.actors.pool_link import READY, encode_settings
from quiesce.actors.reuseport import ReusePortError, bind_shared
from quiesce.core.errors import BrokerError
from quiesce.machines.pool import PoolMachine

if TYPE_CHECKING:
    from quiesce.actors.metrics import PoolMetrics
    from quiesce.core.config import Settings

__all__ = ["WorkerPool", "run_pool"]

LOGGER = logging.getLogger("quiesce.pool")

# The restart backoff: the first wait, and the cap it doubles up to while a worker keeps
# dying soon after it starts.
RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_MAX = 10.0
# A worker that lived this long before it died starts its backoff afresh, seconds.
RESTART_STREAK_RESET = 30.0
# How long past --shutdown-timeout a draining worker may take before the parent kills it
# (its own drain is bounded by the shutdown timeout; this only catches a stuck worker).
WORKER_EXIT_MARGIN = 30.0
# The script a worker runs: this checkout's supervisor.py, which works installed or not.
SUPERVISOR_SCRIPT = str(Path(__file__).resolve().parent.parent / "supervisor.py")
# Exit codes, as the supervisor's.
EXIT_OK, EXIT_STARTUP = 0, 1


class WorkerPool:
    """N worker processes of one gateway, and the parent's part in their lives.

    Use `run`; see the module's docstring.

    Args:
        settings: the effective settings (``workers`` is N).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.workers
        self.machine = PoolMachine(self.size)
        self.machine.observe(TransitionLog(LOGGER, "pool", "pool"))
        self.processes: dict[int, trio.Process] = {}
        self.url = ""
        self.broker_url = ""
        self.metrics: PoolMetrics | None = None
        self._worker_settings = settings
        self._drain_requested = trio.Event()
        self._finished = trio.Event()
        self._announced = False
        self._nursery: trio.Nursery | None = None
        self._serving: set[int] = set()  # pids of the workers that said ready

    async def run(self) -> int:
        """Run the pool until a drain completes; return the exit code (0: all exited 0)."""
        settings = self.settings
        try:
            sockets = bind_shared(settings.host, settings.port)
        except ReusePortError as exc:
            return self._startup_failed(str(exc))
        metrics_dir = tempfile.mkdtemp(prefix="quiesce-metrics-")
        try:
            port = int(sockets[0].getsockname()[1])
            host = settings.host if ":" not in settings.host else f"[{settings.host}]"
            self.url = f"http://{host}:{port}"
            self.metrics = _multiprocess_metrics(metrics_dir, self.size)
            async with AsyncExitStack() as stack:
                if settings.pulsar_url:
                    self.broker_url = settings.pulsar_url
                else:
                    try:
                        self.broker_url = await stack.enter_async_context(
                            open_embedded_broker(settings))
                    except BrokerError as exc:
                        return self._startup_failed(str(exc))
                    # Each worker is a connection of its own to pulsar-lite, which keys a
                    # subscription's consumers by the id each connection numbers from 0
                    # (docs/operations.md, Workers).
                    LOGGER.warning(
                        "%d workers share the embedded broker (pulsar-lite): an export "
                        "subscription named by more than one connection at a time may be "
                        "refused and cut that worker's broker connection; use Apache Pulsar "
                        "(--pulsar-url) for shared named subscriptions", self.size)
                self._worker_settings = dataclasses.replace(
                    settings, port=port, pulsar_url=self.broker_url)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch_signals)
                    for index in range(self.size):
                        nursery.start_soon(self._keep_worker, index)
                    await self._finished.wait()
                    nursery.cancel_scope.cancel(reason="every worker has exited")
        finally:
            for sock in sockets:
                sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if self.machine.start_failure is not None:
            index, code = self.machine.start_failure
            LOGGER.error("start-up failed: worker %d exited with code %d before it was ready",
                         index, code)
            print(f"quiesce: error: worker {index} exited with code {code} before it was ready",
                  file=sys.stderr)
            return EXIT_STARTUP
        LOGGER.info("stopped (%d worker restarts)", self.machine.restarts,
                    extra={"restarts": self.machine.restarts, "clean": self.machine.clean})
        return EXIT_OK if self.machine.clean else EXIT_STARTUP

    def _startup_failed(self, reason: str) -> int:
        self.machine.fail()
        LOGGER.error("start-up failed: %s", reason)
        print(f"quiesce: error: {reason}", file=sys.stderr)
        return EXIT_STARTUP

    # ---------------------------------------------------------------- one worker's lives

    async def _spawn(self, index: int) -> tuple[trio.Process, trio.lowlevel.FdStream]:
        read_end, write_end = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, SUPERVISOR_SCRIPT, "serve", "--worker", str(index),
                 "--notify-fd", str(write_end)],
                stdin=subprocess.PIPE,
                pass_fds=(write_end,),
                # Its own session: a terminal's Ctrl-C reaches the parent only, which
                # forwards it once.
                start_new_session=True,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        assert process.stdin is not None
        # The stdin pipe stays open for the worker's life: its end means the parent is gone.
        try:
            await process.stdin.send_all(encode_settings(self._worker_settings))
        except trio.BrokenResourceError:
            # It died at once; its exit (code and all) is reported by the caller's wait.
            LOGGER.warning("worker %d (pid %d) exited before it read its settings", index,
                           process.pid)
        return process, trio.lowlevel.FdStream(read_end)

    async def _keep_worker(self, index: int) -> None:
        """Run worker ``index``, and again after each crash, until no restart is due."""
        streak = 0
        while True:
            process, notify = await self._spawn(index)
            self.processes[index] = process
            self.machine.spawned()
            LOGGER.info("worker %d started (pid %d)", index, process.pid,
                        extra={"worker": index, "worker_pid": process.pid})
            if not self.machine.accepting_restarts:
                # A drain or an abort came while it was being spawned: stop it as it starts.
                assert process.stdin is not None
                await process.stdin.aclose()
            started = trio.current_time()
            async with notify:
                said = b""
                while READY not in said and (chunk := await notify.receive_some(64)):
                    said += chunk
            if READY in said:
                self._note_ready(index, process)
            code = await process.wait()
            assert process.stdin is not None
            await process.stdin.aclose()
            del self.processes[index]
            self._serving.discard(process.pid)
            _mark_process_dead(process.pid)
            self.machine.exited(index=index, code=code)
            lived = trio.current_time() - started
            if self.machine.finished:
                self._finished.set()
            if not self.machine.restart_due:
                LOGGER.log(logging.INFO if code == 0 else logging.WARNING,
                           "worker %d (pid %d) exited with code %d", index, process.pid, code,
                           extra={"worker": index, "worker_pid": process.pid, "code": code})
                if self.machine.start_failure is not None:
                    await self._signal_all(signal.SIGTERM)  # the pool cannot start: stop the rest
                return
            streak = 0 if lived >= RESTART_STREAK_RESET else streak + 1
            delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** max(streak - 1, 0))
            if self.metrics is not None:
                self.metrics.worker_restarts.labels(str(index)).inc()
            LOGGER.warning("worker %d (pid %d) exited with code %d while serving: restart %d "
                           "in %.1fs", index, process.pid, code, self.machine.restarts, delay,
                           extra={"worker": index, "worker_pid": process.pid, "code": code,
                                  "restarts": self.machine.restarts})
            with trio.move_on_after(delay):
                await self._drain_requested.wait()
            if not self.machine.accepting_restarts:
                return  # a drain came first: this worker stays down

    def _note_ready(self, index: int, process: trio.Process) -> None:
        self._serving.add(process.pid)
        self.machine.ready(index=index)
        LOGGER.info("worker %d ready (pid %d)", index, process.pid,
                    extra={"worker": index, "worker_pid": process.pid})
        if self.machine.serving.is_active and not self._announced:
            self._announced = True
            LOGGER.info("ready on %s (%d workers, broker %s%s)", self.url, self.size,
                        self.broker_url, "" if self.settings.pulsar_url else ", embedded",
                        extra={"url": self.url, "broker": self.broker_url,
                               "workers": self.size})

    # ---------------------------------------------------------------- signals

    async def _signal_all(self, signum: int) -> None:
        """Pass ``signum`` to every live worker that serves.

        A worker still starting may not have its signal handlers yet (the signal would kill
        it): a drain reaches it by its stdin closing instead, which it reads as "stop" once
        it runs (``actors/pool_link.py``), and a SIGHUP does not reach it (it reads the
        tokens file as it starts).
        """
        for index, process in list(self.processes.items()):
            if process.pid not in self._serving:
                if signum in (signal.SIGTERM, signal.SIGINT) and process.stdin is not None:
                    await process.stdin.aclose()
                continue
            try:
                process.send_signal(signum)
            except ProcessLookupError:  # exited a moment ago; its keeper reports it
                LOGGER.debug("worker %d had exited before %s", index,
                             signal.Signals(signum).name)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    LOGGER.info("SIGHUP received: forwarded to %d workers", len(self.processes),
                                extra={"signal": name})
                    await self._signal_all(signum)
                elif not self._drain_requested.is_set():
                    LOGGER.info("%s received: draining %d workers", name, len(self.processes),
                                extra={"signal": name})
                    self._drain_requested.set()
                    self.machine.drain()
                    await self._signal_all(signum)
                    if self.machine.finished:  # no worker was alive (all waiting to restart)
                        self._finished.set()
                    else:
                        assert self._nursery is not None
                        self._nursery.start_soon(self._kill_stuck_workers)
                elif signum == signal.SIGINT:
                    LOGGER.warning("second SIGINT: forcing %d workers", len(self.processes),
                                   extra={"signal": name})
                    await self._signal_all(signum)

    async def _kill_stuck_workers(self) -> None:
        await trio.sleep(self.settings.shutdown_timeout + WORKER_EXIT_MARGIN)
        for index, process in list(self.processes.items()):
            LOGGER.critical("worker %d (pid %d) still running %.0fs after the drain began: "
                            "killing it", index, process.pid,
                            self.settings.shutdown_timeout + WORKER_EXIT_MARGIN)
            process.kill()


def _multiprocess_metrics(directory: str, size: int) -> PoolMetrics:
    """Turn on prometheus-client's multiprocess mode in ``directory`` for this process and
    its children; return the parent's metrics, written there."""
    from prometheus_client import values

    from quiesce.actors.metrics import PoolMetrics

    # Children inherit the variable. This process imported prometheus-client before it knew
    # it would be a parent, so its value class is chosen again, as at import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # untyped upstream
    return PoolMetrics(size)


def _mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the sums (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped upstream


async def run_pool(settings: Settings) -> int:
    """Serve with ``settings.workers`` worker processes; return the exit code."""
    return await WorkerPool(settings).run()

