"""Per-message calls into pulsar-client's binding, where its Python wrapper blocks or adds cost.

- ``Consumer.acknowledge`` in the wrapper is the binding's *blocking* acknowledge ("will block
  until an acknowledgement is sent to the broker"): called per message on the Trio thread it
  took 27 % of the export path's time in a py-spy profile, and it blocks the event loop. The
  binding (``_pulsar.Consumer``) has ``acknowledge_async``, which the wrapper does not expose.
- ``Producer.send_async`` in the wrapper type-checks ten optional arguments per message
  before building the message; we build it with ``_pulsar.MessageBuilder`` directly.

Both reach into the wrapper's ``_producer`` / ``_consumer`` / ``_message`` attributes; each
function falls back to the public API if they are missing, so a future wrapper that renames
them degrades to slower, not broken.
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


def acknowledge_async(consumer: pulsar.Consumer, message: pulsar.Message,
                      callback: Callable[[Any], None]) -> None:
    """Acknowledge ``message`` without waiting for the broker; ``callback(result)`` follows."""
    binding = getattr(consumer, "_consumer", None)
    raw = getattr(message, "_message", None)
    if binding is None or raw is None:
        consumer.acknowledge(message)
        callback(pulsar.Result.Ok)
        return
    binding.acknowledge_async(raw, callback)
