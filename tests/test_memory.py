"""Memory of long-running processes (issue 14, soak): glibc arenas capped, LanceDB handles renewed safely."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa

from tapeline.bus.consumer import Delivery
from tapeline.bus.reader import Received
from tapeline.projections.duckdb import DbLimits, ProjectionDb, ProjectionSink
from tapeline.projections.vectors import CHECKPOINTS, FWD_COLUMNS, MARKET_RETURNS, VectorStore
from tapeline.schemas import encode
from tapeline.schemas.events import Heartbeat, Tick
from tapeline.schemas.subjects import MD, OPS

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


FREED_BIG_BLOCK_THEN_SMALLER = """
import sys
from tapeline.alloc import fix_mmap_threshold, mmapped_blocks
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
big = bytearray(4 << 20)  # mmap-ed; freeing it makes glibc raise its threshold to 4 MiB
del big
before = mmapped_blocks()
body = bytearray(1 << 20)  # a 1 MiB body: mmap-ed again, or carved from the heap
print(fixed, mmapped_blocks() - before)
"""


def _mmapped(mode: str, **env: str) -> tuple[str, int]:
    run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | env
    out = subprocess.run(
        [sys.executable, "-c", FREED_BIG_BLOCK_THEN_SMALLER, mode],
        env=run_env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_fixed_mmap_threshold_keeps_big_blocks_out_of_the_heap_after_a_bigger_one_was_freed() -> None:
    """glibc's raised threshold puts the next 1 MiB block in the heap (whose pages stay after the free);
    fixed at 128 KiB, it is mmap-ed and given back when freed."""
    assert _mmapped("free") == ("False", 0)
    assert _mmapped("fix") == ("True", 1)
    assert _mmapped("fix", MALLOC_MMAP_THRESHOLD_="131072") == ("False", 1)  # the environment already says it


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


def _projected_memory(path: Path, limits: DbLimits | None, *, quiet_family: bool = False) -> int:
    """Project 60k ticks in 300 commits; the most DuckDB held at any commit (buffer manager, bytes).

    ``quiet_family``: first one commit of another family, whose sink samples the memory as the projector
    does after a commit, and then has nothing more to commit (news after its import)."""
    db = ProjectionDb(path, limits=limits)
    sink = ProjectionSink(db, MD, "MD")
    most = 0

    async def run() -> None:
        nonlocal most
        if quiet_family:
            ops = ProjectionSink(db, OPS, "OPS")
            beat = Heartbeat(event_id="H1", ts_event=1, ts_init=1, source="sim", feed="sim", interval_s=5.0)
            await ops.process([Received(Delivery("t.ops.heartbeat.sim", encode(beat), b"", "", 1, 1, 0, 0), [beat])])
            db.memory_bytes(ops.cursor)
        seq = 0
        for _ in range(300):
            batch = []
            for _ in range(200):
                seq += 1
                t = Tick(
                    event_id=f"T{seq:020d}",
                    ts_event=1_700_000_000_000_000_000 + seq * 25_000_000,
                    ts_init=1_700_000_000_000_000_000 + seq * 25_000_000,
                    source="sim",
                    venue="sim",
                    symbol=f"S{seq % 5}",
                    bid=100.0 + seq % 7,
                    ask=100.5 + seq % 7,
                    volume=1.0,
                )
                batch.append(Received(Delivery(f"t.md.tick.sim.S{seq % 5}", encode(t), b"", "", seq, 1, 0, 0), [t]))
            await sink.process(batch)
            most = max(most, db.memory_bytes(db.con.cursor()))

    try:
        asyncio.run(run())
    finally:
        db.close()
    return most


def test_the_projector_checkpoints_often_enough_to_hold_little(tmp_path: Path) -> None:
    """DuckDB keeps every row since its last checkpoint in memory until its log reaches 16 MiB: the
    projector's RSS rose ~1 MiB/min in the soak. With ``checkpoint_mb`` it holds a few MiB at most."""
    mib = 1024 * 1024
    unbounded = _projected_memory(tmp_path / "default.duckdb", None)
    assert unbounded > 6 * mib, f"the workload is too small to show the default's growth ({unbounded / mib:.1f} MiB)"
    bounded = _projected_memory(tmp_path / "limited.duckdb", DbLimits(memory_limit_mb=64, checkpoint_mb=1))
    assert bounded < 6 * mib, f"held {bounded / mib:.1f} MiB with a 1 MiB checkpoint threshold"


def test_a_quiet_family_does_not_pin_old_versions(tmp_path: Path) -> None:
    """A family that committed once, sampled the memory and went quiet must not keep a transaction open:
    DuckDB would keep every later commit's old versions and skip its checkpoints (in the soak the projector
    grew to its memory limit once news had been imported)."""
    mib = 1024 * 1024
    held = _projected_memory(tmp_path / "p.duckdb", DbLimits(memory_limit_mb=64, checkpoint_mb=1), quiet_family=True)
    assert held < 6 * mib, f"held {held / mib:.1f} MiB with a quiet family beside the ticks"


def test_the_projection_db_keeps_its_limits_when_reopened(tmp_path: Path) -> None:
    """A full disk makes the projector reopen its database (``revive``): the limits must come back."""
    db = ProjectionDb(tmp_path / "p.duckdb", limits=DbLimits(memory_limit_mb=64, checkpoint_mb=2))
    settings = "SELECT current_setting('memory_limit'), current_setting('checkpoint_threshold')"
    assert db.con.execute(settings).fetchone() == ("64.0 MiB", "2.0 MiB")
    db.con.close()
    assert db.revive()
    assert db.con.execute(settings).fetchone() == ("64.0 MiB", "2.0 MiB")
    db.close()
