"""TrustGraph 2.11.1 clients, unmodified, against a ``quiesce serve`` process.

2.x clients send 2.x terms (``{"t": "i", "i": …}``, literals with ``dt``/``ln``), metadata
without ``user``, ``?workspace=default`` and batches (100 triples or entity contexts, 40 rows
per frame). Today's gateway validates the 1.x format only and rejects every such frame; the
``rows`` kind does not exist there (HTTP 404). These tests state what must hold once the
``tg2`` profile exists, so they are strict xfails until then, and each checks that it fails
for that reason only: ``FramesRejected`` (every frame the tool sent was rejected as
``invalid-message`` and none persisted) or ``KindRefused`` (the handshake got HTTP 404). Any
other failure (a harness bug, a tool that did not run) is reported as a plain failure.

Once profiles land, the topic read here (``Settings().topic_for``) and the decoding of what
landed (:func:`data.term` reads 1.x, 1.x-schema and 2.x encodings) may need the profile's
own names.
"""

from __future__ import annotations

import json
import math
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
    END,
    EXPORT_TIMEOUT,
    PROBE,
    Counts,
    FramesRejected,
    GatewayProcess,
    KindRefused,
    ToolRun,
    await_subscription,
    outside_trio_mode,
    persisted,
    rejected,
    run_tool,
    start,
)
from tests.interop.envs import TgEnv

VERSION = "2.11.1"
N_TRIPLES = 250  # 3 frames of the 2.x loaders: 100, 100, 50
TRIPLES_PER_FRAME = 100
ROWS_PER_FRAME = 40

needs_profiles = pytest.mark.xfail(
    strict=True, raises=(FramesRejected, KindRefused),
    reason="needs TrustGraph profiles (tg2 wire format)")


def frames_for(items: int, per_frame: int) -> int:
    """Frames a 2.x batching client sends for ``items`` items."""
    return math.ceil(items / per_frame)


async def landed(gateway: GatewayProcess, client: pulsar.Client, flow: str, kind: str,
                 frames: int, rejected_before: float, counts: Counts) -> list[dict[str, Any]]:
    """What the tool's ``frames`` frames of ``kind`` left in the topic (markers excluded).

    Raises:
        FramesRejected: none persisted and the gateway rejected exactly those frames.
    """
    messages = [m for m in await persisted(client, flow, kind)
                if m.get("metadata", {}).get("id") not in (PROBE, END)]
    refused = rejected(gateway, kind) - rejected_before
    counts(**{f"{kind}_frames_sent": frames, f"{kind}_persisted": len(messages),
              f"{kind}_rejected": int(refused)})
    if not messages and refused == frames:
        raise FramesRejected(f"all {frames} {kind} frames rejected as invalid-message, "
                             f"none persisted")
    assert refused == 0, f"{refused} of {frames} {kind} frames rejected"
    assert len(messages) == frames, f"{len(messages)} of {frames} {kind} frames persisted"
    return messages


def check_handshake(run: ToolRun, counts: Counts) -> None:
    """Raise KindRefused when the tool's WebSocket handshake was answered with HTTP 404."""
    if run.returncode != 0 and "HTTP 404" in run.stdout + run.stderr:
        counts(handshake_status=404, rows_persisted=0)
        raise KindRefused(f"handshake refused with HTTP 404: {run.stderr[-300:]}")


def as_blank(g: rdflib.Graph) -> rdflib.Graph:
    """``g`` with the IRIs that have no scheme turned back into blank nodes.

    2.11.1's loaders send a blank node as an IRI named by rdflib's parser-made label
    (``{"t": "i", "i": "nd7599…b1"}``): blank-ness is lost in TrustGraph, before quiesce.
    Undoing it makes the graph comparable with the source by isomorphism.
    """
    out = rdflib.Graph()
    for triple in g:
        out.add(tuple(BNode(str(x)) if isinstance(x, URIRef) and ":" not in x else x
                      for x in triple))
    return out


