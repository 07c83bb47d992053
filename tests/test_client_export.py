"""Integration tests of ``quiesce export`` (CONTRACT §4, §9), and import-export round trips.

A real gateway and broker; the export client runs in the test's Trio loop (`export_flow`) or
as the real command in a child process (`command_process`), which a test may SIGKILL or
SIGINT. Output files are read back and counted: every message must be there, and a message
may appear twice only if it was written and not yet acked when the client died. Nothing
sleeps: waits are on lines of output, counts and processes, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import collections
import json
import signal
from pathlib import Path

import pulsar
import trio
from rdflib import Dataset, Graph, URIRef
from rdflib.compare import isomorphic

from quiesce.core.config import Settings
from quiesce.core.profiles import Profile
from quiesce.supervisor import Supervisor
from tests.data import id_of, sample_messages
from tests.harness import (
    LONG,
    command_process,
    export_flow,
    import_files,
    publish,
    publish_messages,
    start_gateway,
    topic_of,
    wait_count,
)

# Turtle that TrustGraph 1.x can carry: URIs and plain literals only (with escapes, quotes,
# newlines and non-ASCII text, which the wire formats must keep byte for byte).
TURTLE_1X = """\
@prefix ex: <http://example.org/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .

ex:alice a ex:Person ;
    rdfs:label "Alice" ;
    ex:knows ex:bob, ex:carol ;
    ex:motto "Say \\"hello\\"\\nthen go" .
ex:bob rdfs:label "Bob Ødegård" ; ex:knows ex:alice .
ex:carol rdfs:label "Carol 東京" ; ex:homepage <http://example.org/~carol/index.html> .
"""

# Turtle only TrustGraph 2.x can carry: language tags, datatypes, blank nodes (labelled,
# anonymous, nested, and a collection's list cells).
TURTLE_2X = """\
@prefix ex: <http://example.org/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .

ex:alice rdfs:label "Alice"@en, "Alicia"@es ;
    ex:age "42"^^xsd:integer ;
    ex:height "1.68"^^xsd:decimal ;
    ex:born "1990-05-17"^^xsd:date ;
    ex:zip "0150"^^xsd:string ;
    ex:knows [ rdfs:label "a stranger"@en ; ex:met "2020-01-01T10:00:00Z"^^xsd:dateTime ] ;
    ex:address [ ex:city "Oslo" ; ex:geo [ ex:lat "59.91"^^xsd:double ] ] .
_:shared ex:points ex:alice .
ex:bob ex:sees _:shared ;
    rdfs:label "Bob" ;
    ex:likes ( ex:tea ex:coffee "cocoa"@en ) .
