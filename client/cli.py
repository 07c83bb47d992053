"""The ``quiesce import`` and ``quiesce export`` commands: their arguments, signals and exit codes.

`add_client_commands` declares both subcommands on the ``quiesce`` parser; `run_client` runs
one. The heavy imports (rdflib, rich) happen in `run_client`, so ``quiesce serve`` does not
pay for them.

Exit codes (both commands): 0 done; 1 something was rejected or never receipted (import),
a message could not be written as asked (export), or the gateway broke the protocol; 2 a
usage error (bad arguments, unreadable input, RDF that ``--wire tg1`` cannot carry); 3 the
gateway refused the connection (401, 404, 400), could not be reached, closed with a code
that forbids retrying, or stayed away longer than ``--retry-for``; 130 stopped by Ctrl-C
(import, or export with ``--until-end``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import trio

__all__ = ["CLIENT_COMMANDS", "add_client_commands", "run_client"]

#: The subcommands this module adds.
CLIENT_COMMANDS = ("import", "export")
# The gateway a command talks to when neither --url nor QUIESCE_URL says otherwise.
DEFAULT_URL = "ws://127.0.0.1:8088"

_IMPORT_EPILOG = """\
inputs:
  JSON Lines (.jsonl, .ndjson, .json): one message per line, TrustGraph 1.x or 2.x wire
  format, sent exactly as written. RDF (.ttl, .nt, .nq, .trig, .jsonld): parsed with rdflib
  and sent as triples messages of --batch triples, 2.x terms by default (datatypes,
  languages, blank nodes and named graphs kept) or 1.x values with --wire tg1. '-' reads
  standard input (JSON Lines unless --format says otherwise).

receipts and resume:
  Every frame is receipted by the gateway ({"ack": N}); a lost connection (or a gateway that
  drains) is reconnected and what was not receipted is sent again. Where each input got to
  is kept in FILE.quiesce-state beside it (or --state): running the same command again
  sends only what is left, and says what it skipped and resent.

exit codes:
  0 all receipted; 1 something rejected or never receipted; 2 usage; 3 refused (401, 404),
  unreachable, or gave up reconnecting; 130 interrupted (rerun to resume).
"""

_EXPORT_EPILOG = """\
formats:
  jsonl  one message per line, as the gateway exports it (default)
  nt     N-Triples, streamed: each message's triples as it arrives (named graphs dropped)
  nq     N-Quads, streamed, keeping named graphs
  ttl    Turtle: needs --out; triples accumulate (in FILE.quiesce-spool.nq, committed like
         the others) and the whole graph is serialised when the export ends
  The format follows the --out suffix (.nt, .nq, .ttl) unless --format says otherwise.

delivery:
  ack=client on a named subscription: each message is written and flushed (fsync per
  batch) before it is acked, so a crash never loses or skips one; at most the messages
  written but not yet acked come again. The default subscription is named after the flow,
  kind and output file, so running the same command again resumes it, appending to the
  output. Ctrl-C stops cleanly: what was written is acked, nothing else.

  A message that cannot be written as asked (the gateway could not convert it, or the
  format cannot hold it) goes with its reason to FILE.invalid.jsonl, and is acked.

