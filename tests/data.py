"""Test and benchmark data: deterministic, valid example messages of every kind.

Kept out of the package (it used to be ``core.wire.sample_message``): the gateway never needs
it. Tests import it as ``tests.data``; the benchmarks reach it through ``bench/_common.py``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from quiesce.core.wire import KINDS

__all__ = ["doc_id", "id_of", "ids_of", "large_frame", "sample_message", "sample_message_tg2",
           "sample_messages"]

_NS = "http://trustgraph.ai/e/"
_RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
_RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
_DC = "http://purl.org/dc/elements/1.1/"


def _uri(v: str) -> dict[str, Any]:
    return {"v": v, "e": True}


def _lit(v: str) -> dict[str, Any]:
    return {"v": v, "e": False}


def _vector(seed: int, dim: int) -> list[float]:
    return [round(math.sin(seed * 7.1 + j * 0.37), 6) for j in range(dim)]


def doc_id(i: int) -> str:
    """The ``metadata.id`` of ``sample_message(kind, i)`` (the same for every kind)."""
    return f"{_NS}doc-{i}"


def sample_message(kind: str, i: int = 0) -> dict[str, Any]:
    """A valid example message of ``kind``, used by tests and benchmarks.

    Deterministic and fresh on every call. For ``triples`` the JSON encoding is about 1.2 KB.

    Args:
        kind: one of `KINDS`.
        i: a number folded into ids and values, so successive messages differ.

    Returns:
        A message that `validate_object` accepts for ``kind``.

    Raises:
        KeyError: ``kind`` is not one of `KINDS`.
    """
    doc = doc_id(i)
    metadata: dict[str, Any] = {
        "id": doc,
        "metadata": [
            {"s": _uri(doc), "p": _uri(_RDF_TYPE), "o": _uri(f"{_NS}Document")},
            {"s": _uri(doc), "p": _uri(f"{_DC}title"), "o": _lit(f"Field report {i}")},
        ],
        "user": "trustgraph",
        "collection": "default",
    }
    if kind == "triples":
        alpha, beta = f"{_NS}alpha-{i}", f"{_NS}beta-{i}"
        return {
            "metadata": metadata,
            "triples": [
                {"s": _uri(alpha), "p": _uri(_RDF_TYPE), "o": _uri(f"{_NS}Spacecraft")},
                {"s": _uri(alpha), "p": _uri(_RDFS_LABEL), "o": _lit(f"Alpha {i}")},
                {"s": _uri(alpha), "p": _uri(f"{_NS}launchedFrom"), "o": _uri(beta)},
                {"s": _uri(beta), "p": _uri(_RDFS_LABEL), "o": _lit("Kennedy Space Center")},
            ],
        }
    if kind == "graph-embeddings":
        return {
            "metadata": metadata,
            "entities": [
                {"entity": _uri(f"{_NS}alpha-{i}"), "vectors": [_vector(i, 16)]},
                {"entity": _lit(f"Alpha {i}"), "vectors": [_vector(i + 1, 16), _vector(i + 2, 16)]},
            ],
        }
    if kind == "document-embeddings":
        return {
            "metadata": metadata,
            "chunks": [
                {
                    "chunk": f"Alpha {i} lifted off from Kennedy Space Center at dawn.",
                    "vectors": [_vector(i, 16)],
                },
                {
                    "chunk": "It docked with the station two days later.",
                    "vectors": [_vector(i, 16)],
                },
            ],
        }
    if kind == "entity-contexts":
        return {
            "metadata": metadata,
            "entities": [
                {
                    "entity": _uri(f"{_NS}alpha-{i}"),
                    "context": f"Alpha {i} lifted off from Kennedy Space Center at dawn.",
                },
                {"entity": _lit("Kennedy Space Center"), "context": "The launch site in Florida."},
            ],
        }
    raise KeyError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def sample_messages(kind: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` sample messages of ``kind`` with distinct ids, from number ``start`` on."""
    return [sample_message(kind, i) for i in range(start, start + count)]


def large_frame(i: int, size: int) -> str:
    """A triples import frame ``large-<i>`` whose one literal is ``size`` bytes (memory tests
    and benchmarks: frames of 1-2 MB)."""
    message = sample_message("triples", i)
    message["metadata"]["id"] = f"large-{i}"
    message["triples"][0]["o"] = {"v": "@@", "e": False}
    head, tail = json.dumps(message).split('"@@"')
    return f'{head}"{i:08d}{"x" * (size - 8)}"{tail}'


def id_of(message: dict[str, Any]) -> str:
    """The ``metadata.id`` of a message."""
    return str(message["metadata"]["id"])


def ids_of(messages: list[dict[str, Any]]) -> list[str]:
    """The ``metadata.id`` of each message, in order."""
    return [id_of(m) for m in messages]


def sample_message_tg2(i: int = 0) -> dict[str, Any]:
    """``sample_message("triples", i)`` as a TrustGraph 2.x triples frame.

    2.x terms (``{"t": "i", "i": …}``, ``{"t": "l", "v": …}``) and 2.x metadata
    (``{id, root, collection}``): what a 2.x client sends, and what the ``tg2`` profile can
    carry (the 1.x user and metadata triples have no place there).
    """
    from quiesce.core.convert import convert_wire
    from quiesce.core.profiles import Profile

    w2 = convert_wire("triples", sample_message("triples", i), Profile.TG1, Profile.TG2)
    metadata = w2["metadata"]
    w2["metadata"] = {"id": metadata["id"], "root": metadata["id"],
                      "collection": metadata["collection"]}
    return w2
