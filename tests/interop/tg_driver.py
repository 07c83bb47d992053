"""Drive TrustGraph's own ``Api(url).bulk()`` client from inside a TrustGraph venv.

Run by that venv's interpreter (``<venv>/bin/python tg_driver.py …``), never imported by the
test suite: it imports nothing of quiesce, only ``trustgraph.api`` as installed from the
registry, and calls it the way TrustGraph's own tools do.

    import KIND --url U --flow F --items FILE [--metadata JSON] [--workspace W]
        Calls ``bulk.import_<kind>`` with the items of FILE (JSON Lines); prints
        ``{"handed": N}`` once the client returns.
    export KIND --url U --flow F --count N
        Iterates ``bulk.export_<kind>``, printing each item as one JSON line (a ``Triple``
        as ``{"triple": its fields}``) and flushing; returns after N items, which closes the
        client's socket. The caller starts it before publishing and waits until its
        subscription exists (the gateway logs the connection running).

Items of ``import triples`` are neutral: ``{"s": TERM, "p": TERM, "o": TERM, "g": str?}``
with ``TERM = {"uri": str} | {"literal": str, "datatype": str?, "language": str?}``; the
driver turns them into the installed version's ``Triple`` (1.x: plain strings, plus the
``s_is_uri``/``p_is_uri``/``o_is_uri`` attributes that 1.9's client reads with ``getattr``;
2.x: ``Uri``/``Literal``). Items of every other kind go to the client unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from trustgraph.api import Api, Triple
from trustgraph.api import types as tg_types

# 2.x's Triple has a graph field and its bulk client encodes Uri/Literal as 2.x terms; 1.9's
# types module also imports names Uri and Literal (plain str subclasses), so test the field.
TG2 = "g" in getattr(Triple, "__dataclass_fields__", {})


def _term(term):
    if TG2:
        if "uri" in term:
            return tg_types.Uri(term["uri"])
        return tg_types.Literal(term["literal"], datatype=term.get("datatype"),
                                language=term.get("language"))
    return term["uri"] if "uri" in term else term["literal"]


def _triple(item):
    s, p, o = (_term(item[k]) for k in ("s", "p", "o"))
    if TG2:
        return Triple(s=s, p=p, o=o, g=item.get("g", ""))
    triple = Triple(s=s, p=p, o=o)
    for k in ("s", "p", "o"):
        setattr(triple, f"{k}_is_uri", "uri" in item[k])
    return triple


def _items(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def do_import(bulk, args):
    kind = args.kind
    handed = 0

    def counted(items):
        nonlocal handed
        for item in items:
            handed += 1
            yield item

    metadata = json.loads(args.metadata) if args.metadata else None
    items = _items(args.items)
    if kind == "triples":
        bulk.import_triples(flow=args.flow, triples=counted(map(_triple, items)),
                            metadata=metadata)
    elif kind == "graph-embeddings":
        bulk.import_graph_embeddings(flow=args.flow, embeddings=counted(items))
    elif kind == "document-embeddings":
        bulk.import_document_embeddings(flow=args.flow, embeddings=counted(items))
    elif kind == "entity-contexts":
        bulk.import_entity_contexts(flow=args.flow, contexts=counted(items), metadata=metadata)
    elif kind == "rows":
        bulk.import_rows(flow=args.flow, rows=counted(items))
    elif kind == "objects":
        bulk.import_objects(flow=args.flow, objects=counted(items))
    else:
        raise SystemExit(f"unknown kind {kind}")
    print(json.dumps({"handed": handed}), flush=True)


def do_export(bulk, args):
    method = getattr(bulk, "export_" + args.kind.replace("-", "_"))
    count = 0
    if args.count == 0:
        return
    for item in method(flow=args.flow):
        if dataclasses.is_dataclass(item):
            item = {"triple": dataclasses.asdict(item)}
        print(json.dumps(item), flush=True)
        count += 1
        if count >= args.count:
            break


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=["import", "export"])
    parser.add_argument("kind")
    parser.add_argument("--url", required=True)
    parser.add_argument("--flow", required=True)
    parser.add_argument("--items")
    parser.add_argument("--metadata")
    parser.add_argument("--workspace")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    kwargs = {"workspace": args.workspace} if args.workspace and TG2 else {}
    bulk = Api(url=args.url, **kwargs).bulk()
    if args.op == "import":
        do_import(bulk, args)
    else:
        do_export(bulk, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
