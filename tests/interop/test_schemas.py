"""TrustGraph's own schema classes read what quiesce publishes, and quiesce exports what they write.

Not through a socket tool: through the Pulsar topics themselves, with TrustGraph's processors'
own machinery, run inside each TrustGraph venv by ``tg_schema_driver.py`` (1.4.22:
``JsonSchema(Triples)`` records; 1.9.4: its ``PulsarBackend`` and dataclasses; 2.11.1: its
``AsyncPulsarBackend`` and dataclasses, queues named ``flow:tg:…``). The driver names each
topic as that generation's flow templates do, so these tests also check that quiesce's
default topics are TrustGraph's.

Each case pairs a wire frame (what a client sends to quiesce, and what quiesce exports) with
the TrustGraph schema object it stands for, written out by hand field by field (every field
of every record, defaults included). Consumers: quiesce imports the frames, TrustGraph's
consumer decodes the topic, and every decoded object must equal its case. Producers:
TrustGraph's producer sends the objects, quiesce exports the topic (``position=earliest``,
``until=end``), and every exported frame must equal its case.

The cases cover each kind of each profile with what is easy to lose: metadata triples, users
and collections (1.x), roots (2.x), IRIs and literals with escapes and non-ASCII text, typed
and language-tagged literals, blank nodes, quoted triples and named graphs (2.x), several
vectors (1.x), chunk text (1.x) and chunk ids (2.x), rdf types and attributes (2.x), object
rows with confidence and source span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.trio.client import connect

from tests.harness import import_frames
from tests.interop.conftest import SCHEMA_DRIVER, Counts, Gateway, run_tool, topic
from tests.interop.envs import TgEnv

XSD = "http://www.w3.org/2001/XMLSchema#"
EX = "http://example.org/quiesce/"
LONG = 60.0

Case = tuple[dict[str, Any], dict[str, Any]]  # (wire frame, TrustGraph schema object)

# ------------------------------------------------------------------------------- tg1 (1.x)


def w1(text: str, iri: bool) -> dict[str, Any]:
    """A 1.x wire value."""
    return {"v": text, "e": iri}


def t1(s: dict[str, Any], p: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    """A 1.x wire triple."""
    return {"s": s, "p": p, "o": o}


def value1(v: dict[str, Any]) -> dict[str, Any]:
    """1.x's ``Value`` record for wire value ``v`` (``type`` unset)."""
    return {"value": v["v"], "is_uri": v["e"], "type": None}


def triple1(t: dict[str, Any]) -> dict[str, Any]:
    """1.x's ``Triple`` record for wire triple ``t``."""
    return {k: value1(t[k]) for k in "spo"}


def meta1(m: dict[str, Any]) -> dict[str, Any]:
    """1.x's ``Metadata`` record for wire metadata ``m``."""
    return {"id": m["id"], "metadata": [triple1(t) for t in m["metadata"]], "user": m["user"],
            "collection": m["collection"]}


M1 = {"id": "doc-1", "user": "alice", "collection": "c1", "metadata": [
    t1(w1(EX + "doc-1", True), w1(EX + "title", True), w1('A "title"\nwith é ✓ 𝄞', False))]}
M1_BARE = {"id": "doc-2", "metadata": [], "user": "bob", "collection": "c2"}

TG1_FRAMES: dict[str, list[dict[str, Any]]] = {
    "triples": [
        {"metadata": M1, "triples": [
            t1(w1(EX + "s1", True), w1(EX + "knows", True), w1(EX + "s2", True)),
            t1(w1(EX + "s1", True), w1(EX + "note", True), w1("back\\slash \u0000 tab\t", False)),
            t1(w1(EX + "s2", True), w1(EX + "name", True), w1("", False))]},
        {"metadata": M1_BARE, "triples": []},
    ],
    "graph-embeddings": [
        {"metadata": M1, "entities": [
            {"entity": w1(EX + "e1", True), "vectors": [[0.1, -2.5, 3e-7], [1.0, 0.0, -0.0]]},
            {"entity": w1("a literal entity", False), "vectors": [[1.5, 2.25, 1e300]]}]},
    ],
    "document-embeddings": [
        {"metadata": M1_BARE, "chunks": [
            {"chunk": "chunk text é ✓ \"quoted\"\nline", "vectors": [[0.5, 0.25], [-1.0, 2.0]]},
            {"chunk": "", "vectors": [[0.125, 0.0625]]}]},
    ],
    "entity-contexts": [
        {"metadata": M1, "entities": [
            {"entity": w1(EX + "e1", True), "context": "context of e1: 'x' é"},
            {"entity": w1("literal entity", False), "context": ""}]},
    ],
    "objects": [
        {"metadata": M1_BARE, "schema_name": "people",
         "values": [{"name": "Ann", "age": "30"}, {"name": "Bé ✓", "age": ""}],
         "confidence": 0.75, "source_span": "Ann is 30"},
    ],
}


