"""glibc allocator settings for long-running processes (issue 14: RSS flat in the soak).

glibc gives every thread that contends for the heap an arena of its own, up to 8 per core, and an
arena's freed pages are seldom returned. The vectors role commits LanceDB batches from a thread pool
(and LanceDB's own Rust threads allocate through the same malloc), so its RSS grew with arenas each
holding their own free memory. Two arenas are enough for these processes. ``MALLOC_ARENA_MAX`` in the
environment does the same from the first allocation on; :func:`limit_arenas` is for a process started
without it (``tapeline up`` calls it first thing).
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` unless ``MALLOC_ARENA_MAX`` is set; True if the cap was applied.

    Arenas already made stay, so call it before the process's threads allocate much (glibc fixes its
    limit when it first needs a 9th arena, and ``mallopt`` takes effect only before that).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent outside glibc: nothing to do
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, n))


def arena_count() -> int:
    """How many malloc arenas glibc has made (``malloc_info``'s heaps); 0 outside glibc."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_info"):
        return 0
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    fp = ctypes.c_void_p(libc.open_memstream(ctypes.byref(buf), ctypes.byref(size)))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    count = (buf.value or b"").count(b"<heap nr=")
    libc.free(buf)
    return count