"""
# TriG with a named graph, which travels as a triple's "g".
TRIG = """\
@prefix ex: <http://example.org/> .
ex:a ex:p ex:b .
ex:g1 { ex:a ex:p ex:c . ex:c ex:label "in g1"@en . }
ex:g2 { ex:d ex:p [ ex:q "x" ] . }
"""


def count_lines(path: Path) -> collections.Counter[str]:
    """How many times each message id is in a JSON Lines export (every line must parse)."""
    return collections.Counter(id_of(json.loads(line)) for line in path.read_text().splitlines())


# ---------------------------------------------------------------- round trips


async def test_a_turtle_file_1x_can_carry_comes_back_isomorphic_as_n_triples_and_turtle(
    gateway: Supervisor, flow: str, tmp_path: Path
) -> None:
    """Turtle of URIs and plain literals, imported as 1.x, comes back as the same graph."""
    source = tmp_path / "people.ttl"
    source.write_text(TURTLE_1X)
    expected = Graph().parse(source, format="turtle")
    assert len(expected) == 9

    report = await import_files(gateway, flow, [source], wire=Profile.TG1, batch=4)
    assert report.exit_code == 0, report.lines()
    assert (report.frames_sent, report.receipted) == (3, 3)

    nt = tmp_path / "back.nt"
    ttl = tmp_path / "back.ttl"
    exported_nt = await export_flow(gateway, flow, nt, "nt")
    exported_ttl = await export_flow(gateway, flow, ttl, "ttl")
    for exported in (exported_nt, exported_ttl):
        assert exported.ended and exported.exit_code == 0, exported.lines()
        assert (exported.written, exported.acked, exported.items) == (3, 3, 9)
    back_nt = Graph().parse(nt, format="nt")
    back_ttl = Graph().parse(ttl, format="turtle")
    print(f"\n{len(expected)} triples; nt {len(back_nt)}, ttl {len(back_ttl)}\n"
          + nt.read_text())
    assert len(nt.read_text().splitlines()) == 9
    assert isomorphic(back_nt, expected)
    assert isomorphic(back_ttl, expected)
    assert not (tmp_path / "back.ttl.quiesce-spool.nq").exists()


async def test_turtle_with_languages_datatypes_and_blank_nodes_round_trips_through_tg2(
    nursery: trio.Nursery, settings: Settings, flow: str, tmp_path: Path
) -> None:
    """On a tg2 gateway, Turtle with languages, datatypes and blank nodes comes back isomorphic."""
    gateway = await start_gateway(nursery, settings, profile="tg2")
    source = tmp_path / "rich.ttl"
    source.write_text(TURTLE_2X)
    expected = Graph().parse(source, format="turtle")
    assert len(expected) == 23

    report = await import_files(gateway, flow, [source], batch=5)
    assert report.exit_code == 0, report.lines()
    assert (report.frames_sent, report.receipted, report.rejections) == (5, 5, [])

    nt = tmp_path / "back.nt"
    exported = await export_flow(gateway, flow, nt, "nt")
    assert exported.ended and exported.exit_code == 0, exported.lines()
    assert (exported.written, exported.acked, exported.items) == (5, 5, 23)
    back = Graph().parse(nt, format="nt")
    print(f"\n{len(expected)} triples in, {len(back)} back:\n{nt.read_text()}")
    assert len(back) == 23
    assert isomorphic(back, expected)
    # Lexical forms as written, not as rdflib would canonicalise them.
    assert '"2020-01-01T10:00:00Z"^^<http://www.w3.org/2001/XMLSchema#dateTime>' in nt.read_text()
    gateway.request_shutdown()


async def test_named_graphs_of_trig_come_back_in_n_quads_through_tg2(
    nursery: trio.Nursery, settings: Settings, flow: str, tmp_path: Path
) -> None:
    """TriG's named graphs travel as "g" and come back in N-Quads, each graph isomorphic."""
    gateway = await start_gateway(nursery, settings, profile="tg2")
    source = tmp_path / "graphs.trig"
    source.write_text(TRIG)
    report = await import_files(gateway, flow, [source])
    assert report.exit_code == 0 and report.receipted == 1, report.lines()
    nq = tmp_path / "back.nq"
    exported = await export_flow(gateway, flow, nq, "nq")
    assert (exported.written, exported.items, exported.graphs_dropped) == (1, 5, 0)
    expected, back = Dataset(), Dataset()
    expected.parse(source, format="trig")
    back.parse(nq, format="nquads")
    for name in (None, "http://example.org/g1", "http://example.org/g2"):
        want = expected.default_graph if name is None else expected.graph(URIRef(name))
        got = back.default_graph if name is None else back.graph(URIRef(name))
        assert len(got) == len(want) > 0, name
        assert isomorphic(got, want), name
    gateway.request_shutdown()


