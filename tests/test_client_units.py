"""Unit tests of the clients' pure parts: the receipt ledger, resume state, inputs, RDF, writers.

No gateway, no sockets: plain synchronous tests that feed the pure objects facts and check
what they decide, plus a Hypothesis property over random interleavings of sends, receipts,
error frames and lost connections.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdflib import BNode, Dataset, Graph, Literal, URIRef
from rdflib.compare import isomorphic
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from quiesce.client import _ws, rdf
from quiesce.client.errors import CannotCarry, UsageError
from quiesce.client.ledger import ImportLedger, SourceProgress
from quiesce.client.sources import Item, SourceOptions, open_source
from quiesce.client.state import Entry, StateFile, plan
from quiesce.client.writers import open_writer
from quiesce.core.profiles import Profile

TURTLE = """\
@prefix ex: <http://example.org/> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
ex:a ex:name "Alice"@en ; ex:age "42"^^xsd:integer ; ex:knows [ ex:name "Bob" ] .
_:x ex:p ex:b . ex:a ex:q _:x .
"""


def items(n: int, source: int = 0) -> list[Item]:
    """``n`` items of one source, numbered 1..n."""
    return [Item(source, i, f"f:{i}", f"frame {i}") for i in range(1, n + 1)]


def ledger_of(n: int, window: int = 10) -> ImportLedger:
    """A ledger over ``n`` items of one source."""
    return ImportLedger([SourceProgress(n)], iter(items(n)), window)


def send(ledger: ImportLedger, count: int) -> list[int]:
    """Send up to ``count`` frames; return the indexes sent."""
    sent = []
    for _ in range(count):
        item = ledger.take()
        if item is None:
            break
        ledger.sent(item)
        sent.append(item.index)
    return sent


# ---------------------------------------------------------------- the ledger


def test_receipts_settle_frames_cumulatively_and_the_window_bounds_what_is_in_flight() -> None:
    """Three frames in a window of 3 fill it; ack 2 settles two and makes room for two more."""
    ledger = ledger_of(5, window=3)
    ledger.connected()
    assert send(ledger, 3) == [1, 2, 3]
    assert not ledger.room
    assert ledger.ack(2) == 2
    assert ledger.room and ledger.in_flight == 1
    assert send(ledger, 2) == [4, 5]
    assert ledger.take() is None and ledger.all_sent and not ledger.finished
    assert ledger.ack(5) == 3
    assert ledger.finished
    assert ledger.sources[0].done == 5 and ledger.sources[0].receipted == 5


def test_an_error_frame_settles_its_frame_as_rejected_before_the_covering_ack() -> None:
    """Error for seq 2 then ack 3: one rejected (with where and detail), two receipted."""
    ledger = ledger_of(3)
    ledger.connected()
    send(ledger, 3)
    rejection = ledger.error(2, "invalid-message", "metadata.user: missing")
    assert rejection is not None and rejection.where == "f:2" and rejection.index == 2
    assert ledger.sources[0].done == 0  # 1 is not settled yet: the prefix waits for it
    assert ledger.ack(3) == 2
    progress = ledger.sources[0]
    assert (progress.done, progress.receipted, len(progress.rejections)) == (3, 2, 1)


def test_a_lost_connection_sends_exactly_the_unsettled_frames_first_in_order() -> None:
    """Frames 3..5 unreceipted (4 rejected) when the socket drops: 3 and 5 go first, then 6."""
    ledger = ledger_of(6)
    ledger.connected()
    send(ledger, 5)
    ledger.ack(2)
    ledger.error(4, "invalid-message", "bad")
    assert ledger.disconnected() == 2
    ledger.connected()
    assert (ledger.seq, ledger.acked) == (0, 0)
    assert send(ledger, 10) == [3, 5, 6]
    assert ledger.resent == 2 and ledger.frames_sent == 8
    ledger.ack(3)
    assert ledger.finished and ledger.sources[0].done == 6


def test_receipts_and_errors_that_break_the_protocol_change_nothing_and_are_recorded() -> None:
    """An ack above what was sent, an ack going back, an error for no frame: all recorded."""
    ledger = ledger_of(3)
    ledger.connected()
    send(ledger, 2)
    assert ledger.ack(5) == 0
    assert ledger.ack(1) == 1
    assert ledger.ack(0) == 0
    assert ledger.error(1, "invalid-message", "x") is None
    assert ledger.error(None, "invalid-message", "x") is None
    assert len(ledger.violations) == 4
    assert ledger.sources[0].done == 1


def test_a_resumed_source_counts_what_an_earlier_run_sent_unreceipted_as_resent() -> None:
    """Resuming after 3 with 6 sent earlier: messages 4..6 are counted as resent, 7 is not."""
    progress = SourceProgress(7, start=3, earlier_sent=6)
    ledger = ImportLedger([progress], iter(items(7)[3:]), 10)
    ledger.connected()
    assert send(ledger, 10) == [4, 5, 6, 7]
    assert progress.resent_earlier == 3
    ledger.ack(4)
    assert progress.done == 7 and progress.receipted == 4


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_interleaving_settles_every_message_exactly_once(data: st.DataObject) -> None:
    """Whatever the receipts, errors and lost connections, each message settles exactly once."""
    n = data.draw(st.integers(1, 30), label="messages")
    ledger = ledger_of(n, window=data.draw(st.integers(1, 8), label="window"))
    rejected: set[int] = set()
    sent_per_connection: list[list[int]] = [[]]
    by_seq: dict[int, int] = {}
    ledger.connected()
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        action = data.draw(st.sampled_from(["send", "ack", "error", "drop"]))
        if action == "send" and ledger.room:
            sent = send(ledger, 1)
            if sent:
                sent_per_connection[-1] += sent
                by_seq[ledger.seq] = sent[0]
        elif action == "ack" and ledger.seq > ledger.acked:
            ledger.ack(data.draw(st.integers(ledger.acked, ledger.seq)))
        elif action == "error":
            open_seqs = [s for s in range(ledger.acked + 1, ledger.seq + 1)
                         if s in by_seq and by_seq[s] not in rejected]
            if open_seqs:
                seq = data.draw(st.sampled_from(open_seqs))
                if ledger.error(seq, "invalid-message", "x") is not None:
                    rejected.add(by_seq[seq])
        elif action == "drop":
            ledger.disconnected()
            ledger.connected()
            sent_per_connection.append([])
            by_seq = {}
    while not ledger.finished:  # a last connection that works
        sent_per_connection[-1] += send(ledger, n)
        ledger.ack(ledger.seq)
    progress = ledger.sources[0]
    assert progress.done == n
    assert progress.receipted + len(progress.rejections) == n
    assert {r.index for r in progress.rejections} == rejected
    assert not ledger.violations
    for sent in sent_per_connection:  # each connection sends in input order
        assert sent == sorted(sent)


# ---------------------------------------------------------------- reconnecting


def test_backoff_doubles_to_its_cap_and_gives_up_after_the_budget() -> None:
    """Delays 0.1, 0.2, 0.4 … capped at 2 s; None once retry_for seconds have passed."""
    backoff = _ws.Backoff(retry_for=5.0)
    assert [backoff.delay(t) for t in (0.0, 0.1, 0.3, 0.7, 1.5, 3.1)] == [
        0.1, 0.2, 0.4, 0.8, 1.6, pytest.approx(1.9)]
    assert backoff.delay(5.0) is None
    backoff.reset()
    assert backoff.delay(100.0) == 0.1
    assert _ws.Backoff(math.inf).delay(1e9) == 0.1


def test_handshake_refusals_map_to_final_errors_and_503_to_a_retry() -> None:
    """401 names the token, 404 gives the gateway's reason, 503 is retried."""
    url = _ws.api_url("ws://127.0.0.1:9/", "f1", "import", "triples", {"receipts": "true"})
    assert url == "ws://127.0.0.1:9/api/v1/flow/f1/import/triples?receipts=true"

    def refused(status: int, body: bytes, token: str | None = None) -> object:
        response = Response(status, "x", Headers(), body)
        return _ws.refusal(InvalidStatus(response), url, token)

    assert str(refused(401, b"unauthorized")) == (
        "HTTP 401 unauthorized at 127.0.0.1:9/api/v1/flow/f1/import/triples: the gateway "
        "needs a token: give --token or set QUIESCE_TOKEN")
    assert str(refused(404, b"unknown kind 'x'\n")) == (
        "HTTP 404 at 127.0.0.1:9/api/v1/flow/f1/import/triples: unknown kind 'x'")
    assert refused(503, b"draining") is None
    with pytest.raises(UsageError, match=r"^--url must look like ws://HOST:PORT, got 'x'$"):
        _ws.api_url("x", "f", "import", "triples", {})


