"""Validation of client frames against TrustGraph's wire format.

One text frame carries one message of one *kind*::

    triples:             {"metadata": M, "triples": [T, ...]}
    graph-embeddings:    {"metadata": M, "entities": [{"entity": V, "vectors": [[num, ...], ...]}]}
    document-embeddings: {"metadata": M, "chunks": [{"chunk": str, "vectors": [[num, ...], ...]}]}
    entity-contexts:     {"metadata": M, "entities": [{"entity": V, "context": str}, ...]}

    M = {"id": str, "metadata": [T, ...], "user": str, "collection": str}
    T = {"s": V, "p": V, "o": V}
    V = {"v": str, "e": bool}          (e: the value is a URI)

Numbers are JSON numbers (``int`` or ``float`` but never ``bool``) and must be finite. Unknown
extra fields are kept and never an error; empty lists are valid.

This runs once per frame on the import hot path, so validation has two halves:

* a hand-written *fast path* per kind that only answers "certainly valid?" with plain ``type(x)
  is T`` tests and no string building; every well-formed frame ends there;
* a schema-driven *diagnosis* that runs only when the fast path says no. It is the authority: it
  walks the message in document order and reports the first problem as ``InvalidMessage`` whose
  detail names the field (``triples[3].o: missing``, ``entities[1].vectors[0][2]: expected
  number, got string``). If it finds nothing (the fast path is deliberately conservative, e.g.
  about vectors whose sum overflows) the message is accepted.

"Document order" means: the fields present in an object are checked in the order they appear in
the text, and required fields that are missing are reported at the object's end, in the order
the format lists them.

Strict JSON (``loads_strict``). What is published is the frame's own text, and TrustGraph's
processors (and any strict parser) must read it, so a frame is accepted only if orjson, a strict
parser, accepts it *and* no object in it repeats a key (orjson keeps the last value; another
reader may keep the first). Nesting is bounded by `MAX_DEPTH`, sizes by the WebSocket layer
(``max_message_bytes``, before any parsing). The parse has two halves as well:

* the hot path is orjson's parse plus a duplicate-key test that costs two ``count`` calls and
  one ``orjson.dumps``: every ``:`` outside a string in the text separates one member, and
  ``dumps`` writes each member of the parsed value once, with the strings' own colons as they
  were. Without duplicates the text and ``dumps`` hold the same number of colons; a duplicate
  adds at least one to the text (its separator) that ``dumps`` lacks. Only a ``\\u003a``
  escape (a colon the text spells without one) breaks the count, so a text with such an escape
  takes the slow half. ``dumps`` also refuses more than `MAX_DEPTH` levels, which bounds depth
  for free;
* anything orjson refuses, and anything the count flags, is parsed again by the stdlib with
  hooks that keep every member, ``NaN``/``Infinity`` and out-of-range numbers as markers; a
  walk in document order then names the first problem with its path (``triples[0].o.v: lone
  surrogate \\ud800``, ``duplicate key 'triples'``, ``metadata.id: NaN is not JSON``). That
  walk only explains a refusal or clears a false alarm of the count: it never accepts what
  orjson refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, cast

import orjson

from quiesce.core.errors import InvalidMessage

__all__ = ["KINDS", "MAX_DEPTH", "loads_strict", "validate", "validate_object"]

KINDS: tuple[str, ...] = ("triples", "graph-embeddings", "document-embeddings", "entity-contexts")

# The deepest nesting of arrays and objects accepted: what orjson can serialise again (it
# refuses 255 levels). TrustGraph's messages nest about 6 levels (2.x quoted triples 2 more
# per quotation), so only a hostile frame comes near it.
MAX_DEPTH = 254

_loads = json.loads
_JSONDecodeError = json.JSONDecodeError
# orjson parses a 1.2 KB frame in ~60 % of the stdlib's time, on the import hot path, and is
# strict (no NaN, no lone surrogates, no number beyond a double). What it refuses is refused;
# the stdlib parses it again only to name the problem (see the module docstring). An integer
# past 64 bits comes back as a float: both are numbers to the validator, and what is published
# is the frame's own text, so the outcome of an import never changes.
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
_FastDecodeError = orjson.JSONDecodeError
_FastEncodeError = orjson.JSONEncodeError
_NUMBER_TYPES = frozenset((int, float))
# A code point the stdlib left unpaired: valid surrogate pairs are combined when parsed.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Longest key or number quoted back in an error detail.
_QUOTE_LIMIT = 40


# --------------------------------------------------------------------------------------------
# Fast path: True means certainly valid; False means "ask the diagnosis".
# --------------------------------------------------------------------------------------------


def _triples_ok(ts: object) -> bool:
    if type(ts) is not list:
        return False
    for t in ts:
        if type(t) is not dict:
            return False
        s = t.get("s")
        p = t.get("p")
        o = t.get("o")
        if not (
            type(s) is dict
            and type(p) is dict
            and type(o) is dict
            and type(s.get("v")) is str
            and type(s.get("e")) is bool
            and type(p.get("v")) is str
            and type(p.get("e")) is bool
            and type(o.get("v")) is str
            and type(o.get("e")) is bool
        ):
            return False
    return True


def _value_ok(v: object) -> bool:
    # The triples loop above inlines this check: it runs three times per triple.
    return type(v) is dict and type(v.get("v")) is str and type(v.get("e")) is bool


def _metadata_ok(m: object) -> bool:
    return (
        type(m) is dict
        and type(m.get("id")) is str
        and type(m.get("user")) is str
        and type(m.get("collection")) is str
        and _triples_ok(m.get("metadata"))
    )


def _vectors_ok(vs: object) -> bool:
    if type(vs) is not list:
        return False
    for vec in vs:
        if type(vec) is not list:
            return False
        if vec:
            # Both run in C: element types, then one sum that is NaN/inf if any element is.
            if not _NUMBER_TYPES.issuperset(map(type, vec)):
                return False
            try:
                total = sum(vec)
            except OverflowError:
                return False
            if total - total != 0:
                return False
    return True


def _fast_triples(obj: dict[str, Any]) -> bool:
    return _metadata_ok(obj.get("metadata")) and _triples_ok(obj.get("triples"))


def _fast_graph_embeddings(obj: dict[str, Any]) -> bool:
    if not _metadata_ok(obj.get("metadata")):
        return False
    es = obj.get("entities")
    if type(es) is not list:
        return False
    for x in es:
        if type(x) is not dict:
            return False
        if not (_value_ok(x.get("entity")) and _vectors_ok(x.get("vectors"))):
            return False
    return True


def _fast_document_embeddings(obj: dict[str, Any]) -> bool:
    if not _metadata_ok(obj.get("metadata")):
        return False
    cs = obj.get("chunks")
    if type(cs) is not list:
        return False
    for x in cs:
        if type(x) is not dict:
            return False
        if not (type(x.get("chunk")) is str and _vectors_ok(x.get("vectors"))):
            return False
    return True


def _fast_entity_contexts(obj: dict[str, Any]) -> bool:
    if not _metadata_ok(obj.get("metadata")):
        return False
    es = obj.get("entities")
    if type(es) is not list:
        return False
    for x in es:
        if type(x) is not dict:
            return False
        if not (_value_ok(x.get("entity")) and type(x.get("context")) is str):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Diagnosis: walks the schema in document order and returns the first problem's detail.
# --------------------------------------------------------------------------------------------

_Path = tuple[str | int, ...]


def _json_type(x: object) -> str:
    """The JSON name of ``x``'s type (Python's name for values JSON cannot hold)."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, (int, float)):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def _format_path(path: _Path) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif parts:
            parts.append(f".{p}")
        else:
            parts.append(p)
    return "".join(parts)


