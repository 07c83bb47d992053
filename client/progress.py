"""Progress on standard error: a rich bar on a terminal, plain lines or nothing elsewhere.

``--progress auto`` (the default) shows the bar only when stderr is a terminal, so logs and
pipes get no control characters; ``lines`` prints a plain line a few times a second (for CI
logs, and for tests that wait on a point of the run), ``none`` only the notes. Notes
(reconnecting, resuming) are printed in every mode.
"""

from __future__ import annotations

import enum
import time
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

__all__ = ["Mode", "Progress", "make_progress"]

# Seconds between two plain progress lines.
LINE_INTERVAL = 0.25


class Mode(enum.StrEnum):
    """``--progress``: how progress is shown."""

    AUTO = "auto"  # a bar when stderr is a terminal, else nothing
    BAR = "bar"
    LINES = "lines"
    NONE = "none"


class Progress(Protocol):
    """What the commands report progress to."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """Begin counting ``total`` items (None: unknown), ``completed`` of them done already."""

    def update(self, completed: int) -> None:
        """``completed`` items are done."""

    def note(self, text: str) -> None:
        """Print one line for the user (above the bar, if there is one)."""

    def stop(self) -> None:
        """The run is over: leave the bar as it is and stop drawing."""


class _Rate(ProgressColumn):
    """Items per second, for items that are not bytes."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class _Bar:
    def __init__(self, console: Console, unit: str) -> None:
        self._progress = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit), _Rate(), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console,
        )
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def update(self, completed: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=completed)

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        self._progress.refresh()
        self._progress.stop()


class _Lines:
    def __init__(self, console: Console, unit: str, lines: bool) -> None:
        self._console = console
        self._unit = unit
        self._lines = lines
        self._total: int | None = None
        self._last = 0.0
        self._completed = 0

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self._total = total
        self._completed = completed

    def update(self, completed: int) -> None:
        self._completed = completed
        now = time.monotonic()
        if self._lines and (now - self._last >= LINE_INTERVAL or completed == self._total):
            self._last = now
            of = "" if self._total is None else f"/{self._total}"
            self.note(f"progress: {completed}{of} {self._unit}")

    def note(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        pass


def make_progress(mode: Mode, unit: str, console: Console | None = None) -> Progress:
    """The progress reporter for ``mode``.

    Args:
        mode: ``--progress``.
        unit: what is counted (``receipted``, ``messages``), shown after the count.
        console: where to draw; standard error when None.
    """
    console = console or Console(stderr=True)
    if mode is Mode.BAR or (mode is Mode.AUTO and console.is_terminal):
        return _Bar(console, unit)
    return _Lines(console, unit, lines=mode is Mode.LINES)
