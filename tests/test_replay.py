"""Replay: point in time, versions mixed, unknown versions, swap, what-if, crash safety under SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.cli import _swap
from tapeline.config import Settings
from tapeline.handlers.momentum import MomentumConfig
from tapeline.pipeline import Pipeline, swap_subject
from tapeline.projections.duckdb import ProjectionDb
from tapeline.replay.rebuild import rebuild, verify
from tapeline.replay.whatif import what_if
from tapeline.schemas import encode
from tapeline.system import build
from tests.helpers import (
    FAST,
    TAPELINE,
    caught_up,
    handlers_drained,
    kill_when_projected,
    projected,
    random_point,
    read_db,
    read_killed,
    read_stream,
    start_tapeline,
    wait_until,
    write_config,
)


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
    assert read_db(tmp_path / "pit.duckdb", "SELECT count(*) FROM ticks") == (100,)
    assert stats.checkpoints["ticks"] == stats.checkpoints["bars"] == 100
    full = await rebuild(nc, provisioned, tmp_path / "all.duckdb")
    assert full.events == 300


async def test_earlier_versions_rebuild_to_the_same_tables(nc: Client, tmp_path: Path) -> None:
    from tapeline.bus.topology import provision

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
    await wait_until(lambda: caught_up(nc, p), timeout=60)
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
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    checks, _ = await verify(nc, provisioned, tmp_path / "live.duckdb", tmp_path / "rebuilt.duckdb")
    assert all(c.ok for c in checks)
    await p.swap(tmp_path / "rebuilt.duckdb")
    assert not (tmp_path / "rebuilt.duckdb").exists()
    await publisher.publish(ticks[1000:])  # the swapped-in projection keeps projecting
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    assert p.db is not None
    assert p.db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (2000, 2000)
    await p.stop()


async def test_what_if_same_config_reproduces_and_other_config_differs(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb", selected=["handlers"])
    await p.start()
    await run_feed(SimFeed(["A", "B"], ticks=3000, seed=8, mean_gap_ms=50), publisher)

    await wait_until(lambda: caught_up(nc, p), timeout=120)
    await wait_until(lambda: handlers_drained(nc, provisioned), timeout=60)
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


@pytest.mark.timeout(900)  # twenty process starts: minutes on a machine with every core busy
async def test_projector_sigkilled_at_random_points_twenty_times(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    """Twenty SIGKILLs, each once the projector has committed past a random point of work in hand.

    Every kill waits for the projector's own progress (its checkpoint passing a point drawn at
    random between its checkpoint and the middle of the ticks still ahead of it), so each run
    ends at a new point of the stream, with work outstanding, however slow the machine is.
    """
    cfg = write_config(tmp_path, provisioned, nats_url)
    db = tmp_path / "data" / "projections" / "tapeline.duckdb"
    stream = f"{provisioned.upper()}_MD"
    ticks = iter(SimFeed(["NVDA", "ORCL"], ticks=5_000_000, seed=12).generate())  # lazy: only what is used
    # ticks published beyond the checkpoint before each run (~12 projector batches): the kill lands two
    # commits past its target (tests.helpers.projected_durably), still with work outstanding
    ahead = 60_000
    published = 0
    rng = random.Random(20)
    checkpoints: list[int] = []
    checkpoint = 0
    for run in range(20):
        proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "p.log")
        while published < checkpoint + ahead:  # while it starts up
            chunk = [next(ticks) for _ in range(5000)]
            await publisher.publish(chunk)
            published += len(chunk)
        target = random_point(rng, checkpoint, published)
        floor = await kill_when_projected(nc, proc, provisioned, stream, above=target - 1)
        rows, distinct, max_seq, cp = read_killed(
            db,
            "SELECT count(*), count(DISTINCT event_id), max(seq), "
            "(SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?) FROM ticks",
            [stream],
        )
        assert rows == distinct == cp == max_seq, f"run {run}: rows {rows} distinct {distinct} max {max_seq} cp {cp}"
        assert target <= floor <= cp < published, f"run {run}: target {target} floor {floor} cp {cp} of {published}"
        checkpoint = cp
        checkpoints.append(cp)
    assert len(set(checkpoints)) == 20 and checkpoints == sorted(checkpoints), checkpoints
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "p.log")
    try:

        async def done() -> bool:
            return await projected(nc, provisioned, stream) == published

        await wait_until(done, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "p.log").read_text()[-3000:]
    assert read_db(db, "SELECT count(DISTINCT event_id), count(*) FROM ticks") == (published, published)


async def test_query_answers_while_up_runs(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    await publisher.publish(list(SimFeed(["Q"], ticks=500, seed=4).generate()))
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "up.log")
    try:

        async def committed() -> bool:
            return await projected(nc, provisioned, f"{provisioned.upper()}_MD") == 500

        await wait_until(committed, timeout=60)
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
        assert proc.wait(timeout=60) == 0


def _swap_files(tmp_path: Path, prefix: str) -> tuple[Settings, Path]:
    """A live projection file and a verified rebuild beside it (contents tell which is where)."""
    s = Settings(prefix=prefix, data_dir=str(tmp_path / "data"))
    s.duckdb_path.parent.mkdir(parents=True)
    s.duckdb_path.write_bytes(b"live")
    rebuilt = tmp_path / "rebuilt.duckdb"
    rebuilt.write_bytes(b"rebuilt")
    return s, rebuilt


async def test_swap_renames_the_file_itself_only_when_no_projector_listens(
    nc: Client, provisioned: str, tmp_path: Path
) -> None:
    s, rebuilt = _swap_files(tmp_path, provisioned)
    assert await _swap(nc, s, rebuilt, wait_s=60, every_s=1)  # NATS: no responders on the swap subject
    assert s.duckdb_path.read_bytes() == b"rebuilt" and not rebuilt.exists()


async def test_swap_waits_for_a_slow_projector_and_never_renames_under_it(
    nc: Client, provisioned: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, rebuilt = _swap_files(tmp_path, provisioned)
    untouched_when_answering: list[bool] = []

    async def slow_projector(msg: Msg) -> None:
        """Swaps as Pipeline.swap does, but only after the command has waited a few progress lines."""
        await asyncio.sleep(2.5)  # the stand-in's slowness (every_s=1), not a check
        untouched_when_answering.append(rebuilt.exists() and s.duckdb_path.read_bytes() == b"live")
        os.replace(msg.data.decode(), s.duckdb_path)
        await msg.respond(b"ok")

    sub = await nc.subscribe(swap_subject(provisioned), cb=slow_projector)
    try:
        assert await _swap(nc, s, rebuilt, wait_s=60, every_s=1)
    finally:
        await sub.unsubscribe()
    assert untouched_when_answering == [True], "the command renamed the file under a running projector"
    assert s.duckdb_path.read_bytes() == b"rebuilt" and not rebuilt.exists()
    assert "waiting for the projector to swap" in capsys.readouterr().out


async def test_swap_fails_clearly_when_a_projector_never_answers(
    nc: Client, provisioned: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, rebuilt = _swap_files(tmp_path, provisioned)
    sub = await nc.subscribe(swap_subject(provisioned))  # listens, never answers: a stuck projector
    try:
        assert not await _swap(nc, s, rebuilt, wait_s=2, every_s=0.5)
    finally:
        await sub.unsubscribe()
    assert s.duckdb_path.read_bytes() == b"live" and rebuilt.read_bytes() == b"rebuilt"
    out = " ".join(capsys.readouterr().out.split())
    assert "did not answer within 2s" in out and "left alone" in out and str(rebuilt) in out.replace(" ", ""), out
