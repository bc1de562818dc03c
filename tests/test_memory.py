"""Memory of long-running processes (issue 14, soak): glibc arenas capped, LanceDB handles renewed safely."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa

from tapeline.projections.vectors import CHECKPOINTS, FWD_COLUMNS, MARKET_RETURNS, VectorStore

THREADS_MAKING_ARENAS = """
import sys, threading
from tapeline.alloc import arena_count, limit_arenas
capped = limit_arenas() if sys.argv[1] == "cap" else False
barrier = threading.Barrier(8)
def work():
    keep = bytearray(100_000)  # from malloc, in this thread's arena
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(capped, arena_count())
"""


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", THREADS_MAKING_ARENAS, mode], env=run_env, capture_output=True, check=True, text=True
    ).stdout.split()
    return out[0], int(out[1])


def test_limit_arenas_caps_the_arenas_threads_make() -> None:
    """Eight threads allocating at once get eight arenas of their own; capped, they share two."""
    assert _arenas("free")[1] >= 8
    assert _arenas("cap") == ("True", 2)
    assert _arenas("cap", MALLOC_ARENA_MAX="2") == ("False", 2)  # the environment already says it


def _bar_rows(store: VectorStore, first: int, n: int) -> pa.Table:
    seqs = list(range(first, first + n))
    cols = {
        "bar_event_id": [f"b{s}" for s in seqs],
        "symbol": ["X"] * n,
        "interval": ["1m"] * n,
        "ts_event": seqs,
        "stream_seq": seqs,
        **{c: [1.0] * n for c in ("open", "high", "low", "close", "volume")},
        **{c: [None] * n for c in FWD_COLUMNS},
    }
    return pa.table(cols, schema=store.specs[MARKET_RETURNS].schema)


def test_commits_racing_compactions_are_all_seen_through_the_new_handles(tmp_path: Path) -> None:
    """Compaction swaps a table's handles; a commit running meanwhile must not write through the old one
    (a handle does not see writes made through another: the reader would wait for that checkpoint forever)."""
    store = VectorStore(tmp_path / "v")
    commits, rows_each = 60, 2
    done = threading.Event()
    swaps = 0

    def compact() -> None:
        nonlocal swaps
        while not done.is_set():
            before = store.table(CHECKPOINTS)
            store.optimize(MARKET_RETURNS)
            swaps += store.table(CHECKPOINTS) is not before

    t = threading.Thread(target=compact)
    t.start()
    try:
        for i in range(commits):
            rows = _bar_rows(store, i * rows_each + 1, rows_each)
            store.commit(MARKET_RETURNS, rows, stream="S", last_seq=(i + 1) * rows_each)
            assert store.checkpoint(MARKET_RETURNS).last_seq == (i + 1) * rows_each
            assert store.count(MARKET_RETURNS) == (i + 1) * rows_each  # through the handle of now
    finally:
        done.set()
        t.join()
    assert swaps >= 3, swaps  # the handles were renewed while commits ran
    assert store.count(MARKET_RETURNS) == commits * rows_each
    assert VectorStore(tmp_path / "v").count(MARKET_RETURNS) == commits * rows_each
