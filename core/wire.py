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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, cast

import orjson

from quiesce.core.errors import InvalidMessage

__all__ = ["KINDS", "parse", "validate", "validate_object"]

KINDS: tuple[str, ...] = ("triples", "graph-embeddings", "document-embeddings", "entity-contexts")

_loads = json.loads
_JSONDecodeError = json.JSONDecodeError
# orjson parses a 1.2 KB frame in ~60 % of the stdlib's time, on the import hot path. It is
# stricter than the stdlib (no NaN, no lone surrogates…), so anything it refuses is parsed
# again by the stdlib, which then gives the stdlib's value or the error message users see.
# One difference remains on success: an integer past 64 bits comes back as a float. Both are
# numbers to the validator, and what is published is the frame's own text, so the outcome of
# an import never changes.
_fast_loads = orjson.loads
_FastDecodeError = orjson.JSONDecodeError
_NUMBER_TYPES = frozenset((int, float))


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
    def __init__(self, **fields: _Node) -> None:
        self.fields = fields

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
        for key in fields:
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


def parse(text: str | bytes) -> Any:
    """Parse one client frame's JSON.

    Raises:
        InvalidMessage: the payload is not UTF-8 (``not UTF-8: ...``) or not JSON (``not
            JSON: ...``).
    """
    if not isinstance(text, str):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return _fast_loads(text)
    except _FastDecodeError:
        return _parse_slowly(text)


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
    obj = parse(text)
    if type(obj) is dict and fast(obj):
        return obj
    problem = _diagnose(kind, obj)
    if problem is not None:
        raise InvalidMessage(problem)
    return cast("dict[str, Any]", obj)


def _parse_slowly(text: str) -> Any:
    """The stdlib's parse, with its error turned into an ``InvalidMessage``."""
    try:
        return _loads(text)
    except _JSONDecodeError as exc:
        raise InvalidMessage(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # e.g. an integer literal over sys.get_int_max_str_digits()
        raise InvalidMessage(f"not JSON: {exc}") from None
    except RecursionError:
        raise InvalidMessage("not JSON: nested too deeply") from None
