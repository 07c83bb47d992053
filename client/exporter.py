"""``quiesce export``: write what the gateway exports, acking each message only once it is durable.

The connection uses ``?ack=client`` on a named subscription (by default one derived from the
flow, kind and output, so that running the same command again resumes it). For each frame
``{"seq": N, "message": M}`` the exporter writes M; after a batch (``ack_every`` messages, or
as soon as no frame is waiting) it commits the output (flush and fsync) and only then sends
``{"ack": N}``. So the gateway acknowledges in Pulsar only what is on disk: a crash loses
nothing, and what comes again is at most what was written but not yet acked.

Ctrl-C stops reading, commits and acks what was written, and closes with 1000: the gateway
negatively acknowledges the rest, which the next run of the subscription receives. A
connection that ends with 1001 (draining), 1011 or without a close frame is reconnected with
backoff; the subscription keeps the place. ``--until-end`` adds ``?until=end``: the gateway
sends ``{"end": true}`` once the backlog present at connect time is delivered and acked, and
closes with 1000.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import ClientConnection

from quiesce.client import _ws
from quiesce.client._text import plural
from quiesce.client.errors import ClientError, Unreachable
from quiesce.client.importer import EXIT_CONNECTION, EXIT_DATA, EXIT_INTERRUPTED, EXIT_OK
from quiesce.client.progress import Progress
from quiesce.client.writers import Writer

__all__ = ["ExportOptions", "ExportReport", "Exporter", "default_subscription"]

# Most messages written before a commit and an ack (fewer when the window is smaller).
ACK_EVERY = 500
# Seconds without a frame after which what was written is committed and acked.
IDLE_COMMIT = 0.05


@dataclass(frozen=True)
class ExportOptions:
    """The export command's options.

    Attributes:
        url: the gateway, ``ws://HOST:PORT``.
        flow, kind: what to export.
        token: the gateway's secret, sent as ``Authorization: Bearer``.
        workspace: the 2.x workspace (``?workspace=``), or None for the gateway's default.
        subscription: the subscription's name (see `default_subscription`).
        until_end: stop once the backlog present at connect time is written (a dump).
        position: where a subscription that does not exist yet starts.
        window: the most frames the gateway sends ahead of the acks.
        wire: the wire format asked for (``?format=``), or None for the flow's own.
        retry_for: seconds to keep reconnecting after a connection is lost.
        out: the output's description, for the report.
    """

    url: str
    flow: str = "default"
    kind: str = "triples"
    token: str | None = None
    workspace: str | None = None
    subscription: str = ""
    until_end: bool = False
    position: str = "earliest"
    window: int = 1000
    wire: str | None = None
    retry_for: float = 60.0
    out: str = "<stdout>"


def default_subscription(flow: str, kind: str, out: Path | None,
                         workspace: str | None = None) -> str:
    """The subscription a rerun of the same export resumes: named after flow, kind and output.

    The output's absolute path (``-`` for standard output) and the workspace, if any, are
    hashed into the name, so two exports of one flow into different files do not share (and
    split) one subscription.
    """
    target = str(out.resolve()) if out is not None else "-"
    if workspace:
        target += f" workspace={workspace}"
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return f"quiesce-export-{flow}-{kind}-{digest}"


@dataclass
class ExportReport:
    """What an export run did.

    Attributes:
        options: its options.
        written: messages written (each acked once committed).
        items: triples written (RDF formats), or messages.
        acked: the messages acked.
        connections: connections opened.
        ended: the gateway said ``{"end": true}`` (``--until-end``).
        graphs_dropped: triples written without their named graph (nt, ttl).
        invalid: messages written to the side file instead (the gateway could not convert
            them, or the format cannot hold them).
        invalid_path: that side file.
        elapsed: seconds the run took.
        interrupted: stopped by Ctrl-C.
        failure: the error that ended the run early, if any.
        violations: frames from the gateway that broke the protocol.
    """

    options: ExportOptions
    written: int
    items: int
    acked: int
    connections: int
    ended: bool
    graphs_dropped: int
    invalid: int
    invalid_path: str
    elapsed: float
    interrupted: bool
    failure: ClientError | None
    violations: list[str]

    @property
    def exit_code(self) -> int:
        """3 for a refused or lost connection, 130 for Ctrl-C during a dump, 1 if messages
        went to the side file or the gateway broke the protocol, else 0."""
        if self.failure is not None:
            return EXIT_CONNECTION
        if self.interrupted and self.options.until_end:
            return EXIT_INTERRUPTED
        return EXIT_DATA if self.violations or self.invalid else EXIT_OK

    def lines(self) -> list[str]:
        """The summary, one line each."""
        o = self.options
        rate = self.written / self.elapsed if self.elapsed > 0 else 0.0
        triples = f" ({plural(self.items, 'triple')})" if self.items != self.written else ""
        out = [
            f"summary: written {plural(self.written, 'message')}{triples}, acked {self.acked}, "
            f"to {o.out} "
            f"from flow {o.flow} kind {o.kind}, subscription {o.subscription} "
            f"({self.elapsed:.1f}s, {rate:,.0f} messages/s, "
            f"{max(0, self.connections - 1)} reconnects)"
        ]
        if self.invalid:
            out.append(f"warning: {plural(self.invalid, 'message')} could not be written as "
                       f"asked (the gateway could not convert them, or the format cannot hold "
                       f"them): written with the reason to {self.invalid_path}")
        if self.graphs_dropped:
            out.append(f"warning: {self.graphs_dropped} triples were in named graphs, written "
                       "without them (--format nq keeps them)")
        for violation in self.violations[:10]:
            out.append(f"protocol violation by the gateway: {violation}")
        if self.failure is not None:
            out.append(f"error: {self.failure}")
        elif self.ended:
            out.append("end: everything in the subscription is written")
        elif self.interrupted:
            out.append(f"stopped: run the same command again to resume subscription "
                       f"{o.subscription}")
        return out


class Exporter:
    """One export run into a writer (see the module docstring).

    Args:
        options: the command's options.
        writer: the output (the exporter commits it; the caller closes it).
        progress: where progress and notes go.
    """

    def __init__(self, options: ExportOptions, writer: Writer, progress: Progress) -> None:
        self.options = options
        self.writer = writer
        self.progress = progress
        query = {"ack": "client", "subscription": options.subscription,
                 "position": options.position, "window": str(options.window)}
        if options.until_end:
            query["until"] = "end"
        if options.wire:
            query["format"] = options.wire
        if options.workspace:
            query["workspace"] = options.workspace
        self.url = _ws.api_url(options.url, options.flow, "export", options.kind, query)
        self.ack_every = max(1, min(ACK_EVERY, options.window // 2))
        self.written = 0
        self.items = 0
        self.acked_total = 0
        self.connections = 0
        self.ended = False
        self.violations: list[str] = []
        self._seq_written = 0  # on this connection: the last seq written
        self._seq_acked = 0  # on this connection: the last seq acked
        self._recv_scope: trio.CancelScope | None = None
        self._started = 0.0
        self._ended_at: float | None = None
        self._failure: ClientError | None = None
        self._interrupted = False

    async def run(self, stop: trio.Event | None = None) -> ExportReport:
        """Export until the end (``until_end``), Ctrl-C (``stop``) or a final error.

        Cancelling the run (a second Ctrl-C) leaves it at once; what was written and not
        acked then comes again on the next run.
        """
        stop = trio.Event() if stop is None else stop
        self._started = trio.current_time()
        self.progress.start(f"export {self.options.kind}", None)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_recv_on, stop)
                await self._connect_until_done(stop)
                nursery.cancel_scope.cancel(reason="the export is over")
        except ClientError as exc:
            self._failure = exc
        finally:
            self._interrupted = stop.is_set() and not self.ended
            self._ended_at = trio.current_time()
            self.progress.update(self.written)
            self.progress.stop()
        return self.report()

    def report(self) -> ExportReport:
        """Where the run is (or ended)."""
        end = self._ended_at if self._ended_at is not None else trio.current_time()
        return ExportReport(self.options, self.written, self.items, self.acked_total,
                            self.connections, self.ended, self.writer.graphs_dropped,
                            self.writer.invalid, str(self.writer.invalid_path),
                            end - self._started, self._interrupted, self._failure,
                            self.violations)

    async def _cancel_recv_on(self, stop: trio.Event) -> None:
        await stop.wait()
        if self._recv_scope is not None:
            self._recv_scope.cancel(reason="stopped by the user")

    async def _connect_until_done(self, stop: trio.Event) -> None:
        options = self.options
        backoff = _ws.Backoff(options.retry_for)
        while not self.ended and not stop.is_set():
            written_before = self.written
            try:
                async with _ws.open_connection(self.url, options.token) as ws:
                    self.connections += 1
                    closed = await self._session(ws, stop)
            except InvalidStatus as exc:
                refused = _ws.refusal(exc, self.url, options.token)
                if refused is not None:
                    raise refused from None
                why = f"HTTP {exc.response.status_code}"
            except _ws.connect_errors() as exc:
                if self.connections == 0:
                    raise _ws.unreachable(exc, self.url) from None
                why = _ws.failure_cause(exc)
            else:
                if closed is None or self.ended:
                    return
                fatal = _ws.fatal_close(closed, "export")
                if fatal is not None:
                    raise fatal
                why = _ws.describe_close(closed)
            if self.written > written_before:
                backoff.reset()
            delay = backoff.delay(trio.current_time())
            if delay is None:
                raise Unreachable(f"gave up reconnecting to {_ws.where(self.url)} after "
                                  f"{options.retry_for:g}s: {why}")
            self.progress.note(f"connection ended ({why}); reconnecting in {delay:.1f}s")
            with trio.move_on_after(delay):
                await stop.wait()

    async def _session(self, ws: ClientConnection, stop: trio.Event
                       ) -> ConnectionClosed | None:
        """One connection; returns how it closed, or None when the user stopped it."""
        self._seq_written = self._seq_acked = 0
        try:
            while not stop.is_set():
                raw: str | bytes | None = None
                with trio.CancelScope() as scope:
                    self._recv_scope = scope
                    if self._seq_written > self._seq_acked:
                        scope.deadline = trio.current_time() + IDLE_COMMIT
                    raw = await ws.recv()  # cancel-safe: a frame is never half taken
                self._recv_scope = None
                if raw is None:  # idle, or stopped by the user
                    await self._commit(ws)
                    continue
                self._on_frame(raw)
                if self._seq_written - self._seq_acked >= self.ack_every:
                    await self._commit(ws)
            # Stopped by the user: what was written is acked, the rest is the gateway's to
            # nack (it does when the client closes), so a rerun gets it.
            await self._commit(ws)
            await _close_discarding(ws)
            return None
        except ConnectionClosed as closed:
            return closed
        finally:
            self._recv_scope = None

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame: Any = json.loads(raw)
        except ValueError:
            self.violations.append(f"a frame that is not JSON: {raw[:80]!r}")
            return
        if not isinstance(frame, dict):
            self.violations.append(f"unexpected frame {str(frame)[:80]}")
        elif "seq" in frame and "message" in frame:
            seq = frame["seq"]
            if not isinstance(seq, int) or seq != self._seq_written + 1:
                self.violations.append(f"frame seq {seq!r} after {self._seq_written}")
            self.items += self.writer.write(frame["message"], seq if isinstance(seq, int)
                                            else None)
            self.written += 1
            self._seq_written = seq
        elif frame.get("end") is True:
            self.ended = True
        elif "error" in frame:
            self.violations.append(f"error frame {json.dumps(frame['error'])[:200]}")
        else:
            self.violations.append(f"unexpected frame {str(frame)[:80]}")

    async def _commit(self, ws: ClientConnection) -> None:
        """Make what was written durable, then ack it (never the other way round)."""
        if self._seq_written <= self._seq_acked:
            return
        seq = self._seq_written
        await trio.to_thread.run_sync(self.writer.commit)
        await ws.send(json.dumps({"ack": seq}))
        self.acked_total += seq - self._seq_acked
        self._seq_acked = seq
        self.progress.update(self.written)


async def _close_discarding(ws: ClientConnection) -> None:
    """Close the connection, dropping (never writing or acking) what still arrives meanwhile.

    The gateway keeps sending until it reads the close frame; websockets stops reading the
    socket once ``max_queue`` messages wait unread, and would then never see the gateway's
    close frame (the close would wait out its timeout). The dropped messages were not acked,
    so the gateway nacks them and the subscription delivers them again.
    """

    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(discard)
        await ws.aclose()