# ---------------------------------------------------------------- resume state


def test_plan_resumes_a_matching_entry_and_restarts_a_changed_file() -> None:
    """Same fingerprint: resume after done; other fingerprint or layout: from the start."""
    entry = Entry("sha256:a", "jsonl", 10, done=4, sent=6, rejected=1,
                  rejections=[{"where": "f:2", "code": "invalid-message", "detail": "x"}])
    resume = plan(entry, "sha256:a", "jsonl", 10, "f")
    assert (resume.start, resume.earlier_sent, resume.earlier_rejected) == (4, 6, 1)
    assert resume.note == ("f: resuming after message 4 of 10: skipping 4 settled by an "
                           "earlier run, 1 of them rejected; 2 it sent were never receipted "
                           "and are sent again")
    assert plan(entry, "sha256:b", "jsonl", 10, "f").start == 0
    assert "changed since the last run" in plan(entry, "sha256:b", "jsonl", 10, "f").note
    assert plan(entry, "sha256:a", "turtle batch=5", 10, "f").start == 0
    assert plan(entry, "sha256:a", "jsonl", 10, "f", fresh=True).start == 0
    assert plan(Entry("sha256:a", "jsonl", 10), "sha256:a", "jsonl", 10, "f").note == ""
    unreceipted = plan(Entry("sha256:a", "jsonl", 10, sent=3), "sha256:a", "jsonl", 10, "f")
    assert (unreceipted.start, unreceipted.earlier_sent) == (0, 3)
    assert unreceipted.note == ("f: an earlier run sent 3 messages without a receipt: "
                                "sending them again")
    done = Entry("sha256:a", "jsonl", 10, done=10, sent=10)
    assert plan(done, "sha256:a", "jsonl", 10, "f").start == 10
    assert "already imported" in plan(done, "sha256:a", "jsonl", 10, "f").note


