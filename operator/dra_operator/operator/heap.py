"""Hands the heap's free pages back to the kernel once the caches are full (glibc's malloc_trim).

Filling the caches parses every listed object; the lists' transient objects are freed, but glibc keeps the
pages, so the process stays at its listing peak. At 5,000 nodes x 8 devices and 10,000 claims one trim after
the caches filled took the operator's RSS from 714 to 635 MiB (bench/scale_memory.py, 2026-12-06). Elsewhere
(musl, macOS) there is no malloc_trim and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import structlog

log = structlog.get_logger("dra_operator.heap")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Trim the heap; False where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    log.debug("free heap pages returned to the kernel")
    return True
