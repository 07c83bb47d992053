"""TrustGraph 2.11.1 clients, unmodified, against a ``quiesce serve`` process of profile ``tg2``.

The gateway runs with ``QUIESCE_PROFILE=tg2``: it publishes to TrustGraph 2.x's own flow topics
(``persistent://tg/flow/triples-store:default:FLOW``: interface, workspace, flow) in 2.x's
Pulsar encoding (``json.dumps`` of the schema dataclasses, every field). 2.x clients send 2.x
terms (``{"t": "i", "i": …}``, literals with ``dt``/``ln``), metadata without ``user``,
``?workspace=default`` and batches (100 triples or entity contexts, 40 rows per frame).

Each test counts what the tool sent, what the gateway received and persisted (its ``import
closed`` log line), what reached the topic and, where TrustGraph has an exporter, what came
back; and compares the data with the source.

What TrustGraph 2.11.1 itself loses or breaks, before or after quiesce (each asserted where it
shows, so a release that fixes it fails the test and gets noticed):

- its loaders send a blank node as an IRI named by rdflib's label (``{"t": "i", "i": "b4"}``):
  2.11.1's ``Triple`` and ``Term`` classes have blank nodes, its loaders do not use them.
  TrustGraph's own 2.11.1 gateway stores those IRIs as IRIs (``TermTranslator.decode``), and
  so does quiesce: the term is a valid IRI term, nothing can tell it was a blank node;
- its ``export_triples`` reads top-level ``s``/``p``/``o``/``g`` of a triples message, which has
  none: one empty ``Triple`` per message;
- ``tg-save-doc-embeds`` reads ``metadata.metadata`` and ``chunks[].vectors``, which 2.x's
  export format (TrustGraph 2.11.1's gateway: ``serialize_document_embeddings``) does not
  have: it fails with ``KeyError: 'metadata'`` on the first message and saves nothing;
- ``tg-load-doc-embeds`` sends ``chunk_id`` with 1.x's plural ``vectors``, which TrustGraph's
  own 2.11.1 gateway cannot read (``DocumentEmbeddingsTranslator.decode`` takes
  ``chunk["vector"]``: KeyError, the socket is closed, nothing is published). quiesce
  carries a chunk whose ``vectors`` holds exactly one vector as that ``vector`` (lossless:
  2.x's ``ChunkEmbeddings`` has exactly one), and refuses a chunk with more, naming it.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pulsar
import pytest
import rdflib
import trio
from rdflib import BNode, Literal, URIRef
from rdflib.compare import isomorphic

from tests.interop import data
from tests.interop.conftest import (
    DRIVER,
    Counts,
    Gateway,
    finished,
    persisted,
    rejected,
    run_tool,
    start,
    start_exporter,
    stored,
)
from tests.interop.envs import TgEnv

VERSION = "2.11.1"
PROFILE = "tg2"
N_TRIPLES = 250  # 3 frames of the 2.x loaders: 100, 100, 50
TRIPLES_PER_FRAME = 100
ROWS_PER_FRAME = 40


def frames_for(items: int, per_frame: int) -> int:
    """Frames a 2.x batching client sends for ``items`` items."""
    return math.ceil(items / per_frame)


def as_blank(g: rdflib.Graph) -> rdflib.Graph:
    """``g`` with the IRIs that have no scheme turned back into blank nodes.

    2.11.1's loaders send a blank node as an IRI named by rdflib's parser-made label
    (``{"t": "i", "i": "b4"}``): blank-ness is lost in TrustGraph, before quiesce.
    Undoing it makes the graph comparable with the source by isomorphism.
    """
    out = rdflib.Graph()
    for triple in g:
        out.add(tuple(BNode(str(x)) if isinstance(x, URIRef) and ":" not in x else x
                      for x in triple))
    return out


def exported_items(lines: list[str]) -> list[Any]:
    """The items an exporter (``tg_driver.py export``) printed."""
    return [json.loads(line) for line in lines if line.strip()]


def empty_triples(n: int) -> list[dict[str, Any]]:
    """What 2.11.1's export_triples yields for ``n`` triples messages (see the module doc)."""
    return [{"triple": {"s": "", "p": "", "o": "", "g": ""}}] * n


def p2_term_types(payloads: list[dict[str, Any]]) -> set[str]:
    """The term types of every triple in 2.x payloads (``Term.type``)."""
    return {t[k]["type"] for m in payloads for t in m["triples"] for k in "spo"}


