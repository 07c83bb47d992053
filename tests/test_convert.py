"""Tests of core.convert and core.profiles: TrustGraph's wire formats and Pulsar payloads.

The literal payloads below were checked against TrustGraph's released schema classes, in
scratch virtual environments outside this repository (TrustGraph is never a dependency):

* tg1: ``pip install trustgraph-base==1.4.22`` (pulsar-client 3.13.0). Each record was built
  with the same values as the W1 frames here and encoded with
  ``pulsar.schema.JsonSchema(<Record>).encode(record)``; ``json.loads`` of those bytes equals
  the literal below, key order included. The same records in ``trustgraph-base==1.9.4``
  (dataclasses, ``json.dumps(dataclass_to_dict(...))``) give the same objects except that
  ``Value.type`` is ``""`` instead of ``null``; export accepts both. Our compact payload,
  decoded with 1.4.22's ``JsonSchema(...).decode`` and encoded again, is byte for byte what
  1.4.22 writes for the same record; 1.9.4's ``dict_to_dataclass`` reads it to records equal
  to its own but for ``Value.type`` (``None`` for ``""``), which no 1.9.4 processor reads.
* tg2: ``pip install trustgraph-base==2.11.1``; ``json.dumps(dataclass_to_dict(record))``
  (``trustgraph.base.serialization``, what its Pulsar backend sends) is byte for byte
  ``json.dumps`` of the literal below, and ``dict_to_dataclass`` reads it back to an equal
  record.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.core.convert import (
    DEFAULT_USER,
    KINDS,
    XSD_STRING,
    convert_frame,
    convert_wire,
    detect,
    dumps,
    from_pulsar,
    validate_frame,
)
from quiesce.core.errors import InvalidMessage, RouteError
from quiesce.core.profiles import (
    DEFAULT_PROFILE,
    DEFAULT_WORKSPACE,
    Profile,
    default_topic,
    interface,
)
from tests.data import sample_message

TG1, TG2 = Profile.TG1, Profile.TG2
XSD_INT = "http://www.w3.org/2001/XMLSchema#integer"


def exact(detail: str) -> str:
    """A `pytest.raises` match pattern for exactly ``detail``."""
    return f"^{re.escape(detail)}$"


def ordered(x: Any) -> str:
    """``x`` as JSON text with its key order kept, to compare key order too."""
    return json.dumps(x)


# --------------------------------------------------------------------------------------------
# Fixed messages and the payloads TrustGraph's own classes produce for them
# --------------------------------------------------------------------------------------------


def u(v: str) -> dict[str, Any]:
    return {"v": v, "e": True}


def lit(v: str) -> dict[str, Any]:
    return {"v": v, "e": False}


def iri(v: str) -> dict[str, Any]:
    return {"t": "i", "i": v}


def p1v(value: str, is_uri: bool) -> dict[str, Any]:
    return {"value": value, "is_uri": is_uri, "type": None}


def p2t(t: str, **fields: Any) -> dict[str, Any]:
    term: dict[str, Any] = {
        "type": t, "iri": "", "id": "", "value": "", "datatype": "", "language": "",
        "triple": None,
    }  # fmt: skip
    term.update(fields)
    return term


M1 = {
    "id": "doc1",
    "metadata": [{"s": u("http://x/s"), "p": u("http://x/p"), "o": lit("lit")}],
    "user": "trustgraph",
    "collection": "default",
}
P1_METADATA = {
    "id": "doc1",
    "metadata": [
        {"s": p1v("http://x/s", True), "p": p1v("http://x/p", True), "o": p1v("lit", False)}
    ],
    "user": "trustgraph",
    "collection": "default",
}

W1_FRAMES: dict[str, dict[str, Any]] = {
    "triples": {
        "metadata": M1,
        "triples": [{"s": u("http://x/a"), "p": u("http://x/b"), "o": lit("hello")}],
    },
    "graph-embeddings": {
        "metadata": M1,
        "entities": [{"entity": u("http://x/a"), "vectors": [[0.5, 1.0], [2.0, -1.5]]}],
    },
    "document-embeddings": {
        "metadata": M1,
        "chunks": [{"chunk": "chunk text", "vectors": [[0.25, 3.0]]}],
    },
    "entity-contexts": {
        "metadata": M1,
        "entities": [{"entity": lit("Alpha"), "context": "ctx"}],
    },
    "objects": {
        "metadata": M1,
        "schema_name": "person",
        "values": [{"name": "Ann", "age": "3"}],
        "confidence": 1.0,
        "source_span": "",
    },
}

# JsonSchema(<Record>).encode of trustgraph-base 1.4.22, as JSON (see the module docstring).
TG1_PAYLOADS: dict[str, dict[str, Any]] = {
    "triples": {
        "metadata": P1_METADATA,
        "triples": [
            {"s": p1v("http://x/a", True), "p": p1v("http://x/b", True), "o": p1v("hello", False)}
        ],
    },
    "graph-embeddings": {
        "metadata": P1_METADATA,
        "entities": [{"entity": p1v("http://x/a", True), "vectors": [[0.5, 1.0], [2.0, -1.5]]}],
    },
    "document-embeddings": {
        "metadata": P1_METADATA,
        "chunks": [{"chunk": "chunk text", "vectors": [[0.25, 3.0]]}],
    },
    "entity-contexts": {
        "metadata": P1_METADATA,
        "entities": [{"entity": p1v("Alpha", False), "context": "ctx"}],
    },
    "objects": {
        "metadata": P1_METADATA,
        "schema_name": "person",
        "values": [{"name": "Ann", "age": "3"}],
        "confidence": 1.0,
        "source_span": "",
    },
}

M2 = {"id": "doc1", "root": "root1", "collection": "default"}
QUOTED = {"s": iri("http://x/a"), "p": iri("http://x/b"), "o": {"t": "l", "v": "hi", "ln": "en"}}
W2_FRAMES: dict[str, dict[str, Any]] = {
    "triples": {
        "metadata": M2,
        "triples": [
            {"s": iri("http://x/a"), "p": iri("http://x/b"), "o": {"t": "l", "v": "hello"}},
            {
                "s": {"t": "b", "d": "b0"},
                "p": iri("http://x/b"),
                "o": {"t": "l", "v": "5", "dt": XSD_INT},
                "g": "http://x/g",
            },
            {"s": {"t": "t", "tr": QUOTED}, "p": iri("http://x/c"), "o": iri("http://x/d")},
        ],
    },
    "graph-embeddings": {
        "metadata": M2,
        "entities": [
            {
                "entity": iri("http://x/a"),
                "vector": [0.5, 1.0],
                "chunk_id": "c1",
                "rdf_type": ["http://x/T"],
                "attributes": {"k": "v", "l": ["a", "b"]},
            }
        ],
    },
    "document-embeddings": {"metadata": M2, "chunks": [{"chunk_id": "c1", "vector": [0.25, 3.0]}]},
    "entity-contexts": {
        "metadata": M2,
        "entities": [{"entity": {"t": "l", "v": "Alpha"}, "context": "ctx"}],
    },
    "rows": {
        "metadata": M2,
        "schema_name": "person",
        "values": [{"name": "Ann"}],
        "confidence": 1.0,
        "source_span": "",
    },
}

# json.loads(json.dumps(dataclass_to_dict(<record>))) of trustgraph-base 2.11.1.
P2_QUOTED = {
    "s": p2t("i", iri="http://x/a"),
    "p": p2t("i", iri="http://x/b"),
    "o": p2t("l", value="hi", language="en"),
    "g": None,
}
TG2_PAYLOADS: dict[str, dict[str, Any]] = {
    "triples": {
        "metadata": M2,
        "triples": [
            {
                "s": p2t("i", iri="http://x/a"),
                "p": p2t("i", iri="http://x/b"),
                "o": p2t("l", value="hello"),
                "g": None,
            },
            {
                "s": p2t("b", id="b0"),
                "p": p2t("i", iri="http://x/b"),
                "o": p2t("l", value="5", datatype=XSD_INT),
                "g": "http://x/g",
            },
            {
                "s": p2t("t", triple=P2_QUOTED),
                "p": p2t("i", iri="http://x/c"),
                "o": p2t("i", iri="http://x/d"),
                "g": None,
            },
        ],
    },
    "graph-embeddings": {
        "metadata": M2,
        "entities": [
            {
                "entity": p2t("i", iri="http://x/a"),
                "vector": [0.5, 1.0],
                "chunk_id": "c1",
                "rdf_type": ["http://x/T"],
                "attributes": {"k": "v", "l": ["a", "b"]},
            }
        ],
    },
    "document-embeddings": {
        "metadata": M2,
        "chunks": [{"chunk_id": "c1", "vector": [0.25, 3.0], "attributes": {}}],
    },
    "entity-contexts": {
        "metadata": M2,
        "entities": [
            {
                "entity": p2t("l", value="Alpha"),
                "context": "ctx",
                "chunk_id": "",
                "rdf_type": [],
                "attributes": {},
            }
        ],
    },
    "rows": {
        "metadata": M2,
        "schema_name": "person",
        "values": [{"name": "Ann"}],
        "confidence": 1.0,
        "source_span": "",
    },
}


# --------------------------------------------------------------------------------------------
# Exact payload shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(W1_FRAMES))
def test_tg1_payload_is_what_jsonschema_writes(kind: str) -> None:
    """A 1.x frame becomes exactly TrustGraph 1.4.22's JsonSchema encoding, key order included."""
    payload = convert_frame(kind, W1_FRAMES[kind], TG1)
    assert ordered(payload) == ordered(TG1_PAYLOADS[kind])


