"""glibc allocator settings for long-running processes (issue 14: RSS flat in the soak).

glibc gives every thread that contends for the heap an arena of its own, up to 8 per core, and an
arena's freed pages are seldom returned. The vectors role commits LanceDB batches from a thread pool
(and LanceDB's own Rust threads allocate through the same malloc), so its RSS grew with arenas each
holding their own free memory. Two arenas are enough for these processes. ``MALLOC_ARENA_MAX`` in the
environment does the same from the first allocation on; :func:`limit_arenas` is for a process started
without it (``tapeline up`` and ``tapeline feed`` call both settings first thing, :func:`for_long_running`).

glibc also raises its mmap threshold each time a large block it had mmap-ed is freed (up to 32 MiB),
so later message bodies, gathered commit buffers and query results of that size come from the main
heap, and the heap keeps their pages after they are freed: the projector's ``[heap]`` grew ~1 MiB every
4 minutes in the soak while the memory in use stayed flat. :func:`fix_mmap_threshold` keeps the
threshold at glibc's default (128 KiB), which turns the raising off, as ``MALLOC_MMAP_THRESHOLD_`` does.
"""

from __future__ import annotations

import ctypes
import os

M_ARENA_MAX = -8  # glibc malloc.h
M_MMAP_THRESHOLD = -3
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's default, fixed: blocks at least this big are mmap-ed and unmapped on free


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h), every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def _mallopt(param: int, value: int, env: str) -> bool:
    """``mallopt(param, value)`` unless the environment variable ``env`` already sets it; True if applied
    (False outside glibc, where there is nothing to do)."""
    if os.environ.get(env):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and bool(mallopt(param, value))


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` unless ``MALLOC_ARENA_MAX`` is set; True if the cap was applied.

    Arenas already made stay, so call it before the process's threads allocate much (glibc fixes its
    limit when it first needs a 9th arena, and ``mallopt`` takes effect only before that).
    """
    return _mallopt(M_ARENA_MAX, n, "MALLOC_ARENA_MAX")


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Keep blocks of ``size`` bytes and more out of the heap, for good, unless ``MALLOC_MMAP_THRESHOLD_``
    is set; True if it was applied. Costs a mmap and a munmap per such block (µs; they are rare)."""
    return _mallopt(M_MMAP_THRESHOLD, size, "MALLOC_MMAP_THRESHOLD_")


def for_long_running() -> None:
    """Both settings, for a process that runs until stopped (``tapeline up``, ``tapeline feed``): call it first
    thing, before the runtime's threads allocate."""
    limit_arenas()
    fix_mmap_threshold()


def mmapped_blocks() -> int:
    """How many blocks glibc's malloc serves by mmap now (``mallinfo2``'s ``hblks``); 0 outside glibc."""
    mallinfo2 = getattr(ctypes.CDLL(None), "mallinfo2", None)
    if mallinfo2 is None:
        return 0
    mallinfo2.restype = MallInfo2
    return int(mallinfo2().hblks)


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
