"""Crash safety with real processes: SIGKILL the projector, a handler, a writer mid-transaction; restart, count."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.handlers.bars import BarAggregator, BarsConfig
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.query import QueryError, query_file
from tapeline.schemas.events import Bar
from tests.helpers import (
    handlers_drained,
    kill_when_acked,
    kill_when_projected,
    projected,
    random_point,
    read_db,
    read_killed,
    read_stream,
    start_tapeline,
    stream_last_seq,
    wait_until,
    write_config,
)


async def test_projector_killed_mid_run_loses_and_duplicates_nothing(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    db = tmp_path / "data" / "projections" / "tapeline.duckdb"
    ticks = list(SimFeed(["NVDA", "ORCL", "BRK.B"], ticks=60_000, seed=5).generate())
    for i in range(0, len(ticks), 5000):
        await publisher.publish(ticks[i : i + 5000])
    stream = f"{provisioned.upper()}_MD"
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    # Kill it while it is committing: once it has committed past a random point, not all.
    target = random_point(random.Random(5), 0, len(ticks))
    floor = await kill_when_projected(nc, proc, provisioned, stream, above=target - 1)
    assert 0 < target <= floor < len(ticks), f"the kill did not land mid-run (checkpoint {floor})"
    (killed_at,) = read_killed(
        db, "SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?", [stream]
    )
    assert floor <= killed_at < len(ticks), "what it said it committed is in the file, and not everything"

    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    try:

        async def done() -> bool:
            return await projected(nc, provisioned, stream) == len(ticks)

        await wait_until(done, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "projector.log").read_text()[-3000:]
    rows, distinct, max_seq, checkpoint = read_db(
        db,
        "SELECT count(*), count(DISTINCT event_id), max(seq), "
        "(SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?) FROM ticks",
        [stream],
    )
    assert rows == distinct == await stream_last_seq(nc, stream) == len(ticks)
    assert checkpoint == max_seq


async def test_handler_killed_mid_stream_publishes_no_duplicates(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    (tmp_path / "tapeline.toml").write_text(
        cfg.read_text() + '\n[bars]\nintervals = ["1s"]\n[momentum]\ninterval = "1s"\nwindow = 5\n'
    )
    ticks = list(SimFeed(["NVDA", "ORCL"], ticks=30_000, seed=9, mean_gap_ms=40).generate())
    clean = BarAggregator(BarsConfig(intervals=["1s"]))  # what a single uninterrupted run produces
    expected = {
        (b.symbol, b.start_ns): (b.open, b.high, b.low, b.close, b.volume, b.ticks)
        for t in ticks
        for b in clean.handle(t)
        if isinstance(b, Bar)
    }
    n_bars = len(expected)
    for i in range(0, len(ticks), 5000):
        await publisher.publish(ticks[i : i + 5000])
    stream = f"{provisioned.upper()}_MD"
    proc = start_tapeline("up", "-c", str(cfg), "--only", "handlers", log=tmp_path / "handlers.log")
    target = random_point(random.Random(9), 2000, len(ticks))
    floor = await kill_when_acked(nc, proc, stream, "bars_md", above=target - 1)
    assert target <= floor < len(ticks)

    proc = start_tapeline("up", "-c", str(cfg), "--only", "handlers", log=tmp_path / "handlers.log")
    try:
        await wait_until(lambda: handlers_drained(nc, provisioned), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "handlers.log").read_text()[-3000:]
    bars = await read_stream(nc, stream, f"{provisioned}.md.bar.>")
    ids = [e.event_id for _, e in bars]
    assert len(ids) == len(set(ids)) == n_bars, "every bar exactly once, as a single clean run would produce"
    got = {(b.symbol, b.start_ns): (b.open, b.high, b.low, b.close, b.volume, b.ticks) for _, b in bars}  # type: ignore[union-attr]
    wrong = [k for k in expected if got.get(k) != expected[k]]
    assert not wrong, f"{len(wrong)} bars differ from a clean run (state not rebuilt?), e.g. {wrong[:3]}"
    signals = await read_stream(nc, f"{provisioned.upper()}_INTEL", f"{provisioned}.intel.signal.>")
    sig_ids = [e.event_id for _, e in signals]
    assert len(sig_ids) == len(set(sig_ids)) > 0


# A projector stand-in: the real ProjectionDb commits two batches, then stalls inside the third
# transaction (rows inserted, checkpoint advanced, COMMIT not yet run) until it is killed.
STALLED_WRITER = """
import sys, time
from pathlib import Path
from tapeline.adapters.sim import SimFeed
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.tables import TABLES

class StallsAtCommit:
    def __init__(self, cur):
        self.cur = cur
    def execute(self, sql, *args):
        if sql == "COMMIT":
            print("in transaction", flush=True)
            time.sleep(3600)
        return self.cur.execute(sql, *args)
    def __getattr__(self, name):
        return getattr(self.cur, name)

db = ProjectionDb(Path(sys.argv[1]))
table = next(t for t in TABLES if t.name == "ticks")
rows = [r for seq, t in enumerate(SimFeed(["A"], ticks=3000, seed=1).generate(), 1) for r in table.rows(t, seq)]
db.commit("S_MD", {"ticks": rows[:1000]}, 1000, {"ticks": 1000})
db.commit("S_MD", {"ticks": rows[1000:2000]}, 2000, {"ticks": 1000})
db.commit("S_MD", {"ticks": rows[2000:]}, 3000, {"ticks": 1000}, StallsAtCommit(db.con.cursor()))
"""
HOLDING_READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("reading", flush=True)
sys.stdin.read()
"""


async def _started(code: str, path: Path, ready: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line.decode().strip() == ready, f"{line!r}: the stand-in died before getting ready"
    return proc


async def test_reader_of_a_killed_writer_sees_exactly_what_was_committed(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    wal = tmp_path / "p.duckdb.wal"
    sql = "SELECT count(*), max(seq), (SELECT last_seq FROM _checkpoints WHERE stream = 'S_MD') FROM ticks"
    writer = await _started(STALLED_WRITER, db, "in transaction")
    with pytest.raises(QueryError, match="held by another process"):  # a live writer: a clear error
        query_file(db, sql)
    writer.kill()
    await writer.wait()
    assert wal.stat().st_size > 0, "the committed batches are only in the WAL"

    reader = await _started(HOLDING_READER, db, "reading")  # another reader: no recovery, read-only
    assert query_file(db, sql).rows == [[2000, 2000, 2000]]
    assert wal.exists()
    assert reader.stdin is not None
    reader.stdin.close()
    await reader.wait()

    assert query_file(db, sql).rows == [[2000, 2000, 2000]]  # committed: all; uncommitted: nothing
    assert not wal.exists(), "the reader checkpointed the WAL, as the projector's next start would"
    projector = ProjectionDb(db)  # and the writer carries on from there
    try:
        assert projector.checkpoint("ticks") == 2000
        projector.commit("S_MD", {"ticks": []}, 2001, {"ticks": 0})
    finally:
        projector.close()
    assert read_db(db, "SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks'") == (2001,)
