"""What ``quiesce import`` reads: each input as numbered messages with a content fingerprint.

An input is JSON Lines (one message per non-blank line, in either wire format, sent exactly
as written) or RDF (parsed by `quiesce.client.rdf`, grouped into triples messages of
``batch`` triples). Either way it becomes a `Source`: a fingerprint of its bytes, the
``layout`` that fixes how those bytes become messages (format, batch size, wire format,
metadata), the number of messages, and `Source.items` from any position on. Resuming relies
on the same fingerprint and layout giving the same messages in the same order.

``-`` is standard input, read whole before anything is sent (its fingerprint needs all of it).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from quiesce.client import rdf
from quiesce.client._text import plural
from quiesce.client.errors import UsageError
from quiesce.core.profiles import Profile

__all__ = ["JSONL", "Item", "Source", "SourceOptions", "format_of", "open_source"]

JSONL = "jsonl"
# The format of an input by its suffix (``--format`` overrides it).
SUFFIX_FORMATS = {
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".json": JSONL,
    ".ttl": "turtle",
    ".turtle": "turtle",
    ".nt": "nt",
    ".ntriples": "nt",
    ".nq": "nquads",
    ".nquads": "nquads",
    ".trig": "trig",
    ".jsonld": "json-ld",
    ".json-ld": "json-ld",
}
# Bytes read at a time while fingerprinting a JSON Lines file.
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceOptions:
    """How inputs become messages (the import command's options that shape them).

    Attributes:
        kind: the import's kind; RDF needs ``triples``.
        fmt: ``--format`` (a key of `SUFFIX_FORMATS`' values or `rdf.RDF_FORMATS`), or None
            to go by each file's suffix.
        batch: triples per message for RDF.
        wire: the wire format of RDF messages.
        doc_id: ``metadata.id`` of RDF messages; None: ``urn:sha256:<the file's digest>``.
        collection: ``metadata.collection`` of RDF messages.
        user: ``metadata.user`` of 1.x RDF messages.
    """

    kind: str = "triples"
    fmt: str | None = None
    batch: int = 100
    wire: Profile = Profile.TG2
    doc_id: str | None = None
    collection: str = "default"
    user: str = "trustgraph"


@dataclass(frozen=True)
class Item:
    """One message of a source, ready to send.

    Attributes:
        source: the index of its `Source` in the run.
        index: its position in the source, 1, 2, 3 …
        where: where it comes from, for reports (``data.jsonl:17``).
        text: the frame to send.
        problem: why it cannot be sent at all (not UTF-8), or None.
        first_triple: (RDF) the position in the file of the message's first triple, so a
            detail naming ``triples[i]`` can be traced to the file's triple.
    """

    source: int
    index: int
    where: str
    text: str
    problem: str | None = None
    first_triple: int | None = None


@dataclass
class Source:
    """One input, read and fingerprinted (see the module docstring).

    Attributes:
        number: its index in the run.
        path: the file, or None for standard input.
        name: its name in reports.
        fmt: ``jsonl`` or an rdflib parser name.
        fingerprint: ``sha256:<hex>`` of its bytes.
        layout: what else decides its messages (format, batch, wire, metadata).
        total: how many messages it makes.
        note: (RDF) how many triples were read, and how long parsing took.
    """

    number: int
    path: Path | None
    name: str
    fmt: str
    fingerprint: str
    layout: str
    total: int
    note: str = ""
    _data: bytes | None = None
    _triples: list[dict[str, Any]] | None = None
    _options: SourceOptions | None = None

    def items(self, start: int = 0) -> Iterator[Item]:
        """Its messages after the first ``start``, in order (reads the file again for JSONL)."""
        if self.fmt == JSONL:
            return self._jsonl_items(start)
        return self._rdf_items(start)

    def _jsonl_lines(self) -> Iterator[bytes]:
        if self._data is not None:
            yield from self._data.splitlines()
            return
        assert self.path is not None
        with self.path.open("rb") as file:
            for line in file:
                yield line.rstrip(b"\r\n")

    def _jsonl_items(self, start: int) -> Iterator[Item]:
        index = 0
        for number, line in enumerate(self._jsonl_lines(), 1):
            if not line.strip():
                continue
            index += 1
            if index <= start:
                continue
            where = f"{self.name}:{number}"
            try:
                yield Item(self.number, index, where, line.decode())
            except UnicodeDecodeError as exc:
                yield Item(self.number, index, where, "", f"not UTF-8: {exc.reason} at byte "
                           f"{exc.start}")

    def _rdf_items(self, start: int) -> Iterator[Item]:
        assert self._triples is not None and self._options is not None
        options = self._options
        batch = options.batch
        doc_id = options.doc_id or f"urn:sha256:{self.fingerprint.split(':', 1)[1]}"
        for k in range(start, self.total):
            chunk = self._triples[k * batch:(k + 1) * batch]
            message = rdf.triples_message(chunk, options.wire, doc_id=doc_id,
                                          collection=options.collection, user=options.user)
            first = k * batch + 1
            where = f"{self.name}: message {k + 1} (triples {first}-{first + len(chunk) - 1})"
            yield Item(self.number, k + 1, where, orjson.dumps(message).decode(),
                       first_triple=first)


def format_of(spec: str, fmt: str | None) -> str:
    """The format of input ``spec`` (``jsonl`` or an rdflib parser name).

    Raises:
        UsageError: the format is unknown, or cannot be told from the name.
    """
    if fmt is not None:
        if fmt == JSONL:
            return JSONL
        if fmt in rdf.RDF_FORMATS:
            return rdf.RDF_FORMATS[fmt]
        known = ", ".join([JSONL, *rdf.RDF_FORMATS])
        raise UsageError(f"--format must be one of {known}, got {fmt!r}")
    if spec == "-":
        return JSONL
    suffix = Path(spec).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise UsageError(f"{spec}: cannot tell the format from the suffix {suffix or '(none)'!r}"
                         "; give --format")
    return SUFFIX_FORMATS[suffix]


def _read(spec: str) -> bytes:
    if spec == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(spec).read_bytes()
    except OSError as exc:
        raise UsageError(f"{spec}: cannot read: {exc.strerror or exc}") from exc


def _jsonl_fingerprint(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    try:
        with path.open("rb") as file:
            for line in file:
                digest.update(line)
                if line.strip():
                    count += 1
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return f"sha256:{digest.hexdigest()}", count


def open_source(spec: str, number: int, options: SourceOptions) -> Source:
    """Read input ``spec`` (a path, or ``-``) as the ``number``-th source of a run.

    JSON Lines files are read once here for the fingerprint and the count, and again as they
    are sent; RDF is parsed here, whole (rdflib holds the graph in memory).

    Raises:
        UsageError: unreadable, unparseable, RDF for a kind other than triples, or RDF that
            ``--wire tg1`` cannot carry (`CannotCarry`, naming the first such triple).
    """
    fmt = format_of(spec, options.fmt)
    path = None if spec == "-" else Path(spec)
    name = "<stdin>" if spec == "-" else spec
    if fmt == JSONL:
        if path is not None:
            fingerprint, total = _jsonl_fingerprint(path)
            return Source(number, path, name, fmt, fingerprint, JSONL, total)
        data = _read(spec)
        total = sum(1 for line in data.splitlines() if line.strip())
        return Source(number, None, name, fmt, f"sha256:{hashlib.sha256(data).hexdigest()}",
                      JSONL, total, _data=data)
    if options.kind != "triples":
        raise UsageError(f"{name}: RDF imports as triples, not {options.kind} (give --kind "
                         "triples)")
    if options.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {options.batch}")
    data = _read(spec)
    digest = hashlib.sha256(data).hexdigest()
    base = path.resolve().as_uri() if path is not None else None
    started = time.monotonic()
    quads = rdf.parse(data, fmt, name, base)
    note = (f"{name}: {len(quads)} triples read in {time.monotonic() - started:.1f}s, "
            f"sent as {plural(math.ceil(len(quads) / options.batch), 'message')} of up to "
            f"{options.batch}")
    triples = rdf.wire2_triples(quads, prefix=f"b{digest[:12]}")
    if options.wire is Profile.TG1:
        rdf.check_tg1(triples, quads, name)
    layout = (f"{fmt} batch={options.batch} wire={options.wire.value} id={options.doc_id or ''}"
              f" collection={options.collection}"
              + (f" user={options.user}" if options.wire is Profile.TG1 else ""))
    total = math.ceil(len(triples) / options.batch)
    return Source(number, path, name, fmt, f"sha256:{digest}", layout, total, note,
                  _triples=triples, _options=options)