def tg1_object(kind: str, frame: dict[str, Any]) -> dict[str, Any]:
    """The 1.x schema record ``frame`` stands for, every field."""
    m = meta1(frame["metadata"])
    if kind == "triples":
        return {"metadata": m, "triples": [triple1(t) for t in frame["triples"]]}
    if kind == "graph-embeddings":
        return {"metadata": m, "entities": [{"entity": value1(e["entity"]),
                                             "vectors": e["vectors"]}
                                            for e in frame["entities"]]}
    if kind == "document-embeddings":
        return {"metadata": m, "chunks": [{"chunk": c["chunk"], "vectors": c["vectors"]}
                                          for c in frame["chunks"]]}
    if kind == "entity-contexts":
        return {"metadata": m, "entities": [{"entity": value1(e["entity"]),
                                             "context": e["context"]}
                                            for e in frame["entities"]]}
    return {"metadata": m, "schema_name": frame["schema_name"], "values": frame["values"],
            "confidence": frame["confidence"], "source_span": frame["source_span"]}


# ------------------------------------------------------------------------------- tg2 (2.x)


def iri(x: str) -> dict[str, Any]:
    """A 2.x wire IRI term."""
    return {"t": "i", "i": x}


def lit(v: str, dt: str | None = None, ln: str | None = None) -> dict[str, Any]:
    """A 2.x wire literal term."""
    out: dict[str, Any] = {"t": "l", "v": v}
    if dt:
        out["dt"] = dt
    if ln:
        out["ln"] = ln
    return out


def blank(d: str) -> dict[str, Any]:
    """A 2.x wire blank node."""
    return {"t": "b", "d": d}


def t2(s: dict[str, Any], p: dict[str, Any], o: dict[str, Any], g: str | None = None
       ) -> dict[str, Any]:
    """A 2.x wire triple (``g`` only when in a named graph)."""
    out = {"s": s, "p": p, "o": o}
    if g:
        out["g"] = g
    return out


def term2(x: dict[str, Any]) -> dict[str, Any]:
    """2.x's ``Term`` dataclass for wire term ``x``, every field."""
    out: dict[str, Any] = {"type": x["t"], "iri": "", "id": "", "value": "", "datatype": "",
                           "language": "", "triple": None}
    if x["t"] == "i":
        out["iri"] = x["i"]
    elif x["t"] == "b":
        out["id"] = x["d"]
    elif x["t"] == "l":
        out.update(value=x["v"], datatype=x.get("dt", ""), language=x.get("ln", ""))
    else:
        out["triple"] = triple2(x["tr"])
    return out


def triple2(t: dict[str, Any]) -> dict[str, Any]:
    """2.x's ``Triple`` dataclass for wire triple ``t``."""
    return {"s": term2(t["s"]), "p": term2(t["p"]), "o": term2(t["o"]), "g": t.get("g")}


M2 = {"id": "doc-1", "root": "root-doc", "collection": "c1"}
M2_BARE = {"id": "doc-2", "root": "", "collection": "c2"}

