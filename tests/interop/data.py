"""Small inline data for the interoperability tests, in the formats TrustGraph's tools read.

Everything is generated, deterministic and tiny:

- Turtle: N distinct triples. The ``tg1`` variant has only what TrustGraph 1.x's loaders can
  carry (IRIs and plain literals, some needing escapes); ``tg2`` adds language-tagged and
  typed literals and blank nodes (subjects and objects), which 2.x's wire format can carry.
- Document-embeddings cores: what ``tg-save-doc-embeds`` writes and ``tg-load-doc-embeds``
  reads, a stream of msgpack arrays ``["de", {"m": M, "c": [{"c": chunk, "v": vectors}]}]``
  with ``M = {"i": id, "m": metadata triples, "u": user, "c": collection}`` (2.x: no ``u``,
  and ``c`` of a chunk holds its ``chunk_id``).
- Structured data: a CSV file and the JSON descriptor ``tg-load-structured-data --load`` takes
  (format, field mappings, output schema name and batch size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import rdflib
from rdflib import XSD, BNode, Literal, URIRef

EX = "http://example.org/quiesce/"
PREDICATES = [URIRef(EX + p) for p in ("name", "knows", "note", "partOf")]
# Literal texts that stress escaping on every hop (JSON, Turtle, msgpack).
TEXTS = ["plain", 'with "quotes"', "line\nbreak", "unicode é ✓ 𝄞", "back\\slash", ""]


def turtle_graph(n: int, variant: str = "tg1") -> rdflib.Graph:
    """A graph of exactly ``n`` triples (see the module docstring for the variants).

    ``tg2-named`` is ``tg2`` without blank nodes: graphs of it compare as sets of triples,
    where rdflib's isomorphism test takes minutes on tens of thousands of blank nodes.
    """
    if variant not in ("tg1", "tg2", "tg2-named"):
        raise ValueError(variant)
    g = rdflib.Graph()
    g.bind("ex", EX)
    for i in range(n):
        s: URIRef | BNode = URIRef(f"{EX}s{i // 4}")
        p = PREDICATES[i % len(PREDICATES)]
        o: URIRef | BNode | Literal
        width = {"tg1": 2, "tg2": 6, "tg2-named": 4}[variant]
        shape, k = i % width, i // width  # k varies the values within one shape
        if shape == 0:
            o = URIRef(f"{EX}o{i}")
        elif shape == 1:
            o = Literal(f"{TEXTS[k % len(TEXTS)]} #{i}")
        elif shape == 2:
            o = Literal(f"label {i}", lang=("en", "fr", "de-CH")[k % 3])
        elif shape == 3:
            o = Literal(str(i), datatype=XSD.integer) if k % 2 else Literal(
                f"2024-01-{1 + k % 28:02d}", datatype=XSD.date)
        elif shape == 4:
            o = BNode(f"b{i}")
        else:
            s = BNode(f"b{i - 1}")
            o = Literal(f"blank subject {i}")
        g.add((s, p, o))
    assert len(g) == n, (len(g), n)
    return g


def write_turtle(path: Path, n: int, variant: str = "tg1") -> rdflib.Graph:
    """Write :func:`turtle_graph` to ``path`` as Turtle; return the graph."""
    g = turtle_graph(n, variant)
    path.write_text(g.serialize(format="turtle"), encoding="utf-8")
    return g


def literal_triples(g: rdflib.Graph) -> list[tuple[Any, Any, Literal]]:
    """The triples of ``g`` whose object is a literal (what tg-load-knowledge turns into
    entity contexts)."""
    return [(s, p, o) for s, p, o in g if isinstance(o, Literal)]


def vector(i: int, dim: int = 8) -> list[float]:
    """A deterministic embedding vector with values that are not round in binary."""
    return [round((i + 1) * 0.1 + j * 0.013 - 0.5, 6) for j in range(dim)]


def metadata_tg1(doc: str, user: str = "alice", collection: str = "c1") -> dict[str, Any]:
    """1.x message metadata."""
    return {"id": doc, "metadata": [], "user": user, "collection": collection}


def metadata_tg2(doc: str, collection: str = "c1") -> dict[str, Any]:
    """2.x message metadata (no user: the workspace replaces it)."""
    return {"id": doc, "metadata": [], "collection": collection}


def de_core_entries(n: int, chunks: int = 2, generation: str = "tg1") -> list[list[Any]]:
    """``n`` document-embeddings core entries of ``chunks`` chunks each, 2 vectors a chunk."""
    entries = []
    for i in range(n):
        m: dict[str, Any] = {"i": f"doc{i}", "m": [], "c": "c1"}
        if generation == "tg1":
            m["u"] = "alice"
        cs = []
        for j in range(chunks):
            k = i * chunks + j
            text = (f"chunk {k} of doc{i}: {TEXTS[k % len(TEXTS)]}" if generation == "tg1"
                    else f"doc{i}/c{j}")
            cs.append({"c": text, "v": [vector(k), vector(k + 1000)]})
        entries.append(["de", {"m": m, "c": cs}])
    return entries


def write_de_core(path: Path, entries: list[list[Any]]) -> None:
    """Write core ``entries`` as tg-save-doc-embeds does (concatenated msgpack objects)."""
    with path.open("wb") as f:
        for entry in entries:
            f.write(msgpack.packb(entry, use_bin_type=True))


def read_de_core(path: Path) -> list[Any]:
    """Every msgpack object in the core file at ``path``."""
    with path.open("rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


def structured_data(path_csv: Path, path_descriptor: Path, n: int, schema: str = "people",
                    batch_size: int = 40) -> list[dict[str, str]]:
    """Write a CSV of ``n`` people and a ``--load`` descriptor; return the expected values
    (every value a string, as tg-load-structured-data sends them)."""
    rows = [{"name": f"Person {i}", "age": str(20 + i % 50), "city": ("Paris", "Zürich")[i % 2]}
            for i in range(n)]
    lines = ["full_name,age,city"] + [f"{r['name']},{r['age']},{r['city']}" for r in rows]
    path_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    descriptor = {
        "version": "1.0",
        "format": {"type": "csv", "encoding": "utf-8",
                   "options": {"delimiter": ",", "has_header": True}},
        "mappings": [
            {"source_field": "full_name", "target_field": "name", "transforms": [{"type": "trim"}]},
            {"source_field": "age", "target_field": "age", "transforms": [{"type": "to_int"}]},
            {"source_field": "city", "target_field": "city"},
        ],
        "output": {"format": "trustgraph-objects", "schema_name": schema,
                   "options": {"confidence": 0.9, "batch_size": batch_size}},
    }
    path_descriptor.write_text(json.dumps(descriptor, indent=1), encoding="utf-8")
    return rows


# --------------------------------------------------------------------------------------------
# Reading back what reached a topic, whatever the encoding
# --------------------------------------------------------------------------------------------

def term(value: dict[str, Any]) -> URIRef | Literal | BNode:
    """An rdflib term from a value in any encoding a topic may hold.

    Accepts the 1.x socket form ``{"v", "e"}``, 1.x's Pulsar schema form ``{"value",
    "is_uri", "type"}`` (what the ``tg1`` profile publishes) and 2.x terms (``{"t": "i"|"l"|
    "b", …}``).
    """
    if "t" in value:
        if value["t"] == "i":
            return URIRef(value["i"])
        if value["t"] == "b":
            return BNode(value["d"])
        if value["t"] == "l":
            return Literal(value["v"], lang=value.get("ln") or None,
                           datatype=value.get("dt") or None)
        raise ValueError(f"unexpected term {value}")
    if "v" in value:
        return URIRef(value["v"]) if value["e"] else Literal(value["v"])
    return URIRef(value["value"]) if value["is_uri"] else Literal(value["value"])


def graph_of(messages: list[dict[str, Any]]) -> rdflib.Graph:
    """The graph made of the triples of every triples message in ``messages``."""
    g = rdflib.Graph()
    for message in messages:
        for t in message["triples"]:
            g.add((term(t["s"]), term(t["p"]), term(t["o"])))
    return g


def count_triples(messages: list[dict[str, Any]]) -> int:
    """Triples carried by ``messages`` (duplicates included)."""
    return sum(len(m["triples"]) for m in messages)


def value_triples(messages: list[dict[str, Any]]) -> list[tuple[tuple[str, bool], ...]]:
    """The triples of ``messages`` as sorted ``((text, is_iri), …)`` tuples (duplicates kept).

    For comparisons rdflib cannot make: 1.9's bulk client turns literals into "IRIs" that
    are not valid IRIs, which rdflib refuses to hash.
    """
    def raw(value: dict[str, Any]) -> tuple[str, bool]:
        if "t" in value:
            return (value["i"], True) if value["t"] == "i" else (value.get("v", ""), False)
        if "v" in value:
            return value["v"], bool(value["e"])
        return value["value"], bool(value["is_uri"])

    return sorted(tuple(raw(t[k]) for k in ("s", "p", "o"))
                  for message in messages for t in message["triples"])