@pytest.mark.parametrize("kind", list(W2_FRAMES))
def test_tg2_payload_is_what_trustgraph_2_writes(kind: str) -> None:
    """A 2.x frame becomes exactly TrustGraph 2.11.1's Pulsar JSON, key order included."""
    payload = convert_frame(kind, W2_FRAMES[kind], TG2)
    assert ordered(payload) == ordered(TG2_PAYLOADS[kind])


@pytest.mark.parametrize("kind", list(W1_FRAMES))
def test_tg1_export_gives_the_1x_frame_back(kind: str) -> None:
    """A tg1 payload exports as the 1.x frame it came from, whether ``type`` is null or ""."""
    assert from_pulsar(kind, TG1_PAYLOADS[kind], TG1) == W1_FRAMES[kind]
    # trustgraph-base 1.9.4 writes "type": "" where 1.4.22 writes null.
    as_19 = json.loads(json.dumps(TG1_PAYLOADS[kind]).replace('"type": null', '"type": ""'))
    assert from_pulsar(kind, as_19, TG1) == W1_FRAMES[kind]


@pytest.mark.parametrize("kind", list(W2_FRAMES))
def test_tg2_export_gives_the_2x_frame_back(kind: str) -> None:
    """A tg2 payload exports as the 2.x frame it came from."""
    assert from_pulsar(kind, TG2_PAYLOADS[kind], TG2) == W2_FRAMES[kind]