TG2_FRAMES: dict[str, list[dict[str, Any]]] = {
    "triples": [
        {"metadata": M2, "triples": [
            t2(iri(EX + "s1"), iri(EX + "age"), lit("42", dt=XSD + "integer")),
            t2(iri(EX + "s1"), iri(EX + "label"), lit('nom "é" ✓\n', ln="fr")),
            t2(blank("b1"), iri(EX + "knows"), blank("b2"), g=EX + "graph1"),
            t2({"t": "t", "tr": t2(iri(EX + "s1"), iri(EX + "knows"), iri(EX + "s2"))},
               iri(EX + "certainty"), lit("0.9", dt=XSD + "decimal")),
            t2(iri(EX + "s2"), iri(EX + "note"), lit(""))]},
        {"metadata": M2_BARE, "triples": []},
    ],
    "graph-embeddings": [
        {"metadata": M2, "entities": [
            {"entity": iri(EX + "e1"), "vector": [0.1, -2.5, 3e-7], "chunk_id": "doc-1/c1",
             "rdf_type": [EX + "Person", EX + "Agent"],
             "attributes": {"source": "a", "tags": ["x", "y"]}},
            {"entity": lit("literal entity", ln="en"), "vector": [1e300, 0.0]}]},
    ],
    "document-embeddings": [
        {"metadata": M2_BARE, "chunks": [
            {"chunk_id": "doc-2/c1", "vector": [0.5, 0.25], "attributes": {"page": "3"}},
            {"chunk_id": "doc-2/c2", "vector": [-1.0, 2.0]}]},
    ],
    "entity-contexts": [
        {"metadata": M2, "entities": [
            {"entity": iri(EX + "e1"), "context": "context é ✓", "chunk_id": "doc-1/c1",
             "rdf_type": [EX + "Person"], "attributes": {"k": ["v1", "v2"]}},
            {"entity": blank("b7"), "context": ""}]},
    ],
    "rows": [
        {"metadata": M2, "schema_name": "people",
         "values": [{"name": "Ann", "age": "30"}, {"name": "Bé ✓", "age": ""}],
         "confidence": 0.75, "source_span": "Ann is 30"},
    ],
}


def tg2_object(kind: str, frame: dict[str, Any]) -> dict[str, Any]:
    """The 2.x schema dataclass ``frame`` stands for, every field (defaults included)."""
    m = frame["metadata"]
    meta = {"id": m["id"], "root": m.get("root", ""), "collection": m["collection"]}
    extras = ("chunk_id", "rdf_type", "attributes")
    default: dict[str, Any] = {"chunk_id": "", "rdf_type": [], "attributes": {}}
    if kind == "triples":
        return {"metadata": meta, "triples": [triple2(t) for t in frame["triples"]]}
    if kind == "graph-embeddings":
        return {"metadata": meta, "entities": [
            {"entity": term2(e["entity"]), "vector": e["vector"],
             **{k: e.get(k, default[k]) for k in extras}} for e in frame["entities"]]}
    if kind == "document-embeddings":
        return {"metadata": meta, "chunks": [
            {"chunk_id": c["chunk_id"], "vector": c["vector"],
             "attributes": c.get("attributes", {})} for c in frame["chunks"]]}
    if kind == "entity-contexts":
        return {"metadata": meta, "entities": [
            {"entity": term2(e["entity"]), "context": e["context"],
             **{k: e.get(k, default[k]) for k in extras}} for e in frame["entities"]]}
    return {"metadata": meta, "schema_name": frame["schema_name"], "values": frame["values"],
            "confidence": frame["confidence"], "source_span": frame["source_span"]}


# 1.x frames into a tg2 flow: converted (the user is the flow's workspace), read by 2.x.
TG1_INTO_TG2: dict[str, list[Case]] = {
    "triples": [(
        {"metadata": {"id": "doc-9", "metadata": [], "user": "default", "collection": "c9"},
         "triples": [t1(w1(EX + "s9", True), w1(EX + "name", True), w1("nine é", False))]},
        {"metadata": {"id": "doc-9", "root": "", "collection": "c9"}, "triples": [
            triple2(t2(iri(EX + "s9"), iri(EX + "name"), lit("nine é")))]},
    )],
    "graph-embeddings": [(
        {"metadata": {"id": "doc-9", "metadata": [], "user": "default", "collection": "c9"},
         "entities": [{"entity": w1(EX + "e9", True), "vectors": [[0.5, -0.5]]}]},
        {"metadata": {"id": "doc-9", "root": "", "collection": "c9"}, "entities": [
            {"entity": term2(iri(EX + "e9")), "vector": [0.5, -0.5], "chunk_id": "",
             "rdf_type": [], "attributes": {}}]},
    )],
}


