"""Handing freed memory back to the system after the steps that allocate in bulk and then free it all.

Compiling a policy parses each module's syntax tree into Python objects (about 1 MB of JSON for the shipped
policies, several MB as objects) that are garbage once the program is built. glibc's allocator keeps what a
program frees for its next allocations, so the process would carry those megabytes for as long as it lives:
``malloc_trim`` gives the free pages back. Where there is no glibc (musl has no ``malloc_trim``) this does
nothing.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter itself runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Collect garbage, then give the allocator's free pages back to the system; False where it cannot."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
