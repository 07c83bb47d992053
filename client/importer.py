"""``quiesce import``: send inputs to the gateway with receipts, resending what was not receipted.

Trio, like the gateway: the sender and the receipt reader of a connection are two tasks in one
nursery, and the same `websockets.trio` client the tests use is the one users run. The
bookkeeping is the pure `ImportLedger`; this module does the I/O around it:

1. `prepare_import` reads every input (`open_source`), loads its state (`StateFile`) and
   decides where it resumes (`plan`).
2. `Importer.run` connects with ``?receipts=true`` and, per connection, sends while the window
   has room and reads receipts and error frames; when everything is sent it closes, and the
   gateway persists every frame and sends the final receipt before its close frame.
3. A connection that ends otherwise (1001 draining, 1011, a lost socket) is reconnected with
   backoff, and what it left unsettled is sent first on the next one. A ``{"draining": …}``
   frame makes the client stop sending and close at once, so the gateway can go.
4. The state is written up to 20 times a second while receipts arrive, and at the end: a rerun
   after a crash or Ctrl-C starts after the last message settled.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.trio.client import ClientConnection

from quiesce.client import _ws
from quiesce.client._text import plural
from quiesce.client.errors import ClientError, Unreachable
from quiesce.client.ledger import ImportLedger, Rejection, SourceProgress
from quiesce.client.progress import Progress
from quiesce.client.sources import JSONL, Source, SourceOptions, format_of, open_source
from quiesce.client.state import (
    MAX_REJECTIONS_KEPT,
    Entry,
    Resume,
    StateFile,
    default_state_path,
    plan,
)

__all__ = ["ImportOptions", "ImportReport", "Importer", "prepare_import"]

# Seconds between two writes of the state file while receipts arrive (a small file: 20 writes
# a second cost little, and bound what a crash makes the next run send twice).
SAVE_INTERVAL = 0.05
# RDF inputs from this size on are announced before parsing (about a second of rdflib).
SLOW_READ_BYTES = 8 << 20
# Exit codes of the import and export commands.
EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# Distinct rejection reasons listed in the summary, and places named for each (all counted).
MAX_REJECTIONS_SHOWN = 50
PLACES_SHOWN = 3


@dataclass(frozen=True)
class ImportOptions:
    """The import command's options.

    Attributes:
        url: the gateway, ``ws://HOST:PORT``.
        flow, kind: where the messages go.
        token: the gateway's secret, sent as ``Authorization: Bearer``.
        workspace: the 2.x workspace (``?workspace=``), or None for the gateway's default.
        window: the most frames sent and not yet receipted.
        retry_for: seconds to keep reconnecting after a connection is lost.
        state: one state file for every input; None: one beside each input.
        fresh: ignore earlier runs' state.
        source: how inputs become messages.
    """

    url: str
    flow: str = "default"
    kind: str = "triples"
    token: str | None = None
    workspace: str | None = None
    window: int = 500
    retry_for: float = 60.0
    state: Path | None = None
    fresh: bool = False
    source: SourceOptions = field(default_factory=SourceOptions)


@dataclass
class _Input:
    """One input in this run: what it is, where it resumes, and where its state goes."""

    source: Source
    resume: Resume
    progress: SourceProgress
    state: StateFile | None
    key: str


def _target(options: ImportOptions) -> str:
    workspace = f" workspace={options.workspace}" if options.workspace else ""
    return f"{_ws.where(options.url)} flow={options.flow}{workspace} kind={options.kind}"


def prepare_import(options: ImportOptions, specs: Sequence[str],
                   note: Callable[[str], None] | None = None) -> list[_Input]:
    """Read every input and decide where each resumes.

    Args:
        options: the command's options.
        specs: input paths, ``-`` for standard input.
        note: told before a large RDF input is parsed (rdflib reads ~100,000 triples a
            second, with nothing else to show meanwhile).

    Raises:
        UsageError: an input cannot be read or converted, or a state file is not one.
    """
    states: dict[Path, StateFile] = {}
    inputs = []
    for number, spec in enumerate(specs):
        if note is not None and _slow_to_read(spec, options.source.fmt):
            note(f"reading {spec} …")
        source = open_source(spec, number, options.source)
        state_path = options.state
        if state_path is None and source.path is not None:
            state_path = default_state_path(source.path)
        state = None
        if state_path is not None:
            state_path = state_path.resolve()
            state = states.get(state_path) or states.setdefault(state_path, StateFile(state_path))
        where = str(source.path.resolve()) if source.path is not None else "<stdin>"
        key = f"{_target(options)} {where}"
        entry = state.entries.get(key) if state is not None else None
        resume = plan(entry, source.fingerprint, source.layout, source.total, source.name,
                      options.fresh)
        progress = SourceProgress(source.total, resume.start, resume.earlier_sent)
        inputs.append(_Input(source, resume, progress, state, key))
    return inputs


def _slow_to_read(spec: str, fmt: str | None) -> bool:
    if spec == "-" or format_of(spec, fmt) == JSONL:
        return False
    try:
        return Path(spec).stat().st_size >= SLOW_READ_BYTES
    except OSError:
        return False  # open_source says what is wrong with it


@dataclass
class ImportReport:
    """What an import run did (the summary it prints, and its exit code).

    Attributes:
        inputs: each input's source, resume decision and progress.
        frames_sent, resent, connections: from the ledger.
        elapsed: seconds the run took.
        interrupted: stopped by Ctrl-C before the end.
        failure: the error that ended the run early, if any.
        violations: protocol violations of the gateway (should be empty).
        state_warning: why the state could not be written, if it could not.
    """

    inputs: list[_Input]
    frames_sent: int
    resent: int
    connections: int
    elapsed: float
    interrupted: bool
    failure: ClientError | None
    violations: list[str]
    state_warning: str | None

    @property
    def receipted(self) -> int:
        """Messages receipted in this run."""
        return sum(i.progress.receipted for i in self.inputs)

    @property
    def rejections(self) -> list[Rejection]:
        """Messages rejected in this run, in input order."""
        return [r for i in self.inputs for r in i.progress.rejections]

    @property
    def skipped(self) -> int:
        """Messages skipped because an earlier run settled them."""
        return sum(i.resume.start for i in self.inputs)

    @property
    def earlier_rejected(self) -> int:
        """Rejections among the skipped messages (reported by an earlier run)."""
        return sum(i.resume.earlier_rejected for i in self.inputs)

    @property
    def resent_earlier(self) -> int:
        """Messages an earlier run sent without a receipt, sent again in this one."""
        return sum(i.progress.resent_earlier for i in self.inputs)

    @property
    def unsettled(self) -> int:
        """Messages neither receipted nor rejected (by this run or an earlier one)."""
        return sum(i.progress.total - i.progress.done for i in self.inputs)

    @property
    def exit_code(self) -> int:
        """3 for a refused or lost connection, 130 for Ctrl-C, 1 if anything was rejected or
        not receipted, else 0."""
        if self.failure is not None:
            return EXIT_CONNECTION
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.rejections or self.earlier_rejected or self.unsettled:
            return EXIT_DATA
        return EXIT_OK

    def lines(self) -> list[str]:
        """The summary, one line each."""
        out = []
        for i in self.inputs:
            p = i.progress
            parts = [f"{p.receipted} receipted"]
            if p.rejections:
                parts.append(f"{len(p.rejections)} rejected")
            if i.resume.start:
                parts.append(f"skipped {i.resume.start} settled by an earlier run")
            if p.resent_earlier:
                parts.append(f"resent {p.resent_earlier} an earlier run sent without a receipt")
            if p.total - p.done:
                parts.append(f"{p.total - p.done} not receipted")
            out.append(f"{i.source.name}: {plural(p.total, 'message')}: {', '.join(parts)}")
        rate = self.frames_sent / self.elapsed if self.elapsed > 0 else 0.0
        reconnects = max(0, self.connections - 1)
        out.append(
            f"summary: sent {self.frames_sent}, receipted {self.receipted}, rejected "
            f"{len(self.rejections)}, resent {self.resent + self.resent_earlier}, skipped "
            f"{self.skipped}, not receipted {self.unsettled} "
            f"({self.elapsed:.1f}s, {rate:,.0f} frames/s, {reconnects} reconnects)")
        out += _rejection_lines([(r.where, r.code, r.detail) for r in self.rejections])
        if self.earlier_rejected:
            out.append(f"{self.earlier_rejected} messages were rejected by an earlier run:")
            out += _rejection_lines(
                [(r.get("where", "?"), r.get("code", "?"), r.get("detail", "?"))
                 for i in self.inputs for r in i.resume.earlier_rejections], "rejected earlier")
        for violation in self.violations[:10]:
            out.append(f"protocol violation by the gateway: {violation}")
        if self.state_warning:
            out.append(f"warning: {self.state_warning}")
        if self.failure is not None:
            out.append(f"error: {self.failure}")
        elif self.interrupted:
            out.append("interrupted: run the same command again to send the rest")
        return out


def _rejection_lines(rejections: list[tuple[str, str, str]], verb: str = "rejected"
                     ) -> list[str]:
    """One line per distinct reason: where (the first few places), code and detail.

    A file whose every line breaks the same rule gives one line, not thousands.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for where, code, detail in rejections:
        groups.setdefault((code, detail), []).append(where)
    out = []
    for (code, detail), places in list(groups.items())[:MAX_REJECTIONS_SHOWN]:
        shown = ", ".join(places[:PLACES_SHOWN])
        more = f" and {len(places) - PLACES_SHOWN} more" if len(places) > PLACES_SHOWN else ""
        out.append(f"{verb} {shown}{more}: {code}: {detail}")
    if len(groups) > MAX_REJECTIONS_SHOWN:
        out.append(f"... and {len(groups) - MAX_REJECTIONS_SHOWN} more reasons")
    return out


