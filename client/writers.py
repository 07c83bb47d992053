"""Where ``quiesce export`` writes: JSON Lines, N-Triples, N-Quads or Turtle, durably.

Every writer appends: a rerun of an export (which resumes its subscription) adds to what the
earlier run wrote. `Writer.commit` flushes and fsyncs what was written, and the exporter acks
a message only after the commit that covers it, so a crash can leave at most messages that
were written but not acked, which the gateway delivers again (duplicates, never gaps). A line
cut short by a crash is removed when the file is opened again (its message was not acked).

Turtle cannot be appended to line by line: the Turtle writer keeps what it receives in a
spool of N-Quads beside the output (``OUT.quiesce-spool.nq``, committed like the others) and
serialises the whole graph, with the earlier output's triples, when the export ends. Named
graphs have no place in N-Triples or Turtle: those triples are written without their graph and
counted (`Writer.graphs_dropped`); N-Quads keeps them. What cannot be written at all goes
to a side file with its reason (`Writer`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
from rdflib import Graph

from quiesce.client import rdf
from quiesce.client.errors import UsageError
from quiesce.core.errors import InvalidMessage

__all__ = ["FORMATS", "Writer", "open_writer"]

#: ``--format`` of export: what each writes.
FORMATS = ("jsonl", "nt", "nq", "ttl")
# Appended to a Turtle output's name to name its spool.
SPOOL_SUFFIX = ".quiesce-spool.nq"
# Appended to an output's name to name the side file of messages it cannot hold; the side
# file of an export to standard output, in the working folder.
INVALID_SUFFIX = ".invalid.jsonl"
STDOUT_INVALID = "quiesce-export.invalid.jsonl"


class _Format(Protocol):
    """One output format."""

    graphs_dropped: int

    def write(self, message: dict[str, Any]) -> int:
        """Write one exported message; returns how many items it held (triples, or 1).

        Raises:
            InvalidMessage: the message cannot be written in this format (nothing written).
        """

    def commit(self) -> None:
        """Make everything written so far durable (flush and fsync)."""

    def close(self) -> None:
        """Commit, finish the output (Turtle: serialise it) and close it."""


class _Appender:
    """An output file opened for appending, without a partial last line; or standard output."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is None:
            self._file: IO[bytes] = sys.stdout.buffer
            return
        try:
            _cut_partial_line(path)
            self._file = path.open("ab")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def append(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        if self.path is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self.commit()
        if self.path is not None:
            self._file.close()


def _cut_partial_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (a crash may have cut the last line short)."""
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        return
    with file:
        end = position = file.seek(0, os.SEEK_END)
        keep = 0
        while position > 0:
            start = max(0, position - 65536)
            file.seek(start)
            newline = file.read(position - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        if keep < end:
            file.truncate(keep)


class _Jsonl:
    def __init__(self, path: Path | None) -> None:
        self._out = _Appender(path)
        self.graphs_dropped = 0

    def write(self, message: dict[str, Any]) -> int:
        self._out.append(orjson.dumps(message) + b"\n")
        return 1

    def commit(self) -> None:
        self._out.commit()

    def close(self) -> None:
        self._out.close()


class _RdfLines:
    def __init__(self, path: Path | None, with_graphs: bool) -> None:
        self._out = _Appender(path)
        self._with_graphs = with_graphs
        self.graphs_dropped = 0

    def write(self, message: dict[str, Any]) -> int:
        quads = list(rdf.message_quads(message))
        if not self._with_graphs:
            self.graphs_dropped += sum(1 for q in quads if q[3] is not None)
        self._out.append(rdf.serialize_quads(quads, with_graphs=self._with_graphs))
        return len(quads)

    def commit(self) -> None:
        self._out.commit()

    def close(self) -> None:
        self._out.close()


class _Turtle:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._spool_path = path.with_name(path.name + SPOOL_SUFFIX)
        self._spool = _RdfLines(self._spool_path, with_graphs=True)
        self.graphs_dropped = 0

    def write(self, message: dict[str, Any]) -> int:
        self.graphs_dropped += sum(1 for q in rdf.message_quads(message) if q[3] is not None)
        return self._spool.write(message)

    def commit(self) -> None:
        self._spool.commit()

    def close(self) -> None:
        self._spool.close()
        graph = Graph()
        if self._path.exists():
            graph.parse(self._path, format="turtle")
        graph.parse(self._spool_path, format="nquads")
        tmp = self._path.with_name(self._path.name + ".tmp")
        with tmp.open("wb") as file:
            graph.serialize(file, format="turtle", encoding="utf-8")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self._path)
        self._spool_path.unlink()


class Writer:
    """An export's output: the chosen format, and a side file for what it cannot hold.

    A message the gateway could not convert arrives as ``{"error": {"code":
    "invalid-payload", ...}}`` (its bytes inside); a message the chosen RDF format cannot hold
    (a quoted triple) raises in the format. Neither is lost nor stops the export: each goes,
    with its reason, to ``OUT.invalid.jsonl`` (``quiesce-export.invalid.jsonl`` when writing to
    standard output), committed with the rest, so it may be acked like any other.

    Attributes:
        invalid: messages written to the side file.
        invalid_path: the side file.
    """

    def __init__(self, fmt: str, out: _Format, invalid_path: Path) -> None:
        self.fmt = fmt
        self._out = out
        self.invalid = 0
        self.invalid_path = invalid_path
        self._side: _Appender | None = None

    @property
    def graphs_dropped(self) -> int:
        """Triples written without their named graph (N-Triples, Turtle)."""
        return self._out.graphs_dropped

    def write(self, message: Any, seq: int | None = None) -> int:
        """Write one exported message; returns the items written (0 if it went aside)."""
        error = message.get("error") if isinstance(message, dict) else None
        if isinstance(error, dict) and len(message) == 1:
            self._aside({"seq": seq, **error})
            return 0
        if not isinstance(message, dict):
            self._aside({"seq": seq, "detail": "not a JSON object", "message": message})
            return 0
        try:
            return self._out.write(message)
        except InvalidMessage as exc:
            self._aside({"seq": seq, "detail": f"cannot be written as {self.fmt}: {exc}",
                         "message": message})
            return 0

    def _aside(self, record: dict[str, Any]) -> None:
        if self._side is None:
            self._side = _Appender(self.invalid_path)
        self._side.append(orjson.dumps(record) + b"\n")
        self.invalid += 1

    def commit(self) -> None:
        """Make everything written so far, in both files, durable."""
        self._out.commit()
        if self._side is not None:
            self._side.commit()

    def close(self) -> None:
        """Commit and finish both files."""
        self._out.close()
        if self._side is not None:
            self._side.close()


def open_writer(fmt: str, path: Path | None, kind: str) -> Writer:
    """The writer of ``fmt`` appending to ``path`` (standard output when None).

    Raises:
        UsageError: an unknown format, an RDF format for a kind other than triples, Turtle to
            standard output, or a file that cannot be opened.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    invalid = (path.with_name(path.name + INVALID_SUFFIX) if path is not None
               else Path(STDOUT_INVALID))
    if fmt == "jsonl":
        return Writer(fmt, _Jsonl(path), invalid)
    if kind != "triples":
        raise UsageError(f"--format {fmt} writes triples; export {kind} as --format jsonl")
    if fmt == "ttl":
        if path is None:
            raise UsageError("--format ttl needs --out FILE (it is written when the export ends)")
        return Writer(fmt, _Turtle(path), invalid)
    return Writer(fmt, _RdfLines(path, with_graphs=fmt == "nq"), invalid)
