"""Give the heap's free memory back to the system after large work.

glibc's malloc keeps freed memory for reuse: after a checkpoint of 256 MiB passed through the daemon (the
chunks as the runner sent them, their stored forms), its RSS stayed at ~760 MiB with every app closed.
``malloc_trim(0)`` returns the free pages of every arena. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["LARGE", "trim"]

LARGE = 16 * 1024 * 1024
"""Bytes of work after which ``trim`` is worth its few milliseconds."""


def trim() -> bool:
    """Return free heap memory to the system; whether it could be asked (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim_fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim_fn.argtypes = [ctypes.c_size_t]
    trim_fn.restype = ctypes.c_int
    return libc