def test_dumps_is_compact_json_of_the_payload() -> None:
    """The published bytes are UTF-8 JSON that parses back to the payload."""
    payload = convert_frame("triples", W1_FRAMES["triples"], TG1)
    data = dumps(payload)
    assert isinstance(data, bytes)
    assert json.loads(data) == payload


def test_objects_frame_defaults_as_trustgraph_gateway_does() -> None:
    """An objects frame with one values object and no optional fields gets TrustGraph's defaults."""
    frame = {
        "metadata": {"id": "d", "user": "u", "collection": "c"},
        "schema_name": "s",
        "values": {"a": "1"},
    }
    assert convert_frame("objects", frame, TG1) == {
        "metadata": {"id": "d", "metadata": [], "user": "u", "collection": "c"},
        "schema_name": "s",
        "values": [{"a": "1"}],
        "confidence": 1.0,
        "source_span": "",
    }


def test_conversion_does_not_copy_vectors_or_change_the_frame() -> None:
    """Vectors are shared with the frame, and the frame itself is left as it was."""
    frame = copy.deepcopy(W1_FRAMES["graph-embeddings"])
    before = copy.deepcopy(frame)
    payload = convert_frame("graph-embeddings", frame, TG1)
    assert payload["entities"][0]["vectors"] is frame["entities"][0]["vectors"]
    assert frame == before


# --------------------------------------------------------------------------------------------
# Across generations, and what is refused as lossy
# --------------------------------------------------------------------------------------------


def test_plain_2x_frame_into_tg1() -> None:
    """A 2.x frame of IRIs, plain and xsd:string literals becomes the tg1 payload with a user."""
    frame = {
        "metadata": {"id": "d", "collection": "c", "metadata": []},
        "triples": [
            {"s": iri("http://x/a"), "p": iri("http://x/b"), "o": {"t": "l", "v": "x", "dt": ""}},
            {"s": iri("http://x/a"), "p": iri("http://x/b"), "o": {"t": "l", "v": "y",
                                                                   "dt": XSD_STRING}},
        ],
    }  # fmt: skip
    payload = convert_frame("triples", frame, TG1, user="alice")
    assert payload == {
        "metadata": {"id": "d", "metadata": [], "user": "alice", "collection": "c"},
        "triples": [
            {"s": p1v("http://x/a", True), "p": p1v("http://x/b", True), "o": p1v("x", False)},
            {"s": p1v("http://x/a", True), "p": p1v("http://x/b", True), "o": p1v("y", False)},
        ],
    }
    assert convert_frame("triples", frame, TG1)["metadata"]["user"] == DEFAULT_USER


def test_1x_frame_into_tg2() -> None:
    """A 1.x frame whose user is the workspace becomes the tg2 payload of the same content."""
    frame = {
        "metadata": {"id": "d", "metadata": [], "user": "ws", "collection": "c"},
        "entities": [{"entity": u("http://x/a"), "vectors": [[1.0, 2.0]]}],
    }
    assert convert_frame("graph-embeddings", frame, TG2, workspace="ws") == {
        "metadata": {"id": "d", "root": "", "collection": "c"},
        "entities": [
            {
                "entity": p2t("i", iri="http://x/a"),
                "vector": [1.0, 2.0],
                "chunk_id": "",
                "rdf_type": [],
                "attributes": {},
            }
        ],
    }


