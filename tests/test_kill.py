"""Crash safety with real processes: SIGKILL the projector, SIGKILL a handler, restart, count."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import duckdb
from nats.aio.client import Client

from adapters.sim import SimFeed
from bus.publisher import Publisher
from handlers.bars import BarAggregator
from schemas.events import Bar
from tests.helpers import consumer_state, read_stream, start_tapeline, stream_last_seq, wait_until, write_config


def _checkpoint(db: Path, stream: str) -> int:
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return -1  # the writer holds the lock
    try:
        row = con.execute(
            "SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?", [stream]
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


async def kill_when_acked(
    nc: Client, proc: subprocess.Popen[bytes], stream: str, durable: str, *, above: int, within: float = 10.0
) -> int:
    """SIGKILL ``proc`` as soon as its consumer's ack floor passes ``above``; returns that floor."""
    floor = 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        info = await consumer_state(nc, stream, durable)  # None while the process is still starting
        floor = int(info["ack_floor"]["stream_seq"]) if info else 0
        if floor > above:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return floor


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
    # Kill it while it is committing: after its consumer has acknowledged some, not all.
    ack_floor = await kill_when_acked(nc, proc, stream, "projector_md", above=0)
    assert 0 < ack_floor < len(ticks), f"the kill did not land mid-run (ack floor {ack_floor})"
    assert _checkpoint(db, stream) < len(ticks)

    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    try:

        async def done() -> bool:
            info = await consumer_state(nc, stream, "projector_md")
            return bool(info and info["ack_floor"]["stream_seq"] == len(ticks))

        await wait_until(done, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "projector.log").read_text()[-3000:]
    con = duckdb.connect(str(db), read_only=True)
    rows, distinct, max_seq = (
        con.execute("SELECT count(*), count(DISTINCT event_id), max(seq) FROM ticks").fetchone() or ()
    )
    checkpoint = con.execute(
        "SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?", [stream]
    ).fetchone()
    con.close()
    assert rows == distinct == await stream_last_seq(nc, stream) == len(ticks)
    assert checkpoint == (max_seq,)


async def test_handler_killed_mid_stream_publishes_no_duplicates(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    (tmp_path / "tapeline.toml").write_text(
        cfg.read_text() + '\n[bars]\nintervals = ["1s"]\n[momentum]\ninterval = "1s"\nwindow = 5\n'
    )
    ticks = list(SimFeed(["NVDA", "ORCL"], ticks=30_000, seed=9, mean_gap_ms=40).generate())
    clean = BarAggregator(["1s"])  # what a single uninterrupted run produces
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
    floor = await kill_when_acked(nc, proc, stream, "bars_md", above=2000)
    assert 0 < floor < len(ticks)

    proc = start_tapeline("up", "-c", str(cfg), "--only", "handlers", log=tmp_path / "handlers.log")
    try:

        async def bars_done() -> bool:
            info = await consumer_state(nc, stream, "bars_md")
            return bool(info and info["num_pending"] == 0 and info["num_ack_pending"] == 0)

        await wait_until(bars_done, timeout=90)
        await asyncio.sleep(1.0)  # let momentum and decision finish the tail
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "handlers.log").read_text()[-3000:]
    bars = await read_stream(nc, stream, f"{provisioned}.md.bar.>")
    ids = [e.event_id for _, e in bars]
    assert len(ids) == len(set(ids)) == n_bars, "every bar exactly once, as a single clean run would produce"
    got = {(b.symbol, b.start_ns): (b.open, b.high, b.low, b.close, b.volume, b.ticks) for _, b in bars}  # type: ignore[union-attr]
    wrong = [k for k in expected if got.get(k) != expected[k]]
    assert not wrong, f"{len(wrong)} bars differ from a clean run (state not rebuilt?), e.g. {wrong[:3]}"
    signals = await read_stream(nc, f"{provisioned.upper()}_INTEL", f"{provisioned}.intel.signal.>")
    sig_ids = [e.event_id for _, e in signals]
    assert len(sig_ids) == len(set(sig_ids)) > 0
