"""Tests of core.wire: validation of client frames against TrustGraph's wire format."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiesce.core import wire
from quiesce.core.errors import InvalidMessage
from quiesce.core.wire import KINDS, validate, validate_object
from tests.data import sample_message

# The name of the list of items that follows "metadata" in each kind.
LIST_FIELD = {
    "triples": "triples",
    "graph-embeddings": "entities",
    "document-embeddings": "chunks",
    "entity-contexts": "entities",
}


def exact(detail: str) -> str:
    """A `pytest.raises` match pattern for exactly ``detail``."""
    return f"^{re.escape(detail)}$"


def parse_path(path: str) -> list[str | int]:
    """Split ``a.b[2].c`` into ``["a", "b", 2, "c"]``."""
    return [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def set_at(obj: Any, path: str, value: Any) -> Any:
    """Return a deep copy of ``obj`` with the field at ``path`` replaced by ``value``."""
    obj = copy.deepcopy(obj)
    *parents, last = parse_path(path)
    target = obj
    for p in parents:
        target = target[p]
    target[last] = value
    return obj


def delete_at(obj: Any, path: str) -> Any:
    """Return a deep copy of ``obj`` with the field at ``path`` removed."""
    obj = copy.deepcopy(obj)
    *parents, last = parse_path(path)
    target = obj
    for p in parents:
        target = target[p]
    del target[last]
    return obj


def format_path(path: list[str | int]) -> str:
    """Join path parts the way error details do: dots for keys, ``[i]`` for indices."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


# ---------------------------------------------------------------------------------------------
# Valid messages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("i", [0, 1, 987654])
def test_sample_message_is_valid_and_round_trips(kind: str, i: int) -> None:
    """The sample message of every kind validates and comes back equal to json.loads of it."""
    text = json.dumps(sample_message(kind, i))
    assert validate(kind, text) == json.loads(text) == sample_message(kind, i)


def test_sample_messages_differ_by_i() -> None:
    """sample_message folds ``i`` into the message, so successive messages differ."""
    for kind in KINDS:
        assert sample_message(kind, 1) != sample_message(kind, 2)


def test_sample_triples_is_about_1_2_kb() -> None:
    """The triples sample encodes to roughly 1.2 KB of JSON, as benchmarks assume."""
    for i in (0, 42, 10**6):
        assert 1100 <= len(json.dumps(sample_message("triples", i))) <= 1300


def test_sample_message_unknown_kind() -> None:
    """sample_message rejects a kind that is not in KINDS."""
    with pytest.raises(KeyError):
        sample_message("rows")


def test_kinds() -> None:
    """KINDS lists the four kinds of the contract, each with a fast path and a schema."""
    assert KINDS == ("triples", "graph-embeddings", "document-embeddings", "entity-contexts")
    assert tuple(wire._FAST) == KINDS
    assert tuple(wire._SCHEMAS) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_accepts_samples(kind: str) -> None:
    """Well-formed messages are accepted by the fast path without running the diagnosis."""
    assert wire._FAST[kind](sample_message(kind, 3))
    assert wire._FAST[kind](with_extras(kind))


def with_extras(kind: str) -> dict[str, Any]:
    """A sample message with unknown fields at every level."""
    msg = sample_message(kind)
    msg["extra"] = {"anything": [1, None]}
    msg["metadata"]["x-trace"] = "abc"
    msg["metadata"]["metadata"][0]["graph"] = None
    msg["metadata"]["metadata"][0]["s"]["lang"] = "en"
    item = msg[LIST_FIELD[kind]][0]
    item["score"] = 0.5
    if kind == "triples":
        item["o"]["datatype"] = "xsd:string"
    if "entity" in item:
        item["entity"]["extra"] = True
    return msg


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_kept(kind: str) -> None:
    """Unknown extra fields anywhere are accepted and kept in the returned object."""
    text = json.dumps(with_extras(kind))
    result = validate(kind, text)
    assert result == json.loads(text)
    assert result["extra"] == {"anything": [1, None]}


@pytest.mark.parametrize("kind", KINDS)
def test_empty_lists_are_valid(kind: str) -> None:
    """Empty lists of triples, items and metadata triples are valid."""
    msg = sample_message(kind)
    msg["metadata"]["metadata"] = []
    msg[LIST_FIELD[kind]] = []
    assert validate(kind, json.dumps(msg)) == msg