def probe_tg2(kind: str, doc: str = PROBE) -> dict[str, Any]:
    """A 2.x message of ``kind`` marked as a probe (or end marker) by its metadata id."""
    meta = data.metadata_tg2(doc, collection="probes")
    if kind == "triples":
        # 2.x's export_triples reads only top-level s/p/o/g: the probe names itself there.
        return {"metadata": meta, "triples": [], "s": doc}
    body = "chunks" if kind == "document-embeddings" else "entities"
    return {"metadata": meta, body: []}


@needs_profiles
@outside_trio_mode
async def test_load_turtle(
    tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-turtle 2.11.1 batches 100 triples a frame; every triple must land intact."""
    env: TgEnv = tg_env(VERSION)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg2")
    before = rejected(gateway, "triples")
    run = await run_tool([env.script("tg-load-turtle"), "-u", gateway.http_url, "-f", flow,
                          "-i", "doc1", "-C", "c1", tmp_path / "g.ttl"])
    assert run.returncode == 0 and "File loaded." in run.stdout, run
    messages = await landed(gateway, pulsar_client, flow, "triples",
                            frames_for(N_TRIPLES, TRIPLES_PER_FRAME), before, counts)
    assert data.count_triples(messages) == N_TRIPLES
    assert isomorphic(as_blank(data.graph_of(messages)), source)


@needs_profiles
@outside_trio_mode
async def test_load_knowledge(
    tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-knowledge 2.11.1 sends batched triples and entity contexts; all must land."""
    env: TgEnv = tg_env(VERSION)
    source = data.write_turtle(tmp_path / "g.ttl", N_TRIPLES, "tg2")
    # 2.11.1 makes a context of every object that is not an IRI: literals and blank nodes.
    contexts = [(s, o) for s, _p, o in source if not isinstance(o, URIRef)]
    before = {k: rejected(gateway, k) for k in ("triples", "entity-contexts")}
    run = await run_tool([env.script("tg-load-knowledge"), "-u", gateway.http_url, "-f", flow,
                          "-i", "doc1", "-C", "c1", tmp_path / "g.ttl"])
    assert run.returncode == 0 and "Triples and entity contexts loaded." in run.stdout, run
    triples = await landed(gateway, pulsar_client, flow, "triples",
                           frames_for(N_TRIPLES, TRIPLES_PER_FRAME), before["triples"], counts)
    assert isomorphic(as_blank(data.graph_of(triples)), source)
    ecs = await landed(gateway, pulsar_client, flow, "entity-contexts",
                       frames_for(len(contexts), TRIPLES_PER_FRAME), before["entity-contexts"],
                       counts)
    got = [(e["entity"], e["context"]) for m in ecs for e in m["entities"]]
    assert len(got) == len(contexts)
    assert all(entity["t"] == "i" for entity, _c in got)


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


@needs_profiles
@pytest.mark.parametrize("kind", ["triples", "graph-embeddings", "document-embeddings",
                                  "entity-contexts"])
@outside_trio_mode
async def test_bulk_client_round_trip(
    kind: str, tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """Api(url).bulk() of 2.11.1 imports a kind and exports back everything that landed."""
    env: TgEnv = tg_env(VERSION)
    n = 150 if kind in ("triples", "entity-contexts") else 20
    items, meta, frames = bulk_items(kind, n)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    before = rejected(gateway, kind)

    async with trio.open_nursery() as nursery:
        exporter, out = await start(nursery, [
            env.python, DRIVER, "export", kind, "--url", gateway.http_url, "--flow", flow,
            "--count", str(frames), "--probe", PROBE])
        await await_subscription(pulsar_client, flow, kind, probe_tg2(kind), out,
                                 lambda lines: any("probe" in json.loads(x) for x in lines))
        argv: list[str | Path] = [env.python, DRIVER, "import", kind, "--url", gateway.http_url,
                                  "--flow", flow, "--items", path]
        if meta is not None:
            argv += ["--metadata", json.dumps(meta)]
        run = await run_tool(argv)
        stored = [m for m in await persisted(pulsar_client, flow, kind)
                  if m.get("metadata", {}).get("id") not in (PROBE, END)]
        if len(stored) < frames:
            nursery.cancel_scope.cancel()  # the exporter would wait for ever; checked below
        else:
            with trio.fail_after(EXPORT_TIMEOUT):
                await exporter.wait()

    assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1]) == {
        "handed": len(items)}, run
    messages = await landed(gateway, pulsar_client, flow, kind, frames, before, counts)
    exported = [x for x in map(json.loads, out.lines) if "probe" not in x]
    assert exporter.returncode == 0 and len(exported) == frames, out.lines
    if kind == "triples":
        assert data.count_triples(messages) == n
        source = data.turtle_graph(n, "tg2")
        assert isomorphic(as_blank(data.graph_of(messages)), source)
    elif kind == "entity-contexts":
        assert [e for m in messages for e in m["entities"]] == items
        assert [e for m in exported for e in m["entities"]] == items
    else:
        assert exported == items