def test_a_state_file_round_trips_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    """Entries written are read back equal; a file that is not state is a usage error."""
    path = tmp_path / "s.quiesce-state"
    state = StateFile(path)
    state.entries["k"] = Entry("sha256:a", "jsonl", 10, done=3, sent=5)
    state.save()
    assert StateFile(path).entries == state.entries
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    path.write_text('{"something": "else"}')
    with pytest.raises(UsageError, match=r"is not a quiesce state file"):
        StateFile(path)


# ---------------------------------------------------------------- inputs and RDF


def test_jsonl_messages_skip_blank_lines_keep_line_numbers_and_flag_bad_bytes(
    tmp_path: Path
) -> None:
    """Blank lines are not messages; line numbers stay true; non-UTF-8 is a local problem."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"b": 2}\r\n\xff\xfe\n{"c": 3}')
    source = open_source(str(path), 0, SourceOptions())
    assert source.total == 4 and source.fmt == "jsonl"
    got = [(i.index, i.where, i.text, i.problem is not None) for i in source.items()]
    assert got == [(1, f"{path}:1", '{"a": 1}', False), (2, f"{path}:4", '{"b": 2}', False),
                   (3, f"{path}:5", "", True), (4, f"{path}:6", '{"c": 3}', False)]
    assert [i.index for i in source.items(3)] == [4]


def test_standard_input_is_read_whole_as_json_lines_unless_format_says_otherwise(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """'-' reads standard input: JSON Lines by default, Turtle with --format turtle."""
    class Stdin:
        def __init__(self, data: bytes) -> None:
            self.buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin(b'{"a": 1}\n\n{"b": 2}\n'))
    source = open_source("-", 0, SourceOptions())
    assert (source.name, source.path, source.total) == ("<stdin>", None, 2)
    assert [(i.where, i.text) for i in source.items()] == [
        ("<stdin>:1", '{"a": 1}'), ("<stdin>:3", '{"b": 2}')]
    monkeypatch.setattr(sys, "stdin", Stdin(TURTLE.encode()))
    source = open_source("-", 0, SourceOptions(fmt="turtle"))
    assert (source.fmt, source.total) == ("turtle", 1)


def test_rdf_becomes_the_same_messages_on_every_parse_with_all_terms_kept(
    tmp_path: Path
) -> None:
    """Two reads give identical frames; languages, datatypes and blank nodes survive."""
    path = tmp_path / "in.ttl"
    path.write_text(TURTLE)
    first = open_source(str(path), 0, SourceOptions(batch=2))
    second = open_source(str(path), 0, SourceOptions(batch=2))
    frames = [i.text for i in first.items()]
    assert frames == [i.text for i in second.items()]
    assert first.total == 3 and len(frames) == 3
    triples = [t for f in frames for t in json.loads(f)["triples"]]
    assert len(triples) == 6
    assert {"t": "l", "v": "Alice", "ln": "en"} in [t["o"] for t in triples]
    assert {"t": "l", "v": "42", "dt": "http://www.w3.org/2001/XMLSchema#integer"} in [
        t["o"] for t in triples]
    labels = {t[k]["d"] for t in triples for k in ("s", "o") if t[k]["t"] == "b"}
    assert len(labels) == 2
    metadata = json.loads(frames[0])["metadata"]
    assert metadata == {"id": f"urn:sha256:{first.fingerprint[7:]}", "root": "",
                        "collection": "default"}
    graph = Graph()
    for t in triples:
        graph.add(tuple(rdf._node(t[k], k) for k in ("s", "p", "o")))  # type: ignore[arg-type]
    assert isomorphic(graph, Graph().parse(data=TURTLE, format="turtle"))


def test_typed_literals_keep_their_lexical_form_both_ways(tmp_path: Path) -> None:
    """"01"^^xsd:integer and a "Z" time zone are sent and written as the file has them."""
    path = tmp_path / "in.nt"
    xsd = "http://www.w3.org/2001/XMLSchema#"
    path.write_text(f'<http://e/a> <http://e/n> "01"^^<{xsd}integer> .\n'
                    f'<http://e/a> <http://e/t> "2020-01-01T10:00:00Z"^^<{xsd}dateTime> .\n')
    (item,) = open_source(str(path), 0, SourceOptions()).items()
    message = json.loads(item.text)
    assert [t["o"]["v"] for t in message["triples"]] == ["01", "2020-01-01T10:00:00Z"]
    lines = rdf.serialize_quads(rdf.message_quads(message), with_graphs=False).decode()
    assert sorted(lines.splitlines()) == sorted(path.read_text().splitlines())


def test_wire_tg1_names_the_first_triple_1x_cannot_carry(tmp_path: Path) -> None:
    """--wire tg1 on a language-tagged literal fails before sending, naming triple 1."""
    path = tmp_path / "in.ttl"
    path.write_text(TURTLE)
    with pytest.raises(CannotCarry, match=r"in\.ttl: triple 1 \(<http://example\.org/a> "
                       r"<http://example\.org/name> \"Alice\"@en\): tg1 cannot carry a literal "
                       r"language tag; import it with --wire tg2"):
        open_source(str(path), 0, SourceOptions(wire=Profile.TG1))
    plain = tmp_path / "plain.nt"
    plain.write_text('<http://e/a> <http://e/p> "x" .\n<http://e/a> <http://e/q> <http://e/b> .\n')
    (item,) = open_source(str(plain), 0, SourceOptions(wire=Profile.TG1)).items()
    message = json.loads(item.text)
    assert message["metadata"]["user"] == "trustgraph"
    assert message["triples"][0] == {"s": {"v": "http://e/a", "e": True},
                                     "p": {"v": "http://e/p", "e": True},
                                     "o": {"v": "x", "e": False}}


def test_named_graphs_travel_as_g_and_come_back_in_n_quads(tmp_path: Path) -> None:
    """TriG's named graph becomes "g" and is written back by the N-Quads writer."""
    path = tmp_path / "in.trig"
    path.write_text("@prefix ex: <http://example.org/> .\n"
                    "ex:g1 { ex:a ex:b ex:c . }\nex:a ex:b ex:d .\n")
    (item,) = open_source(str(path), 0, SourceOptions()).items()
    message = json.loads(item.text)
    assert [t.get("g") for t in message["triples"]] == ["http://example.org/g1", None]
    quads = list(rdf.message_quads(message))
    assert quads[0][3] == URIRef("http://example.org/g1")
    text = rdf.serialize_quads(quads, with_graphs=True).decode()
    assert sorted(text.splitlines()) == [
        "<http://example.org/a> <http://example.org/b> <http://example.org/c> "
        "<http://example.org/g1> .",
        "<http://example.org/a> <http://example.org/b> <http://example.org/d> .",
    ]