def _wrong(path: _Path, expected: str, x: object) -> str:
    return f"{_format_path(path)}: expected {expected}, got {_json_type(x)}"


class _Node:
    def find(self, x: object, path: _Path) -> str | None:
        """Return the detail of the first problem in ``x`` (at ``path``), or None."""
        raise NotImplementedError


class _Str(_Node):
    def find(self, x: object, path: _Path) -> str | None:
        return None if isinstance(x, str) else _wrong(path, "string", x)


class _Bool(_Node):
    def find(self, x: object, path: _Path) -> str | None:
        return None if isinstance(x, bool) else _wrong(path, "boolean", x)


class _Num(_Node):
    def find(self, x: object, path: _Path) -> str | None:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return _wrong(path, "number", x)
        if isinstance(x, float) and not math.isfinite(x):
            return f"{_format_path(path)}: expected a finite number"
        return None


class _Arr(_Node):
    def __init__(self, item: _Node) -> None:
        self.item = item

    def find(self, x: object, path: _Path) -> str | None:
        if not isinstance(x, list):
            return _wrong(path, "array", x)
        item = self.item
        for i, y in enumerate(x):
            problem = item.find(y, (*path, i))
            if problem is not None:
                return problem
        return None


class _Obj(_Node):
    """An object whose fields are checked in document order; every field is required
    (`required` lists them; a subclass may require fewer)."""

    def __init__(self, **fields: _Node) -> None:
        self.fields = fields
        self.required = tuple(fields)

    def find(self, x: object, path: _Path) -> str | None:
        if not isinstance(x, dict):
            return _wrong(path, "object", x)
        fields = self.fields
        for key, value in x.items():
            node = fields.get(key)
            if node is not None:
                problem = node.find(value, (*path, key))
                if problem is not None:
                    return problem
        for key in self.required:
            if key not in x:
                return f"{_format_path((*path, key))}: missing"
        return None