@needs_profiles
@outside_trio_mode
async def test_bulk_client_rows(
    tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """bulk.import_rows of 2.11.1 sends 40 rows a frame to the rows kind; all must land."""
    env: TgEnv = tg_env(VERSION)
    n = 100
    rows = [{"metadata": data.metadata_tg2(f"row-{i}"), "schema_name": "people",
             "values": {"name": f"P{i}", "age": str(i)}, "confidence": 0.9, "source_span": ""}
            for i in range(n)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = await run_tool([env.python, DRIVER, "import", "rows", "--url", gateway.http_url,
                          "--flow", flow, "--items", path])
    check_handshake(run, counts)
    assert run.returncode == 0, run
    messages = await landed(gateway, pulsar_client, flow, "rows",
                            frames_for(n, ROWS_PER_FRAME), 0.0, counts)
    assert [v for m in messages for v in m["values"]] == [r["values"] for r in rows]


@needs_profiles
@outside_trio_mode
async def test_load_structured_data(
    tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-structured-data --load of 2.11.1 imports CSV rows, 40 a frame; all must land."""
    env: TgEnv = tg_env(VERSION)
    n = 90
    expected = data.structured_data(tmp_path / "p.csv", tmp_path / "p.json", n)
    run = await run_tool([env.script("tg-load-structured-data"), "-u", gateway.http_url,
                          "-f", flow, "--collection", "c1", "-i", tmp_path / "p.csv",
                          "-d", tmp_path / "p.json", "--load"])
    check_handshake(run, counts)
    assert run.returncode == 0 and "Load Complete" in run.stdout, run
    messages = await landed(gateway, pulsar_client, flow, "rows",
                            frames_for(n, ROWS_PER_FRAME), 0.0, counts)
    assert [v for m in messages for v in m["values"]] == expected


@needs_profiles
@outside_trio_mode
async def test_load_doc_embeds(
    tg_env: Any, gateway: GatewayProcess, pulsar_client: pulsar.Client, flow: str,
    tmp_path: Path, counts: Counts,
) -> None:
    """tg-load-doc-embeds 2.11.1 sends one frame per core entry; every entry must land."""
    env: TgEnv = tg_env(VERSION)
    entries = data.de_core_entries(10, chunks=2, generation="tg2")
    data.write_de_core(tmp_path / "in.msgpack", entries)
    before = rejected(gateway, "document-embeddings")
    run = await run_tool([env.script("tg-load-doc-embeds"), "-u", gateway.http_url,
                          "-f", flow, "-i", tmp_path / "in.msgpack"])
    # As in 1.x, the console script always ends in a TypeError after doing its work.
    assert run.returncode == 1 and "TypeError: main() missing 1 required" in run.stderr, run
    messages = await landed(gateway, pulsar_client, flow, "document-embeddings",
                            len(entries), before, counts)
    # 2.11.1 sends chunk_id with the 1.x plural "vectors" (a list of vectors).
    got = [[(c["chunk_id"], c["vectors"]) for c in m["chunks"]] for m in messages]
    assert got == [[(c["c"], c["v"]) for c in e[1]["c"]] for e in entries]