def test_an_unparseable_rdf_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """Broken Turtle fails before anything is sent, with the file's name."""
    path = tmp_path / "broken.ttl"
    path.write_text("<http://e/a> <http://e/p> .\n")
    with pytest.raises(UsageError, match=r"broken\.ttl: not valid turtle: "):
        open_source(str(path), 0, SourceOptions())


# ---------------------------------------------------------------- writers


def test_a_reopened_output_loses_its_cut_last_line_and_appends(tmp_path: Path) -> None:
    """A crash's partial last line is cut when the file is opened again; lines then append."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    writer = open_writer("jsonl", path, "triples")
    writer.write({"d": 4})
    writer.close()
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": 2}', '{"d":4}']


def test_n_triples_writes_1x_and_2x_terms_and_counts_dropped_graphs(tmp_path: Path) -> None:
    """Both wire formats become N-Triples lines; a triple's named graph is counted as dropped."""
    path = tmp_path / "out.nt"
    writer = open_writer("nt", path, "triples")
    one = {"triples": [{"s": {"v": "http://e/a", "e": True}, "p": {"v": "http://e/p", "e": True},
                        "o": {"v": "x", "e": False}}]}
    two = {"triples": [{"s": {"t": "b", "d": "n1"}, "p": {"t": "i", "i": "http://e/p"},
                        "o": {"t": "l", "v": "1", "dt": "http://www.w3.org/2001/XMLSchema#int"},
                        "g": "http://e/g"}]}
    assert writer.write(one) == 1 and writer.write(two) == 1
    writer.close()
    assert writer.graphs_dropped == 1
    graph = Graph().parse(path, format="nt")
    assert (URIRef("http://e/a"), URIRef("http://e/p"), Literal("x")) in graph
    ((s, _p, o),) = list(graph.triples((None, URIRef("http://e/p"), Literal(
        "1", datatype=URIRef("http://www.w3.org/2001/XMLSchema#int")))))
    assert isinstance(s, BNode) and o.datatype is not None


