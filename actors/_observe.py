"""Logging of lifecycles: one structured line per transition, from one place.

``TransitionLog`` is a python-statemachine listener (its ``after_transition`` hook), attached
by each actor to the machine it owns, so no callback in ``machines/`` logs anything. Each
line carries fixed fields through ``extra=``: ``machine``, ``actor``, ``event``, ``source``,
``target`` and whatever the actor adds (flow, kind, topic). ``JsonFormatter`` renders a
record and those fields as one JSON object per line for ``--log-format json``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class TransitionLog:
    """Listener that logs ``<machine> <actor>: <source> -> <target> (<event>)`` at INFO.

    Args:
        logger: where to log.
        machine: the machine's name in logs (``connection``, ``publisher``…).
        actor_id: the actor's id (a connection's short UUID, ``supervisor``…).
        **fields: more fields for every line (flow, kind, topic).
    """

    def __init__(self, logger: logging.Logger, machine: str, actor_id: str, **fields: Any):
        self._logger = logger
        self._fields = {"machine": machine, "actor": actor_id, **fields}

    def after_transition(self, event: Any, source: Any, target: Any) -> None:
        """Log the transition just taken (called by python-statemachine).

        A fact that leaves the state as it was (an internal transition: a handshake admitted
        while serving, a second close while draining) is logged at DEBUG: INFO has one line
        per change of state.
        """
        if source is None:  # the initial state's activation, not a transition
            return
        level = logging.DEBUG if source.id == target.id else logging.INFO
        self._logger.log(
            level,
            "%s %s: %s -> %s (%s)",
            self._fields["machine"], self._fields["actor"], source.id, target.id, event,
            extra={**self._fields, "event": str(event), "source": source.id,
                   "target": target.id},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …`` with the ``extra`` fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` with its ``extra`` fields as ``key=value`` pairs."""
        base = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
            and k not in ("machine", "actor", "event", "source", "target")
        ]
        return f"{base} {' '.join(extras)}" if extras else base