class Importer:
    """One import run over prepared inputs (see the module docstring).

    Args:
        options: the command's options.
        inputs: from `prepare_import`.
        progress: where progress and notes go.
    """

    def __init__(self, options: ImportOptions, inputs: list[_Input], progress: Progress
                 ) -> None:
        self.options = options
        self.inputs = inputs
        self.progress = progress
        query = {"receipts": "true"}
        if options.workspace:
            query["workspace"] = options.workspace
        self.url = _ws.api_url(options.url, options.flow, "import", options.kind, query)
        items = itertools.chain.from_iterable(i.source.items(i.resume.start) for i in inputs)
        self.ledger = ImportLedger([i.progress for i in inputs], items, options.window)
        self._changed = trio.Event()
        self._draining = False
        self._started = 0.0
        self._ended: float | None = None
        self._last_save = -math.inf
        self._state_warning: str | None = None
        self._failure: ClientError | None = None
        self._interrupted = False

    # ------------------------------------------------------------ the run

    async def run(self, stop: trio.Event | None = None) -> ImportReport:
        """Send everything, reconnecting as needed; return the report.

        Args:
            stop: set it (Ctrl-C) to stop sending, let the gateway receipt what it has, save
                the state and return.

        Cancelling the run (a second Ctrl-C) leaves it at once; `report` still tells where it
        got to, and the state is saved on the way out.
        """
        stop = trio.Event() if stop is None else stop
        self._started = trio.current_time()
        for i in self.inputs:
            for note in (i.source.note, i.resume.note):
                if note:
                    self.progress.note(note)
        total = sum(i.source.total for i in self.inputs)
        self.progress.start(f"import {self.options.kind}", total,
                            sum(i.resume.start for i in self.inputs))
        try:
            if self.ledger.unsettled():  # a rerun of a complete import connects to nothing
                await self._connect_until_done(stop)
        except ClientError as exc:
            self._failure = exc
        finally:
            self._interrupted = stop.is_set() and not self.ledger.finished
            self._ended = trio.current_time()
            self._save_state(force=True)
            self.progress.update(self._completed())
            self.progress.stop()
        return self.report()

    def report(self) -> ImportReport:
        """Where the run is (or ended)."""
        end = self._ended if self._ended is not None else trio.current_time()
        return ImportReport(self.inputs, self.ledger.frames_sent, self.ledger.resent,
                            self.ledger.connections, end - self._started, self._interrupted,
                            self._failure, self.ledger.violations, self._state_warning)

    async def _connect_until_done(self, stop: trio.Event) -> None:
        options = self.options
        backoff = _ws.Backoff(options.retry_for)
        while not self.ledger.finished and not stop.is_set():
            settled_before = self._completed()
            try:
                async with _ws.open_connection(self.url, options.token) as ws:
                    closed = await self._session(ws, stop)
            except InvalidStatus as exc:
                refused = _ws.refusal(exc, self.url, options.token)
                if refused is not None:
                    raise refused from None
                why = f"HTTP {exc.response.status_code}"
            except _ws.connect_errors() as exc:
                if self.ledger.connections == 0:
                    raise _ws.unreachable(exc, self.url) from None
                why = _ws.failure_cause(exc)
            else:
                fatal = _ws.fatal_close(closed, "import")
                if fatal is not None:
                    raise fatal
                if self.ledger.finished or stop.is_set():
                    return
                why = ("closed it for the gateway, which is draining" if self._draining
                       else _ws.describe_close(closed))
            if self._completed() > settled_before:
                backoff.reset()
            delay = backoff.delay(trio.current_time())
            if delay is None:
                raise Unreachable(f"gave up reconnecting to {_ws.where(self.url)} after "
                                  f"{options.retry_for:g}s: {why}")
            self.progress.note(f"connection ended ({why}); reconnecting in {delay:.1f}s")
            with trio.move_on_after(delay):
                await stop.wait()

    async def _session(self, ws: ClientConnection, stop: trio.Event) -> ConnectionClosed:
        """One connection: send and read receipts until it closes; returns how it closed."""
        self.ledger.connected()
        self._draining = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_frames, ws, stop)
                nursery.start_soon(self._wake_on, stop)
                closed = await self._read_frames(ws)
                nursery.cancel_scope.cancel(reason="the connection closed")
            return closed
        finally:
            back = self.ledger.disconnected()
            if back:
                self.progress.note(f"{back} frames were not receipted on that connection: "
                                   "they are sent again first")

    async def _wake_on(self, stop: trio.Event) -> None:
        await stop.wait()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _send_frames(self, ws: ClientConnection, stop: trio.Event) -> None:
        ledger = self.ledger
        try:
            while not stop.is_set() and not self._draining:
                if not ledger.room:
                    await self._changed.wait()
                    continue
                item = ledger.take()
                if item is None:
                    break
                if item.problem is not None:
                    ledger.reject_locally(item, item.problem)
                    self.progress.update(self._completed())
                    continue
                ledger.sent(item)
                await ws.send(item.text)
            # Closing is how the client asks for the final receipt: the gateway persists every
            # frame it received, sends {"ack": N} covering them all, then its close frame.
            await ws.aclose()
        except ConnectionClosed:
            pass  # the reader reports how it closed

    async def _read_frames(self, ws: ClientConnection) -> ConnectionClosed:
        try:
            while True:
                self._on_frame(await ws.recv())
        except ConnectionClosed as closed:
            return closed

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame: Any = json.loads(raw)
        except ValueError:
            self.ledger.violations.append(f"a frame that is not JSON: {raw[:80]!r}")
            return
        if not isinstance(frame, dict):
            self.ledger.violations.append(f"unexpected frame {str(frame)[:80]}")
        elif "ack" in frame and isinstance(frame["ack"], int):
            if self.ledger.ack(frame["ack"]):
                self.progress.update(self._completed())
                self._save_state()
        elif "error" in frame and isinstance(frame["error"], dict):
            body = frame["error"]
            code, detail = str(body.get("code", "")), str(body.get("detail", ""))
            if self.ledger.error(body.get("seq"), code, detail) is not None:
                self.progress.update(self._completed())
        elif "draining" in frame:
            if not self._draining:
                self.progress.note("the gateway is draining: closing, to resume on the next "
                                   "connection")
            self._draining = True
        else:
            self.ledger.violations.append(f"unexpected frame {str(frame)[:80]}")
        self._wake()

    def _completed(self) -> int:
        return sum(i.progress.done for i in self.inputs)

    # ------------------------------------------------------------ state

    def _save_state(self, force: bool = False) -> None:
        now = trio.current_time()
        if not force and now - self._last_save < SAVE_INTERVAL:
            return
        self._last_save = now
        files: dict[int, StateFile] = {}
        for i in self.inputs:
            if i.state is None:
                continue
            files[id(i.state)] = i.state
            i.state.entries[i.key] = _entry(i)
        for state in files.values():
            try:
                state.save()
            except OSError as exc:
                if self._state_warning is None:
                    self._state_warning = (f"cannot write the state file {state.path}: "
                                           f"{exc.strerror or exc}; a rerun will not resume")
                    self.progress.note(f"warning: {self._state_warning}")


def _entry(i: _Input) -> Entry:
    p = i.progress
    settled_rejections = [r for r in p.rejections if r.index <= p.done]
    kept = list(i.resume.earlier_rejections)
    kept += [{"where": r.where, "code": r.code, "detail": r.detail} for r in settled_rejections]
    return Entry(i.source.fingerprint, i.source.layout, i.source.total, p.done, p.sent,
                 i.resume.earlier_rejected + len(settled_rejections), kept[:MAX_REJECTIONS_KEPT])