_VALUE = _Obj(v=_Str(), e=_Bool())
_TRIPLE = _Obj(s=_VALUE, p=_VALUE, o=_VALUE)
_METADATA = _Obj(id=_Str(), metadata=_Arr(_TRIPLE), user=_Str(), collection=_Str())
_VECTORS = _Arr(_Arr(_Num()))

_SCHEMAS: dict[str, _Obj] = {
    "triples": _Obj(metadata=_METADATA, triples=_Arr(_TRIPLE)),
    "graph-embeddings": _Obj(
        metadata=_METADATA, entities=_Arr(_Obj(entity=_VALUE, vectors=_VECTORS))
    ),
    "document-embeddings": _Obj(
        metadata=_METADATA, chunks=_Arr(_Obj(chunk=_Str(), vectors=_VECTORS))
    ),
    "entity-contexts": _Obj(metadata=_METADATA, entities=_Arr(_Obj(entity=_VALUE, context=_Str()))),
}

_FAST: dict[str, Callable[[dict[str, Any]], bool]] = {
    "triples": _fast_triples,
    "graph-embeddings": _fast_graph_embeddings,
    "document-embeddings": _fast_document_embeddings,
    "entity-contexts": _fast_entity_contexts,
}


def _diagnose(kind: str, obj: object) -> str | None:
    """The first problem with ``obj`` as a ``kind`` message, or None; the authoritative check."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {_json_type(obj)}"
    return _SCHEMAS[kind].find(obj, ())


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _fast_for(kind: str) -> Callable[[dict[str, Any]], bool]:
    try:
        return _FAST[kind]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def validate_object(kind: str, obj: object) -> dict[str, Any]:
    """Validate an already-decoded message.

    Args:
        kind: one of `KINDS`.
        obj: the decoded JSON value.

    Returns:
        ``obj`` itself, unchanged (unknown extra fields included).

    Raises:
        InvalidMessage: ``obj`` breaks the wire format; ``detail`` names the first problem in
            document order, e.g. ``metadata.user: missing``.
        KeyError: ``kind`` is not one of `KINDS` (a programming error).
    """
    fast = _fast_for(kind)
    if type(obj) is dict and fast(obj):
        return obj
    problem = _diagnose(kind, obj)
    if problem is not None:
        raise InvalidMessage(problem)
    return cast("dict[str, Any]", obj)


def validate(kind: str, text: str | bytes) -> dict[str, Any]:
    """Parse and validate one client frame.

    Args:
        kind: one of `KINDS`.
        text: the frame's payload; ``bytes`` must be UTF-8.

    Returns:
        The decoded message (unknown extra fields included).

    Raises:
        InvalidMessage: the payload is not UTF-8 (``not UTF-8: ...``), not JSON (``not JSON:
            ...``), not an object, or breaks the wire format (see `validate_object`).
        KeyError: ``kind`` is not one of `KINDS` (a programming error).
    """
    fast = _fast_for(kind)
    obj = loads_strict(text)
    if type(obj) is dict and fast(obj):
        return obj
    problem = _diagnose(kind, obj)
    if problem is not None:
        raise InvalidMessage(problem)
    return cast("dict[str, Any]", obj)


def loads_strict(text: str | bytes) -> Any:
    """Parse a client frame as strict JSON (RFC 8259, I-JSON's unique keys).

    Args:
        text: the frame; ``bytes`` must be UTF-8.

    Returns:
        The decoded value. Everything accepted parses, with the same value, under orjson.

    Raises:
        InvalidMessage: the frame is not UTF-8 (``not UTF-8: …``) or not JSON (``not JSON:
            …``), holds ``NaN``/``Infinity``, a number beyond a double, a lone surrogate (in a
            key or a string), a key twice in one object, or more than `MAX_DEPTH` levels; the
            detail names the first such problem in document order and its path.
    """
    if not isinstance(text, str):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = _fast_loads(text)
    except _FastDecodeError as exc:
        raise InvalidMessage(_strict_problem(text) or f"not JSON: {exc}") from None
    if _maybe_duplicates(text, obj):
        problem = _strict_problem(text)
        if problem is not None:
            raise InvalidMessage(problem)
    return obj


def _maybe_duplicates(text: str, obj: Any) -> bool:
    """False when ``obj`` certainly holds every member written in ``text`` (see the module
    docstring); True when it may not, or nests deeper than `MAX_DEPTH`."""
    try:
        again = _fast_dumps(obj)
    except _FastEncodeError:
        return True
    if text.count(":") != again.count(b":"):
        return True
    # A colon spelled \u003a (or \u003A) is one that dumps writes and the text does not.
    return "\\" in text and "\\u003" in text


# --------------------------------------------------------------------------------------------
# Strict diagnosis: the stdlib's parse with every member kept, then a walk in document order.
# --------------------------------------------------------------------------------------------


class _Members(list[tuple[str, Any]]):
    """An object's members as written, duplicates included (``object_pairs_hook``)."""


class _NotJson:
    """A literal the stdlib accepts and JSON does not: ``NaN``, ``Infinity``, ``-Infinity``."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _OutOfRange:
    """A number literal beyond a double's range (orjson refuses it; json.loads would not)."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _parse_float(literal: str) -> float | _OutOfRange:
    value = float(literal)
    return _OutOfRange(literal) if math.isinf(value) else value


def _parse_int(literal: str) -> int | _OutOfRange:
    # float() first: it has no digit limit, and a literal too long for int() is out of range.
    if len(literal) > 300 and math.isinf(float(literal)):
        return _OutOfRange(literal)
    return int(literal)


def _strict_problem(text: str) -> str | None:
    """The first reason ``text`` is not strict JSON, in document order, or None."""
    try:
        tree = _loads(
            text,
            object_pairs_hook=_Members,
            parse_constant=_NotJson,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except _JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return f"nested deeper than {MAX_DEPTH} levels"
    except ValueError as exc:  # not expected with the hooks above; a clear refusal all the same
        return f"not JSON: {exc}"
    return _first_problem(tree, (), 0)


def _quote(text: str) -> str:
    """``text`` in quotes for a detail: surrogates spelled out, at most ``_QUOTE_LIMIT``."""
    shown = text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."
    return "'" + shown.encode("utf-8", "backslashreplace").decode("utf-8") + "'"


def _at(path: _Path) -> str:
    """``path: `` before a detail, or nothing at the top level; long keys shortened."""
    if not path:
        return ""
    short = tuple(p if isinstance(p, int) or len(p) <= _QUOTE_LIMIT else p[:_QUOTE_LIMIT] + "..."
                  for p in path)
    return _format_path(short) + ": "


def _surrogate(text: str) -> str | None:
    """The first lone surrogate in ``text``, spelled ``\\udXXX``, or None."""
    match = _SURROGATE.search(text)
    return None if match is None else f"\\u{ord(match.group()):04x}"


def _first_problem(x: object, path: _Path, depth: int) -> str | None:
    """The first strict-JSON problem in the stdlib's parse ``x`` (at ``path``), or None.

    ``depth`` counts the arrays and objects around ``x``; recursion stops past `MAX_DEPTH`.
    """
    t = type(x)
    if t is _Members or t is list:
        if depth >= MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if t is list:
            for i, y in enumerate(cast("list[Any]", x)):
                problem = _first_problem(y, (*path, i), depth + 1)
                if problem is not None:
                    return problem
            return None
        seen: set[str] = set()
        for key, value in cast("_Members", x):
            lone = _surrogate(key)
            if lone is not None:
                return f"{_at(path)}lone surrogate {lone} in key {_quote(key)}"
            if key in seen:
                return f"{_at(path)}duplicate key {_quote(key)}"
            seen.add(key)
            problem = _first_problem(value, (*path, key), depth + 1)
            if problem is not None:
                return problem
        return None
    if t is str:
        lone = _surrogate(cast("str", x))
        return None if lone is None else f"{_at(path)}lone surrogate {lone}"
    if t is _NotJson:
        return f"{_at(path)}{cast('_NotJson', x).literal} is not JSON"
    if t is _OutOfRange:
        literal = cast("_OutOfRange", x).literal
        return f"{_at(path)}number out of range: {_quote(literal)[1:-1]}"
    return None
