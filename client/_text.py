"""Small helpers for the commands' messages."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """``1 message``, ``2 messages``: a count and its noun (plural with an ``s``)."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