@pytest.mark.parametrize("kind", ["graph-embeddings", "document-embeddings"])
def test_empty_vectors_are_valid(kind: str) -> None:
    """An item with no vectors, or with an empty vector, is valid."""
    msg = sample_message(kind)
    msg[LIST_FIELD[kind]][0]["vectors"] = []
    msg[LIST_FIELD[kind]][1]["vectors"] = [[]]
    assert validate(kind, json.dumps(msg)) == msg


@pytest.mark.parametrize(
    "vector",
    [[1, 2, 3], [0, 0.5, -7], [1e308, 1e308], [10**30, -1.5], [10**400, 0.0], [-0.0]],
)
def test_integer_and_extreme_finite_numbers_are_valid(vector: list[Any]) -> None:
    """Integers and very large finite numbers are numbers, even when their sum overflows."""
    msg = sample_message("graph-embeddings")
    msg["entities"][0]["vectors"] = [vector]
    assert validate_object("graph-embeddings", msg) is msg


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30, -(10**308)])
def test_integers_past_64_bits_in_a_frame_are_valid_numbers(number: int) -> None:
    """A frame with an integer past 64 bits but within a double validates (as orjson reads it:
    its text is what is published); one past a double is refused (see below)."""
    msg = sample_message("graph-embeddings")
    msg["entities"][0]["vectors"] = [[number, 1.0]]
    parsed = validate("graph-embeddings", json.dumps(msg))
    assert parsed["entities"][0]["vectors"][0][0] == pytest.approx(number, rel=1e-15) or (
        parsed["entities"][0]["vectors"][0][0] == number
    )


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_input_is_utf8(kind: str) -> None:
    """UTF-8 bytes (and bytearrays) are decoded, including non-ASCII text."""
    msg = sample_message(kind)
    msg["metadata"]["user"] = "zoë 東京 🚀"
    data = json.dumps(msg, ensure_ascii=False).encode("utf-8")
    assert validate(kind, data) == msg
    assert validate(kind, bytearray(data)) == msg


def test_validate_object_returns_same_object() -> None:
    """validate_object returns its argument itself, unchanged."""
    for kind in KINDS:
        msg = with_extras(kind)
        before = copy.deepcopy(msg)
        assert validate_object(kind, msg) is msg
        assert msg == before


def test_unknown_kind_is_a_key_error() -> None:
    """An unknown kind is a programming error and raises KeyError, not InvalidMessage."""
    with pytest.raises(KeyError, match="unknown kind 'rows'"):
        validate("rows", "{}")
    with pytest.raises(KeyError):
        validate_object("rows", {})


# ---------------------------------------------------------------------------------------------
# Undecodable frames
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "not JSON: Expecting value at line 1 column 1"),
        ("nope", "not JSON: Expecting value at line 1 column 1"),
        ('{"metadata": ', "not JSON: Expecting value at line 1 column 14"),
        (
            "{'a': 1}",
            "not JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        ("{}\n{}", "not JSON: Extra data at line 2 column 1"),
        (
            b"\xef\xbb\xbf{}",
            "not JSON: Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1 column 1",
        ),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_not_json(kind: str, text: str | bytes, detail: str) -> None:
    """A frame that is not JSON is rejected with "not JSON: " and json's message and position."""
    with pytest.raises(InvalidMessage, match=exact(detail)) as info:
        validate(kind, text)
    assert info.value.code == "invalid-message"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\xff{}", "not UTF-8: invalid start byte at byte 0"),
        (b'{"a": "\xc3"}', "not UTF-8: invalid continuation byte at byte 7"),
        (b'{"a": "\xe6\x9d', "not UTF-8: unexpected end of data at byte 7"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_not_utf8(kind: str, data: bytes, detail: str) -> None:
    """Bytes that are not UTF-8 are rejected with "not UTF-8: " naming the reason and offset."""
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate(kind, data)


def test_deep_nesting_is_rejected() -> None:
    """Nesting deep enough to exhaust the parser's recursion is rejected, not a crash."""
    with pytest.raises(InvalidMessage, match=exact("nested deeper than 254 levels")):
        validate("triples", "[" * 200_000)


@pytest.mark.parametrize("depth", [255, 900, 1024, 1025, 5000])
def test_nesting_past_the_bound_is_rejected_whatever_parses_it(depth: int) -> None:
    """Closed nesting past MAX_DEPTH is rejected, inside orjson's limit (1024) or past it."""
    text = '{"metadata": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(InvalidMessage, match=exact("nested deeper than 254 levels")):
        validate("triples", text)


def test_nesting_up_to_the_bound_is_parsed() -> None:
    """MAX_DEPTH levels of nesting in an extra field parse (and then only the schema counts)."""
    msg = sample_message("triples")
    text = json.dumps(msg)[:-1] + ', "x": ' + "[" * 253 + "]" * 253 + "}"
    assert wire.loads_strict(text)["metadata"] == msg["metadata"]
    assert validate("triples", text)["triples"] == msg["triples"]


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("1" * 10_000, "1" * 37 + "..."), ("1e400", "1e400"), ("-2e308", "-2e308")],
)
def test_numbers_beyond_a_double_are_rejected(literal: str, shown: str) -> None:
    """A number literal beyond a double (orjson refuses it) is rejected naming it."""
    text = json.dumps(sample_message("triples")).replace('"Alpha 0"', literal)
    detail = f"triples[1].o.v: number out of range: {shown}"
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate("triples", text)


