"""Conversion between TrustGraph's wire formats (1.x, 2.x) and its Pulsar payloads (tg1, tg2).

Four representations of one message, per kind:

``W1`` — TrustGraph 1.x's socket format (what its gateway reads and writes; see
`quiesce.core.wire`)::

    V = {"v": str, "e": bool}                          T = {"s": V, "p": V, "o": V}
    M = {"id": str, "metadata": [T], "user": str, "collection": str}
    triples {metadata, triples: [T]}
    graph-embeddings {metadata, entities: [{entity: V, vectors: [[num]]}]}
    document-embeddings {metadata, chunks: [{chunk: str, vectors}]}
    entity-contexts {metadata, entities: [{entity: V, context: str}]}
    objects {metadata, schema_name: str, values: {str: str} | [{str: str}],
             confidence?: number, source_span?: str}          (metadata.metadata optional here)

``P1`` — what TrustGraph 1.x's processors read from Pulsar: the ``pulsar.schema.JsonSchema`` of
its records (v1.4.22, ``trustgraph-base/trustgraph/schema/``; v1.9.4 sends the same objects as
dataclasses through ``json.dumps``). Field order as the records declare it::

    Value {"value": str, "is_uri": bool, "type": null}    Triple {"s", "p", "o"}
    Metadata {"id", "metadata": [Triple], "user", "collection"}
    Triples {metadata, triples}
    GraphEmbeddings {metadata, entities: [{"entity": Value, "vectors": [[float]]}]}
    DocumentEmbeddings {metadata, chunks: [{"chunk": str, "vectors": [[float]]}]}
        (``chunk`` is a Bytes field, which JsonSchema writes as the decoded string)
    EntityContexts {metadata, entities: [{"entity": Value, "context": str}]}
    ExtractedObject {metadata, schema_name, values: [{str: str}], confidence, source_span}

``W2`` — TrustGraph 2.x's socket format (2.11's gateway, ``messaging/translators/primitives.py``
and ``gateway/dispatch/*_import.py``)::

    Term = {"t": "i", "i": IRI} | {"t": "l", "v": str, "dt"?: str, "ln"?: str}
         | {"t": "b", "d": str} | {"t": "t", "tr": T}
    T = {"s": Term, "p": Term, "o": Term, "g"?: str | null}
    M = {"id": str, "root"?: str, "collection": str}
    graph-embeddings entities [{entity: Term, vector: [num], chunk_id?, rdf_type?: [str],
                                attributes?: {str: str | [str]}}]
    document-embeddings chunks [{chunk_id: str, vector: [num], attributes?}]
    entity-contexts entities [{entity: Term, context: str, chunk_id?, rdf_type?, attributes?}]
    rows {metadata, schema_name, values, confidence?, source_span?}

  Earlier 2.x releases sent fields 2.11 no longer has, and its own tools still send
  ``"metadata": []``; W2 accepts them as optional *legacy* fields, and conversion from 1.x
  uses them so that nothing is lost on the way: ``metadata.user`` (2.0 to 2.3),
  ``metadata.metadata: [T]`` (2.0 to 2.1), ``vectors: [[num]]`` instead of ``vector``, and
  ``chunk: str`` instead of ``chunk_id`` (2.0 to 2.1).

``P2`` — what TrustGraph 2.x's processors read from Pulsar (2.11.1,
``trustgraph/base/serialization.py``): ``json.dumps(dataclass_to_dict(record))`` with a bytes
schema, i.e. every dataclass field, defaults included, ``None`` as ``null``::

    Term {"type", "iri", "id", "value", "datatype", "language", "triple": Triple | null}
    Triple {"s", "p", "o", "g": str | null}          Metadata {"id", "root", "collection"}
    EntityEmbeddings {"entity", "vector", "chunk_id", "rdf_type", "attributes"}
    ChunkEmbeddings {"chunk_id", "vector", "attributes"}
    EntityContext {"entity", "context", "chunk_id", "rdf_type", "attributes"}
    ExtractedObject as in P1, with the 2.x Metadata.

Conversions. ``W1 <-> P1`` and ``W2 <-> P2`` carry everything. ``W1 -> W2`` carries everything
too (into the legacy fields where 2.11 has no place). What has no place on the other side is
*rejected* with `InvalidMessage` naming the field and what cannot be carried, never dropped:

* into 1.x: a literal with a datatype (other than ``xsd:string``, which RDF 1.1 makes the same
  as a plain literal) or a language tag, a blank node, a quoted triple, a named graph ``g``,
  ``metadata.root``, ``chunk_id``, ``rdf_type``, ``attributes``, and a document-embeddings
  ``chunk_id`` (1.x chunks are the text itself); a P1 value whose ``type`` is set;
* into tg2: ``metadata.user`` other than the flow's workspace (2.x replaced the user with the
  workspace, which is part of the topic), metadata triples, a ``vectors`` list that is not
  exactly one vector, and chunk text (2.x stores ``chunk_id`` references to its librarian).

A 2.x frame converted into tg1 has no user; it gets the ``user`` argument (TrustGraph 1.x's
default ``trustgraph``). A tg2 payload exported as 1.x gets the workspace as its user.

Every converter builds a new message and returns only when all of it is converted: it either
returns a complete payload or raises, and it never changes its argument. Lists of numbers
(vectors) and the object kinds' ``values`` are shared with the argument, not copied.

Detection (`detect`): each frame is read as 1.x or 2.x by the first marker found, in this order:

1. the first item's term: ``triples[0].s``, ``entities[0].entity`` — an object with a ``t`` key is
   2.x, any other object 1.x; for document-embeddings, ``chunks[0]`` with a ``chunk_id`` or
   ``vector`` key is 2.x (a chunk with neither decides nothing: 2.0 chunks look like 1.x);
2. the first metadata triple's subject ``metadata.metadata[0].s``, read the same way;
3. the metadata's keys: ``root`` means 2.x; otherwise ``user`` means 1.x; a metadata object
   with neither is 2.x (1.x requires ``user``);
4. no metadata object at all: 1.x, the default profile's format, whose validator then says
   what is missing.

So a frame whose lists are all empty is decided by its metadata, and a frame that mixes the
two formats is decided by its first term and then fails that format's validation with the
path of the first term of the other kind. Frames of both formats carrying the same content
convert to the same payload, so the answer for an ambiguous frame never changes what is
published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson

from quiesce.core.errors import InvalidMessage
from quiesce.core.profiles import DEFAULT_WORKSPACE, Profile
from quiesce.core.wire import (
    _TRIPLE,
    _Arr,
    _format_path,
    _json_type,
    _Node,
    _Num,
    _Obj,
    _Path,
    _Str,
    _vectors_ok,
    _wrong,
    validate_object,
)

__all__ = [
    "DEFAULT_USER",
    "KINDS",
    "XSD_STRING",
    "convert_frame",
    "convert_wire",
    "detect",
    "dumps",
    "from_pulsar",
    "to_pulsar",
    "validate_frame",
]

#: Every kind either profile has; ``objects`` (1.x) and ``rows`` (2.x) are one record.
KINDS: tuple[str, ...] = (
    "triples",
    "graph-embeddings",
    "document-embeddings",
    "entity-contexts",
    "objects",
    "rows",
)

#: The user TrustGraph 1.x's gateway gives a message that names none.
DEFAULT_USER = "trustgraph"

XSD_STRING = "http://www.w3.org/2001/XMLSchema#string"

_WIRE1_KINDS = frozenset(KINDS[:4])
_OBJECT_KINDS = frozenset(("objects", "rows"))
_PLAIN_DATATYPES = frozenset(("", XSD_STRING))

_Msg = dict[str, Any]


def _kind_check(kind: str) -> None:
    if kind not in KINDS:
        raise KeyError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


# ============================================================================================
# Detection
# ============================================================================================


def _term_says(x: object) -> Profile | None:
    if type(x) is dict:
        return Profile.TG2 if "t" in x else Profile.TG1
    return None


def _first(xs: object) -> Any:
    if type(xs) is list and xs:
        return xs[0]
    return None


def detect(kind: str, obj: object) -> Profile:
    """Whether a decoded frame is in TrustGraph 1.x's (``TG1``) or 2.x's (``TG2``) wire format.

    The rule is in the module docstring; it looks at no more than the first item, the first
    metadata triple and the metadata's keys. It does not validate.

    Raises:
        KeyError: ``kind`` is not one of `KINDS` (a programming error).
    """
    _kind_check(kind)
    if type(obj) is not dict:
        return Profile.TG1
    if kind == "triples":
        t = _first(obj.get("triples"))
        said = _term_says(t.get("s")) if type(t) is dict else None
    elif kind == "document-embeddings":
        c = _first(obj.get("chunks"))
        said = Profile.TG2 if type(c) is dict and ("chunk_id" in c or "vector" in c) else None
    elif kind in _OBJECT_KINDS:
        said = None
    else:
        e = _first(obj.get("entities"))
        said = _term_says(e.get("entity")) if type(e) is dict else None
    if said is not None:
        return said
    m = obj.get("metadata")
    if type(m) is not dict:
        return Profile.TG1
    t = _first(m.get("metadata"))
    said = _term_says(t.get("s")) if type(t) is dict else None
    if said is not None:
        return said
    if "root" in m:
        return Profile.TG2
    return Profile.TG1 if "user" in m else Profile.TG2


# ============================================================================================
# Validation: 2.x frames, and 1.x objects frames (wire.py knows the other four 1.x kinds)
# ============================================================================================

# --- fast path: True means certainly valid ------------------------------------------------


def _term2_ok(x: object) -> bool:
    if type(x) is not dict:
        return False
    t = x.get("t")
    if t == "i":
        return type(x.get("i")) is str
    if t == "l":
        return (
            type(x.get("v")) is str
            and type(x.get("dt", "")) is str
            and type(x.get("ln", "")) is str
        )
    if t == "b":
        return type(x.get("d")) is str
    if t == "t":
        return _triple2_ok(x.get("tr"))
    return False


def _triple2_ok(t: object) -> bool:
    if type(t) is not dict:
        return False
    g = t.get("g")
    return (
        _term2_ok(t.get("s"))
        and _term2_ok(t.get("p"))
        and _term2_ok(t.get("o"))
        and (g is None or type(g) is str)
    )


def _triples2_ok(ts: object) -> bool:
    if type(ts) is not list:
        return False
    for t in ts:
        if not _triple2_ok(t):
            return False
    return True


def _opt_str_ok(x: dict[str, Any], key: str) -> bool:
    return type(x.get(key, "")) is str


def _meta2_ok(m: object) -> bool:
    return (
        type(m) is dict
        and type(m.get("id")) is str
        and type(m.get("collection")) is str
        and _opt_str_ok(m, "root")
        and _opt_str_ok(m, "user")
        and ("metadata" not in m or _triples2_ok(m["metadata"]))
    )


def _vector_ok(v: object) -> bool:
    return _vectors_ok([v])


def _str_list_ok(x: object) -> bool:
    return type(x) is list and all(type(s) is str for s in x)


def _attributes_ok(x: object) -> bool:
    if type(x) is not dict:
        return False
    for v in x.values():
        if not (type(v) is str or _str_list_ok(v)):
            return False
    return True


def _extras_ok(x: dict[str, Any]) -> bool:
    """The optional 2.x provenance fields: chunk_id, rdf_type, attributes."""
    return (
        _opt_str_ok(x, "chunk_id")
        and ("rdf_type" not in x or _str_list_ok(x["rdf_type"]))
        and ("attributes" not in x or _attributes_ok(x["attributes"]))
    )


def _one_vector_ok(x: dict[str, Any]) -> bool:
    if "vector" in x:
        return "vectors" not in x and _vector_ok(x["vector"])
    return "vectors" in x and _vectors_ok(x["vectors"])


def _fast2_triples(obj: _Msg) -> bool:
    return _meta2_ok(obj.get("metadata")) and _triples2_ok(obj.get("triples"))


def _fast2_graph_embeddings(obj: _Msg) -> bool:
    if not _meta2_ok(obj.get("metadata")):
        return False
    es = obj.get("entities")
    if type(es) is not list:
        return False
    for x in es:
        if not (
            type(x) is dict
            and _term2_ok(x.get("entity"))
            and _one_vector_ok(x)
            and _extras_ok(x)
        ):
            return False
    return True


def _fast2_document_embeddings(obj: _Msg) -> bool:
    if not _meta2_ok(obj.get("metadata")):
        return False
    cs = obj.get("chunks")
    if type(cs) is not list:
        return False
    for x in cs:
        if type(x) is not dict or not _one_vector_ok(x):
            return False
        if "chunk_id" in x:
            if "chunk" in x or type(x["chunk_id"]) is not str:
                return False
        elif type(x.get("chunk")) is not str:
            return False
        if "attributes" in x and not _attributes_ok(x["attributes"]):
            return False
    return True


def _fast2_entity_contexts(obj: _Msg) -> bool:
    if not _meta2_ok(obj.get("metadata")):
        return False
    es = obj.get("entities")
    if type(es) is not list:
        return False
    for x in es:
        if not (
            type(x) is dict
            and _term2_ok(x.get("entity"))
            and type(x.get("context")) is str
            and _extras_ok(x)
        ):
            return False
    return True


# --- diagnosis: the authority, with field paths --------------------------------------------


class _Nullable(_Node):
    def __init__(self, item: _Node) -> None:
        self.item = item

    def find(self, x: object, path: _Path) -> str | None:
        return None if x is None else self.item.find(x, path)


class _Rec(_Obj):
    """An object with required and optional fields, checked in document order.

    ``either`` lists pairs of fields of which exactly one must be present (``vector`` or the
    legacy ``vectors``); a missing pair is reported as its first name missing.
    """

    def __init__(
        self,
        required: dict[str, _Node],
        optional: dict[str, _Node] | None = None,
        either: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(**{**(optional or {}), **required})
        self.required = tuple(required)
        self.either = either

    def find(self, x: object, path: _Path) -> str | None:
        problem = super().find(x, path)
        if problem is not None or not isinstance(x, dict):
            return problem
        for a, b in self.either:
            if a in x and b in x:
                return f"{_format_path((*path, b))}: not allowed together with {a}"
            if a not in x and b not in x:
                return f"{_format_path((*path, a))}: missing"
        return None


class _Term(_Node):
    """A 2.x term: ``t`` says which of the four shapes the rest must have."""

    def __init__(self) -> None:
        self.shapes: dict[str, _Rec] = {}

    def find(self, x: object, path: _Path) -> str | None:
        if not isinstance(x, dict):
            return _wrong(path, "object", x)
        if "t" not in x:
            return f"{_format_path((*path, 't'))}: missing"
        t = x["t"]
        shape = self.shapes.get(t) if isinstance(t, str) else None
        if shape is None:
            return (
                f"{_format_path((*path, 't'))}: expected one of \"i\", \"l\", \"b\", \"t\", "
                f"got {_json_type(t) if not isinstance(t, str) else repr(t)}"
            )
        return shape.find(x, path)


class _Map(_Node):
    """An object whose every value matches ``item``."""

    def __init__(self, item: _Node) -> None:
        self.item = item

    def find(self, x: object, path: _Path) -> str | None:
        if not isinstance(x, dict):
            return _wrong(path, "object", x)
        for key, value in x.items():
            problem = self.item.find(value, (*path, key))
            if problem is not None:
                return problem
        return None


class _StrOrStrs(_Node):
    def find(self, x: object, path: _Path) -> str | None:
        if isinstance(x, str):
            return None
        if isinstance(x, list):
            return _Arr(_Str()).find(x, path)
        return _wrong(path, "string or array of strings", x)


class _ObjOrArr(_Node):
    """``values`` of the object kinds: one object, or an array of them."""

    def __init__(self, item: _Node) -> None:
        self.item = item

    def find(self, x: object, path: _Path) -> str | None:
        if isinstance(x, list):
            return _Arr(self.item).find(x, path)
        if isinstance(x, dict):
            return self.item.find(x, path)
        return _wrong(path, "object or array", x)


_TERM = _Term()
_TRIPLE2 = _Rec({"s": _TERM, "p": _TERM, "o": _TERM}, {"g": _Nullable(_Str())})
_TERM.shapes = {
    "i": _Rec({"t": _Str(), "i": _Str()}),
    "l": _Rec({"t": _Str(), "v": _Str()}, {"dt": _Str(), "ln": _Str()}),
    "b": _Rec({"t": _Str(), "d": _Str()}),
    "t": _Rec({"t": _Str(), "tr": _TRIPLE2}),
}
_METADATA2 = _Rec(
    {"id": _Str(), "collection": _Str()},
    {"root": _Str(), "user": _Str(), "metadata": _Arr(_TRIPLE2)},
)
_VECTOR = _Arr(_Num())
_VECTORS = _Arr(_VECTOR)
_EXTRAS: dict[str, _Node] = {
    "chunk_id": _Str(),
    "rdf_type": _Arr(_Str()),
    "attributes": _Map(_StrOrStrs()),
}
_VALUES = _ObjOrArr(_Map(_Str()))
_OBJECT_OPTIONAL: dict[str, _Node] = {"confidence": _Num(), "source_span": _Str()}

_SCHEMAS2: dict[str, _Rec] = {
    "triples": _Rec({"metadata": _METADATA2, "triples": _Arr(_TRIPLE2)}),
    "graph-embeddings": _Rec(
        {
            "metadata": _METADATA2,
            "entities": _Arr(
                _Rec(
                    {"entity": _TERM},
                    {"vector": _VECTOR, "vectors": _VECTORS, **_EXTRAS},
                    either=(("vector", "vectors"),),
                )
            ),
        }
    ),
    "document-embeddings": _Rec(
        {
            "metadata": _METADATA2,
            "chunks": _Arr(
                _Rec(
                    {},
                    {
                        "chunk_id": _Str(),
                        "chunk": _Str(),
                        "vector": _VECTOR,
                        "vectors": _VECTORS,
                        "attributes": _EXTRAS["attributes"],
                    },
                    either=(("chunk_id", "chunk"), ("vector", "vectors")),
                )
            ),
        }
    ),
    "entity-contexts": _Rec(
        {
            "metadata": _METADATA2,
            "entities": _Arr(_Rec({"entity": _TERM, "context": _Str()}, _EXTRAS)),
        }
    ),
}
_SCHEMAS2["rows"] = _SCHEMAS2["objects"] = _Rec(
    {"metadata": _METADATA2, "schema_name": _Str(), "values": _VALUES}, _OBJECT_OPTIONAL
)

_METADATA1_OBJECTS = _Rec(
    {"id": _Str(), "user": _Str(), "collection": _Str()}, {"metadata": _Arr(_TRIPLE)}
)
_OBJECTS1 = _Rec(
    {"metadata": _METADATA1_OBJECTS, "schema_name": _Str(), "values": _VALUES},
    _OBJECT_OPTIONAL,
)

_FAST2: dict[str, Callable[[_Msg], bool]] = {
    "triples": _fast2_triples,
    "graph-embeddings": _fast2_graph_embeddings,
    "document-embeddings": _fast2_document_embeddings,
    "entity-contexts": _fast2_entity_contexts,
}

def _check(schema: _Rec, obj: object) -> _Msg:
    try:
        problem = schema.find(obj, ())
    except RecursionError:
        raise InvalidMessage("nested too deeply") from None
    if problem is not None:
        raise InvalidMessage(problem)
    return cast("_Msg", obj)


def _validate2(kind: str, obj: object) -> _Msg:
    fast = _FAST2.get(kind)
    if fast is not None and type(obj) is dict:
        try:
            if fast(obj):
                return obj
        except RecursionError:
            pass
    if not isinstance(obj, dict):
        raise InvalidMessage(f"expected a JSON object, got {_json_type(obj)}")
    return _check(_SCHEMAS2[kind], obj)


def _validate1(kind: str, obj: object) -> _Msg:
    if kind in _WIRE1_KINDS:
        return validate_object(kind, obj)
    if not isinstance(obj, dict):
        raise InvalidMessage(f"expected a JSON object, got {_json_type(obj)}")
    return _check(_OBJECTS1, obj)


def validate_frame(kind: str, obj: object) -> tuple[Profile, _Msg]:
    """Detect a decoded frame's wire format and validate it against that format.

    Args:
        kind: one of `KINDS`.
        obj: the decoded JSON value.

    Returns:
        ``(generation, obj)``: ``Profile.TG1`` for the 1.x wire format, ``Profile.TG2`` for
        2.x, and the frame itself, unchanged.

    Raises:
        InvalidMessage: the frame breaks the detected format; the detail names the first
            problem in document order (``triples[0].o.t: missing``).
        KeyError: ``kind`` is not one of `KINDS`.
    """
    generation = detect(kind, obj)
    if generation is Profile.TG2:
        return generation, _validate2(kind, obj)
    return generation, _validate1(kind, obj)


# ============================================================================================
# W1 <-> P1 (the tg1 hot path)
# ============================================================================================


def _p1_triples(ts: list[Any]) -> list[_Msg]:
    return [
        {
            "s": {"value": (s := t["s"])["v"], "is_uri": s["e"], "type": None},
            "p": {"value": (p := t["p"])["v"], "is_uri": p["e"], "type": None},
            "o": {"value": (o := t["o"])["v"], "is_uri": o["e"], "type": None},
        }
        for t in ts
    ]


def _p1_value(v: _Msg) -> _Msg:
    return {"value": v["v"], "is_uri": v["e"], "type": None}


def _p1_metadata(m: _Msg) -> _Msg:
    return {
        "id": m["id"],
        "metadata": _p1_triples(m.get("metadata", ())),
        "user": m["user"],
        "collection": m["collection"],
    }


def _w1_to_p1(kind: str, msg: _Msg) -> _Msg:
    metadata = _p1_metadata(msg["metadata"])
    if kind == "triples":
        return {"metadata": metadata, "triples": _p1_triples(msg["triples"])}
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _p1_value(x["entity"]), "vectors": x["vectors"]}
                for x in msg["entities"]
            ],
        }
    if kind == "document-embeddings":
        return {
            "metadata": metadata,
            "chunks": [{"chunk": x["chunk"], "vectors": x["vectors"]} for x in msg["chunks"]],
        }
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _p1_value(x["entity"]), "context": x["context"]}
                for x in msg["entities"]
            ],
        }
    return _object_payload(metadata, msg)


def _object_payload(metadata: _Msg, msg: _Msg) -> _Msg:
    # TrustGraph's objects/rows import: a single object is wrapped in a list, confidence
    # defaults to 1.0 and source_span to "".
    values = msg["values"]
    return {
        "metadata": metadata,
        "schema_name": msg["schema_name"],
        "values": values if type(values) is list else [values],
        "confidence": msg.get("confidence", 1.0),
        "source_span": msg.get("source_span", ""),
    }


def _w1_value(v: _Msg) -> _Msg | None:
    if v.get("type"):
        return None
    return {"v": v["value"], "e": v["is_uri"]}


def _p1_loss(path: _Path) -> str:
    return f"{_format_path((*path, 'type'))}: the 1.x wire format cannot carry a value type"


def _w1_triples(ts: list[Any], path: _Path) -> list[_Msg]:
    out = []
    for i, t in enumerate(ts):
        s = _w1_value(t["s"])
        p = _w1_value(t["p"])
        o = _w1_value(t["o"])
        if s is None or p is None or o is None:
            where = "s" if s is None else "p" if p is None else "o"
            raise InvalidMessage(_p1_loss((*path, i, where)))
        out.append({"s": s, "p": p, "o": o})
    return out


def _w1_entity(x: _Msg, path: _Path) -> _Msg:
    v = _w1_value(x["entity"])
    if v is None:
        raise InvalidMessage(_p1_loss((*path, "entity")))
    return v


def _p1_to_w1(kind: str, payload: _Msg) -> _Msg:
    m = payload["metadata"]
    metadata = {
        "id": m["id"],
        "metadata": _w1_triples(m["metadata"] or [], ("metadata", "metadata")),
        "user": m["user"],
        "collection": m["collection"],
    }
    if kind == "triples":
        return {"metadata": metadata, "triples": _w1_triples(payload["triples"], ("triples",))}
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _w1_entity(x, ("entities", i)), "vectors": x["vectors"]}
                for i, x in enumerate(payload["entities"])
            ],
        }
    if kind == "document-embeddings":
        return {
            "metadata": metadata,
            "chunks": [{"chunk": x["chunk"], "vectors": x["vectors"]} for x in payload["chunks"]],
        }
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _w1_entity(x, ("entities", i)), "context": x["context"]}
                for i, x in enumerate(payload["entities"])
            ],
        }
    return _object_payload(metadata, payload)


# ============================================================================================
# W2 <-> P2 (the tg2 hot path)
# ============================================================================================


def _p2_term(x: _Msg) -> _Msg:
    t = x["t"]
    if t == "i":
        return {
            "type": "i", "iri": x["i"], "id": "", "value": "", "datatype": "", "language": "",
            "triple": None,
        }
    if t == "l":
        return {
            "type": "l", "iri": "", "id": "", "value": x["v"], "datatype": x.get("dt", ""),
            "language": x.get("ln", ""), "triple": None,
        }
    if t == "b":
        return {
            "type": "b", "iri": "", "id": x["d"], "value": "", "datatype": "", "language": "",
            "triple": None,
        }
    return {
        "type": "t", "iri": "", "id": "", "value": "", "datatype": "", "language": "",
        "triple": _p2_triple(x["tr"]),
    }


def _p2_triple(t: _Msg) -> _Msg:
    return {"s": _p2_term(t["s"]), "p": _p2_term(t["p"]), "o": _p2_term(t["o"]), "g": t.get("g")}


def _p2_metadata(m: _Msg, workspace: str) -> _Msg:
    user = m.get("user")
    if user and user != workspace:
        raise InvalidMessage(
            f"metadata.user: tg2 cannot carry a user; the workspace replaces it, and "
            f"{user!r} is not this flow's workspace {workspace!r}"
        )
    if m.get("metadata"):
        raise InvalidMessage("metadata.metadata: tg2 cannot carry metadata triples")
    return {"id": m["id"], "root": m.get("root", ""), "collection": m["collection"]}


def _single_vector(x: _Msg, path: _Path) -> Any:
    if "vector" in x:
        return x["vector"]
    vs = x["vectors"]
    if len(vs) != 1:
        raise InvalidMessage(
            f"{_format_path((*path, 'vectors'))}: tg2 carries exactly one vector per item, "
            f"this has {len(vs)}"
        )
    return vs[0]


def _w2_to_p2(kind: str, msg: _Msg, workspace: str) -> _Msg:
    metadata = _p2_metadata(msg["metadata"], workspace)
    if kind == "triples":
        return {"metadata": metadata, "triples": [_p2_triple(t) for t in msg["triples"]]}
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                {
                    "entity": _p2_term(x["entity"]),
                    "vector": _single_vector(x, ("entities", i)),
                    "chunk_id": x.get("chunk_id", ""),
                    "rdf_type": x.get("rdf_type", []),
                    "attributes": x.get("attributes", {}),
                }
                for i, x in enumerate(msg["entities"])
            ],
        }
    if kind == "document-embeddings":
        chunks = []
        for i, x in enumerate(msg["chunks"]):
            if "chunk" in x:
                raise InvalidMessage(
                    f"chunks[{i}].chunk: tg2 cannot carry chunk text "
                    f"(2.x stores a chunk_id that refers to the librarian)"
                )
            chunks.append(
                {
                    "chunk_id": x["chunk_id"],
                    "vector": _single_vector(x, ("chunks", i)),
                    "attributes": x.get("attributes", {}),
                }
            )
        return {"metadata": metadata, "chunks": chunks}
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {
                    "entity": _p2_term(x["entity"]),
                    "context": x["context"],
                    "chunk_id": x.get("chunk_id", ""),
                    "rdf_type": x.get("rdf_type", []),
                    "attributes": x.get("attributes", {}),
                }
                for x in msg["entities"]
            ],
        }
    return _object_payload(metadata, msg)


def _w2_term(x: _Msg, path: _Path) -> _Msg:
    t = x["type"]
    if t == "i":
        return {"t": "i", "i": x["iri"]}
    if t == "l":
        out: _Msg = {"t": "l", "v": x["value"]}
        if x.get("datatype"):
            out["dt"] = x["datatype"]
        if x.get("language"):
            out["ln"] = x["language"]
        return out
    if t == "b":
        return {"t": "b", "d": x["id"]}
    if t == "t":
        if x.get("triple") is None:
            raise InvalidMessage(f"{_format_path((*path, 'triple'))}: missing quoted triple")
        return {"t": "t", "tr": _w2_triple(x["triple"], (*path, "triple"))}
    raise InvalidMessage(f"{_format_path((*path, 'type'))}: unknown term type {t!r}")


def _w2_triple(t: _Msg, path: _Path) -> _Msg:
    out = {
        "s": _w2_term(t["s"], (*path, "s")),
        "p": _w2_term(t["p"], (*path, "p")),
        "o": _w2_term(t["o"], (*path, "o")),
    }
    if t.get("g"):
        out["g"] = t["g"]
    return out


def _with_extras(out: _Msg, x: _Msg, keys: tuple[str, ...]) -> _Msg:
    for key in keys:
        if x.get(key):
            out[key] = x[key]
    return out


_ALL_EXTRAS = ("chunk_id", "rdf_type", "attributes")


def _p2_to_w2(kind: str, payload: _Msg) -> _Msg:
    m = payload["metadata"]
    metadata = {"id": m["id"], "root": m["root"], "collection": m["collection"]}
    if kind == "triples":
        return {
            "metadata": metadata,
            "triples": [_w2_triple(t, ("triples", i)) for i, t in enumerate(payload["triples"])],
        }
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                _with_extras(
                    {"entity": _w2_term(x["entity"], ("entities", i, "entity")),
                     "vector": x["vector"]},
                    x,
                    _ALL_EXTRAS,
                )
                for i, x in enumerate(payload["entities"])
            ],
        }
    if kind == "document-embeddings":
        return {
            "metadata": metadata,
            "chunks": [
                _with_extras(
                    {"chunk_id": x["chunk_id"], "vector": x["vector"]}, x, ("attributes",)
                )
                for x in payload["chunks"]
            ],
        }
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                _with_extras(
                    {"entity": _w2_term(x["entity"], ("entities", i, "entity")),
                     "context": x["context"]},
                    x,
                    _ALL_EXTRAS,
                )
                for i, x in enumerate(payload["entities"])
            ],
        }
    return _object_payload(metadata, payload)


# ============================================================================================
# W1 <-> W2 (across generations)
# ============================================================================================


def _w2_of_w1_value(v: _Msg) -> _Msg:
    return {"t": "i", "i": v["v"]} if v["e"] else {"t": "l", "v": v["v"]}


def _w2_of_w1_triples(ts: list[Any]) -> list[_Msg]:
    return [
        {
            "s": _w2_of_w1_value(t["s"]),
            "p": _w2_of_w1_value(t["p"]),
            "o": _w2_of_w1_value(t["o"]),
        }
        for t in ts
    ]


def _vector_fields(out: _Msg, vectors: Any) -> _Msg:
    # One vector (what 1.x producers send: 2.x removed the "unused middle layer") becomes 2.x's
    # `vector`; any other number stays in the legacy `vectors`, which tg2 then refuses.
    if len(vectors) == 1:
        out["vector"] = vectors[0]
    else:
        out["vectors"] = vectors
    return out


def _w1_to_w2(kind: str, msg: _Msg) -> _Msg:
    """1.x wire to 2.x wire; always succeeds (1.x-only content goes to the legacy fields)."""
    m = msg["metadata"]
    metadata: _Msg = {
        "id": m["id"],
        "root": "",
        "collection": m["collection"],
        "user": m["user"],
        "metadata": _w2_of_w1_triples(m.get("metadata", ())),
    }
    if kind == "triples":
        return {"metadata": metadata, "triples": _w2_of_w1_triples(msg["triples"])}
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                _vector_fields({"entity": _w2_of_w1_value(x["entity"])}, x["vectors"])
                for x in msg["entities"]
            ],
        }
    if kind == "document-embeddings":
        return {
            "metadata": metadata,
            "chunks": [_vector_fields({"chunk": x["chunk"]}, x["vectors"]) for x in msg["chunks"]],
        }
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _w2_of_w1_value(x["entity"]), "context": x["context"]}
                for x in msg["entities"]
            ],
        }
    return _copy_object_fields(metadata, msg)


def _copy_object_fields(metadata: _Msg, msg: _Msg) -> _Msg:
    out = {"metadata": metadata, "schema_name": msg["schema_name"], "values": msg["values"]}
    for key in ("confidence", "source_span"):
        if key in msg:
            out[key] = msg[key]
    return out


def _w1_of_w2_term(x: _Msg) -> _Msg | None:
    t = x["t"]
    if t == "i":
        return {"v": x["i"], "e": True}
    if t == "l" and not x.get("ln") and x.get("dt", "") in _PLAIN_DATATYPES:
        return {"v": x["v"], "e": False}
    return None


def _term_loss(x: _Msg, path: _Path) -> str:
    t = x["t"]
    where = _format_path(path)
    if t == "b":
        return f"{where}: tg1 cannot carry a blank node"
    if t == "t":
        return f"{where}: tg1 cannot carry a quoted triple"
    if x.get("ln"):
        return f"{where}.ln: tg1 cannot carry a literal language tag"
    return f"{where}.dt: tg1 cannot carry a literal datatype"


def _w1_of_w2_triples(ts: list[Any], path: _Path) -> list[_Msg]:
    out = []
    for i, t in enumerate(ts):
        s = _w1_of_w2_term(t["s"])
        p = _w1_of_w2_term(t["p"])
        o = _w1_of_w2_term(t["o"])
        if s is None or p is None or o is None:
            where = "s" if s is None else "p" if p is None else "o"
            raise InvalidMessage(_term_loss(t[where], (*path, i, where)))
        if t.get("g"):
            raise InvalidMessage(f"{_format_path((*path, i, 'g'))}: tg1 cannot carry a named graph")
        out.append({"s": s, "p": p, "o": o})
    return out


def _w1_of_w2_entity(x: _Msg, path: _Path) -> _Msg:
    v = _w1_of_w2_term(x["entity"])
    if v is None:
        raise InvalidMessage(_term_loss(x["entity"], (*path, "entity")))
    for key, what in _EXTRA_NAMES:
        if x.get(key):
            raise InvalidMessage(f"{_format_path((*path, key))}: tg1 cannot carry {what}")
    return v


_EXTRA_NAMES = (
    ("chunk_id", "a chunk id"),
    ("rdf_type", "an rdf_type"),
    ("attributes", "attributes"),
)


def _vectors_of(x: _Msg) -> Any:
    return [x["vector"]] if "vector" in x else x["vectors"]


def _w2_to_w1(kind: str, msg: _Msg, user: str) -> _Msg:
    """2.x wire to 1.x wire; raises where 1.x has no place for the content."""
    m = msg["metadata"]
    if m.get("root"):
        raise InvalidMessage("metadata.root: tg1 cannot carry a root document id")
    metadata = {
        "id": m["id"],
        "metadata": _w1_of_w2_triples(m.get("metadata", ()), ("metadata", "metadata")),
        "user": m["user"] if "user" in m else user,
        "collection": m["collection"],
    }
    if kind == "triples":
        return {"metadata": metadata, "triples": _w1_of_w2_triples(msg["triples"], ("triples",))}
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _w1_of_w2_entity(x, ("entities", i)), "vectors": _vectors_of(x)}
                for i, x in enumerate(msg["entities"])
            ],
        }
    if kind == "document-embeddings":
        chunks = []
        for i, x in enumerate(msg["chunks"]):
            if "chunk" not in x:
                raise InvalidMessage(
                    f"chunks[{i}].chunk_id: tg1 carries chunk text, not a chunk id"
                )
            if x.get("attributes"):
                raise InvalidMessage(f"chunks[{i}].attributes: tg1 cannot carry attributes")
            chunks.append({"chunk": x["chunk"], "vectors": _vectors_of(x)})
        return {"metadata": metadata, "chunks": chunks}
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _w1_of_w2_entity(x, ("entities", i)), "context": x["context"]}
                for i, x in enumerate(msg["entities"])
            ],
        }
    return _copy_object_fields(metadata, msg)


# ============================================================================================
# Public API
# ============================================================================================


def to_pulsar(
    kind: str,
    msg: _Msg,
    generation: Profile,
    profile: Profile,
    *,
    workspace: str = DEFAULT_WORKSPACE,
    user: str = DEFAULT_USER,
) -> _Msg:
    """Convert a validated wire message into the Pulsar payload of ``profile``.

    Args:
        kind: one of `KINDS`.
        msg: a frame that `validate_frame` accepted.
        generation: its wire format, as `validate_frame` returned it.
        profile: the flow's profile, which fixes the payload's encoding.
        workspace: (tg2) the flow's workspace; a 1.x user must equal it.
        user: (tg1) the user given to a 2.x frame, which names none.

    Returns:
        A new payload (encode it with `dumps`); ``msg`` is not changed.

    Raises:
        InvalidMessage: the message holds something ``profile`` cannot carry; the detail names
            the field and what (``triples[3].o.dt: tg1 cannot carry a literal datatype``).
    """
    _kind_check(kind)
    try:
        if profile is Profile.TG1:
            if generation is Profile.TG2:
                msg = _w2_to_w1(kind, msg, user)
            return _w1_to_p1(kind, msg)
        if generation is Profile.TG1:
            msg = _w1_to_w2(kind, msg)
        return _w2_to_p2(kind, msg, workspace)
    except RecursionError:
        raise InvalidMessage("nested too deeply") from None


def from_pulsar(
    kind: str,
    payload: object,
    profile: Profile,
    fmt: Profile | None = None,
    *,
    workspace: str = DEFAULT_WORKSPACE,
) -> _Msg:
    """Convert a Pulsar payload of ``profile`` into a wire message (for export).

    Args:
        kind: one of `KINDS`.
        payload: the decoded payload, as TrustGraph of that profile's generation wrote it.
        profile: the flow's profile.
        fmt: the wire format wanted (``?format=``); the profile's own by default.
        workspace: (tg2) the flow's workspace, which a 1.x message carries as its user.

    Returns:
        A new wire message; ``payload`` is not changed.

    Raises:
        InvalidMessage: the payload holds something ``fmt`` cannot carry (detail as in
            `to_pulsar`), or is not a payload of that kind and profile.
    """
    _kind_check(kind)
    fmt = profile if fmt is None else fmt
    try:
        if profile is Profile.TG1:
            w1 = _p1_to_w1(kind, cast("_Msg", payload))
            return w1 if fmt is Profile.TG1 else _w1_to_w2(kind, w1)
        w2 = _p2_to_w2(kind, cast("_Msg", payload))
        return w2 if fmt is Profile.TG2 else _w2_to_w1(kind, w2, workspace)
    except InvalidMessage:
        raise
    except RecursionError:
        raise InvalidMessage("nested too deeply") from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise InvalidMessage(
            f"not a {profile.value} {kind} payload: {type(exc).__name__}: {exc}"
        ) from None


def convert_wire(
    kind: str,
    msg: _Msg,
    generation: Profile,
    fmt: Profile,
    *,
    user: str = DEFAULT_USER,
) -> _Msg:
    """Convert a validated wire message from one wire format into another.

    ``TG1 -> TG2`` always succeeds: what 2.11 has no field for goes into the legacy fields
    (module docstring), so converting back gives the same message. ``TG2 -> TG1`` raises where
    1.x has no place for the content; ``user`` is the user of a 2.x message that names none.
    The same format returns ``msg`` itself.

    Raises:
        InvalidMessage: (into 1.x) the message holds something 1.x cannot carry.
    """
    _kind_check(kind)
    if generation is fmt:
        return msg
    try:
        if fmt is Profile.TG2:
            return _w1_to_w2(kind, msg)
        return _w2_to_w1(kind, msg, user)
    except RecursionError:
        raise InvalidMessage("nested too deeply") from None


def convert_frame(
    kind: str,
    obj: object,
    profile: Profile,
    *,
    workspace: str = DEFAULT_WORKSPACE,
    user: str = DEFAULT_USER,
) -> _Msg:
    """Detect, validate and convert one decoded client frame into ``profile``'s payload.

    The import path in one call: `validate_frame` then `to_pulsar` (see both for arguments).

    Raises:
        InvalidMessage: the frame is invalid or cannot be carried losslessly.
        KeyError: ``kind`` is not one of `KINDS`.
    """
    generation, msg = validate_frame(kind, obj)
    return to_pulsar(kind, msg, generation, profile, workspace=workspace, user=user)


def dumps(payload: _Msg) -> bytes:
    """The bytes to publish: compact JSON (UTF-8).

    TrustGraph reads payloads with ``json.loads`` (2.x, 1.9) or ``JsonSchema.decode`` (1.4),
    so whitespace and key order do not matter; 1.4's own producers indent by one space.
    """
    return orjson.dumps(payload)

