"""Crash safety with real processes: SIGKILL the projector, SIGKILL a handler, restart, count."""

from __future__ import annotations

import random
import signal
from pathlib import Path

from nats.aio.client import Client

from adapters.sim import SimFeed
from bus.publisher import Publisher
from handlers.bars import BarAggregator
from schemas.events import Bar
from tests.helpers import (
    ack_floor,
    handlers_drained,
    kill_when_acked,
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
    # Kill it while it is committing: once its consumer has acknowledged past a random point, not all.
    target = random_point(random.Random(5), 0, len(ticks))
    floor = await kill_when_acked(nc, proc, stream, "proj_main_md", above=target - 1)
    assert 0 < target <= floor < len(ticks), f"the kill did not land mid-run (ack floor {floor})"
    (killed_at,) = read_killed(db, "SELECT last_seq FROM _checkpoints WHERE stream = ?", [stream])
    assert floor <= killed_at < len(ticks), "committed before acked, and not everything"

    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    try:

        async def done() -> bool:
            return await ack_floor(nc, stream, "proj_main_md") == len(ticks)

        await wait_until(done, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "projector.log").read_text()[-3000:]
    rows, distinct, max_seq, checkpoint = read_db(
        db,
        "SELECT count(*), count(DISTINCT event_id), max(seq), "
        "(SELECT last_seq FROM _checkpoints WHERE stream = ?) FROM ticks",
        [stream],
    )
    assert rows == distinct == await stream_last_seq(nc, stream) == len(ticks)
    assert checkpoint == max_seq


async def test_handler_killed_mid_stream_publishes_no_duplicates(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    (tmp_path / "tapeline.toml").write_text(
        cfg.read_text() + '\n[handlers]\nbar_intervals = ["1s"]\nmomentum_interval = "1s"\nmomentum_window = 5\n'
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
    target = random_point(random.Random(9), 2000, len(ticks))
    floor = await kill_when_acked(nc, proc, stream, "h_bars_md", above=target - 1)
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
