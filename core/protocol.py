"""The socket protocol's closed sets of values, and every server-to-client frame.

Everything quiesce writes to a client that is not a relayed message is built here, so the
wire shape of an error, a receipt, the end of a dump or an export envelope is defined once:

- ``error_frame``  ``{"error": {"seq": N, "code": C, "detail": D}}`` (``seq`` when a frame
  caused it);
- ``ack_frame``    ``{"ack": N}``: an import receipt, cumulative;
- ``END_FRAME``    ``{"end": true}``: an ``until=end`` export delivered its backlog;
- ``draining_frame`` ``{"draining": {"grace_ms": G}}``: the server drains; an import with
  receipts may go on sending for up to G ms (or stop now, and resume elsewhere);
- ``envelope``     ``{"seq": N, "message": M}``: an ``ack=client`` export frame.

Close codes, error codes, ack modes, backpressure strategies and start positions are enums
(CONTRACT §3-§4), never literals scattered through the actors.
"""

from __future__ import annotations

import enum
import json


class CloseCode(enum.IntEnum):
    """WebSocket close codes quiesce sends, and what each tells the client to do."""

    DONE = 1000  # finished: nothing left to do
    GOING_AWAY = 1001  # server draining: reconnect elsewhere or later and resume
    POLICY = 1008  # policy violation (e.g. a credential no longer valid)
    TOO_BIG = 1009  # a frame over max_message_bytes
    INTERNAL = 1011  # forced at a deadline, or an internal/broker error: reconnect, resume


class ErrorCode(enum.StrEnum):
    """The ``code`` of an error frame."""

    INVALID_MESSAGE = "invalid-message"  # a frame that breaks the kind's wire format
    UNSUPPORTED_FRAME = "unsupported-frame"  # a binary frame
    PUBLISH_FAILED = "publish-failed"  # the broker refused the message
    BROKER_UNAVAILABLE = "broker-unavailable"  # no producer/consumer could be opened
    INVALID_ACK = "invalid-ack"  # an export client's ack that cannot be applied
    # export: a message in the topic that is not a payload of the flow's profile (or that
    # the requested wire format cannot carry); delivered as this error, with the raw payload
    INVALID_PAYLOAD = "invalid-payload"


class Direction(enum.StrEnum):
    """Which way a connection moves data."""

    IMPORT = "import"
    EXPORT = "export"


class AckMode(enum.StrEnum):
    """When an exported message is acknowledged in Pulsar."""

    AUTO = "auto"  # once its frame is written to the socket
    CLIENT = "client"  # once the client acks its seq


class Backpressure(enum.StrEnum):
    """What an export does with a message that does not fit its queue."""

    BLOCK = "block"  # stop receiving until there is room (the broker keeps the message)
    DROP_OLDEST = "drop_oldest"  # nack the oldest queued message to make room
    DROP_NEW = "drop_new"  # nack the arriving message


class Position(enum.StrEnum):
    """Where a named subscription that does not exist yet starts."""

    LATEST = "latest"
    EARLIEST = "earliest"


# The frame that ends an until=end export.
END_FRAME = '{"end":true}'


def error_frame(code: ErrorCode, detail: str, seq: int | None = None) -> str:
    """``{"error": {"seq": seq, "code": code, "detail": detail}}`` (no ``seq`` when None)."""
    body: dict[str, object] = {} if seq is None else {"seq": seq}
    body["code"] = str(code)
    # Strict JSON out: a lone surrogate from a client's frame, echoed in a detail, would become
    # a "\\ud800" escape no strict parser reads; it is spelled out as text instead.
    body["detail"] = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return json.dumps({"error": body}, separators=(",", ":"))


def invalid_payload(detail: str, message_id: str, raw: bytes) -> bytes:
    """What an export delivers for a message it cannot convert: the problem and the bytes.

    ``{"error": {"code": "invalid-payload", "detail": D, "message_id": ID, "payload": P}}``,
    ``P`` the message's bytes as text (invalid UTF-8 replaced).
    """
    return json.dumps(
        {"error": {"code": str(ErrorCode.INVALID_PAYLOAD), "detail": detail,
                   "message_id": message_id, "payload": raw.decode(errors="replace")}},
        separators=(",", ":"),
    ).encode()


def draining_frame(grace: float) -> str:
    """``{"draining": {"grace_ms": G}}``: the server drains; frames are taken for G ms more."""
    return f'{{"draining":{{"grace_ms":{max(0, round(grace * 1000))}}}}}'


def ack_frame(seq: int) -> str:
    """``{"ack": seq}``: every import frame numbered up to ``seq`` is settled."""
    return f'{{"ack":{seq}}}'


def envelope(seq: int, message: bytes) -> bytes:
    """``{"seq": seq, "message": <message>}`` for ``ack=client``; ``message`` is JSON."""
    return b'{"seq":%d,"message":%s}' % (seq, message)
