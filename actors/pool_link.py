"""The wire between the parent of ``--workers N`` and one worker process.

A worker is ``python supervisor.py serve --worker INDEX --notify-fd FD`` (internal flags):

* its settings come on its stdin as one line of JSON (`encode_settings`), the parent's
  effective settings with the shared port and broker filled in, so a worker serves exactly
  what the parent was asked to, and the secret never shows in a command line;
* it writes ``ready`` to file descriptor FD, a pipe the parent reads, once it serves (the
  pipe's end of file without it: the worker died starting);
* the parent keeps the worker's stdin open while it lives: end of file there means the parent
  is gone (killed), and the worker drains as on SIGTERM rather than serve on, orphaned. The
  parent also closes it on purpose to stop a worker that is still starting (one that may not
  have its signal handlers yet);
* every log line of the worker carries ``worker=INDEX worker_pid=PID`` (`WorkerFields`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import IO, TYPE_CHECKING, Any

import trio

from quiesce.core.config import Settings
from quiesce.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["WorkerFields", "WorkerLink", "encode_settings", "read_settings"]

LOGGER = logging.getLogger("quiesce.worker")
# What a worker writes to its notify pipe once it serves.
READY = b"ready\n"


def encode_settings(settings: Settings) -> bytes:
    """``settings`` as the one JSON line a worker reads on its stdin."""
    return json.dumps(dataclasses.asdict(settings)).encode() + b"\n"


def read_settings(stream: IO[bytes]) -> Settings:
    """Read the settings line the parent wrote (`encode_settings`).

    Raises:
        ConfigError: the line is missing or is not valid settings.
    """
    line = stream.readline()
    try:
        data: dict[str, Any] = json.loads(line)
        return Settings(**data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"worker settings on stdin: {exc}") from exc


class WorkerFields(logging.Filter):
    """Adds ``worker`` (the index) and ``worker_pid`` to every record a worker logs."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record``; every record passes."""
        record.worker = self.index
        record.worker_pid = self.pid
        return True


class WorkerLink:
    """A worker's end of the wire: its index, the ready pipe and the watch on the parent.

    Args:
        index: the worker's index in the pool (0 … N-1), stable across its restarts.
        notify_fd: the write end of the parent's ready pipe; `notify_ready` closes it.
    """

    def __init__(self, index: int, notify_fd: int) -> None:
        self.index = index
        self._notify_fd: int | None = notify_fd

    def notify_ready(self) -> None:
        """Tell the parent this worker serves (once; later calls do nothing)."""
        if self._notify_fd is None:
            return
        fd, self._notify_fd = self._notify_fd, None
        try:
            os.write(fd, READY)
        except OSError as exc:  # the parent is gone: watch_parent drains this worker
            LOGGER.warning("could not tell the parent this worker is ready: %s", exc)
        finally:
            os.close(fd)

    async def watch_parent(self, parent_gone: Callable[[], None]) -> None:
        """Call ``parent_gone()`` once the parent has closed this worker's stdin (it died).

        Runs until then, or until cancelled.
        """
        stream = trio.lowlevel.FdStream(os.dup(0))
        async with stream:
            while await stream.receive_some(4096):
                pass  # the parent writes nothing after the settings line
        parent_gone()
