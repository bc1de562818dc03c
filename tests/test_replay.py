"""Replay: point in time, versions mixed, unknown versions, swap, what-if, crash safety under SIGKILL."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import duckdb
from nats.aio.client import Client

from adapters.runner import run_feed
from adapters.sim import SimFeed
from bus.publisher import Publisher
from handlers.momentum import MomentumConfig
from projections.duckdb import ProjectionDb
from replay.rebuild import rebuild, verify
from replay.whatif import what_if
from schemas import encode
from tapeline.pipeline import Pipeline
from tapeline.system import build
from tests.helpers import FAST, TAPELINE, caught_up, read_stream, start_tapeline, wait_until, write_config


def _count(path: Path, sql: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute(sql).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


async def test_until_rebuilds_state_as_known_at_that_time(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    ticks = list(SimFeed(["A"], ticks=300, seed=1).generate())
    await publisher.publish(ticks[:100])
    await asyncio.sleep(0.05)
    boundary_ns = time.time_ns()  # stream time is the server's clock: the first 100 are before it
    await asyncio.sleep(0.05)
    await publisher.publish(ticks[100:])
    stats = await rebuild(nc, provisioned, tmp_path / "pit.duckdb", until_ns=boundary_ns)
    assert _count(tmp_path / "pit.duckdb", "SELECT count(*) FROM ticks") == 100
    assert stats.checkpoints["ticks"] == stats.checkpoints["bars"] == 100
    full = await rebuild(nc, provisioned, tmp_path / "all.duckdb")
    assert full.events == 300


async def test_earlier_versions_rebuild_to_the_same_tables(nc: Client, tmp_path: Path) -> None:
    from bus.topology import provision

    base = {"ts_event": 1, "ts_init": 2, "source": "files", "provider": "fnspid", "title": "Nvidia beats"}
    for prefix, version in (("vold", 1), ("vnew", 2)):
        await provision(nc, prefix)
        for i in range(50):
            body = {"type": "news_item", "event_id": f"N{i:04d}", "article_id": str(i), **base}
            if version == 1:
                body |= {"version": 1, "ticker": "NVDA"}
            else:
                body |= {"version": 2, "tickers": ["NVDA"]}
            await nc.jetstream().publish(f"{prefix}.news.fnspid", json.dumps(body).encode())
        await rebuild(nc, prefix, tmp_path / f"{prefix}.duckdb")
    old, new = ProjectionDb(tmp_path / "vold.duckdb"), ProjectionDb(tmp_path / "vnew.duckdb")
    try:
        assert old.content_hashes()["news"] == new.content_hashes()["news"]
        assert old.content_hashes()["news"].startswith("50:")
        assert old.con.execute("SELECT DISTINCT tickers FROM news").fetchall() == [(["NVDA"],)]
    finally:
        old.close()
        new.close()


async def test_unknown_future_version_is_skipped_and_counted(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb", selected=["projector"])
    await p.start()
    ticks = list(SimFeed(["A"], ticks=20, seed=2).generate())
    await publisher.publish(ticks[:10])
    future = encode(ticks[10]).replace(b'"version":1', b'"version":3').replace(b'"flags":0', b'"flags":0,"new":1')
    await nc.jetstream().publish(f"{provisioned}.md.tick.sim.A", future, headers={"Nats-Msg-Id": "future"})
    await publisher.publish(ticks[11:])
    await wait_until(lambda: caught_up(nc, p), timeout=30)
    md = next(r for r in p.consumers if r.durable == "projector_md")
    assert md.skipped == 1 and md.dead == 0
    assert p.db is not None
    assert p.db.con.execute("SELECT count(*) FROM ticks").fetchone() == (19,)
    await p.stop()


async def test_swap_puts_a_verified_rebuild_live_while_running(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "live.duckdb")
    await p.start()
    feed = SimFeed(["A", "B"], ticks=2000, seed=3)
    ticks = list(feed.generate())
    await publisher.publish(ticks[:1000])
    await wait_until(lambda: caught_up(nc, p), timeout=30)
    checks, _ = await verify(nc, provisioned, tmp_path / "live.duckdb", tmp_path / "rebuilt.duckdb")
    assert all(c.ok for c in checks)
    await p.swap(tmp_path / "rebuilt.duckdb")
    assert not (tmp_path / "rebuilt.duckdb").exists()
    await publisher.publish(ticks[1000:])  # the swapped-in projection keeps projecting
    await wait_until(lambda: caught_up(nc, p), timeout=30)
    assert p.db is not None
    assert p.db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (2000, 2000)
    await p.stop()


async def test_what_if_same_config_reproduces_and_other_config_differs(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb", selected=["handlers"])
    await p.start()
    await run_feed(SimFeed(["A", "B"], ticks=3000, seed=8, mean_gap_ms=50), publisher)

    async def handled() -> bool:
        return all(r.idle.is_set() for r in p.runtimes) and sum(r.processed for r in p.runtimes) > 3000

    await wait_until(handled, timeout=30)
    await asyncio.sleep(0.5)
    await p.stop()
    same = await what_if(nc, provisioned, f"{provisioned}-same", build(FAST))
    assert same.decisions_recorded > 10 and same.changes == []
    assert same.decisions_what_if == same.decisions_recorded
    recorded_ids = {e.event_id for _, e in await read_stream(nc, f"{provisioned.upper()}_DECISION", ">")}
    mirrored = await read_stream(nc, f"{provisioned.upper()}-SAME_DECISION".replace("-", "_"), ">")
    assert {e.event_id for _, e in mirrored} == recorded_ids, "same handlers, same inputs: same ids"
    other = await what_if(
        nc,
        provisioned,
        f"{provisioned}-wide",
        build({**FAST, "momentum": MomentumConfig(interval="1s", window=8)}),
    )
    assert other.changes, "a different momentum window must change some verdicts"
    assert set(other.pnl_what_if) <= {"A", "B"}


async def test_projector_sigkilled_at_random_points_twenty_times(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    """Ticks keep arriving while the projector runs, so every kill lands in the middle of the work."""
    cfg = write_config(tmp_path, provisioned, nats_url)
    db = tmp_path / "data" / "projections" / "tapeline.duckdb"
    stream = f"{provisioned.upper()}_MD"
    ticks = iter(SimFeed(["NVDA", "ORCL"], ticks=5_000_000, seed=12).generate())  # lazy: only what is used
    published = 0

    async def feed(stop: asyncio.Event) -> None:
        nonlocal published
        while not stop.is_set():
            chunk = [next(ticks) for _ in range(500)]
            await publisher.publish(chunk)
            published += len(chunk)
            await asyncio.sleep(0.03)  # at most ~16k ticks/s: the projector is kept busy, never idle

    rng = random.Random(20)
    checkpoints: list[int] = []
    behind: list[bool] = []
    for run in range(20):
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed(stop))
        proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "p.log")
        await asyncio.sleep(rng.uniform(1.2, 2.4))  # start-up takes ~1 s; then it commits as ticks arrive
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        await feeder
        if not db.exists():
            continue
        con = duckdb.connect(str(db), read_only=True)
        rows, distinct, max_seq = (
            con.execute("SELECT count(*), count(DISTINCT event_id), max(seq) FROM ticks").fetchone() or ()
        )
        cp = con.execute(
            "SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?", [stream]
        ).fetchone()
        con.close()
        checkpoint = cp[0] if cp else 0
        assert rows == distinct == checkpoint == (max_seq or 0), f"run {run}: rows {rows} distinct {distinct} cp {cp}"
        checkpoints.append(checkpoint)
        behind.append(checkpoint < published)
    assert len(checkpoints) >= 15 and checkpoints == sorted(checkpoints) and len(set(checkpoints)) >= 10, checkpoints
    assert sum(behind) >= len(behind) // 2, f"most kills must land with work outstanding: {behind}"
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "p.log")
    try:

        async def done() -> bool:
            try:
                info = await nc.jetstream().consumer_info(stream, "projector_md")
            except Exception:
                return False
            return bool(info.ack_floor and info.ack_floor.stream_seq == published)

        await wait_until(done, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (
        _count(db, "SELECT count(DISTINCT event_id) FROM ticks")
        == _count(db, "SELECT count(*) FROM ticks")
        == published
    )


async def test_query_answers_while_up_runs(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    await publisher.publish(list(SimFeed(["Q"], ticks=500, seed=4).generate()))
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "up.log")
    try:

        async def projected() -> bool:
            try:
                info = await nc.jetstream().consumer_info(f"{provisioned.upper()}_MD", "projector_md")
            except Exception:
                return False
            return bool(info.ack_floor and info.ack_floor.stream_seq == 500)

        await wait_until(projected, timeout=30)
        out = await asyncio.to_thread(
            subprocess.run,
            [*TAPELINE, "query", "-c", str(cfg), "--json", "SELECT symbol, count(*) AS n FROM ticks GROUP BY 1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"symbol": "Q", "n": 500}
        bad = await asyncio.to_thread(
            subprocess.run,
            [*TAPELINE, "query", "-c", str(cfg), "DELETE FROM ticks"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "read-only" in bad.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