exit codes:
  0 done; 1 messages went to FILE.invalid.jsonl, or the gateway broke the protocol; 2 usage;
  3 refused (401, 404), unreachable, or gave up reconnecting; 130 a --until-end dump
  interrupted (rerun to resume).
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("QUIESCE_URL", DEFAULT_URL),
                        help=f"the gateway, ws://HOST:PORT (QUIESCE_URL, else {DEFAULT_URL})")
    parser.add_argument("--flow", default="default", help="the flow (default)")
    parser.add_argument("--kind", default="triples",
                        help="triples, graph-embeddings, document-embeddings, entity-contexts, "
                             "objects (1.x) or rows (2.x); default triples")
    parser.add_argument("--workspace",
                        help="the TrustGraph 2.x workspace (tg2 flows; default: the gateway's)")
    parser.add_argument("--token", default=os.environ.get("QUIESCE_TOKEN"),
                        help="the gateway's secret (QUIESCE_TOKEN), sent as a bearer token")
    parser.add_argument("--retry-for", dest="retry_for", type=float, default=60.0,
                        metavar="SECONDS",
                        help="keep reconnecting this long after a lost connection (60)")
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                        help="a bar when stderr is a terminal (auto), plain lines, or none")


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``import`` and ``export`` on the ``quiesce`` command's subparsers."""
    imp = sub.add_parser(
        "import", help="load JSON Lines or RDF through the gateway, with receipts and resume",
        description="Send messages to the gateway's import socket with receipts; resend what "
                    "was not receipted; resume across runs.",
        epilog=_IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(imp)
    imp.add_argument("--batch", type=int, default=100, metavar="N",
                     help="RDF triples per message (100, as TrustGraph 2.x)")
    imp.add_argument("--format", dest="fmt", metavar="FMT",
                     help="jsonl, turtle, nt, nquads, trig or json-ld (default: by suffix)")
    imp.add_argument("--wire", choices=("tg1", "tg2"), default="tg2",
                     help="wire format of RDF messages: 2.x terms (tg2, default) or 1.x values "
                          "(tg1: URIs and plain literals only)")
    imp.add_argument("--state", type=Path, metavar="FILE",
                     help="keep every input's progress in FILE (default: FILE.quiesce-state "
                          "beside each input)")
    imp.add_argument("--fresh", action="store_true",
                     help="ignore earlier runs' progress and send everything")
    imp.add_argument("--window", type=int, default=500, metavar="N",
                     help="frames sent ahead of their receipts (500)")
    imp.add_argument("--collection", default="default",
                     help="metadata.collection of RDF messages (default)")
    imp.add_argument("--document-id", dest="doc_id", metavar="ID",
                     help="metadata.id of RDF messages (default urn:sha256:<the file's digest>)")
    imp.add_argument("--user", default="trustgraph",
                     help="metadata.user of 1.x RDF messages (trustgraph)")
    imp.add_argument("files", nargs="+", metavar="FILE", help="inputs; '-' is standard input")

    exp = sub.add_parser(
        "export", help="dump or follow what the gateway exports, acking only what is written",
        description="Write what the gateway exports (ack=client) to a file or standard output, "
                    "acking each message only once it is on disk; resumable by subscription.",
        epilog=_EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(exp)
    exp.add_argument("--subscription", metavar="NAME",
                     help="subscription name (default: derived from flow, kind and --out)")
    exp.add_argument("--until-end", dest="until_end", action="store_true",
                     help="a dump: stop once everything in the subscription is written")
    exp.add_argument("--out", type=Path, metavar="FILE",
                     help="append to FILE (default: standard output)")
    exp.add_argument("--format", dest="fmt", choices=("jsonl", "nt", "nq", "ttl"),
                     help="jsonl, nt, nq or ttl (default: by the --out suffix, else jsonl)")
    exp.add_argument("--position", choices=("earliest", "latest"), default="earliest",
                     help="where a new subscription starts (earliest)")
    exp.add_argument("--window", type=int, default=1000, metavar="N",
                     help="messages the gateway sends ahead of the acks (1000)")
    exp.add_argument("--wire", choices=("tg1", "tg2"),
                     help="wire format of exported messages (?format=; default: the flow's)")


def _err(text: str) -> None:
    print(f"quiesce: {text}", file=sys.stderr, flush=True)


async def _run_with_signals(run: Callable[[trio.Event], Awaitable[object]]) -> None:
    """Run ``run(stop)``; the first SIGINT or SIGTERM sets ``stop``, the second cancels it."""
    import trio

    stop = trio.Event()

    async def watch(cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _signum in signals:
                if not stop.is_set():
                    _err("stopping: finishing what is in flight (Ctrl-C again to quit now)")
                    stop.set()
                else:
                    cancel.cancel(reason="a second signal")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        await run(stop)
        nursery.cancel_scope.cancel(reason="the command is over")


def run_client(args: argparse.Namespace) -> int:
    """Run ``quiesce import`` or ``quiesce export`` as parsed; return the exit code."""
    from quiesce.client.errors import UsageError

    try:
        if args.command == "import":
            return _import(args)
        return _export(args)
    except UsageError as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C while reading inputs, before anything was sent
        _err("interrupted before sending anything")
        return 130


def _import(args: argparse.Namespace) -> int:
    import trio

    from quiesce.client.importer import Importer, ImportOptions, prepare_import
    from quiesce.client.progress import Mode, make_progress
    from quiesce.client.sources import SourceOptions
    from quiesce.core.profiles import Profile

    if args.window < 1:
        _err(f"error: --window must be >= 1, got {args.window}")
        return 2
    options = ImportOptions(
        url=args.url, flow=args.flow, kind=args.kind, token=args.token,
        workspace=args.workspace, window=args.window,
        retry_for=args.retry_for, state=args.state, fresh=args.fresh,
        source=SourceOptions(kind=args.kind, fmt=args.fmt, batch=args.batch,
                             wire=Profile(args.wire), doc_id=args.doc_id,
                             collection=args.collection, user=args.user))
    progress = make_progress(Mode(args.progress), "receipted")
    inputs = prepare_import(options, args.files, progress.note)
    importer = Importer(options, inputs, progress)
    trio.run(_run_with_signals, importer.run)
    report = importer.report()
    for line in report.lines():
        print(line, file=sys.stderr)
    return report.exit_code


def _export(args: argparse.Namespace) -> int:
    import trio

    from quiesce.client.exporter import Exporter, ExportOptions, default_subscription
    from quiesce.client.progress import Mode, make_progress
    from quiesce.client.writers import open_writer

    if args.window < 1:
        _err(f"error: --window must be >= 1, got {args.window}")
        return 2
    fmt = args.fmt
    if fmt is None:
        suffix = args.out.suffix.lower() if args.out is not None else ""
        fmt = {".nt": "nt", ".nq": "nq", ".ttl": "ttl"}.get(suffix, "jsonl")
    writer = open_writer(fmt, args.out, args.kind)
    options = ExportOptions(
        url=args.url, flow=args.flow, kind=args.kind, token=args.token,
        workspace=args.workspace,
        subscription=args.subscription or default_subscription(args.flow, args.kind, args.out,
                                                               args.workspace),
        until_end=args.until_end, position=args.position, window=args.window, wire=args.wire,
        retry_for=args.retry_for, out=str(args.out) if args.out is not None else "<stdout>")
    exporter = Exporter(options, writer, make_progress(Mode(args.progress), "messages"))
    try:
        trio.run(_run_with_signals, exporter.run)
    finally:
        writer.close()
    report = exporter.report()
    for line in report.lines():
        print(line, file=sys.stderr)
    return report.exit_code