def tr2(o: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A 2.x triple with the object ``o``."""
    return {"s": iri("http://x/a"), "p": iri("http://x/b"), "o": o, **extra}


def frame2(kind: str, items: list[Any], **metadata: Any) -> dict[str, Any]:
    """A 2.x frame of ``kind`` with ``items`` in its list."""
    field = {"triples": "triples", "document-embeddings": "chunks"}.get(kind, "entities")
    return {"metadata": {"id": "d", "collection": "c", **metadata}, field: items}


ENT = {"entity": iri("http://x/e"), "vector": [1.0]}
EC = {"entity": iri("x:e"), "context": "c"}
BNODE = {"t": "b", "d": "n1"}


def case(kind: str, make: Any, items: list[Any], detail: str, **metadata: Any) -> tuple[Any, ...]:
    """A (kind, frame, detail) test case whose frame is ``make(kind, items, **metadata)``."""
    return kind, make(kind, items, **metadata), detail


LOSSY_INTO_TG1 = [
    case("triples", frame2, [tr2(iri("x:o")), tr2({"t": "l", "v": "5", "dt": XSD_INT})],
         "triples[1].o.dt: tg1 cannot carry a literal datatype"),
    case("triples", frame2, [tr2({"t": "l", "v": "chat", "ln": "fr"})],
         "triples[0].o.ln: tg1 cannot carry a literal language tag"),
    case("triples", frame2, [{"s": BNODE, "p": iri("x:p"), "o": iri("x:o")}],
         "triples[0].s: tg1 cannot carry a blank node"),
    case("triples", frame2, [tr2({"t": "t", "tr": tr2(iri("http://x/o"))})],
         "triples[0].o: tg1 cannot carry a quoted triple"),
    case("triples", frame2, [tr2(iri("http://x/o"), g="http://x/g")],
         "triples[0].g: tg1 cannot carry a named graph"),
    case("triples", frame2, [], "metadata.root: tg1 cannot carry a root document id",
         root="doc0"),
    case("triples", frame2, [],
         "metadata.metadata[0].o.ln: tg1 cannot carry a literal language tag",
         metadata=[tr2({"t": "l", "v": "x", "ln": "en"})]),
    case("graph-embeddings", frame2, [ENT, {**ENT, "chunk_id": "c9"}],
         "entities[1].chunk_id: tg1 cannot carry a chunk id"),
    case("graph-embeddings", frame2, [{**ENT, "rdf_type": ["http://x/T"]}],
         "entities[0].rdf_type: tg1 cannot carry an rdf_type"),
    case("entity-contexts", frame2, [{**EC, "attributes": {"a": "b"}}],
         "entities[0].attributes: tg1 cannot carry attributes"),
    case("entity-contexts", frame2, [{**EC, "entity": {"t": "l", "v": "1", "dt": XSD_INT}}],
         "entities[0].entity.dt: tg1 cannot carry a literal datatype"),
    case("document-embeddings", frame2, [{"chunk_id": "c1", "vector": [1.0]}],
         "chunks[0].chunk_id: tg1 carries chunk text, not a chunk id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "frame", "detail"), LOSSY_INTO_TG1, ids=[d for _, _, d in LOSSY_INTO_TG1]
)
def test_2x_content_tg1_cannot_carry_is_refused_by_name(
    kind: str, frame: dict[str, Any], detail: str
) -> None:
    """A 2.x value 1.x has no place for is refused with the field path and what it is."""
    before = copy.deepcopy(frame)
    with pytest.raises(InvalidMessage, match=exact(detail)):
        convert_frame(kind, frame, TG1)
    assert frame == before


def frame1(kind: str, items: list[Any], **metadata: Any) -> dict[str, Any]:
    """A 1.x frame of ``kind`` with ``items`` in its list."""
    field = {"triples": "triples", "document-embeddings": "chunks"}.get(kind, "entities")
    m = {"id": "d", "metadata": [], "user": "default", "collection": "c", **metadata}
    return {"metadata": m, field: items}


LOSSY_INTO_TG2 = [
    case("triples", frame1, [],
         "metadata.user: tg2 cannot carry a user; the workspace replaces it, and 'alice' is "
         "not this flow's workspace 'default'",
         user="alice"),
    case("triples", frame1, [], "metadata.metadata: tg2 cannot carry metadata triples",
         metadata=[{"s": u("x:s"), "p": u("x:p"), "o": lit("o")}]),
    case("graph-embeddings", frame1,
         [{"entity": u("x:e"), "vectors": [[1.0]]},
          {"entity": u("x:e"), "vectors": [[1.0], [2.0]]}],
         "entities[1].vectors: tg2 carries exactly one vector per item, this has 2"),
    case("graph-embeddings", frame1, [{"entity": u("x:e"), "vectors": []}],
         "entities[0].vectors: tg2 carries exactly one vector per item, this has 0"),
    case("document-embeddings", frame1, [{"chunk": "text", "vectors": [[1.0]]}],
         "chunks[0].chunk: tg2 cannot carry chunk text (2.x stores a chunk_id that refers to "
         "the librarian)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "frame", "detail"), LOSSY_INTO_TG2, ids=[d[:40] for _, _, d in LOSSY_INTO_TG2]
)
def test_1x_content_tg2_cannot_carry_is_refused_by_name(
    kind: str, frame: dict[str, Any], detail: str
) -> None:
    """A 1.x value 2.x has no place for is refused with the field path and what it is."""
    with pytest.raises(InvalidMessage, match=exact(detail)):
        convert_frame(kind, frame, TG2)


def test_tg1_value_type_is_not_dropped_on_export() -> None:
    """A tg1 payload value with a ``type`` exports to neither wire format: 1.x has no field."""
    payload = copy.deepcopy(TG1_PAYLOADS["triples"])
    payload["triples"][0]["o"]["type"] = XSD_INT
    for fmt in (TG1, TG2):
        with pytest.raises(
            InvalidMessage,
            match=exact("triples[0].o.type: the 1.x wire format cannot carry a value type"),
        ):
            from_pulsar("triples", payload, TG1, fmt)


def test_tg2_export_as_1x_names_what_1x_cannot_carry() -> None:
    """Exporting a tg2 payload with ?format=tg1 refuses 2.x-only content by name."""
    with pytest.raises(InvalidMessage, match=exact("metadata.root: tg1 cannot carry a root "
                                                   "document id")):
        from_pulsar("triples", TG2_PAYLOADS["triples"], TG2, TG1)
    payload = copy.deepcopy(TG2_PAYLOADS["triples"])
    payload["metadata"]["root"] = ""
    with pytest.raises(InvalidMessage, match=exact("triples[1].s: tg1 cannot carry a blank node")):
        from_pulsar("triples", payload, TG2, TG1)
    payload["triples"] = payload["triples"][:1]
    w1 = from_pulsar("triples", payload, TG2, TG1, workspace="ws")
    assert w1["metadata"] == {"id": "doc1", "metadata": [], "user": "ws", "collection": "default"}
    assert w1["triples"] == [{"s": u("http://x/a"), "p": u("http://x/b"), "o": lit("hello")}]


def test_malformed_payload_is_an_invalid_message() -> None:
    """A payload that is not of the kind (a broken producer) raises InvalidMessage, not KeyError."""
    with pytest.raises(InvalidMessage, match=r"^not a tg1 triples payload: KeyError"):
        from_pulsar("triples", {"metadata": {}}, TG1)
    bad = copy.deepcopy(TG2_PAYLOADS["triples"])
    bad["triples"][0]["s"]["type"] = "q"
    with pytest.raises(InvalidMessage, match=exact("triples[0].s.type: unknown term type 'q'")):
        from_pulsar("triples", bad, TG2)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

DETECTION = [
    ("triples", W1_FRAMES["triples"], TG1, "1.x values"),
    ("triples", W2_FRAMES["triples"], TG2, "2.x terms"),
    ("triples", {"metadata": {"id": "d", "metadata": [], "user": "u", "collection": "c"},
                 "triples": []}, TG1, "empty lists, 1.x metadata"),
    ("triples", {"metadata": {"id": "d", "metadata": [], "collection": "c"}, "triples": []},
     TG2, "empty lists, metadata without user (what 2.x tools send)"),
    ("triples", {"metadata": {"id": "d", "root": "", "user": "u", "collection": "c"},
                 "triples": []}, TG2, "empty lists, root decides before user"),
    ("triples", {"metadata": {"id": "d", "metadata": [{"s": iri("x:s")}], "user": "u",
                              "collection": "c"}, "triples": []}, TG2, "first metadata term"),
    ("triples", {"triples": []}, TG1, "no metadata: the default's validator explains"),
    ("triples", [], TG1, "not an object"),
    ("triples", {"metadata": M2, "triples": [tr2(iri("x:o")) | {"s": u("x:s")}]}, TG1,
     "mixed: the first term decides"),
    ("graph-embeddings", W2_FRAMES["graph-embeddings"], TG2, "entity term"),
    ("entity-contexts", W1_FRAMES["entity-contexts"], TG1, "entity value"),
    ("document-embeddings", W2_FRAMES["document-embeddings"], TG2, "chunk_id"),
    ("document-embeddings", W1_FRAMES["document-embeddings"], TG1, "chunk text, 1.x metadata"),
    ("document-embeddings", {"metadata": {"id": "d", "root": "", "collection": "c"},
                             "chunks": [{"chunk": "t", "vectors": [[1.0]]}]}, TG2,
     "2.0-style chunk, 2.x metadata"),
    ("objects", W1_FRAMES["objects"], TG1, "objects by metadata"),
    ("rows", W2_FRAMES["rows"], TG2, "rows by metadata"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "frame", "expected", "why"), DETECTION,
                         ids=[d[3] for d in DETECTION])  # fmt: skip
def test_detection_rule(kind: str, frame: Any, expected: Profile, why: str) -> None:
    """Each frame is read as the generation the documented rule names, ambiguous ones included."""
    assert detect(kind, frame) is expected


def test_ambiguous_empty_frame_publishes_the_same_either_way() -> None:
    """An empty-list frame converts to the same payload whichever way it would be read."""
    as_1 = {"metadata": {"id": "d", "metadata": [], "user": "u", "collection": "c"}, "triples": []}
    as_2 = {"metadata": {"id": "d", "user": "u", "collection": "c", "root": ""}, "triples": []}
    assert convert_frame("triples", as_1, TG1) == convert_frame("triples", as_2, TG1)
    assert convert_frame("triples", as_1, TG2, workspace="u") == convert_frame(
        "triples", as_2, TG2, workspace="u"
    )


# --------------------------------------------------------------------------------------------
# Validation of 2.x frames (and 1.x objects)
# --------------------------------------------------------------------------------------------

INVALID_2X = [
    ("triples", frame2("triples", [{"s": {"t": "i"}, "p": iri("p"), "o": iri("o")}]),
     "triples[0].s.i: missing"),
    ("triples", frame2("triples", [tr2({"t": "x", "v": "a"})]),
     "triples[0].o.t: expected one of \"i\", \"l\", \"b\", \"t\", got 'x'"),
    ("triples", frame2("triples", [tr2({"t": 1})]),
     "triples[0].o.t: expected one of \"i\", \"l\", \"b\", \"t\", got number"),
    ("triples", frame2("triples", [tr2({"t": "l", "v": "a", "dt": 5})]),
     "triples[0].o.dt: expected string, got number"),
    ("triples", frame2("triples", [tr2(iri("o"), g=3)]),
     "triples[0].g: expected string, got number"),
    ("triples", frame2("triples", [tr2({"t": "t", "tr": {"s": iri("s"), "p": iri("p")}})]),
     "triples[0].o.tr.o: missing"),
    ("triples", {"metadata": {"id": "d", "root": ""}, "triples": []},
     "metadata.collection: missing"),
    ("graph-embeddings", frame2("graph-embeddings", [{"entity": iri("e")}]),
     "entities[0].vector: missing"),
    ("graph-embeddings", frame2("graph-embeddings", [{"entity": iri("e"), "vector": [1.0],
                                                      "vectors": [[1.0]]}]),
     "entities[0].vectors: not allowed together with vector"),
    ("graph-embeddings", frame2("graph-embeddings", [{"entity": iri("e"), "vector": [1.0, "x"]}]),
     "entities[0].vector[1]: expected number, got string"),
    ("graph-embeddings", frame2("graph-embeddings", [{**ENT, "attributes": {"a": [1]}}]),
     "entities[0].attributes.a[0]: expected string, got number"),
    ("document-embeddings", frame2("document-embeddings", [{"vector": [1.0]}]),
     "chunks[0].chunk_id: missing"),
    ("entity-contexts", frame2("entity-contexts", [{"entity": iri("e"), "context": 1}]),
     "entities[0].context: expected string, got number"),
    ("rows", frame2("rows", []) | {"schema_name": "s", "values": [{"a": 1}]},
     "values[0].a: expected string, got number"),
    ("objects", {"metadata": {"id": "d", "user": "u", "collection": "c"}, "schema_name": "s"},
     "values: missing"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "frame", "detail"), INVALID_2X, ids=[d[2] for d in INVALID_2X])
def test_invalid_frames_name_the_field(kind: str, frame: Any, detail: str) -> None:
    """A frame breaking its detected format is refused with the first problem's field path."""
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate_frame(kind, frame)


def test_deeply_quoted_triple_is_refused_not_crashed() -> None:
    """A quoted triple nested thousands deep is an invalid message, not a RecursionError."""
    term: dict[str, Any] = iri("x:o")
    for _ in range(5000):
        term = {"t": "t", "tr": tr2(term)}
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        convert_frame("triples", frame2("triples", [tr2(term)]), TG2)


# --------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-1000, 1000)
)
vectors = st.lists(st.lists(numbers, max_size=3), max_size=3)
values1 = st.fixed_dictionaries({"v": texts, "e": st.booleans()})
triples1 = st.fixed_dictionaries({"s": values1, "p": values1, "o": values1})
metadata1 = st.fixed_dictionaries(
    {
        "id": texts,
        "metadata": st.lists(triples1, max_size=2),
        "user": texts,
        "collection": texts,
    }
)


