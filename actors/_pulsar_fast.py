"""Per-message calls into pulsar-client's binding, where its Python wrapper blocks or adds cost.

- ``Consumer.acknowledge`` in the wrapper is the binding's *blocking* acknowledge ("will block
  until an acknowledgement is sent to the broker"): called per message on the Trio thread it
  took 27 % of the export path's time in a py-spy profile, and it blocks the event loop. The
  binding (``_pulsar.Consumer``) has ``acknowledge_async``, which the wrapper does not expose.
- ``Consumer.receive_async`` exists only in the binding (pulsar-client 3.9 and later): the
  subscriber receives with it, without a thread (see ``actors/subscriber.py``). Messages then
  come as the binding's ``_pulsar.Message``; the subscriber acks and nacks them through the
  binding too, without wrapping each one.
- ``Producer.send_async`` in the wrapper type-checks ten optional arguments per message
  before building the message; we build it with ``_pulsar.MessageBuilder`` directly.

They reach into the wrapper's ``_producer`` / ``_consumer`` attributes. ``send_async`` falls
back to the public API if they are missing, so a future wrapper that renames them degrades
to slower, not broken; receiving cannot, and ``consumer_binding`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _pulsar
import pulsar


def send_async(producer: pulsar.Producer, payload: bytes,
               callback: Callable[[Any, Any], None]) -> None:
    """``producer.send_async(payload, callback)`` without the wrapper's per-call checks."""
    binding = getattr(producer, "_producer", None)
    if binding is None:
        producer.send_async(payload, callback)
        return
    builder = _pulsar.MessageBuilder()
    builder.content(payload)
    binding.send_async(builder.build(), callback)


def consumer_binding(consumer: pulsar.Consumer) -> Any:
    """The binding's consumer (``_pulsar.Consumer``) behind the wrapper's ``consumer``.

    Raises:
        TypeError: this pulsar-client has no binding consumer with ``receive_async``.
    """
    binding = getattr(consumer, "_consumer", None)
    if binding is None or not hasattr(binding, "receive_async"):
        raise TypeError(f"pulsar-client {getattr(pulsar, '__version__', '?')} has no "
                        f"Consumer.receive_async in its binding: quiesce needs 3.9 or later")
    return binding
