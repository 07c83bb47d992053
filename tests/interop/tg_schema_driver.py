"""Read and write Pulsar topics the way TrustGraph's own processors do, from a TrustGraph venv.

Run by that venv's interpreter (``<venv>/bin/python tg_schema_driver.py …``), never imported by
the test suite: it imports nothing of quiesce, only ``trustgraph`` and ``pulsar`` as installed
from the registry, and uses each generation's own schema classes and (de)serialisation:

- 1.4.x: records of ``pulsar.schema.Record``; ``client.subscribe(topic, sub,
  schema=JsonSchema(Triples), …)`` and ``client.create_producer(topic,
  schema=JsonSchema(Triples))`` as ``trustgraph/base/consumer.py`` and ``producer.py`` do;
- 1.9.x: dataclasses through ``trustgraph.base.pulsar_backend.PulsarBackend`` (``json.dumps``
  of ``dataclass_to_dict`` on send, ``dict_to_dataclass`` on receive);
- 2.x: dataclasses through ``trustgraph.base.async_pulsar_backend.AsyncPulsarBackend`` (the
  same, on ``pulsar.asyncio``), queues named ``flow:tg:…`` as 2.x's flow templates do.

Topics are named here as each generation's flow templates name them, from TrustGraph's own
``topic``/``queue`` helpers: ``{interface}:{flow}`` (1.x), ``{interface}:{workspace}:{flow}``
(2.x), with the interfaces ``triples-store``, ``graph-embeddings-store``,
``document-embeddings-store``, ``entity-contexts-load``, ``objects-store`` (1.x) and
``rows-store`` (2.x).

    consume --broker URL --flow F [--workspace W] --spec JSON
        JSON is ``[{"kind": K, "count": N}, …]``. For each, subscribes (a new subscription,
        from the earliest message) with the generation's machinery, receives N messages and
        decodes each with the kind's schema class. Prints one JSON line per kind:
        ``{"kind": K, "topic": T, "messages": [OBJECT, …]}`` where OBJECT is the decoded
        schema object as plain data, every field of every record (bytes as UTF-8 text).
    produce --broker URL --flow F [--workspace W] --items FILE
        FILE holds JSON lines ``{"kind": K, "message": OBJECT}``. Each OBJECT is built into
        the kind's schema class (1.4: the record's own dict constructor, as ``JsonSchema``
        decodes; 1.9/2.x: TrustGraph's ``dict_to_dataclass``) and sent by the generation's
        producer. Prints ``{"sent": N, "topics": {K: T}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import sys
import uuid

import pulsar
from trustgraph import schema as tg_schema

RECEIVE_TIMEOUT_MS = 30_000

INTERFACES = {
    "triples": "triples-store",
    "graph-embeddings": "graph-embeddings-store",
    "document-embeddings": "document-embeddings-store",
    "entity-contexts": "entity-contexts-load",
    "objects": "objects-store",
    "rows": "rows-store",
}

CLASSES = {
    "triples": "Triples",
    "graph-embeddings": "GraphEmbeddings",
    "document-embeddings": "DocumentEmbeddings",
    "entity-contexts": "EntityContexts",
    "objects": "ExtractedObject",
    "rows": "ExtractedObject",
}


def generation():
    """``"2"``, ``"1.9"`` or ``"1.4"``: which machinery this venv's TrustGraph has."""
    try:
        import trustgraph.base.async_pulsar_backend
        return "2"
    except ImportError:
        pass
    try:
        import trustgraph.base.pulsar_backend  # noqa: F401
        return "1.9"
    except ImportError:
        return "1.4"