def messages1(kind: str, metadata: st.SearchStrategy[Any] = metadata1) -> st.SearchStrategy[Any]:
    """Valid 1.x frames of ``kind``."""
    items = {
        "triples": ("triples", triples1),
        "graph-embeddings": (
            "entities", st.fixed_dictionaries({"entity": values1, "vectors": vectors})
        ),
        "document-embeddings": (
            "chunks", st.fixed_dictionaries({"chunk": texts, "vectors": vectors})
        ),
        "entity-contexts": (
            "entities", st.fixed_dictionaries({"entity": values1, "context": texts})
        ),
    }
    if kind == "objects":
        return st.fixed_dictionaries(
            {
                "metadata": metadata,
                "schema_name": texts,
                "values": st.lists(st.dictionaries(texts, texts, max_size=2), max_size=2),
                "confidence": numbers,
                "source_span": texts,
            }
        )
    field, item = items[kind]
    return st.fixed_dictionaries({"metadata": metadata, field: st.lists(item, max_size=3)})


KINDS1 = ("triples", "graph-embeddings", "document-embeddings", "entity-contexts", "objects")


@pytest.mark.parametrize("kind", KINDS1)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_1x_to_2x_to_1x_is_identity(kind: str, data: st.DataObject) -> None:
    """Any 1.x frame converted to the 2.x wire format and back is the same frame."""
    msg = data.draw(messages1(kind))
    assert validate_frame(kind, msg) == (TG1, msg)
    as_2 = convert_wire(kind, msg, TG1, TG2)
    assert validate_frame(kind, as_2)[0] is TG2  # the result is a valid, detectable 2.x frame
    assert convert_wire(kind, as_2, TG2, TG1) == msg