def cases(profile: str) -> dict[str, list[Case]]:
    """Per kind, the (frame, schema object) pairs of ``profile``'s own wire format."""
    if profile == "tg1":
        return {k: [(f, tg1_object(k, f)) for f in fs] for k, fs in TG1_FRAMES.items()}
    return {k: [(f, tg2_object(k, f)) for f in fs] for k, fs in TG2_FRAMES.items()}


# ------------------------------------------------------------------------------- helpers


async def import_all(gateway: Gateway, flow: str, frames: dict[str, list[dict[str, Any]]]
                     ) -> int:
    """Import every frame through quiesce (receipts on); return how many were receipted."""
    receipted = 0
    for kind, fs in frames.items():
        url = f"ws://127.0.0.1:{gateway.port}/api/v1/flow/{flow}/import/{kind}?receipts=true"
        with trio.fail_after(LONG):
            client = await import_frames(url, [json.dumps(f) for f in fs])
        assert client.errors == [] and client.ack == len(fs), (kind, client.received)
        receipted += client.ack
    return receipted


async def export_all(gateway: Gateway, flow: str, kind: str) -> list[dict[str, Any]]:
    """Everything in the topic of (flow, kind), exported by quiesce (a new subscription from
    the earliest message, ``until=end``), each distinct frame once, in first-seen order.

    pulsar-lite has been seen to deliver a message twice (DESIGN.md): a repeat is counted
    and printed, not compared.
    """
    url = (f"ws://127.0.0.1:{gateway.port}/api/v1/flow/{flow}/export/{kind}"
           f"?subscription=check-{kind}&position=earliest&until=end")
    frames: list[dict[str, Any]] = []
    seen: set[str] = set()
    repeats = 0
    with trio.fail_after(LONG):
        async with connect(url) as ws:
            while True:
                frame = json.loads(await ws.recv())
                if frame == {"end": True}:
                    break
                key = json.dumps(frame, sort_keys=True)
                if key in seen:
                    repeats += 1
                    continue
                seen.add(key)
                frames.append(frame)
    if repeats:
        print(f"\n{kind}: {repeats} repeated deliveries (not compared)")
    return frames


def canonical(frame: dict[str, Any]) -> str:
    """A frame's JSON with sorted keys: an order to compare deliveries in (Shared
    subscriptions and redeliveries do not keep the topic's order)."""
    return json.dumps(frame, sort_keys=True)


async def schema_driver(env: TgEnv, *args: str | Path) -> list[dict[str, Any]]:
    """Run ``tg_schema_driver.py`` in ``env``; its JSON output lines."""
    run = await run_tool([env.python, SCHEMA_DRIVER, *args])
    assert run.returncode == 0, run
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def diff(got: Any, want: Any, path: str = "") -> str | None:
    """The first field where ``got`` and ``want`` differ (for assertion messages)."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got or key not in want:
                return f"{path}.{key}: got {got.get(key, '<missing>')!r}, " \
                       f"want {want.get(key, '<missing>')!r}"
            found = diff(got[key], want[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return f"{path}: {len(got)} items, want {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            found = diff(g, w, f"{path}[{i}]")
            if found:
                return found
        return None
    if got != want or type(got) is not type(want):
        return f"{path}: got {got!r}, want {want!r}"
    return None


# ------------------------------------------------------------------------------- consumers


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_tg1_consumers_read_what_quiesce_publishes(
    version: str, tg_env: Any, gateway: Gateway, broker_url: str, flow: str, counts: Counts,
) -> None:
    """What quiesce (tg1) publishes, 1.x's schema classes decode with every field intact."""
    env: TgEnv = tg_env(version)
    by_kind = cases("tg1")
    sent = await import_all(gateway, flow, {k: [f for f, _o in cs] for k, cs in by_kind.items()})
    spec = [{"kind": k, "count": len(cs)} for k, cs in by_kind.items()]
    read = await schema_driver(env, "consume", "--broker", broker_url, "--flow", flow,
                               "--spec", json.dumps(spec))
    got = {r["kind"]: r["messages"] for r in read}
    counts(kinds=len(by_kind), sent=sum(map(len, by_kind.values())), persisted=sent,
           decoded=sum(map(len, got.values())))
    assert {r["kind"]: r["topic"] for r in read} == {k: topic(flow, k, "tg1") for k in by_kind}
    for kind, cs in by_kind.items():
        want = [o for _f, o in cs]
        assert got[kind] == want, (kind, diff(got[kind], want))


