"""Handing freed memory back to the system after the steps that allocate in bulk and then free it all.

Compiling a policy parses each module's syntax tree into Python objects (about 1 MB of JSON for the shipped
policies, several MB as objects) that are garbage once the program is built. glibc's allocator keeps what a
program frees for its next allocations, so the process would carry those megabytes for as long as it lives:
``malloc_trim`` gives the free pages back. Where there is no glibc (musl has no ``malloc_trim``) this does
nothing.

glibc also gives each thread that allocates an arena of its own (up to eight per core). The gateway's threads
(the start-up policy compiler, the thread pool of blocking calls, the audit writer) do rare work, and what they
free stays resident in their arenas. ``share_one_arena`` makes them all use the main thread's: measured in the
benchmark's configuration, 1 MB less at start and 1.5-2.5 MB less with 200 sessions open. The event loop's
thread allocates as before (Python's small objects never reach malloc), so the hot path takes no lock it did not
take already.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable
from typing import Any


def _libc(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """A function of the C library the interpreter runs on (glibc's, on Linux), or None where it has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_TRIM = _libc("malloc_trim", ctypes.c_size_t)
_M_ARENA_MAX = -8  # glibc's malloc.h


def share_one_arena() -> bool:
    """Threads started from now on allocate from the main arena (glibc's ``mallopt(M_ARENA_MAX, 1)``); call it
    before any thread starts. False where it cannot (no glibc), changing nothing."""
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, 1))


def release_free_memory() -> bool:
    """Collect garbage, then give the allocator's free pages back to the system; False where it cannot."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