@pytest.mark.parametrize("kind", KINDS1)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_1x_through_tg1_payload_is_identity(kind: str, data: st.DataObject) -> None:
    """Any 1.x frame published under tg1 exports as the same frame, in 1.x or via 2.x."""
    msg = data.draw(messages1(kind))
    payload = convert_frame(kind, msg, TG1)
    assert json.loads(dumps(payload)) == payload
    assert from_pulsar(kind, payload, TG1) == msg
    assert convert_wire(kind, from_pulsar(kind, payload, TG1, TG2), TG2, TG1) == msg


def _tg2_can_carry(kind: str, msg: dict[str, Any], workspace: str) -> bool:
    """The oracle: whether tg2 has a place for everything in the 1.x frame ``msg``."""
    m = msg["metadata"]
    if (m["user"] and m["user"] != workspace) or m.get("metadata"):
        return False
    if kind == "document-embeddings":
        return not msg["chunks"]
    if kind == "graph-embeddings":
        return all(len(x["vectors"]) == 1 for x in msg["entities"])
    return True


@pytest.mark.parametrize("kind", KINDS1)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_1x_through_tg2_payload_is_identity_or_a_named_refusal(
    kind: str, data: st.DataObject
) -> None:
    """A 1.x frame under tg2 round-trips exactly when tg2 can carry it, else names the field."""
    carriable = metadata1.map(lambda m: {**m, "metadata": [], "user": "ws"})
    msg = data.draw(st.one_of(messages1(kind), messages1(kind, carriable)))
    if kind == "graph-embeddings" and data.draw(st.booleans()):
        for x in msg["entities"]:
            x["vectors"] = x["vectors"][:1] or [[]]
    expected = _tg2_can_carry(kind, msg, "ws")
    try:
        payload = convert_frame("rows" if kind == "objects" else kind, msg, TG2, workspace="ws")
    except InvalidMessage as exc:
        assert not expected, exc.detail
        assert re.match(r"^(metadata\.(user|metadata)|entities\[\d+\]\.vectors|chunks\[0\]"
                        r"\.chunk): tg2 ", exc.detail), exc.detail  # fmt: skip
        return
    assert expected
    back = from_pulsar("rows" if kind == "objects" else kind, payload, TG2, TG1, workspace="ws")
    if not msg["metadata"]["user"]:
        back["metadata"]["user"] = ""  # an empty user says nothing; it comes back as the workspace
    assert back == msg


