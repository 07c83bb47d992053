"""RDF in and out of TrustGraph triples messages, through rdflib.

Import: `parse` reads a document (Turtle, N-Triples, N-Quads, TriG, JSON-LD) into its quads
*in document order* (rdflib's own store iterates in hash order, which changes from one run to
the next; resuming needs the same messages every time), and `wire2_triples` turns them into
TrustGraph 2.x triples with stable blank node labels; `triples_message` groups them into a
message, in 2.x (`{"t":"i"...}` terms, metadata ``{id, root, collection}``) or, through
`quiesce.core.convert.convert_wire`, in 1.x (``{"v","e"}`` values), where 1.x can carry them.

Export: `message_quads` reads the triples of an exported message of either wire format back
into rdflib terms; `serialize_quads` writes them as N-Triples or N-Quads.

Blank nodes: rdflib names them afresh on every parse, so each is relabelled
``<prefix>_<k>``, ``k`` counting blank nodes in order of first appearance and the prefix
derived from the file's content: the same file always gives the same labels (a resumed import
continues the same graph), and two files never share one (blank nodes are local to their
document).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import rdflib
from rdflib import BNode, Dataset, Graph, Literal, URIRef
from rdflib.graph import DATASET_DEFAULT_GRAPH_ID
from rdflib.namespace import RDF
from rdflib.plugins.stores.memory import Memory
from rdflib.term import IdentifiedNode, Node

from quiesce.client.errors import CannotCarry, UsageError
from quiesce.core.convert import DEFAULT_USER, convert_wire
from quiesce.core.errors import InvalidMessage
from quiesce.core.profiles import Profile

__all__ = [
    "RDF_FORMATS",
    "Quad",
    "message_quads",
    "parse",
    "serialize_quads",
    "triples_message",
    "wire2_triples",
]

#: rdflib's parser names for the RDF formats import reads, by the names ``--format`` takes.
RDF_FORMATS: dict[str, str] = {
    "turtle": "turtle",
    "ttl": "turtle",
    "nt": "nt",
    "ntriples": "nt",
    "nq": "nquads",
    "nquads": "nquads",
    "trig": "trig",
    "json-ld": "json-ld",
    "jsonld": "json-ld",
}

#: A triple and its graph (None: the default graph), as rdflib terms.
Quad = tuple[Node, Node, Node, Node | None]

_LANG_STRING = str(RDF.langString)
# The end of an N-Triples or N-Quads line, however rdflib padded it.
_PADDED_END = re.compile(rb"\s+\.$")


class _DocumentOrder(Memory):
    """A sink for rdflib's parsers: each distinct quad, in the order the parser adds it.

    It stores nothing else: rdflib's parsers only add (checked for every format by the
    tests), and keeping rdflib's own indexes too cost 70 % more time (300,000 N-Triples:
    7.1 s against 4.1 s). Everything but `add` is the memory store's, over an empty store.
    """

    def __init__(self) -> None:
        super().__init__()
        self.quads: list[Quad] = []
        self._seen: set[Quad] = set()

    def add(self, triple: tuple[Node, Node, Node], context: Any, quoted: bool = False) -> None:
        graph = getattr(context, "identifier", None)
        quad: Quad = (*triple, None if graph == DATASET_DEFAULT_GRAPH_ID else graph)
        if quad not in self._seen:
            self._seen.add(quad)
            self.quads.append(quad)


def parse(data: bytes, fmt: str, name: str, base: str | None = None) -> list[Quad]:
    """Every distinct quad of an RDF document, in the order the document states them.

    Args:
        data: the document.
        fmt: an rdflib parser name (a value of `RDF_FORMATS`).
        name: the document's name, for messages.
        base: the base IRI for relative IRIs (rdflib's default when None).

    Raises:
        UsageError: the document is not valid ``fmt``.
    """
    store = _DocumentOrder()
    # rdflib rewrites typed literals into a canonical form as it parses ("01"^^xsd:integer
    # becomes "1", a "Z" time zone "+00:00"); the client sends what the file says. The flag
    # is rdflib's global, read when each Literal is made: restored at once.
    normalize, rdflib.NORMALIZE_LITERALS = rdflib.NORMALIZE_LITERALS, False
    try:
        Dataset(store=store).parse(data=data, format=fmt, publicID=base)
    except Exception as exc:  # rdflib's parsers raise many unrelated types for bad input
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UsageError(f"{name}: not valid {fmt}: {detail}") from exc
    finally:
        rdflib.NORMALIZE_LITERALS = normalize
    return store.quads


def _term2(node: Node, labels: dict[Node, str], prefix: str) -> dict[str, Any]:
    if isinstance(node, URIRef):
        return {"t": "i", "i": str(node)}
    if isinstance(node, BNode):
        label = labels.get(node)
        if label is None:
            label = labels[node] = f"{prefix}_{len(labels) + 1}"
        return {"t": "b", "d": label}
    if isinstance(node, Literal):
        term: dict[str, Any] = {"t": "l", "v": str(node)}
        if node.language:
            term["ln"] = node.language
        elif node.datatype is not None:
            term["dt"] = str(node.datatype)
        return term
    raise UsageError(f"cannot import the RDF term {node!r} (a {type(node).__name__})")


def wire2_triples(quads: Iterable[Quad], prefix: str) -> list[dict[str, Any]]:
    """TrustGraph 2.x triples of ``quads``, in order; a named graph becomes ``"g"``.

    Args:
        quads: from `parse`.
        prefix: the blank node label prefix of this document (module docstring).
    """
    labels: dict[Node, str] = {}
    out = []
    for s, p, o, g in quads:
        triple: dict[str, Any] = {"s": _term2(s, labels, prefix), "p": _term2(p, labels, prefix),
                  "o": _term2(o, labels, prefix)}
        if g is not None:
            graph = _term2(g, labels, prefix)
            triple["g"] = graph["i"] if graph["t"] == "i" else f"_:{graph['d']}"
        out.append(triple)
    return out


def triples_message(triples: list[dict[str, Any]], wire: Profile, *, doc_id: str,
                    collection: str, user: str = DEFAULT_USER) -> dict[str, Any]:
    """A triples message of 2.x ``triples`` in the ``wire`` format.

    Args:
        triples: from `wire2_triples`.
        wire: TG2 keeps every term as it is; TG1 converts with `convert_wire`.
        doc_id: the message's ``metadata.id``.
        collection: its ``metadata.collection``.
        user: (1.x) its ``metadata.user``.

    Raises:
        InvalidMessage: (TG1) a triple 1.x cannot carry; the detail names it by its index in
            this message (``triples[3].o.ln: tg1 cannot carry a literal language tag``).
    """
    message = {"metadata": {"id": doc_id, "root": "", "collection": collection},
               "triples": triples}
    if wire is Profile.TG2:
        return message
    return convert_wire("triples", message, Profile.TG2, Profile.TG1, user=user)


def check_tg1(triples: Sequence[dict[str, Any]], quads: Sequence[Quad], name: str) -> None:
    """Raise `CannotCarry` naming the first of ``triples`` that 1.x cannot carry.

    Args:
        triples: 2.x triples (from `wire2_triples`).
        quads: the same triples as rdflib terms, to show the offending one.
        name: the document's name, for the message.
    """
    for i, triple in enumerate(triples):
        try:
            triples_message([triple], Profile.TG1, doc_id="", collection="")
        except InvalidMessage as exc:
            what = exc.detail.split(": ", 1)[-1]
            shown = " ".join(term.n3() for term in quads[i][:3] if term is not None)
            raise CannotCarry(
                f"{name}: triple {i + 1} ({shown}): {what}; import it with --wire tg2 into a "
                "gateway (or flow) with profile tg2") from None


# ---------------------------------------------------------------- export


def _node(term: Any, path: str) -> Node:
    if not isinstance(term, dict):
        raise InvalidMessage(f"{path}: expected a term object")
    kind = term.get("t")
    if kind is None:  # 1.x: {"v": str, "e": bool}
        value = term.get("v")
        if not isinstance(value, str):
            raise InvalidMessage(f"{path}.v: expected a string")
        return URIRef(value) if term.get("e") else Literal(value)
    if kind == "i":
        return URIRef(str(term.get("i", "")))
    if kind == "b":
        return BNode(str(term.get("d", "")))
    if kind == "l":
        lang = term.get("ln") or None
        datatype = term.get("dt") or None
        if lang is not None and datatype == _LANG_STRING:
            datatype = None
        if lang is not None and datatype is not None:
            raise InvalidMessage(f"{path}: a literal with both a language and a datatype")
        return Literal(str(term.get("v", "")), lang=lang,
                       datatype=URIRef(datatype) if datatype else None, normalize=False)
    raise InvalidMessage(f"{path}.t: cannot write a {kind!r} term as RDF")


def message_quads(message: dict[str, Any]) -> Iterator[Quad]:
    """The triples of an exported triples message (1.x or 2.x wire format) as rdflib quads.

    The metadata's own triples (1.x ``metadata.metadata``) describe the message, not the
    graph, and are not returned.

    Raises:
        InvalidMessage: not a triples message, or a term RDF cannot hold (a quoted triple).
    """
    triples = message.get("triples")
    if not isinstance(triples, list):
        raise InvalidMessage("triples: expected a list (is this a triples export?)")
    for i, triple in enumerate(triples):
        if not isinstance(triple, dict):
            raise InvalidMessage(f"triples[{i}]: expected an object")
        at = f"triples[{i}]"
        s, p, o = (_node(triple.get(k), f"{at}.{k}") for k in ("s", "p", "o"))
        g = triple.get("g")
        graph: Node | None = None
        if isinstance(g, str) and g:
            graph = BNode(g[2:]) if g.startswith("_:") else URIRef(g)
        yield (s, p, o, graph)


def serialize_quads(quads: Iterable[Quad], *, with_graphs: bool) -> bytes:
    """N-Quads (``with_graphs``) or N-Triples lines of ``quads``, UTF-8.

    With N-Triples, the graph of a quad is left out (the caller counts those).
    """
    if with_graphs:
        dataset = Dataset()
        for s, p, o, g in quads:
            target = dataset if g is None else dataset.graph(cast("IdentifiedNode", g))
            target.add((s, p, o))
        text = dataset.serialize(format="nquads", encoding="utf-8")
    else:
        graph = Graph()
        for s, p, o, _g in quads:
            graph.add((s, p, o))
        text = graph.serialize(format="nt", encoding="utf-8")
    # rdflib ends N-Quads with an empty line and pads default-graph quads with a second space.
    lines = [_PADDED_END.sub(b" .", line) for line in text.splitlines() if line.strip()]
    return b"".join(line + b"\n" for line in lines)