# --------------------------------------------------------------------------------------------
# tg-load-turtle, tg-load-knowledge
# --------------------------------------------------------------------------------------------


async def test_load_turtle(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-turtle 2.11.1 batches 100 triples a frame; every triple lands intact, with its
    datatypes and language tags, and the bulk exporter gets one message per frame."""
    env: TgEnv = tg_env(VERSION)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg2")
    frames = frames_for(N_TRIPLES, TRIPLES_PER_FRAME)
    before = rejected(gateway_tg2, "triples")
    async with trio.open_nursery() as nursery:
        exporter, out = await start_exporter(nursery, env, gateway_tg2, flow, "triples",
                                             frames)
        run = await run_tool([env.script("tg-load-turtle"), "-u", gateway_tg2.http_url,
                              "-f", flow, "-i", "doc1", "-C", "c1", tmp_path / "g.ttl"])
        assert run.returncode == 0 and "File loaded." in run.stdout, run
        code = await finished(exporter)

    gw = await gateway_tg2.import_closed(flow, "triples")
    messages = await persisted(pulsar_client, flow, "triples", PROFILE)
    payloads = await stored(pulsar_client, flow, "triples", PROFILE)
    exported = exported_items(out.lines)
    counts(triples=N_TRIPLES, sent=frames, received=gw["received"], persisted=len(messages),
           persisted_triples=data.count_triples(messages), exported=len(exported),
           rejected=gw["rejected"])
    assert rejected(gateway_tg2, "triples") == before
    assert gw == {"received": frames, "persisted": frames, "rejected": 0}
    assert len(messages) == frames
    assert data.count_triples(messages) == N_TRIPLES
    assert isomorphic(as_blank(data.graph_of(messages)), source)
    assert p2_term_types(payloads) == {"i", "l"}  # no "b": TrustGraph sent blank nodes as IRIs
    assert {json.dumps(m["metadata"], sort_keys=True) for m in payloads} == {json.dumps(
        {"id": "doc1", "root": "", "collection": "c1"}, sort_keys=True)}
    assert code == 0 and exported == empty_triples(frames)


async def test_load_knowledge(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-knowledge 2.11.1 sends batched triples and entity contexts; all land, and the
    bulk exporters get them back."""
    env: TgEnv = tg_env(VERSION)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg2")
    # 2.11.1 makes a context of every object that is not an IRI: literals and blank nodes.
    contexts = [(s, o) for s, _p, o in source if not isinstance(o, URIRef)]
    t_frames = frames_for(N_TRIPLES, TRIPLES_PER_FRAME)
    c_frames = frames_for(len(contexts), TRIPLES_PER_FRAME)
    before = rejected(gateway_tg2, "triples") + rejected(gateway_tg2, "entity-contexts")
    async with trio.open_nursery() as nursery:
        t_exporter, t_out = await start_exporter(nursery, env, gateway_tg2, flow, "triples",
                                                 t_frames)
        c_exporter, c_out = await start_exporter(nursery, env, gateway_tg2, flow,
                                                 "entity-contexts", c_frames)
        run = await run_tool([env.script("tg-load-knowledge"), "-u", gateway_tg2.http_url,
                              "-f", flow, "-i", "doc1", "-C", "c1", tmp_path / "g.ttl"])
        assert run.returncode == 0 and "Triples and entity contexts loaded." in run.stdout, run
        codes = (await finished(t_exporter), await finished(c_exporter))

    gw_t = await gateway_tg2.import_closed(flow, "triples")
    gw_c = await gateway_tg2.import_closed(flow, "entity-contexts")
    triples = await persisted(pulsar_client, flow, "triples", PROFILE)
    ecs = await persisted(pulsar_client, flow, "entity-contexts", PROFILE)
    exported_t, exported_c = exported_items(t_out.lines), exported_items(c_out.lines)
    got = [(e["entity"], e["context"]) for m in ecs for e in m["entities"]]
    counts(triples_sent=t_frames, triples_received=gw_t["received"],
           triples_persisted=len(triples), triples_exported=len(exported_t),
           contexts=len(contexts), contexts_sent=c_frames, contexts_received=gw_c["received"],
           contexts_persisted=len(ecs), contexts_persisted_items=len(got),
           contexts_exported=len(exported_c))
    assert rejected(gateway_tg2, "triples") + rejected(gateway_tg2, "entity-contexts") == before
    assert gw_t == {"received": t_frames, "persisted": t_frames, "rejected": 0}
    assert gw_c == {"received": c_frames, "persisted": c_frames, "rejected": 0}
    assert len(triples) == t_frames and len(ecs) == c_frames
    assert isomorphic(as_blank(data.graph_of(triples)), source)
    # Blank nodes: the loader parses the file again for the contexts, and rdflib names each
    # blank node afresh; those are compared as "some blank node", everything else exactly.
    texts = {str(o) for _s, o in contexts if isinstance(o, Literal)}
    assert sorted((e["i"] if ":" in e["i"] else "_:", c if c in texts else "_:")
                  for e, c in got) == sorted(
        (str(s) if isinstance(s, URIRef) else "_:", str(o) if isinstance(o, Literal) else "_:")
        for s, o in contexts)
    assert all(entity["t"] == "i" for entity, _c in got)
    assert codes == (0, 0)
    assert exported_t == empty_triples(t_frames)
    assert exported_c == ecs  # the export is the stored messages, field for field


# --------------------------------------------------------------------------------------------
# The bulk client: import and export of the four kinds, and rows
# --------------------------------------------------------------------------------------------


def bulk_items(kind: str, n: int) -> tuple[list[Any], dict[str, Any] | None, int]:
    """(items for the 2.11.1 bulk client, metadata kwarg, frames it sends) for ``kind``."""
    meta = data.metadata_tg2("bulk-doc")
    if kind == "triples":
        g = data.turtle_graph(n, "tg2")

        def neutral(x: Any) -> dict[str, Any]:
            if isinstance(x, Literal):
                return {"literal": str(x), "datatype": str(x.datatype) if x.datatype else None,
                        "language": x.language}
            return {"uri": str(x)}  # blank nodes too: the 2.x client has no other way

        items = [{k: neutral(x) for k, x in zip("spo", t, strict=True)} for t in sorted(g)]
        return items, meta, frames_for(n, TRIPLES_PER_FRAME)
    if kind == "graph-embeddings":
        items = [{"metadata": meta, "entities": [
            {"entity": {"t": "i", "i": f"{data.EX}e{i}-{j}"}, "vector": data.vector(i * 3 + j),
             "chunk_id": f"bulk-doc/c{i}"} for j in range(3)]} for i in range(n)]
        return items, None, n
    if kind == "document-embeddings":
        items = [{"metadata": meta, "chunks": [
            {"chunk_id": f"bulk-doc/c{i}.{j}", "vector": data.vector(i * 2 + j)}
            for j in range(2)]} for i in range(n)]
        return items, None, n
    items = [{"entity": {"t": "i", "i": f"{data.EX}e{i}"}, "context": f"context {i}",
              "rdf_type": [f"{data.EX}Thing"]} for i in range(n)]
    return items, meta, frames_for(n, TRIPLES_PER_FRAME)


@pytest.mark.parametrize("kind", ["triples", "graph-embeddings", "document-embeddings",
                                  "entity-contexts"])
async def test_bulk_client_round_trip(
    kind: str, tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """Api(url).bulk() of 2.11.1 imports a kind and exports back everything that landed."""
    env: TgEnv = tg_env(VERSION)
    n = 150 if kind in ("triples", "entity-contexts") else 20
    items, meta, frames = bulk_items(kind, n)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    before = rejected(gateway_tg2, kind)

    async with trio.open_nursery() as nursery:
        exporter, out = await start_exporter(nursery, env, gateway_tg2, flow, kind, frames)
        argv: list[str | Path] = [env.python, DRIVER, "import", kind, "--url",
                                  gateway_tg2.http_url, "--flow", flow, "--items", path]
        if meta is not None:
            argv += ["--metadata", json.dumps(meta)]
        run = await run_tool(argv)
        assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1]) == {
            "handed": len(items)}, run
        code = await finished(exporter)
        assert code == 0, (code, out.lines)

    gw = await gateway_tg2.import_closed(flow, kind)
    messages = await persisted(pulsar_client, flow, kind, PROFILE)
    exported = exported_items(out.lines)
    counts(items=len(items), sent=frames, received=gw["received"], persisted=len(messages),
           exported=len(exported), rejected=gw["rejected"])
    assert rejected(gateway_tg2, kind) == before
    assert gw == {"received": frames, "persisted": frames, "rejected": 0}
    assert len(messages) == frames and len(exported) == frames
    if kind == "triples":
        assert data.count_triples(messages) == n
        assert isomorphic(as_blank(data.graph_of(messages)), data.turtle_graph(n, "tg2"))
        assert exported == empty_triples(frames)
        return
    wire_meta = {"id": "bulk-doc", "root": "", "collection": "c1"}
    assert exported == messages  # the export is the stored messages, field for field
    assert all(m["metadata"] == wire_meta for m in messages)
    if kind == "entity-contexts":
        assert [e for m in messages for e in m["entities"]] == items
    elif kind == "graph-embeddings":
        assert [m["entities"] for m in messages] == [i["entities"] for i in items]
    else:
        assert [m["chunks"] for m in messages] == [i["chunks"] for i in items]