@pytest.mark.parametrize(
    ("text", "json_type"),
    [
        ("[]", "array"),
        ('[{"metadata": {}}]', "array"),
        ('"triples"', "string"),
        ("42", "number"),
        ("-1.5e3", "number"),
        ("true", "boolean"),
        ("false", "boolean"),
        ("null", "null"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_not_an_object(kind: str, text: str, json_type: str) -> None:
    """JSON that is not an object is rejected naming the JSON type it is."""
    with pytest.raises(InvalidMessage, match=exact(f"expected a JSON object, got {json_type}")):
        validate(kind, text)
    with pytest.raises(InvalidMessage, match=exact(f"expected a JSON object, got {json_type}")):
        validate_object(kind, json.loads(text))


# ---------------------------------------------------------------------------------------------
# Missing fields and wrong types
# ---------------------------------------------------------------------------------------------

COMMON_REQUIRED = [
    "metadata",
    "metadata.id",
    "metadata.metadata",
    "metadata.user",
    "metadata.collection",
    "metadata.metadata[1].s",
    "metadata.metadata[0].p",
    "metadata.metadata[1].o",
    "metadata.metadata[1].o.v",
    "metadata.metadata[0].s.e",
]

REQUIRED = {
    "triples": [
        "triples",
        "triples[0].s",
        "triples[3].o",
        "triples[1].p.v",
        "triples[2].o.e",
    ],
    "graph-embeddings": [
        "entities",
        "entities[0].entity",
        "entities[1].vectors",
        "entities[1].entity.v",
        "entities[0].entity.e",
    ],
    "document-embeddings": ["chunks", "chunks[0].chunk", "chunks[1].vectors"],
    "entity-contexts": [
        "entities",
        "entities[1].entity",
        "entities[0].context",
        "entities[1].entity.v",
        "entities[0].entity.e",
    ],
}

MISSING_CASES = [(k, p) for k in KINDS for p in COMMON_REQUIRED + REQUIRED[k]]


@pytest.mark.parametrize(("kind", "path"), MISSING_CASES)
def test_missing_field(kind: str, path: str) -> None:
    """A missing required field is rejected as "<path>: missing"."""
    msg = delete_at(sample_message(kind), path)
    with pytest.raises(InvalidMessage, match=exact(f"{path}: missing")):
        validate(kind, json.dumps(msg))
    with pytest.raises(InvalidMessage, match=exact(f"{path}: missing")):
        validate_object(kind, msg)


# (path, wrong value, expected JSON type) for fields every kind has.
COMMON_WRONG: list[tuple[str, Any, str]] = [
    ("metadata", [], "object"),
    ("metadata", "m", "object"),
    ("metadata.id", 7, "string"),
    ("metadata.id", None, "string"),
    ("metadata.metadata", {}, "array"),
    ("metadata.metadata", "triples", "array"),
    ("metadata.metadata[0]", [], "object"),
    ("metadata.metadata[1].s", "http://x", "object"),
    ("metadata.metadata[1].o.v", {"v": "x"}, "string"),
    ("metadata.metadata[0].p.e", "true", "boolean"),
    ("metadata.metadata[0].p.e", 1, "boolean"),
    ("metadata.user", False, "string"),
    ("metadata.collection", ["default"], "string"),
]

WRONG: dict[str, list[tuple[str, Any, str]]] = {
    "triples": [
        ("triples", {}, "array"),
        ("triples", None, "array"),
        ("triples[2]", "t", "object"),
        ("triples[0].s", None, "object"),
        ("triples[0].s.e", "true", "boolean"),
        ("triples[0].s.e", 0, "boolean"),
        ("triples[3].o.v", 3.5, "string"),
        ("triples[1].p", [], "object"),
    ],
    "graph-embeddings": [
        ("entities", "e", "array"),
        ("entities[1]", 1, "object"),
        ("entities[0].entity", "http://x", "object"),
        ("entities[0].entity.v", True, "string"),
        ("entities[1].entity.e", None, "boolean"),
        ("entities[0].vectors", 0.5, "array"),
        ("entities[0].vectors", {}, "array"),
        ("entities[1].vectors[1]", 0.5, "array"),
        ("entities[1].vectors[0][2]", "0.5", "number"),
        ("entities[1].vectors[0][2]", None, "number"),
        ("entities[0].vectors[0][0]", [0.5], "number"),
    ],
    "document-embeddings": [
        ("chunks", {}, "array"),
        ("chunks[0]", [], "object"),
        ("chunks[1].chunk", 5, "string"),
        ("chunks[1].chunk", {"v": "x"}, "string"),
        ("chunks[0].vectors", "v", "array"),
        ("chunks[0].vectors[0]", {}, "array"),
        ("chunks[1].vectors[0][15]", "1", "number"),
    ],
    "entity-contexts": [
        ("entities", True, "array"),
        ("entities[0]", None, "object"),
        ("entities[1].entity", ["x"], "object"),
        ("entities[1].entity.v", 0, "string"),
        ("entities[0].entity.e", "false", "boolean"),
        ("entities[0].context", None, "string"),
        ("entities[1].context", ["a"], "string"),
    ],
}

WRONG_CASES = [(k, *case) for k in KINDS for case in COMMON_WRONG + WRONG[k]]


@pytest.mark.parametrize(("kind", "path", "value", "expected"), WRONG_CASES)
def test_wrong_type(kind: str, path: str, value: Any, expected: str) -> None:
    """A field of the wrong type is rejected as "<path>: expected <type>, got <json type>"."""
    msg = set_at(sample_message(kind), path, value)
    detail = f"{path}: expected {expected}, got {wire._json_type(value)}"
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate(kind, json.dumps(msg))
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate_object(kind, msg)


def test_flat_vectors_are_rejected_at_the_first_element() -> None:
    """A flat list of numbers where a list of vectors belongs is rejected at its first element."""
    msg = set_at(sample_message("graph-embeddings"), "entities[0].vectors", [1.0, 2.0])
    with pytest.raises(
        InvalidMessage, match=exact("entities[0].vectors[0]: expected array, got number")
    ):
        validate("graph-embeddings", json.dumps(msg))


def test_wrong_type_examples_from_contract() -> None:
    """The contract's own example details come out word for word."""
    msg = set_at(sample_message("triples"), "triples[0].s.e", "yes")
    with pytest.raises(InvalidMessage, match=exact("triples[0].s.e: expected boolean, got string")):
        validate("triples", json.dumps(msg))
    msg = set_at(sample_message("graph-embeddings"), "entities[1].vectors[0][2]", "x")
    with pytest.raises(
        InvalidMessage, match=exact("entities[1].vectors[0][2]: expected number, got string")
    ):
        validate("graph-embeddings", json.dumps(msg))


@pytest.mark.parametrize("kind", ["graph-embeddings", "document-embeddings"])
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_a_number(kind: str, value: bool) -> None:
    """JSON true and false in a vector are rejected: a boolean is not a number."""
    path = f"{LIST_FIELD[kind]}[1].vectors[0][3]"
    msg = set_at(sample_message(kind), path, value)
    with pytest.raises(InvalidMessage, match=exact(f"{path}: expected number, got boolean")):
        validate(kind, json.dumps(msg))


@pytest.mark.parametrize("kind", ["graph-embeddings", "document-embeddings"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(kind: str, literal: str) -> None:
    """NaN and ±Infinity, which json.loads accepts, are rejected as not JSON, at their path."""
    path = f"{LIST_FIELD[kind]}[0].vectors[0][5]"
    text = json.dumps(set_at(sample_message(kind), path, "@@"))
    text = text.replace('"@@"', literal)
    with pytest.raises(InvalidMessage, match=exact(f"{path}: {literal} is not JSON")):
        validate(kind, text)


def test_infinities_that_cancel_are_rejected() -> None:
    """A vector holding both +inf and -inf (whose sum is NaN) is still rejected at the first."""
    msg = sample_message("graph-embeddings")
    msg["entities"][0]["vectors"][0][:2] = [float("inf"), float("-inf")]
    with pytest.raises(
        InvalidMessage, match=exact("entities[0].vectors[0][0]: expected a finite number")
    ):
        validate_object("graph-embeddings", msg)


# ---------------------------------------------------------------------------------------------
# First problem in document order
# ---------------------------------------------------------------------------------------------


def test_first_problem_in_document_order_is_reported() -> None:
    """Of several problems, only the first in document order is reported."""
    msg = sample_message("triples")
    msg["triples"][1]["s"]["e"] = "no"
    msg["triples"][3]["o"]["v"] = 1
    del msg["triples"][2]["p"]
    with pytest.raises(InvalidMessage, match=exact("triples[1].s.e: expected boolean, got string")):
        validate("triples", json.dumps(msg))


def test_field_order_follows_the_text() -> None:
    """Fields are checked in the order they appear in the text, not the order of the format."""
    meta = {"id": 1, "metadata": [], "user": "u", "collection": "c"}
    text = '{"triples": [{"s": 3}], "metadata": ' + json.dumps(meta) + "}"
    with pytest.raises(InvalidMessage, match=exact("triples[0].s: expected object, got number")):
        validate("triples", text)
    text = '{"metadata": ' + json.dumps(meta) + ', "triples": [{"s": 3}]}'
    with pytest.raises(InvalidMessage, match=exact("metadata.id: expected string, got number")):
        validate("triples", text)


def test_missing_fields_are_reported_at_the_end_of_their_object() -> None:
    """A missing field counts as sitting at its object's end, after the fields present."""
    msg = sample_message("entity-contexts")
    del msg["metadata"]["id"]
    msg["metadata"]["user"] = None
    with pytest.raises(InvalidMessage, match=exact("metadata.user: expected string, got null")):
        validate("entity-contexts", json.dumps(msg))
    text = '{"entities": [], "metadata": {"user": "u"}}'
    with pytest.raises(InvalidMessage, match=exact("metadata.id: missing")):
        validate("entity-contexts", text)
    text = '{"entities": [{"context": "c"}]}'
    with pytest.raises(InvalidMessage, match=exact("entities[0].entity: missing")):
        validate("entity-contexts", text)
    text = '{"entities": [{"entity": {"v": "x", "e": true}, "context": "c"}]}'
    with pytest.raises(InvalidMessage, match=exact("metadata: missing")):
        validate("entity-contexts", text)


def test_empty_object_reports_metadata_missing() -> None:
    """An empty object is missing its metadata first."""
    for kind in KINDS:
        with pytest.raises(InvalidMessage, match=exact("metadata: missing")):
            validate(kind, "{}")


def test_wrong_field_in_one_kind_is_an_unknown_field_in_another() -> None:
    """A field of another kind is an unknown extra field, so the kind's own field is missing."""
    msg = sample_message("graph-embeddings")
    with pytest.raises(InvalidMessage, match=exact("chunks: missing")):
        validate("document-embeddings", json.dumps(msg))
    with pytest.raises(InvalidMessage, match=exact("entities[0].context: missing")):
        validate("entity-contexts", json.dumps(msg))


def test_non_json_python_values_are_named_by_type() -> None:
    """validate_object names a value JSON cannot hold by its Python type."""
    msg = set_at(sample_message("triples"), "triples[0]", ("s", "p", "o"))
    with pytest.raises(InvalidMessage, match=exact("triples[0]: expected object, got tuple")):
        validate_object("triples", msg)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

texts = st.text(max_size=20)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    # Within 64 bits: past that orjson (the fast parser) returns a float where the stdlib
    # returns an int; both are numbers (see the test of huge integers below).
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
values = st.fixed_dictionaries({"v": texts, "e": st.booleans()})
triples = st.fixed_dictionaries({"s": values, "p": values, "o": values})
metadatas = st.fixed_dictionaries(
    {
        "id": texts,
        "metadata": st.lists(triples, max_size=3),
        "user": texts,
        "collection": texts,
    }
)
vectors = st.lists(st.lists(numbers, max_size=6), max_size=3)

MESSAGES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "triples": st.fixed_dictionaries(
        {"metadata": metadatas, "triples": st.lists(triples, max_size=4)}
    ),
    "graph-embeddings": st.fixed_dictionaries(
        {
            "metadata": metadatas,
            "entities": st.lists(
                st.fixed_dictionaries({"entity": values, "vectors": vectors}), max_size=3
            ),
        }
    ),
    "document-embeddings": st.fixed_dictionaries(
        {
            "metadata": metadatas,
            "chunks": st.lists(
                st.fixed_dictionaries({"chunk": texts, "vectors": vectors}), max_size=3
            ),
        }
    ),
    "entity-contexts": st.fixed_dictionaries(
        {
            "metadata": metadatas,
            "entities": st.lists(
                st.fixed_dictionaries({"entity": values, "context": texts}), max_size=3
            ),
        }
    ),
}

kinds_and_messages = st.sampled_from(KINDS).flatmap(
    lambda kind: st.tuples(st.just(kind), MESSAGES[kind])
)


@settings(max_examples=200, deadline=None)
@given(kinds_and_messages)
def test_generated_valid_messages_are_accepted(case: tuple[str, dict[str, Any]]) -> None:
    """Every generated well-formed message of every kind is accepted and returned equal."""
    kind, msg = case
    text = json.dumps(msg)
    assert validate(kind, text) == msg
    assert validate(kind, text.encode("utf-8")) == msg
    assert validate_object(kind, msg) is msg


def leaves(obj: Any, path: list[str | int]) -> list[tuple[list[str | int], Any]]:
    """Every scalar (string, boolean, number) in ``obj`` with its path."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in leaves(v, [*path, k])]
    if isinstance(obj, list):
        return [leaf for i, v in enumerate(obj) for leaf in leaves(v, [*path, i])]
    return [(path, obj)]


WRONG_FOR = {
    "string": [0, 1.5, True, None, [], {}],
    "boolean": ["true", 0, 1, None, [], {}],
    "number": ["1", True, False, None, [1.0], {}, float("nan"), float("inf"), float("-inf")],
}


@settings(max_examples=300, deadline=None)
@given(kinds_and_messages, st.data())
def test_one_wrong_leaf_is_rejected_at_its_path(
    case: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """Replacing one required leaf with a wrongly typed value is rejected naming that path."""
    kind, msg = case
    path, leaf = data.draw(st.sampled_from(leaves(msg, [])), label="leaf")
    expected = wire._json_type(leaf)
    bad = data.draw(st.sampled_from(WRONG_FOR[expected]), label="bad")
    target = msg
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = bad
    where = format_path(path)
    if expected == "number" and isinstance(bad, float):
        # A decoded NaN is a wrong number; written out, it is not even JSON.
        detail = f"{where}: expected a finite number"
        text_detail = f"{where}: {json.dumps(bad)} is not JSON"
    else:
        detail = text_detail = f"{where}: expected {expected}, got {wire._json_type(bad)}"
    with pytest.raises(InvalidMessage) as info:
        validate(kind, json.dumps(msg))
    assert info.value.detail.startswith(where + ": ")
    assert info.value.detail == text_detail
    with pytest.raises(InvalidMessage, match=exact(detail)):
        validate_object(kind, msg)


@settings(max_examples=200, deadline=None)
@given(kinds_and_messages, st.data())
def test_fast_path_agrees_with_diagnosis(
    case: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    """The fast path never accepts what the diagnosis rejects, even after a random deletion."""
    kind, msg = case
    paths = [p for p, _ in leaves(msg, [])]
    if paths:
        path = data.draw(st.sampled_from(paths))
        cut = data.draw(st.integers(min_value=1, max_value=len(path)))
        path = path[:cut]
        if isinstance(path[-1], str):
            target = msg
            for p in path[:-1]:
                target = target[p]
            del target[path[-1]]
    if wire._FAST[kind](msg):
        assert wire._diagnose(kind, msg) is None
