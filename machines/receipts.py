"""The receipt ledger of one import connection: numbering, settlement, receipts.

Pure bookkeeping, no I/O. Every count of an import lives here and only here:

- ``receive`` numbers each frame from the client (1, 2, 3 … in the order received);
- a frame is then either *rejected* at once (an error frame is owed to the client) or
  *published* (handed to the producer), and a published frame later comes back *confirmed*
  (persisted) or *failed* (refused by the broker: rejected with ``publish-failed``);
- the *watermark* is the highest N such that frames 1..N are all settled (confirmed or
  rejected); a receipt ``{"ack": N}`` may cover at most the watermark;
- the consecutive-failure cap (the spec's cap on consecutive send errors) is counted here:
  ``fail`` says when it is reached.

The rule that makes receipts honest: ``take_flush`` captures the watermark *before* taking
the error frames owed up to that moment. A rejected frame is settled and its error frame
queued in the same step, so every rejected frame the ack covers has its error frame in this
flush or an earlier one: sent first, the ack never covers a rejection the client has not
been told of. The sender reports what it sent with ``receipted``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from quiesce.core.protocol import ErrorCode


@dataclass(frozen=True)
class Rejection:
    """An error frame owed to the client: ``seq`` is None for a connection-level error."""

    seq: int | None
    code: ErrorCode
    detail: str


class ReceiptLedger:
    """Numbering, settlement and receipts of one import connection.

    Args:
        receipts: the client asked for ``{"ack": N}`` receipts.
        failure_cap: consecutive publish failures after which the connection gives up.
    """

    def __init__(self, *, receipts: bool, failure_cap: int) -> None:
        self.receipts = receipts
        self.failure_cap = failure_cap
        self.received = 0  # frames numbered
        self.published = 0  # handed to the producer
        self.persisted = 0  # confirmed by the broker
        self.rejected = 0  # answered with an error frame (invalid, or refused by the broker)
        self.publish_failures = 0  # refused by the broker (counted in rejected too)
        self.watermark = 0  # frames 1..watermark are settled
        self.acked = 0  # the last receipt sent
        self.consecutive_failures = 0
        self._ahead: set[int] = set()  # settled frames above the watermark
        self._owed: deque[Rejection] = deque()  # error frames not yet taken by a flush

    # ------------------------------------------------------------- intake

    def receive(self) -> int:
        """Number the next frame from the client and return its sequence number."""
        self.received += 1
        return self.received

    def publish(self) -> None:
        """Count a numbered frame handed to the producer (its fate comes later)."""
        self.published += 1

    @property
    def in_flight(self) -> int:
        """Frames handed to the producer whose confirmation or refusal has not come back."""
        return self.published - self.persisted - self.publish_failures

    # --------------------------------------------------------- settlement

    def reject(self, seq: int, code: ErrorCode, detail: str) -> None:
        """Settle frame ``seq`` with an error frame instead of publishing it."""
        self.rejected += 1
        self._owed.append(Rejection(seq, code, detail))
        self._settle(seq)

    def confirm(self, seq: int) -> None:
        """Frame ``seq`` was persisted by the broker."""
        self.persisted += 1
        self.consecutive_failures = 0
        self._settle(seq)

    def fail(self, seq: int, detail: str) -> bool:
        """Frame ``seq`` was refused by the broker: reject it with ``publish-failed``.

        Returns:
            True exactly when this failure reaches the consecutive-failure cap.
        """
        self.publish_failures += 1
        self.consecutive_failures += 1
        self.reject(seq, ErrorCode.PUBLISH_FAILED, detail)
        return self.consecutive_failures == self.failure_cap

    def error(self, code: ErrorCode, detail: str) -> None:
        """Owe the client a connection-level error frame (no ``seq``)."""
        self._owed.append(Rejection(None, code, detail))

    def _settle(self, seq: int) -> None:
        if seq != self.watermark + 1:
            self._ahead.add(seq)
            return
        ahead = self._ahead
        while seq + 1 in ahead:
            seq += 1
            ahead.remove(seq)
        self.watermark = seq

    # ----------------------------------------------------------- receipts

    @property
    def news(self) -> bool:
        """Something is owed to the client: an error frame, or a receipt."""
        return bool(self._owed) or (self.receipts and self.watermark > self.acked)

    def take_flush(self) -> tuple[list[Rejection], int | None]:
        """What to send now, in order: the error frames owed, then the receipt (or None).

        The receipt is the watermark captured before the error frames are taken (see the
        module docstring). After sending, call ``receipted`` with the receipt sent.
        """
        watermark = self.watermark
        owed = list(self._owed)
        self._owed.clear()
        ack = watermark if self.receipts and watermark > self.acked else None
        return owed, ack

    def receipted(self, seq: int) -> None:
        """Record that ``{"ack": seq}`` was sent.

        Raises:
            ValueError: ``seq`` goes backwards or covers frames not settled.
        """
        if not self.acked <= seq <= self.watermark:
            raise ValueError(f"ack {seq} must be between {self.acked} and {self.watermark}")
        self.acked = seq

    # ------------------------------------------------------------- ledger

    def all_settled(self) -> bool:
        """Every frame received is settled (the publisher may stop)."""
        return self.watermark == self.received

    def client_informed(self) -> bool:
        """No error frame is owed and, with receipts, the last receipt covers every frame."""
        return not self._owed and (not self.receipts or self.acked == self.received)