async def test_tg2_consumers_read_what_quiesce_publishes(
    tg_env: Any, gateway_tg2: Gateway, broker_url: str, flow: str, counts: Counts,
) -> None:
    """What quiesce (tg2) publishes, from 2.x frames and from 1.x frames it converted,
    2.11.1's own deserialisation decodes with every field intact."""
    env: TgEnv = tg_env("2.11.1")
    by_kind = cases("tg2")
    for kind, extra in TG1_INTO_TG2.items():
        by_kind[kind] = by_kind[kind] + extra
    sent = await import_all(gateway_tg2, flow,
                            {k: [f for f, _o in cs] for k, cs in by_kind.items()})
    spec = [{"kind": k, "count": len(cs)} for k, cs in by_kind.items()]
    read = await schema_driver(env, "consume", "--broker", broker_url, "--flow", flow,
                               "--workspace", "default", "--spec", json.dumps(spec))
    got = {r["kind"]: r["messages"] for r in read}
    counts(kinds=len(by_kind), sent=sum(map(len, by_kind.values())), persisted=sent,
           decoded=sum(map(len, got.values())))
    assert {r["kind"]: r["topic"] for r in read} == {k: topic(flow, k, "tg2") for k in by_kind}
    for kind, cs in by_kind.items():
        want = [o for _f, o in cs]
        assert got[kind] == want, (kind, diff(got[kind], want))


# ------------------------------------------------------------------------------- producers


@pytest.mark.parametrize("version", ["1.4.22", "1.9.4"])
async def test_quiesce_exports_what_tg1_producers_publish(
    version: str, tg_env: Any, gateway: Gateway, broker_url: str, flow: str, tmp_path: Path,
    counts: Counts,
) -> None:
    """What 1.x's producers publish with its schema, quiesce (tg1) exports as the 1.x wire
    frames they stand for, field by field."""
    env: TgEnv = tg_env(version)
    by_kind = cases("tg1")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"kind": k, "message": o}) + "\n"
                             for k, cs in by_kind.items() for _f, o in cs), encoding="utf-8")
    produced = await schema_driver(env, "produce", "--broker", broker_url, "--flow", flow,
                                   "--items", items)
    exported = {kind: await export_all(gateway, flow, kind) for kind in by_kind}
    counts(kinds=len(by_kind), produced=produced[0]["sent"],
           exported=sum(map(len, exported.values())))
    assert produced[0]["topics"] == {k: topic(flow, k, "tg1") for k in by_kind}
    for kind, cs in by_kind.items():
        want = [f for f, _o in cs]
        got = sorted(exported[kind], key=canonical)
        assert got == sorted(want, key=canonical), (kind, diff(got, sorted(want, key=canonical)))


async def test_quiesce_exports_what_tg2_producers_publish(
    tg_env: Any, gateway_tg2: Gateway, broker_url: str, flow: str, tmp_path: Path,
    counts: Counts,
) -> None:
    """What 2.11.1's producers publish with its serialisation, quiesce (tg2) exports as the
    2.x wire frames they stand for, field by field."""
    env: TgEnv = tg_env("2.11.1")
    by_kind = cases("tg2")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"kind": k, "message": o}) + "\n"
                             for k, cs in by_kind.items() for _f, o in cs), encoding="utf-8")
    produced = await schema_driver(env, "produce", "--broker", broker_url, "--flow", flow,
                                   "--workspace", "default", "--items", items)
    exported = {kind: await export_all(gateway_tg2, flow, kind) for kind in by_kind}
    counts(kinds=len(by_kind), produced=produced[0]["sent"],
           exported=sum(map(len, exported.values())))
    assert produced[0]["topics"] == {k: topic(flow, k, "tg2") for k in by_kind}
    for kind, cs in by_kind.items():
        want = [f for f, _o in cs]
        got = sorted(exported[kind], key=canonical)
        assert got == sorted(want, key=canonical), (kind, diff(got, sorted(want, key=canonical)))
