"""The import client's bookkeeping: numbering, the window, receipts, rejections, resends.

Pure (no I/O, no clock), like the gateway's ledgers in ``machines/``: the importer reports
what happened on the socket and asks what to send next.

Theory of operation. The gateway numbers the frames of each connection 1, 2, 3 … in the order
it receives them, so the client numbers them the same way as it sends (`sent`). A receipt
``{"ack": N}`` settles every frame numbered up to N on this connection (`ack`); an error frame
``{"error": {"seq": N, ...}}`` settles frame N as rejected (`error`), and comes before the
receipt that covers it. At most ``window`` frames are unsettled at a time (`room`). When a
connection ends, every frame it did not settle goes back, in order, to the front of the queue
(`disconnected`), so the next connection sends exactly those first (`take`) and then carries
on. Nothing is skipped and nothing settled is sent again.

Each input keeps `SourceProgress`: ``done`` is the length of its settled prefix, which is
what the state file records (a resumed run starts after it).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from quiesce.client.sources import Item

__all__ = ["ImportLedger", "Rejection", "SourceProgress"]

# A gateway detail about one triple of a message: ``triples[3].o.ln: ...``.
_TRIPLE_IN_DETAIL = re.compile(r"triples\[(\d+)\]")


@dataclass(frozen=True)
class Rejection:
    """A message the gateway (or the client itself) refused.

    Attributes:
        where: where the message comes from (``data.jsonl:17``).
        code: the error frame's code (``invalid-message``...), or ``local``.
        detail: the gateway's detail.
        index: the message's position in its input.
    """

    where: str
    code: str
    detail: str
    index: int


@dataclass
class SourceProgress:
    """How far one input got in this run.

    Attributes:
        total: its number of messages.
        start: how many an earlier run settled (skipped now).
        earlier_sent: the highest message an earlier run sent.
        done: messages 1..done are settled (earlier or now).
        receipted: messages receipted in this run.
        rejections: messages rejected in this run.
        sent: the highest message sent (in any run).
        resent_earlier: messages an earlier run sent without a receipt, sent again now.
    """

    total: int
    start: int = 0
    earlier_sent: int = 0
    done: int = 0
    receipted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    sent: int = 0
    resent_earlier: int = 0
    _beyond: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.done = self.start
        self.sent = max(self.start, self.earlier_sent)

    def settle(self, index: int) -> None:
        """Message ``index`` is settled: extend the settled prefix as far as it goes."""
        self._beyond.add(index)
        while self.done + 1 in self._beyond:
            self.done += 1
            self._beyond.discard(self.done)


class ImportLedger:
    """Every frame of an import run, across its connections (module docstring).

    Args:
        sources: the progress of each input, by its number.
        items: every message still to send, in order (the inputs one after the other).
        window: the most frames unsettled at a time.

    Attributes:
        seq: the number of the last frame sent on this connection.
        acked: the last receipt on this connection.
        frames_sent: frames sent in the run (resends included).
        resent: frames sent again after a connection ended without settling them.
        connections: connections opened.
        violations: receipts and error frames that broke the protocol (ignored).
    """

    def __init__(self, sources: list[SourceProgress], items: Iterator[Item], window: int
                 ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.sources = sources
        self.window = window
        self._items = items
        self._exhausted = False
        self._retry: deque[Item] = deque()
        self._inflight: dict[int, Item] = {}
        self.seq = 0
        self.acked = 0
        self.frames_sent = 0
        self.resent = 0
        self.connections = 0
        self.violations: list[str] = []

    # ------------------------------------------------------------ a connection

    def connected(self) -> None:
        """A new connection: its frames are numbered from 1 again."""
        assert not self._inflight, "disconnected() must come first"
        self.connections += 1
        self.seq = 0
        self.acked = 0

    def take(self) -> Item | None:
        """The next message to send (a frame to resend first), or None when none is left."""
        if self._retry:
            self.resent += 1
            return self._retry.popleft()
        if self._exhausted:
            return None
        item = next(self._items, None)
        if item is None:
            self._exhausted = True
            return None
        progress = self.sources[item.source]
        if item.index <= progress.earlier_sent:
            progress.resent_earlier += 1
        return item

    def sent(self, item: Item) -> int:
        """``item`` goes out as the next frame of this connection; returns its number."""
        self.seq += 1
        self._inflight[self.seq] = item
        self.frames_sent += 1
        progress = self.sources[item.source]
        progress.sent = max(progress.sent, item.index)
        return self.seq

    def reject_locally(self, item: Item, detail: str) -> Rejection:
        """Settle ``item`` as rejected without sending it (the client cannot send it)."""
        return self._reject(item, "local", detail)

    def ack(self, n: int) -> int:
        """Apply the receipt ``{"ack": n}``; returns how many frames it settled.

        A receipt below the last one or above the last frame sent breaks the protocol: it is
        recorded in `violations` and changes nothing.
        """
        if n < self.acked or n > self.seq:
            self.violations.append(f"ack {n} after ack {self.acked} with {self.seq} sent")
            return 0
        settled = 0
        for seq in range(self.acked + 1, n + 1):
            item = self._inflight.pop(seq, None)
            if item is None:  # rejected by an error frame already
                continue
            progress = self.sources[item.source]
            progress.receipted += 1
            progress.settle(item.index)
            settled += 1
        self.acked = n
        return settled

    def error(self, seq: object, code: str, detail: str) -> Rejection | None:
        """Apply an error frame; returns the rejection, or None if it names no frame in flight.

        An error frame without a ``seq`` (or one already settled) is recorded in `violations`.
        """
        item = self._inflight.pop(seq, None) if isinstance(seq, int) else None
        if item is None:
            self.violations.append(f"error frame for seq {seq!r}: {code}: {detail}")
            return None
        return self._reject(item, code, detail)

    def _reject(self, item: Item, code: str, detail: str) -> Rejection:
        where = item.where
        triple = _TRIPLE_IN_DETAIL.match(detail)
        if triple is not None and item.first_triple is not None:
            where += f", triple {item.first_triple + int(triple.group(1))}"
        rejection = Rejection(where, code, detail, item.index)
        progress = self.sources[item.source]
        progress.rejections.append(rejection)
        progress.settle(item.index)
        return rejection

    def disconnected(self) -> int:
        """The connection ended: its unsettled frames go back to be sent first, in order.

        Returns:
            How many frames go back.
        """
        back = list(self._inflight.values())
        self._inflight.clear()
        self._retry.extendleft(reversed(back))
        return len(back)

    # ------------------------------------------------------------ questions

    @property
    def room(self) -> bool:
        """Another frame may be sent now (fewer than ``window`` unsettled)."""
        return len(self._inflight) < self.window

    @property
    def in_flight(self) -> int:
        """Frames sent on this connection and not settled yet."""
        return len(self._inflight)

    @property
    def all_sent(self) -> bool:
        """Nothing is left to send on this connection (receipts may still be due)."""
        return self._exhausted and not self._retry

    @property
    def finished(self) -> bool:
        """Every message was sent and settled."""
        return self.all_sent and not self._inflight

    def unsettled(self) -> int:
        """Messages of the run not settled: in flight, waiting to be resent, or never sent."""
        return sum(p.total - p.done for p in self.sources)
