"""Import state kept across runs, so that running the same command again sends only what is left.

A state file is a small JSON document; by default one beside each input
(``data.ttl.quiesce-state``), or one for every input with ``--state FILE``. It holds an
`Entry` per (input, gateway, flow, kind): the input's fingerprint and layout (see
`quiesce.client.sources`), how many of its messages are settled from the start (receipted
or rejected: ``done``), the highest message an earlier run had sent (``sent``), and the
rejections among the settled ones. It is written atomically (a temporary file renamed over
it), up to 20 times a second while acks arrive and once at the end; a run killed between two
writes only sends a little more again, never less.

`plan` decides what a run does with an entry: resume after ``done`` when the fingerprint and
layout match, start from the beginning when they differ (the file changed, or is cut into
messages differently), or skip an input that is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quiesce.client._text import plural
from quiesce.client.errors import UsageError

__all__ = ["STATE_SUFFIX", "Entry", "Resume", "StateFile", "default_state_path", "plan"]

# Appended to an input's file name to name its state file.
STATE_SUFFIX = ".quiesce-state"
# The state document's format; another version is not read.
VERSION = 1
# Rejections kept per entry (the count is always exact).
MAX_REJECTIONS_KEPT = 100


@dataclass
class Entry:
    """Where the import of one input into one (gateway, flow, kind) got to.

    Attributes:
        fingerprint: the input's ``sha256:<hex>``.
        layout: how its bytes became messages.
        total: its number of messages.
        done: messages 1..done are settled (receipted, or rejected and reported).
        sent: the highest message sent so far (at the last write of the state).
        rejected: how many of 1..done were rejected.
        rejections: the first `MAX_REJECTIONS_KEPT` of them: ``{"where", "code", "detail"}``.
    """

    fingerprint: str
    layout: str
    total: int
    done: int = 0
    sent: int = 0
    rejected: int = 0
    rejections: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Any) -> Entry:
        """Read an entry written by `to_json`.

        Raises:
            ValueError: not such an entry.
        """
        if not isinstance(obj, dict):
            raise ValueError("an entry must be an object")
        try:
            entry = cls(str(obj["fingerprint"]), str(obj["layout"]), int(obj["total"]),
                        int(obj.get("done", 0)), int(obj.get("sent", 0)),
                        int(obj.get("rejected", 0)),
                        [dict(r) for r in obj.get("rejections", [])])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad entry: {exc}") from None
        if not 0 <= entry.done <= entry.total:
            raise ValueError(f"done must be within 0..total, got {entry.done}")
        return entry

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return asdict(self)

    @property
    def complete(self) -> bool:
        """Every message is settled."""
        return self.done >= self.total


@dataclass(frozen=True)
class Resume:
    """What a run does with one input, decided by `plan`.

    Attributes:
        start: messages to skip (settled by an earlier run).
        earlier_sent: the highest message an earlier run sent (sent again now, unreceipted).
        earlier_rejected: how many of the skipped messages were rejected.
        earlier_rejections: the kept details of those.
        note: one line saying what happens, or empty for a first run.
    """

    start: int = 0
    earlier_sent: int = 0
    earlier_rejected: int = 0
    earlier_rejections: tuple[dict[str, str], ...] = ()
    note: str = ""


def plan(entry: Entry | None, fingerprint: str, layout: str, total: int, name: str,
         fresh: bool = False) -> Resume:
    """Decide where the import of an input starts, given its entry from an earlier run.

    Args:
        entry: the earlier run's entry, or None.
        fingerprint, layout, total: the input as it is now.
        name: its name, for the note.
        fresh: ``--fresh``: ignore the entry.
    """
    if entry is None:
        return Resume()
    if fresh:
        return Resume(note=f"{name}: --fresh: importing all {total} messages again")
    if entry.fingerprint != fingerprint or entry.layout != layout or entry.total != total:
        what = "changed" if entry.fingerprint != fingerprint else "is cut into other messages"
        return Resume(note=f"{name}: {what} since the last run: importing all {total} messages")
    rejected = f", {entry.rejected} of them rejected" if entry.rejected else ""
    if entry.done == 0 and not entry.complete:  # an earlier run settled nothing
        sent = min(entry.sent, total)
        note = (f"{name}: an earlier run sent {plural(sent, 'message')} without a receipt: "
                "sending them again" if sent else "")
        return Resume(0, entry.sent, 0, (), note)
    if entry.complete:
        note = (f"{name}: already imported ({plural(entry.total, 'message')} settled{rejected}): "
                "nothing to send (give --fresh to import it again)")
    else:
        again = max(0, min(entry.sent, total) - entry.done)
        note = (f"{name}: resuming after message {entry.done} of {total}: skipping "
                f"{entry.done} settled by an earlier run{rejected}"
                + (f"; {again} it sent were never receipted and are sent again" if again
                   else ""))
    return Resume(entry.done, entry.sent, entry.rejected, tuple(entry.rejections), note)


def default_state_path(path: Path) -> Path:
    """The state file beside input ``path``: ``<path>.quiesce-state``."""
    return path.with_name(path.name + STATE_SUFFIX)


class StateFile:
    """One state file: its entries by key, read at start and written with `save`.

    Args:
        path: the file (it need not exist).

    Raises:
        UsageError: the file exists but is not a state file of this version.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UsageError(f"cannot read the state file {path}: {exc.strerror or exc}") from exc
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"expected version {VERSION}")
            self.entries = {str(k): Entry.from_json(v) for k, v in doc["entries"].items()}
        except (ValueError, KeyError, AttributeError) as exc:
            raise UsageError(f"{path} is not a quiesce state file ({exc}): delete it, or give "
                             "--state another file") from None

    def save(self) -> None:
        """Write every entry, atomically (a temporary file beside it, renamed over it).

        Raises:
            OSError: the folder is not writable (the caller warns and goes on without state).
        """
        doc = {"version": VERSION,
               "entries": {k: e.to_json() for k, e in self.entries.items()}}
        folder = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(doc, file, indent=1)
                file.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