def test_rdf_formats_refuse_other_kinds_and_turtle_needs_a_file() -> None:
    """nt for graph-embeddings and ttl to standard output are usage errors."""
    with pytest.raises(UsageError, match=r"^--format nt writes triples; export "
                       r"graph-embeddings as --format jsonl$"):
        open_writer("nt", None, "graph-embeddings")
    with pytest.raises(UsageError, match=r"^--format ttl needs --out FILE"):
        open_writer("ttl", None, "triples")




@pytest.mark.parametrize(("suffix", "document"), [
    (".jsonld", '{"@context": {"ex": "http://example.org/", "name": {"@id": "ex:name", '
                '"@language": "en"}, "list": {"@id": "ex:list", "@container": "@list"}}, '
                '"@graph": [{"@id": "ex:a", "name": "Alice", "list": ["x", {"@id": "ex:b"}], '
                '"ex:knows": {"ex:name": "anon"}}, {"@id": "ex:g", "@graph": [{"@id": "ex:c", '
                '"ex:p": "1"}]}]}'),
    (".nq", '<http://e/a> <http://e/p> "x"@en <http://e/g> .\n_:b1 <http://e/p> <http://e/c> .\n'
            '<http://e/a> <http://e/q> _:b1 <http://e/g> .\n'),
    (".trig", "@prefix ex: <http://example.org/> . ex:g { ex:a ex:p ( 1 2 ) . } "
              'ex:b ex:q [ ex:r "s" ] .'),
    (".ttl", '@prefix ex: <http://example.org/> . ex:a ex:p ( 1 2 [ ex:x "y"@de ] ) ; '
             'ex:q """multi\nline""" .'),
])
def test_every_rdf_format_reads_every_quad_rdflib_reads(
    tmp_path: Path, suffix: str, document: str
) -> None:
    """The document-order reader finds the same quads as rdflib's own store, per graph."""
    path = tmp_path / f"in{suffix}"
    path.write_text(document)
    source = open_source(str(path), 0, SourceOptions(batch=1000))
    (item,) = source.items()
    quads = list(rdf.message_quads(json.loads(item.text)))
    expected = Dataset()
    expected.parse(path, format=rdf.RDF_FORMATS[suffix[1:]] if suffix != ".jsonld"
                   else "json-ld")
    graphs = {q[3] for q in quads}
    assert len(quads) == sum(1 for _ in expected.quads((None, None, None, None)))
    for name in graphs:
        got = Graph()
        for s, p, o, g in quads:
            if g == name:
                got.add((s, p, o))
        want = expected.default_graph if name is None else expected.graph(name)
        assert isomorphic(got, want), (suffix, name)