def plain(obj):
    """A decoded schema object as plain JSON data, every field."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8")
    if dataclasses.is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, pulsar.schema.Record):
        return {name: plain(getattr(obj, name)) for name in type(obj)._fields}
    if isinstance(obj, list):
        return [plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def schema_class(kind):
    return getattr(tg_schema, CLASSES[kind])


def queue_name(gen, kind, flow, workspace):
    """The name TrustGraph gives the (flow, kind) interface queue, before backend mapping."""
    # The module, not the function that trustgraph.schema.core re-exports under its name.
    topic_module = importlib.import_module("trustgraph.schema.core.topic")

    if gen == "2":
        return topic_module.queue(f"{INTERFACES[kind]}:{workspace}:{flow}")
    return topic_module.topic(f"{INTERFACES[kind]}:{flow}")


# ------------------------------------------------------------------------------- 1.4.x


def consume_14(args, spec):
    from pulsar.schema import JsonSchema

    client = pulsar.Client(args.broker, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        for item in spec:
            kind, topic = item["kind"], queue_name("1.4", item["kind"], args.flow, None)
            consumer = client.subscribe(
                topic=topic, subscription_name=f"tg-{uuid.uuid4().hex[:8]}",
                schema=JsonSchema(schema_class(kind)),
                initial_position=pulsar.InitialPosition.Earliest,
                consumer_type=pulsar.ConsumerType.Shared)
            messages = []
            for _ in range(item["count"]):
                msg = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
                messages.append(plain(msg.value()))
                consumer.acknowledge(msg)
            consumer.close()
            print(json.dumps({"kind": kind, "topic": topic, "messages": messages}), flush=True)
    finally:
        client.close()


def produce_14(args, items):
    from pulsar.schema import JsonSchema

    client = pulsar.Client(args.broker, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    producers, topics = {}, {}
    try:
        for item in items:
            kind = item["kind"]
            if kind not in producers:
                topics[kind] = queue_name("1.4", kind, args.flow, None)
                producers[kind] = client.create_producer(
                    topic=topics[kind], schema=JsonSchema(schema_class(kind)))
            producers[kind].send(schema_class(kind)(**item["message"]))
        for producer in producers.values():
            producer.close()
    finally:
        client.close()
    print(json.dumps({"sent": len(items), "topics": topics}), flush=True)


# ------------------------------------------------------------------------------- 1.9.x


def consume_19(args, spec):
    from trustgraph.base.pulsar_backend import PulsarBackend

    backend = PulsarBackend(host=args.broker)
    try:
        for item in spec:
            kind, name = item["kind"], queue_name("1.9", item["kind"], args.flow, None)
            consumer = backend.create_consumer(
                topic=name, subscription=f"tg-{uuid.uuid4().hex[:8]}",
                schema=schema_class(kind), initial_position="earliest")
            messages = []
            for _ in range(item["count"]):
                msg = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
                messages.append(plain(msg.value()))
                consumer.acknowledge(msg)
            consumer.close()
            print(json.dumps({"kind": kind, "topic": backend.map_topic(name),
                              "messages": messages}), flush=True)
    finally:
        backend.client.close()


def produce_19(args, items):
    from trustgraph.base.pulsar_backend import PulsarBackend, dict_to_dataclass

    backend = PulsarBackend(host=args.broker)
    producers, topics = {}, {}
    try:
        for item in items:
            kind = item["kind"]
            if kind not in producers:
                name = queue_name("1.9", kind, args.flow, None)
                topics[kind] = backend.map_topic(name)
                producers[kind] = backend.create_producer(topic=name, schema=schema_class(kind))
            producers[kind].send(dict_to_dataclass(item["message"], schema_class(kind)))
        for producer in producers.values():
            producer.flush()
            producer.close()
    finally:
        backend.client.close()
    print(json.dumps({"sent": len(items), "topics": topics}), flush=True)


# ------------------------------------------------------------------------------- 2.x


async def consume_2(args, spec):
    from trustgraph.base.async_pulsar_backend import AsyncPulsarBackend

    backend = AsyncPulsarBackend(host=args.broker)
    try:
        for item in spec:
            kind, name = item["kind"], queue_name("2", item["kind"], args.flow, args.workspace)
            consumer = await backend.create_consumer(
                topic=name, subscription=f"tg-{uuid.uuid4().hex[:8]}",
                schema=schema_class(kind), initial_position="earliest")
            messages = []
            for _ in range(item["count"]):
                msg = await asyncio.wait_for(consumer.receive(), RECEIVE_TIMEOUT_MS / 1000)
                messages.append(plain(msg.value()))
                await consumer.acknowledge(msg)
            await consumer.close()
            print(json.dumps({"kind": kind, "topic": backend._map_topic(name),
                              "messages": messages}), flush=True)
    finally:
        await backend.close()


async def produce_2(args, items):
    from trustgraph.base.async_pulsar_backend import AsyncPulsarBackend
    from trustgraph.base.serialization import dict_to_dataclass

    backend = AsyncPulsarBackend(host=args.broker)
    producers, topics = {}, {}
    try:
        for item in items:
            kind = item["kind"]
            if kind not in producers:
                name = queue_name("2", kind, args.flow, args.workspace)
                topics[kind] = backend._map_topic(name)
                producers[kind] = await backend.create_producer(topic=name,
                                                                schema=schema_class(kind))
            await producers[kind].send(dict_to_dataclass(item["message"], schema_class(kind)))
        for producer in producers.values():
            await producer.close()
    finally:
        await backend.close()
    print(json.dumps({"sent": len(items), "topics": topics}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=["consume", "produce"])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--flow", required=True)
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--spec")
    parser.add_argument("--items")
    args = parser.parse_args()
    gen = generation()
    if args.op == "consume":
        spec = json.loads(args.spec)
        if gen == "2":
            asyncio.run(consume_2(args, spec))
        else:
            (consume_19 if gen == "1.9" else consume_14)(args, spec)
    else:
        with open(args.items, encoding="utf-8") as f:
            items = [json.loads(line) for line in f if line.strip()]
        if gen == "2":
            asyncio.run(produce_2(args, items))
        else:
            (produce_19 if gen == "1.9" else produce_14)(args, items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
