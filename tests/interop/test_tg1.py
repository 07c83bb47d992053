"""TrustGraph 1.x clients (1.4.22, 1.9.4), unmodified, against a ``quiesce serve`` process.

The gateway runs the default profile, ``tg1``: it publishes to TrustGraph 1.x's own flow topics
(``persistent://tg/flow/triples-store:FLOW``…) in 1.x's Pulsar schema encoding. Each test runs a
released tool or the released bulk client from its own venv, then counts what it sent, what
the gateway received and persisted (its ``import closed`` log line), what reached the topic
(read with a Reader, de-duplicated by message id) and, where TrustGraph has an exporter, what
came back; and compares the data with the source.

Exporters connect without a subscription name, so they see only what is published after their
subscription exists: each test starts its exporter first and waits until the gateway logs the
export connection ``running`` (subscribed), then imports.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pulsar
import pytest
import rdflib
import trio
from rdflib import Literal, URIRef
from rdflib.compare import isomorphic

from tests.interop import data
from tests.interop.conftest import (
    DRIVER,
    END,
    Counts,
    Gateway,
    finished,
    persisted,
    publish,
    rejected,
    run_tool,
    start,
    start_exporter,
)
from tests.interop.envs import TgEnv

N_TRIPLES = 60
# TrustGraph 1.x's only socket exporter of triples, graph and document embeddings and entity
# contexts is the bulk client, which 1.9 added (1.4.22 has none).
EXPORTER = "1.9.4"


def end_marker(kind: str) -> dict[str, Any]:
    """A valid 1.x message of ``kind`` marking the end of what a test published."""
    meta = data.metadata_tg1(END, collection="markers")
    body = {"triples": "triples", "document-embeddings": "chunks"}.get(kind, "entities")
    return {"metadata": meta, body: []}


def is_marker(message: dict[str, Any]) -> bool:
    """True for end markers (published by the test, not by a tool)."""
    return message.get("metadata", {}).get("id") == END


def all_objects_iris(g: rdflib.Graph) -> list[tuple[tuple[str, bool], ...]]:
    """``g`` as :func:`data.value_triples` gives it, with every object marked an IRI (what
    1.9.4's tg-load-turtle and tg-load-knowledge send, literals included)."""
    return sorted(((str(s), True), (str(p), True), (str(o), True)) for s, p, o in g)


def exported_items(lines: list[str]) -> list[Any]:
    """The items an exporter (``tg_driver.py export``) printed."""
    return [json.loads(line) for line in lines if line.strip()]


# --------------------------------------------------------------------------------------------
# tg-load-turtle, tg-load-knowledge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_load_turtle(
    version: str, tg_env: Any, gateway: Gateway, pulsar_client: pulsar.Client,
    flow: str, tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-turtle sends one frame per triple; every triple reaches the topic intact and
    1.9's bulk exporter gets one message per frame."""
    env: TgEnv = tg_env(version)
    exporter_env: TgEnv = tg_env(EXPORTER)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg1")
    url = gateway.ws_url if version == "1.4.22" else gateway.http_url
    before = rejected(gateway, "triples")
    async with trio.open_nursery() as nursery:
        exporter, out = await start_exporter(nursery, exporter_env, gateway, flow, "triples",
                                             N_TRIPLES)
        run = await run_tool([env.script("tg-load-turtle"), "-u", url, "-f", flow, "-i",
                              "doc1", "-U", "alice", "-C", "c1", tmp_path / "g.ttl"])
        assert run.returncode == 0 and "File loaded." in run.stdout, run
        code = await finished(exporter)

    gw = await gateway.import_closed(flow, "triples")
    messages = await persisted(pulsar_client, flow, "triples")
    exported = exported_items(out.lines)
    counts(sent=N_TRIPLES, received=gw["received"], persisted=len(messages),
           persisted_triples=data.count_triples(messages), exported=len(exported),
           rejected=gw["rejected"])
    assert rejected(gateway, "triples") == before
    assert gw == {"received": N_TRIPLES, "persisted": N_TRIPLES, "rejected": 0}
    assert len(messages) == N_TRIPLES  # 1 frame per triple
    assert data.count_triples(messages) == N_TRIPLES
    assert code == 0 and len(exported) == N_TRIPLES
    assert {json.dumps(m["metadata"], sort_keys=True) for m in messages} == {json.dumps(
        data.metadata_tg1("doc1"), sort_keys=True)}
    if version == "1.4.22":
        assert isomorphic(data.graph_of(messages), source)
    else:
        # 1.9.4's loader hands its Triples to the bulk client, which marks every object as
        # an IRI ({"e": true}): literals arrive as IRIs. TrustGraph's behaviour, not ours.
        assert data.value_triples(messages) == all_objects_iris(source)
    # 1.9.4's export_triples reads top-level s/p/o of each message, which a triples message
    # does not have: it yields one empty Triple per message. TrustGraph's bug; the count is
    # what it can tell.
    assert exported == [{"triple": {"s": "", "p": "", "o": ""}}] * N_TRIPLES


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_load_knowledge(
    version: str, tg_env: Any, gateway: Gateway, pulsar_client: pulsar.Client,
    flow: str, tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-knowledge sends triples then one entity context per literal, all persisted;
    1.9's bulk exporters get them back."""
    env: TgEnv = tg_env(version)
    exporter_env: TgEnv = tg_env(EXPORTER)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg1")
    literals = data.literal_triples(source)
    url = gateway.ws_url if version == "1.4.22" else gateway.http_url
    before = rejected(gateway, "triples") + rejected(gateway, "entity-contexts")
    async with trio.open_nursery() as nursery:
        t_exporter, t_out = await start_exporter(nursery, exporter_env, gateway, flow,
                                                 "triples", N_TRIPLES)
        c_exporter, c_out = await start_exporter(nursery, exporter_env, gateway, flow,
                                                 "entity-contexts", len(literals))
        run = await run_tool([env.script("tg-load-knowledge"), "-u", url, "-f", flow, "-i",
                              "doc1", "-U", "alice", "-C", "c1", tmp_path / "g.ttl"])
        assert run.returncode == 0 and "Triples and entity contexts loaded." in run.stdout, run
        codes = (await finished(t_exporter), await finished(c_exporter))

    gw_t = await gateway.import_closed(flow, "triples")
    gw_c = await gateway.import_closed(flow, "entity-contexts")
    triples = await persisted(pulsar_client, flow, "triples")
    contexts = await persisted(pulsar_client, flow, "entity-contexts")
    exported_t, exported_c = exported_items(t_out.lines), exported_items(c_out.lines)
    counts(triples_sent=N_TRIPLES, triples_received=gw_t["received"],
           triples_persisted=len(triples), triples_exported=len(exported_t),
           contexts_sent=len(literals), contexts_received=gw_c["received"],
           contexts_persisted=len(contexts), contexts_exported=len(exported_c))
    assert rejected(gateway, "triples") + rejected(gateway, "entity-contexts") == before
    assert gw_t == {"received": N_TRIPLES, "persisted": N_TRIPLES, "rejected": 0}
    assert gw_c == {"received": len(literals), "persisted": len(literals), "rejected": 0}
    assert (len(triples), data.count_triples(triples)) == (N_TRIPLES, N_TRIPLES)
    assert len(contexts) == len(literals)  # 1 frame per literal-valued triple
    assert codes == (0, 0)
    assert len(exported_t) == N_TRIPLES and len(exported_c) == len(literals)
    if version == "1.4.22":
        assert isomorphic(data.graph_of(triples), source)
    else:
        assert data.value_triples(triples) == all_objects_iris(source)  # as in load_turtle
    expected = sorted((str(s), str(o)) for s, _p, o in literals)
    got = sorted((str(data.term(e["entity"])), e["context"])
                 for m in contexts for e in m["entities"])
    assert got == expected
    assert exported_c == contexts  # the export is the stored messages, field for field
    assert all(m["metadata"] == data.metadata_tg1("doc1") for m in exported_c)


# --------------------------------------------------------------------------------------------
# The bulk client (1.9.4): import and export of the four kinds
# --------------------------------------------------------------------------------------------


def bulk_items(kind: str, n: int) -> tuple[list[Any], dict[str, Any] | None, int]:
    """(items for the bulk client, metadata kwarg, frames it will send) for ``kind``."""
    meta = data.metadata_tg1("bulk-doc")
    if kind == "triples":
        g = data.turtle_graph(n, "tg1")
        items = [{k: ({"uri": str(x)} if isinstance(x, URIRef) else {"literal": str(x)})
                  for k, x in zip("spo", t, strict=True)} for t in sorted(g)]
        return items, meta, n
    if kind == "graph-embeddings":
        items = [{"metadata": meta, "entities": [
            {"entity": {"v": f"{data.EX}e{i}-{j}", "e": True},
             "vectors": [data.vector(i * 3 + j), data.vector(i * 3 + j + 500)]}
            for j in range(3)]} for i in range(n)]
        return items, None, n
    if kind == "document-embeddings":
        items = [{"metadata": meta, "chunks": [
            {"chunk": f"chunk {i}.{j}: {data.TEXTS[(i + j) % len(data.TEXTS)]}",
             "vectors": [data.vector(i * 2 + j)]} for j in range(2)]} for i in range(n)]
        return items, None, n
    items = [{"entity": {"v": f"{data.EX}e{i}", "e": True},
              "context": f"context {i}: {data.TEXTS[i % len(data.TEXTS)]}"} for i in range(n)]
    return items, meta, n


@pytest.mark.parametrize("kind", ["triples", "graph-embeddings", "document-embeddings",
                                  "entity-contexts"])
async def test_bulk_client_round_trip(
    kind: str, tg_env: Any, gateway: Gateway, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """Api(url).bulk() of 1.9.4 imports a kind and exports back everything that landed."""
    env: TgEnv = tg_env("1.9.4")
    n = 25
    items, meta, frames = bulk_items(kind, n)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    before = rejected(gateway, kind)

    async with trio.open_nursery() as nursery:
        exporter, out = await start_exporter(nursery, env, gateway, flow, kind, frames)
        argv: list[str | Path] = [env.python, DRIVER, "import", kind, "--url", gateway.http_url,
                                  "--flow", flow, "--items", path]
        if meta is not None:
            argv += ["--metadata", json.dumps(meta)]
        run = await run_tool(argv)
        assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1]) == {
            "handed": len(items)}, run
        code = await finished(exporter)
        assert code == 0, (code, out.lines)

    gw = await gateway.import_closed(flow, kind)
    landed = await persisted(pulsar_client, flow, kind)
    exported = exported_items(out.lines)
    counts(items=len(items), sent=frames, received=gw["received"], persisted=len(landed),
           exported=len(exported), rejected=gw["rejected"])
    assert rejected(gateway, kind) == before
    assert gw == {"received": frames, "persisted": frames, "rejected": 0}
    assert len(landed) == frames  # one frame per item, every frame persisted
    assert len(exported) == frames
    if kind == "triples":
        assert data.count_triples(landed) == n
        source = rdflib.Graph()
        for item in items:
            source.add(tuple(URIRef(x["uri"]) if "uri" in x else Literal(x["literal"])
                             for x in (item["s"], item["p"], item["o"])))
        assert isomorphic(data.graph_of(landed), source)
        # 1.9.4's export_triples reads top-level s/p/o of each message, which a triples
        # message does not have: it yields one empty Triple per message. TrustGraph's bug.
        assert exported == [{"triple": {"s": "", "p": "", "o": ""}}] * frames
    elif kind == "entity-contexts":
        assert [m["metadata"] for m in landed] == [meta] * frames
        assert [m["entities"] for m in landed] == [[i] for i in items]
        assert exported == landed
    else:
        assert landed == items  # JSON round trip: strings and floats compare exactly
        assert exported == items


# --------------------------------------------------------------------------------------------
# tg-load-doc-embeds / tg-save-doc-embeds
# --------------------------------------------------------------------------------------------


def stats_count(lines: list[str], label: str) -> int:
    """The last ``<label>: N`` count a doc-embeds tool printed (0 before its first)."""
    found = [int(line.rsplit(":", 1)[1]) for line in lines if line.startswith(label + ":")]
    return found[-1] if found else 0


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_doc_embeds_round_trip(
    version: str, tg_env: Any, gateway: Gateway, pulsar_client: pulsar.Client,
    flow: str, tmp_path: Path, counts: Counts,
) -> None:
    """A core loaded by tg-load-doc-embeds is saved back by tg-save-doc-embeds, value for value."""
    env: TgEnv = tg_env(version)
    entries = data.de_core_entries(12, chunks=3, generation="tg1")
    data.write_de_core(tmp_path / "in.msgpack", entries)
    kind = "document-embeddings"
    before = rejected(gateway, kind)
    saved = tmp_path / "out.msgpack"
    label = "Document embeddings"

    async with trio.open_nursery() as nursery:
        mark = gateway.mark()
        saver, out = await start(nursery, [env.script("tg-save-doc-embeds"), "-u",
                                           gateway.http_url, "-f", flow, "-o", saved])
        await gateway.export_running(flow, kind, mark)
        run = await run_tool([env.script("tg-load-doc-embeds"), "-u", gateway.http_url,
                              "-f", flow, "-i", tmp_path / "in.msgpack"])
        # The console script runs the loader at import time, then calls main() without its
        # argument: it always exits 1 with a TypeError, after doing its work. Its only report
        # is the stats line (mislabelled "Graph embeddings").
        assert run.returncode == 1 and "TypeError: main() missing 1 required" in run.stderr, run
        assert stats_count(run.stdout.splitlines(), "Graph embeddings") == len(entries), run
        await publish(pulsar_client, flow, kind, end_marker(kind))
        # The saver writes on its own schedule and counts every message it wrote; on SIGINT
        # it drops what it has not written, so wait for the count first.
        assert await out.wait_for(
            lambda lines: stats_count(lines, label) >= len(entries) + 1, 30.0), out.lines
        saver.send_signal(signal.SIGINT)
        await finished(saver)

    gw = await gateway.import_closed(flow, kind)
    landed = [m for m in await persisted(pulsar_client, flow, kind) if not is_marker(m)]
    core = data.read_de_core(saved)
    saved_entries = [c for c in core if c[1]["m"]["i"] != END]
    counts(entries=len(entries),
           sent=stats_count(run.stdout.splitlines(), "Graph embeddings"),
           received=gw["received"], persisted=len(landed), saved=len(saved_entries))
    assert rejected(gateway, kind) == before
    assert gw == {"received": len(entries), "persisted": len(entries), "rejected": 0}
    assert len(landed) == len(entries)  # one frame per core entry
    assert [m["metadata"]["id"] for m in landed] == [e[1]["m"]["i"] for e in entries]
    ids = [c[1]["m"]["i"] for c in core]
    assert ids[-1] == END, f"the end marker was not saved last: {ids}"
    assert len(saved_entries) == len(entries)
    assert saved_entries == entries  # ids, metadata, chunk texts and every float


# --------------------------------------------------------------------------------------------
# tg-load-structured-data (objects)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_load_structured_data(
    version: str, tg_env: Any, gateway: Gateway, pulsar_client: pulsar.Client,
    flow: str, tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-structured-data --load of 1.x sends one ``objects`` record a frame; every
    record lands (1.x has no exporter of objects)."""
    env: TgEnv = tg_env(version)
    n = 90
    expected = data.structured_data(tmp_path / "p.csv", tmp_path / "p.json", n)
    run = await run_tool([env.script("tg-load-structured-data"), "-u", gateway.http_url,
                          "-f", flow, "--collection", "c1", "-i", tmp_path / "p.csv",
                          "-d", tmp_path / "p.json", "--load"])
    assert run.returncode == 0, run
    gw = await gateway.import_closed(flow, "objects")
    messages = await persisted(pulsar_client, flow, "objects")
    counts(records=n, sent=n, received=gw["received"], persisted=len(messages),
           rejected=gw["rejected"])
    assert gw == {"received": n, "persisted": n, "rejected": 0}
    assert len(messages) == n
    assert [v for m in messages for v in m["values"]] == expected
    assert {(m["schema_name"], m["metadata"]["collection"]) for m in messages} == {
        ("people", "c1")}