def test_what_cannot_be_written_goes_aside_with_its_reason_and_is_counted(
    tmp_path: Path
) -> None:
    """An invalid-payload frame and a quoted triple go to OUT.invalid.jsonl, not into OUT."""
    path = tmp_path / "out.nt"
    writer = open_writer("nt", path, "triples")
    good = {"triples": [{"s": {"t": "i", "i": "http://e/a"}, "p": {"t": "i", "i": "http://e/p"},
                         "o": {"t": "l", "v": "x"}}]}
    quoted = {"triples": [{"s": {"t": "t", "tr": good["triples"][0]},
                           "p": {"t": "i", "i": "http://e/says"}, "o": {"t": "l", "v": "y"}}]}
    error = {"error": {"code": "invalid-payload", "detail": "not a tg1 triples payload",
                       "message_id": "(1,2,-1,0)", "payload": "garbage"}}
    assert [writer.write(m, seq) for seq, m in enumerate((good, error, quoted, good), 1)] == [
        1, 0, 0, 1]
    writer.close()
    assert writer.invalid == 2
    assert len(path.read_text().splitlines()) == 2
    aside = [json.loads(line) for line in (tmp_path / "out.nt.invalid.jsonl").read_text()
             .splitlines()]
    assert aside[0] == {"seq": 2, **error["error"]}
    assert aside[1]["seq"] == 3
    assert aside[1]["detail"] == "cannot be written as nt: triples[0].s.t: cannot write a 't' " \
        "term as RDF"
    assert aside[1]["message"] == quoted