async def test_a_payload_the_gateway_cannot_convert_goes_aside_and_the_dump_completes(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """A garbage payload among 20 messages lands in OUT.invalid.jsonl; the 20 in OUT; exit 1."""
    topic = topic_of("triples", flow)
    messages = sample_messages("triples", 20)
    await publish_messages(pulsar_client, topic, messages[:10])
    await trio.to_thread.run_sync(publish, pulsar_client, topic, [b"this is not a payload"])
    await publish_messages(pulsar_client, topic, messages[10:])
    out = tmp_path / "dump.jsonl"
    report = await export_flow(gateway, flow, out)
    assert report.ended, report.lines()
    assert (report.written, report.acked, report.invalid) == (21, 21, 1)
    assert report.exit_code == 1
    assert count_lines(out) == collections.Counter(id_of(m) for m in messages)
    (aside,) = [json.loads(line) for line in
                (tmp_path / "dump.jsonl.invalid.jsonl").read_text().splitlines()]
    assert aside["code"] == "invalid-payload" and aside["payload"] == "this is not a payload"
    assert aside["seq"] == 11
    assert any("could not be written as asked" in line for line in report.lines())


# ---------------------------------------------------------------- crashes and Ctrl-C


async def test_an_export_killed_half_way_then_rerun_has_every_message_with_bounded_duplicates(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGKILL mid-dump, same command again: no gap; repeats only of written-not-acked lines."""
    total, window = 20_000, 100
    messages = sample_messages("triples", total)
    await publish_messages(pulsar_client, topic_of("triples", flow), messages)
    out = tmp_path / "dump.jsonl"
    command = ["export", "--url", f"ws://127.0.0.1:{gateway.port}", "--flow", flow,
               "--until-end", "--out", str(out), "--window", str(window),
               "--progress", "lines"]

    first = command_process(*command)
    try:
        with trio.fail_after(LONG):
            at_kill = await wait_count(first, r"progress: (\d+) messages", total // 5)
    finally:
        first.stop(0)  # SIGKILL
    assert first.process.returncode == -signal.SIGKILL
    written_first = len(out.read_text().splitlines())
    assert at_kill <= written_first < total, "the first run was not killed half-way"

    second = command_process(*command)
    try:
        with trio.fail_after(LONG):
            code = await second.wait_exit_async(LONG)
    finally:
        second.stop(0)
    assert code == 0, second.log()
    assert second.find(r"^end: everything in the subscription is written$")
    lines = count_lines(out)
    duplicates = sum(lines.values()) - len(lines)
    print(f"\nkilled at {at_kill} acked ({written_first} lines written); rerun: "
          f"{second.find('summary:')[0]}\n{sum(lines.values())} lines for {len(lines)} ids: "
          f"{duplicates} duplicates (written, not yet acked at the kill)")
    assert set(lines) == {id_of(m) for m in messages}
    assert max(lines.values()) <= 2
    # Only lines written after the last ack of the first run can come again.
    assert duplicates <= written_first - at_kill + window


async def test_ctrl_c_stops_an_export_with_everything_written_acked_and_nothing_else(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str, tmp_path: Path
) -> None:
    """SIGINT mid-dump acks exactly what was written; the rerun writes the rest, none twice."""
    total = 20_000
    messages = sample_messages("triples", total)
    await publish_messages(pulsar_client, topic_of("triples", flow), messages)
    out = tmp_path / "dump.jsonl"
    command = ["export", "--url", f"ws://127.0.0.1:{gateway.port}", "--flow", flow,
               "--until-end", "--out", str(out), "--window", "100", "--progress", "lines"]

    first = command_process(*command)
    try:
        with trio.fail_after(LONG):
            await wait_count(first, r"progress: (\d+) messages", total // 5)
            first.signal(signal.SIGINT)
            code = await first.wait_exit_async(LONG)
    finally:
        first.stop(0)
    assert code == 130, first.log()
    (summary,) = first.find(r"^summary: written \d+ messages, acked \d+")
    written_first = len(out.read_text().splitlines())
    assert f"summary: written {written_first} messages, acked {written_first}," in summary
    assert written_first < total

    second = command_process(*command)
    try:
        with trio.fail_after(LONG):
            assert await second.wait_exit_async(LONG) == 0, second.log()
    finally:
        second.stop(0)
    lines = count_lines(out)
    duplicates = sum(lines.values()) - len(lines)
    print(f"\nstopped after {written_first} written and acked; rerun: "
          f"{second.find('summary:')[0]}; {duplicates} duplicates")
    assert set(lines) == {id_of(m) for m in messages}
    assert duplicates == 0