# 2.x terms: the lossy ones are generated as often as the plain ones.
datatypes = st.sampled_from(["", XSD_STRING, XSD_INT])
languages = st.sampled_from(["", "en"])
plain_terms = st.one_of(
    st.builds(lambda v: {"t": "i", "i": v}, texts),
    st.builds(lambda v: {"t": "l", "v": v}, texts),
)
base_terms = st.one_of(
    plain_terms,
    st.builds(
        lambda v, dt, ln: {"t": "l", "v": v, "dt": dt, "ln": ln}, texts, datatypes, languages
    ),
    st.builds(lambda d: {"t": "b", "d": d}, texts),
)
graphs = st.sampled_from([None, "", "http://x/g"])


def triples2(terms: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """2.x triples over ``terms``, with an optional graph."""
    return st.builds(
        lambda s, p, o, g: {"s": s, "p": p, "o": o} | ({} if g is None else {"g": g}),
        terms, terms, terms, graphs,
    )  # fmt: skip


terms2 = st.one_of(base_terms, st.builds(lambda t: {"t": "t", "tr": t}, triples2(base_terms)))
extras = st.fixed_dictionaries(
    {},
    optional={
        "chunk_id": st.sampled_from(["", "c1"]),
        "rdf_type": st.sampled_from([[], ["http://x/T"]]),
        "attributes": st.sampled_from([{}, {"a": "b"}]),
    },
)
metadata2 = st.fixed_dictionaries(
    {"id": texts, "collection": texts}, optional={"root": st.sampled_from(["", "doc0"])}
)


def messages2(kind: str) -> st.SearchStrategy[Any]:
    """Valid 2.x frames of ``kind`` (2.11 shapes), often holding content 1.x cannot carry."""
    vector = st.lists(numbers, max_size=3)
    if kind == "triples":
        return st.fixed_dictionaries(
            {"metadata": metadata2, "triples": st.lists(triples2(terms2), max_size=4)}
        )
    if kind == "document-embeddings":
        chunk = st.fixed_dictionaries({"chunk_id": texts, "vector": vector})
        return st.fixed_dictionaries({"metadata": metadata2, "chunks": st.lists(chunk, max_size=2)})
    if kind == "rows":
        return st.fixed_dictionaries(
            {"metadata": metadata2, "schema_name": texts,
             "values": st.lists(st.dictionaries(texts, texts, max_size=2), max_size=2)}
        )  # fmt: skip
    second = (
        {"vector": vector} if kind == "graph-embeddings" else {"context": texts}
    )  # the item's second field
    item = st.builds(
        lambda base, more: base | more,
        st.fixed_dictionaries({"entity": terms2, **second}),
        extras,
    )
    return st.fixed_dictionaries({"metadata": metadata2, "entities": st.lists(item, max_size=3)})


def _term_ok_for_1(t: dict[str, Any]) -> bool:
    return t["t"] == "i" or (
        t["t"] == "l" and not t.get("ln") and t.get("dt", "") in ("", XSD_STRING)
    )


def _tg1_can_carry(kind: str, msg: dict[str, Any]) -> bool:
    """The oracle: whether 1.x has a place for everything in the 2.x frame ``msg``."""
    if msg["metadata"].get("root"):
        return False
    if kind == "triples":
        return all(
            all(_term_ok_for_1(t[k]) for k in "spo") and not t.get("g") for t in msg["triples"]
        )
    if kind == "document-embeddings":
        return not msg["chunks"]
    if kind == "rows":
        return True
    return all(
        _term_ok_for_1(x["entity"]) and not any(x.get(k) for k in ("chunk_id", "rdf_type",
                                                                    "attributes"))
        for x in msg["entities"]
    )  # fmt: skip


KINDS2 = ("triples", "graph-embeddings", "document-embeddings", "entity-contexts", "rows")


@pytest.mark.parametrize("kind", KINDS2)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_2x_into_tg1_is_complete_or_refused_never_partial(kind: str, data: st.DataObject) -> None:
    """A 2.x frame under tg1 gives a complete payload exactly when 1.x can carry it all."""
    msg = data.draw(messages2(kind))
    before = copy.deepcopy(msg)
    assert validate_frame(kind, msg)[0] is TG2
    tg1_kind = "objects" if kind == "rows" else kind
    try:
        payload = convert_frame(tg1_kind, msg, TG1)
    except InvalidMessage as exc:
        assert not _tg1_can_carry(kind, msg), exc.detail
        assert "tg1 c" in exc.detail  # "tg1 cannot carry …" / "tg1 carries chunk text …"
    else:
        assert _tg1_can_carry(kind, msg)
        field = {"triples": "triples", "document-embeddings": "chunks", "rows": "values"}
        name = field.get(kind, "entities")
        assert len(payload[name]) == len(msg[name])  # every item made it
        # What is published exports as a 2.x frame that publishes the same payload again.
        again = from_pulsar(tg1_kind, payload, TG1, TG2)
        assert convert_frame(tg1_kind, again, TG1) == payload
    assert msg == before


@pytest.mark.parametrize("kind", KINDS2)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_2x_through_tg2_payload_is_identity(kind: str, data: st.DataObject) -> None:
    """Any 2.x frame in 2.11's canonical form published under tg2 exports as the same frame."""
    msg = data.draw(messages2(kind))
    payload = convert_frame(kind, msg, TG2)
    back = from_pulsar(kind, payload, TG2)
    assert back == canonical2(kind, msg)
    # Publishing the export again gives the same payload, except that a graph "" (kept as
    # TrustGraph's gateway keeps it) comes back as null: both are the default graph.
    expected = json.loads(json.dumps(payload).replace('"g": ""', '"g": null'))
    assert convert_frame(kind, back, TG2) == expected


def canonical2(kind: str, x: Any) -> Any:
    """``x`` as 2.x export writes it: root always there, empty optional fields left out."""
    if isinstance(x, list):
        return [canonical2(kind, y) for y in x]
    if not isinstance(x, dict):
        return x
    out = {k: canonical2(kind, v) for k, v in x.items()}
    if out.get("t") == "l":
        for key in ("dt", "ln"):
            if out.get(key) == "":
                del out[key]
    if "s" in out and "p" in out and not out.get("g"):
        out.pop("g", None)
    if "entity" in out:
        for key in ("chunk_id", "rdf_type", "attributes"):
            if key in out and not out[key]:
                del out[key]
    if "collection" in out:
        out.setdefault("root", "")
    if kind == "rows" and "schema_name" in out:
        out.setdefault("confidence", 1.0)
        out.setdefault("source_span", "")
    return out


# --------------------------------------------------------------------------------------------
# Profiles and topics
# --------------------------------------------------------------------------------------------


def test_profile_names_and_default() -> None:
    """The profiles are tg1 and tg2, and tg1 is the default (CONTRACT §8)."""
    assert [p.value for p in Profile] == ["tg1", "tg2"]
    assert DEFAULT_PROFILE is TG1
    assert Profile("tg2") is TG2


def test_profile_kinds() -> None:
    """tg1 has objects, tg2 has rows, both have the four common kinds."""
    common = ["triples", "graph-embeddings", "document-embeddings", "entity-contexts"]
    assert list(TG1.kinds) == [*common, "objects"]
    assert list(TG2.kinds) == [*common, "rows"]
    assert set(TG1.kinds) | set(TG2.kinds) == set(KINDS)


TOPICS = [
    (TG1, "triples", "persistent://tg/flow/triples-store:default"),
    (TG1, "graph-embeddings", "persistent://tg/flow/graph-embeddings-store:default"),
    (TG1, "document-embeddings", "persistent://tg/flow/document-embeddings-store:default"),
    (TG1, "entity-contexts", "persistent://tg/flow/entity-contexts-load:default"),
    (TG1, "objects", "persistent://tg/flow/objects-store:default"),
    (TG2, "triples", "persistent://tg/flow/triples-store:default:default"),
    (TG2, "graph-embeddings", "persistent://tg/flow/graph-embeddings-store:default:default"),
    (TG2, "document-embeddings", "persistent://tg/flow/document-embeddings-store:default:default"),
    (TG2, "entity-contexts", "persistent://tg/flow/entity-contexts-load:default:default"),
    (TG2, "rows", "persistent://tg/flow/rows-store:default:default"),
]


@pytest.mark.parametrize(
    ("profile", "kind", "topic"), TOPICS, ids=[f"{p}-{k}" for p, k, _ in TOPICS]
)
def test_default_topics_are_trustgraphs(profile: Profile, kind: str, topic: str) -> None:
    """The default topic of the flow ``default`` is the one TrustGraph's flow templates name."""
    assert default_topic(profile, "default", kind) == topic


def test_topics_carry_flow_and_workspace() -> None:
    """tg2 puts the workspace before the flow; tg1 has no workspace and ignores it."""
    assert default_topic(TG2, "f1", "triples", "ws") == "persistent://tg/flow/triples-store:ws:f1"
    assert default_topic(TG1, "f1", "triples", "ws") == "persistent://tg/flow/triples-store:f1"
    assert DEFAULT_WORKSPACE == "default"
    assert interface(TG1, "entity-contexts") == "entity-contexts-load"


@pytest.mark.parametrize(("profile", "kind"), [(TG1, "rows"), (TG2, "objects"), (TG1, "x")])
def test_kind_outside_the_profile_is_a_route_error(profile: Profile, kind: str) -> None:
    """A kind the profile does not have is a RouteError (HTTP 404), not a topic."""
    with pytest.raises(RouteError, match=f"unknown kind '{kind}' for profile {profile.value}"):
        default_topic(profile, "default", kind)


@pytest.mark.parametrize("workspace", ["", "a/b", "a:b", "x" * 65])
def test_bad_workspace_is_a_route_error(workspace: str) -> None:
    """A workspace that would change the topic's shape is refused."""
    with pytest.raises(RouteError, match="invalid workspace"):
        default_topic(TG2, "default", "triples", workspace)


def test_sample_frame_converts_both_ways() -> None:
    """The benchmark's 1.2 KB sample triples frame converts under both profiles."""
    msg = sample_message("triples", 1)
    assert from_pulsar("triples", convert_frame("triples", msg, TG1), TG1) == msg
    msg["metadata"]["metadata"] = []
    payload = convert_frame("triples", msg, TG2, workspace="trustgraph")
    assert from_pulsar("triples", payload, TG2, TG1, workspace="trustgraph") == msg