def rows_landed(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The row values of every rows message, in order."""
    return [v for m in messages for v in m["values"]]


async def test_bulk_client_rows(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """bulk.import_rows of 2.11.1 sends 40 rows a frame to the rows kind; all land (2.11.1
    has no exporter of rows)."""
    env: TgEnv = tg_env(VERSION)
    n = 100
    rows = [{"metadata": data.metadata_tg2(f"row-{i}"), "schema_name": "people",
             "values": {"name": f"P{i}", "age": str(i)}, "confidence": 0.9, "source_span": ""}
            for i in range(n)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    frames = frames_for(n, ROWS_PER_FRAME)
    run = await run_tool([env.python, DRIVER, "import", "rows", "--url", gateway_tg2.http_url,
                          "--flow", flow, "--items", path])
    assert run.returncode == 0, run
    gw = await gateway_tg2.import_closed(flow, "rows")
    payloads = await stored(pulsar_client, flow, "rows", PROFILE)
    counts(rows=n, sent=frames, received=gw["received"], persisted=len(payloads),
           persisted_rows=len(rows_landed(payloads)), rejected=gw["rejected"])
    assert gw == {"received": frames, "persisted": frames, "rejected": 0}
    assert rows_landed(payloads) == [r["values"] for r in rows]
    # The client sends the first row's metadata with every batch: TrustGraph's behaviour.
    assert [(m["metadata"], m["schema_name"], m["confidence"], m["source_span"])
            for m in payloads] == [({"id": "row-0", "root": "", "collection": "c1"},
                                    "people", 0.9, "")] * frames


async def test_load_structured_data(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-structured-data --load of 2.11.1 imports CSV rows, 40 a frame; all land."""
    env: TgEnv = tg_env(VERSION)
    n = 90
    expected = data.structured_data(tmp_path / "p.csv", tmp_path / "p.json", n)
    frames = frames_for(n, ROWS_PER_FRAME)
    run = await run_tool([env.script("tg-load-structured-data"), "-u", gateway_tg2.http_url,
                          "-f", flow, "--collection", "c1", "-i", tmp_path / "p.csv",
                          "-d", tmp_path / "p.json", "--load"])
    assert run.returncode == 0 and "Load Complete" in run.stdout, run
    gw = await gateway_tg2.import_closed(flow, "rows")
    payloads = await stored(pulsar_client, flow, "rows", PROFILE)
    counts(records=n, sent=frames, received=gw["received"], persisted=len(payloads),
           persisted_rows=len(rows_landed(payloads)), rejected=gw["rejected"])
    assert gw == {"received": frames, "persisted": frames, "rejected": 0}
    assert len(payloads) == frames
    assert rows_landed(payloads) == expected
    assert {(m["schema_name"], m["metadata"]["collection"]) for m in payloads} == {
        ("people", "c1")}


# --------------------------------------------------------------------------------------------
# tg-load-doc-embeds / tg-save-doc-embeds
# --------------------------------------------------------------------------------------------


def de_core(n: int, vectors: int) -> list[list[Any]]:
    """A 2.x document-embeddings core: chunk ids, ``vectors`` vectors per chunk."""
    entries = data.de_core_entries(n, chunks=2, generation="tg2")
    for entry in entries:
        for chunk in entry[1]["c"]:
            chunk["v"] = chunk["v"][:vectors]
    return entries


async def test_load_doc_embeds(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-doc-embeds 2.11.1 sends one frame per core entry, ``chunk_id`` with a list of
    ``vectors``; a chunk of one vector lands as 2.x's ``vector`` and comes back through the
    bulk exporter; 2.11.1's own tg-save-doc-embeds cannot read 2.x's export format."""
    env: TgEnv = tg_env(VERSION)
    kind = "document-embeddings"
    entries = de_core(10, vectors=1)
    data.write_de_core(tmp_path / "in.msgpack", entries)
    saved = tmp_path / "out.msgpack"
    before = rejected(gateway_tg2, kind)
    async with trio.open_nursery() as nursery:
        exporter, out = await start_exporter(nursery, env, gateway_tg2, flow, kind,
                                             len(entries))
        mark = gateway_tg2.mark()
        saver, saver_out = await start(nursery, [
            env.script("tg-save-doc-embeds"), "-u", gateway_tg2.http_url, "-f", flow,
            "-o", saved], capture_stderr=True)
        await gateway_tg2.export_running(flow, kind, mark)
        run = await run_tool([env.script("tg-load-doc-embeds"), "-u", gateway_tg2.http_url,
                              "-f", flow, "-i", tmp_path / "in.msgpack"])
        # As in 1.x, the console script always ends in a TypeError after doing its work.
        assert run.returncode == 1 and "TypeError: main() missing 1 required" in run.stderr, run
        code = await finished(exporter)
        # The saver's reader task dies on the first message and its socket closes; the
        # gateway logs that export connection closed. Then stop the saver as its user would.
        await gateway_tg2.process.wait_line_async(
            rf'^(?=.*"machine": "connection")(?=.*"direction": "export")'
            rf'(?=.*"flow": "{flow}")(?=.*"kind": "{kind}")(?=.*"target": "closed")', mark)
        saver.send_signal(signal.SIGINT)
        await finished(saver)

    gw = await gateway_tg2.import_closed(flow, kind)
    messages = await persisted(pulsar_client, flow, kind, PROFILE)
    payloads = await stored(pulsar_client, flow, kind, PROFILE)
    exported = exported_items(out.lines)
    core = data.read_de_core(saved)
    counts(entries=len(entries), sent=len(entries), received=gw["received"],
           persisted=len(messages), exported=len(exported), saved=len(core))
    assert rejected(gateway_tg2, kind) == before
    assert gw == {"received": len(entries), "persisted": len(entries), "rejected": 0}
    assert code == 0 and exported == messages
    expected = [[{"chunk_id": c["c"], "vector": c["v"][0], "attributes": {}}
                 for c in e[1]["c"]] for e in entries]
    assert [p["chunks"] for p in payloads] == expected  # every float, as sent
    assert [p["metadata"] for p in payloads] == [
        {"id": e[1]["m"]["i"], "root": "", "collection": "c1"} for e in entries]
    # TrustGraph 2.11.1's saver reads fields 2.x's export format does not have.
    assert saver_out.stderr is not None
    assert "KeyError: 'metadata'" in "\n".join(saver_out.stderr.lines), saver_out.stderr.lines
    assert core == []


async def test_load_doc_embeds_two_vectors_a_chunk_is_refused(
    tg_env: Any, gateway_tg2: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """A core whose chunks hold two vectors each cannot be carried by 2.x's ChunkEmbeddings
    (one ``vector``): every frame is refused, naming the field, and nothing is published."""
    env: TgEnv = tg_env(VERSION)
    kind = "document-embeddings"
    entries = de_core(4, vectors=2)
    data.write_de_core(tmp_path / "in.msgpack", entries)
    before = rejected(gateway_tg2, kind)
    run = await run_tool([env.script("tg-load-doc-embeds"), "-u", gateway_tg2.http_url,
                          "-f", flow, "-i", tmp_path / "in.msgpack"])
    assert run.returncode == 1 and "TypeError: main() missing 1 required" in run.stderr, run
    gw = await gateway_tg2.import_closed(flow, kind)
    messages = await stored(pulsar_client, flow, kind, PROFILE)
    refusals = gateway_tg2.rejections(flow, kind)
    counts(entries=len(entries), sent=len(entries), received=gw["received"],
           persisted=len(messages), rejected=gw["rejected"])
    assert gw == {"received": len(entries), "persisted": 0, "rejected": len(entries)}
    assert rejected(gateway_tg2, kind) - before == len(entries)
    assert messages == []
    assert refusals and "chunks[0].vectors: tg2 carries exactly one vector per item, this has 2" \
        in refusals[0], refusals
