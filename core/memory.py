"""The process's allocator policy: large buffers are returned at once, freed heap on a close.

Theory of operation. Measured on the gateway (docs/performance.md, "Memory"): after a storm
of 1-2 MB frames and every socket closed, glibc held 134 MB of which 11 MB were in use: the
rest was free memory that glibc malloc kept. Nothing in Python held it (no queue, buffer or
log line); two of glibc's defaults did:

- the *dynamic mmap threshold*. A request of at least ``M_MMAP_THRESHOLD`` (128 KiB at
  start) gets a mapping of its own, unmapped on free. But freeing such a chunk raises the
  threshold to the chunk's size (up to 32 MiB), so from then on 1-2 MB frames come from the
  heap, where a freed chunk below another live one can never go back to the system;
- *trimming only at the top*: ``free`` returns heap memory only past the highest live chunk
  (``M_TRIM_THRESHOLD``); the rest stays until ``malloc_trim`` releases whole free pages.

So ``apply_policy`` fixes the mmap threshold (``malloc_mmap_threshold``, 256 KiB: a frame or
payload that large is mapped and unmapped on its own; setting it also turns the dynamic
adjustment off) and the trim threshold to the same value, once at start-up; and ``trim``
(``malloc_trim(0)``) gives back the free pages of every arena, which the supervisor calls
after connections close (``actors/memory.py``). Each thread of pulsar-client's may get an
arena of its own; they were measured at 0.1 MB each and are left alone (``M_ARENA_MAX``).

Only glibc has these calls. Elsewhere (musl, macOS), ``glibc()`` returns None, logged once
at debug, and the gateway runs on the platform's allocator as it is.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any

LOGGER = logging.getLogger("quiesce.memory")

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
# The smallest one the setting accepts: below a page, every mapping would waste most of it.
MMAP_THRESHOLD_MIN = 4096
# Bytes per page, for the RSS figure of /proc/self/statm.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Glibc:
    """glibc's malloc tuning calls, reached through ctypes.

    Attributes:
        version: glibc's version string (``gnu_get_libc_version``).
    """

    version: str
    _mallopt: Any
    _malloc_trim: Any

    def apply_policy(self, mmap_threshold: int) -> bool:
        """Fix the mmap and trim thresholds at ``mmap_threshold`` bytes (0: change nothing).

        Returns:
            True if glibc accepted both (``mallopt`` returns 1 on success).
        """
        if mmap_threshold == 0:
            return True
        return bool(self._mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            self._mallopt(M_TRIM_THRESHOLD, mmap_threshold))

    def trim(self) -> bool:
        """Give every arena's free pages back to the system (``malloc_trim(0)``).

        Takes each arena's lock in turn: call it from a worker thread, not the event loop.

        Returns:
            True if some memory was given back.
        """
        return bool(self._malloc_trim(0))


_glibc: Glibc | None = None
_looked = False


def glibc() -> Glibc | None:
    """This process's glibc, or None when the C library is not glibc (said once, at debug)."""
    global _glibc, _looked
    if _looked:
        return _glibc
    _looked = True
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError) as exc:
        LOGGER.debug("not glibc (%s): the allocator is left as it is", exc)
        return None
    version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    _glibc = Glibc(version().decode(), mallopt, malloc_trim)
    return _glibc


def rss_bytes() -> int | None:
    """This process's resident set size in bytes (``/proc/self/statm``), None if unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
