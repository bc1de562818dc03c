"""A full disk: a JetStream store or a DuckDB volume on a small tmpfs fills up. Nothing acknowledged
is lost, no process dies, an alert and a metric say what happened, and everything resumes by itself
once space is freed. Mounting a tmpfs needs root (or CAP_SYS_ADMIN): those tests skip otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import duckdb
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher, PublishTimeout, StoreFull
from tapeline.bus.reader import read_stream
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import Retention, provision
from tapeline.pipeline import Pipeline
from tapeline.projections.duckdb import ProjectionDb
from tapeline.replay.rebuild import SPACE_MARGIN, check_space
from tapeline.schemas.events import Alert, Tick
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import FAMILIES, MD, OPS
from tests.helpers import FAST, TAPELINE, caught_up, stored, wait_until, write_config


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: small enough to fill in a second."""
    vol = tmp_path / "vol"
    vol.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command: the disk-full tests mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(vol)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield vol
    subprocess.run(["umount", "-l", str(vol)], check=False)  # lazy: a child still closing files must not fail it


def fill(vol: Path, leave: int = 0) -> Path:
    """A ballast file taking all but ``leave`` bytes of the volume (0: until the disk says ENOSPC)."""
    ballast = vol / "ballast"
    with open(ballast, "wb") as f:
        try:
            left = shutil.disk_usage(vol).free - leave
            while left > 0:
                left -= f.write(b"\0" * min(left, 1 << 20))
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass  # the disk is full: that was the point
    return ballast


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def alerts(nc: Client, prefix: str, kind: str, source: str) -> list[Alert]:
    evs = await stored(nc, OPS.stream(prefix), f"{prefix}.ops.alert.>")
    return [e for e in evs if isinstance(e, Alert) and e.kind == kind and e.source == source]


@pytest.fixture
async def full_js(tmpfs: Path, tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, Client]]:
    """A nats-server whose store is the tmpfs (JetStream's own limit: 75% of it, 12 MiB)."""
    server = EmbeddedNats(tmpfs, log_file=tmp_path / "nats.log")
    server.start()
    nc = await connect(NatsSettings(url=server.url, name="disk-full"))
    yield server, nc
    await nc.close()
    server.stop()


async def test_full_jetstream_store_stalls_feed_and_handlers_then_resumes(
    full_js: tuple[EmbeddedNats, Client], tmp_path: Path
) -> None:
    _, nc = full_js
    api = JetStreamApi(nc)
    # Another namespace (think: old what-if runs) takes most of the store, so ours fills up quickly.
    await provision(nc, "ballast")
    ballast = await Publisher(nc, "ballast", role="ballast").start()
    await run_feed(SimFeed(["Z"], ticks=24_000, chunk=2000, venue="ballast"), ballast, batch_ticks=True)
    await ballast.close()

    pipeline = Pipeline(nc, "full", configs=FAST, db_path=tmp_path / "p.duckdb")
    await pipeline.start()
    waiter = asyncio.create_task(pipeline.wait())
    publisher = await Publisher(nc, "full", role="feed-full").start()
    total = 12_000  # ~6 MB of ticks (+ bars, signals, decisions): more than the ~4 MB the ballast leaves
    feed = asyncio.create_task(
        run_feed(SimFeed(["A", "B"], ticks=total, seed=3, mean_gap_ms=50, venue="simfull"), publisher)
    )
    stalled = {"component": "simfull", "kind": "store_full"}
    await wait_until(lambda: sample("tapeline_stalled", **stalled) == 1 or feed.done(), timeout=120)
    assert not feed.done(), "the feed finished without ever filling the store: make the ballast bigger"

    # Publishers name the cause; the feed waits instead of dying, and so do handlers and projector.
    probe = await Publisher(nc, "full", role="probe").start()
    tick = Tick(event_id=new_event_id(), ts_event=1, ts_init=1, source="t", venue="v", symbol="X", last=1.0)
    with pytest.raises(StoreFull, match=r"JetStream store full: .*insufficient resources \(err_code 10023\)"):
        await probe.publish([tick])
    await probe.close()
    # It keeps waiting (backoff 0.5, 1, 2, 4 ... 10 s), alerting once, however long the store stays full.
    await wait_until(lambda: sample("tapeline_store_full_total", role="feed-full") >= 4, timeout=120)
    assert not waiter.done() and not feed.done()

    # Free space in JetStream: drop the other namespace. Everything resumes by itself.
    for name in [f.stream("ballast") for f in FAMILIES] + ["KV_ballast_decisions"]:
        await api.call(f"STREAM.DELETE.{name}")
    freed = time.monotonic()
    await wait_until(lambda: sample("tapeline_stalled", **stalled) == 0, timeout=120)
    print(f"\nfeed resumed {time.monotonic() - freed:.1f}s after space was freed")
    await asyncio.wait_for(feed, 120)
    await wait_until(lambda: caught_up(nc, pipeline), timeout=120)

    ticks = [e for _, e in await read_stream(nc, MD.stream("full"), "full.md.tick.>")]
    assert len(ticks) == len({t.event_id for t in ticks}) == total  # every tick once: none lost, none twice
    assert pipeline.db is not None
    assert pipeline.db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (total, total)
    said = await alerts(nc, "full", "store_full", "simfull")
    assert [a.resolved for a in said] == [False, True]  # alerted once (stored once writes resumed), then resolved
    assert not waiter.done()
    await publisher.close()
    await pipeline.stop()


async def test_disk_under_the_store_full_times_out_and_loses_nothing_over_a_server_restart(
    tmpfs: Path, tmp_path: Path
) -> None:
    """Something else fills the disk before JetStream reaches its own limit: nats-server 2.15 logs
    "no space left on device", answers nothing, and that stream stores nothing more until the server
    restarts (measured: freeing space, a stream update or a config reload do not revive it)."""
    server = EmbeddedNats(tmpfs, log_file=tmp_path / "nats.log")
    url = server.start()
    nc = await connect(NatsSettings(url=url, name="disk-full"))
    try:
        await provision(nc, "enospc")
        pub = await Publisher(nc, "enospc", role="enospc", ack_timeout=0.5, max_attempts=2).start()
        ticks = list(SimFeed(["A"], ticks=400, seed=4).generate())
        await pub.publish(ticks[:200])  # acknowledged: must survive
        ballast = fill(tmpfs)
        with pytest.raises(PublishTimeout, match="disk under its store is full") as failed:
            await pub.publish(ticks[200:])
        pending = failed.value.unstored
        assert pending and set(pending) <= set(ticks[200:])

        ballast.unlink()
        server.stop()
        server = EmbeddedNats(tmpfs, port=int(url.rsplit(":", 1)[1]), log_file=tmp_path / "nats.log")
        server.start()
        await wait_until(lambda: nc.is_connected, timeout=120)
        await pub.publish(pending)  # only what was not stored; the client reconnected by itself
        ids = [e.event_id for e in await stored(nc, MD.stream("enospc"))]
        assert sorted(ids) == sorted(t.event_id for t in ticks)  # all of them, each once
        await pub.close()
    finally:
        await nc.close()
        server.stop()


@pytest.mark.parametrize("checkpoint", ["wal", "checkpoint"])
async def test_full_duckdb_volume_stalls_only_the_projection_then_resumes(
    tmpfs: Path, nc: Client, provisioned: str, publisher: Publisher, checkpoint: str
) -> None:
    """``wal``: the WAL write fails (the transaction is rolled back, the connection stays usable).
    ``checkpoint``: checkpoints after every commit, so mostly the checkpoint fails and DuckDB
    invalidates the database: the sink reopens it. Which write meets the full disk first is a race
    (the WAL write won in 2 of 12 runs with DuckDB's defaults and about a third with the projector's
    ``[projector]`` limits); then the connection stays usable, as in the ``wal`` case."""
    pipeline = Pipeline(nc, provisioned, configs=FAST, db_path=tmpfs / "p.duckdb")
    await pipeline.start()
    waiter = asyncio.create_task(pipeline.wait())
    assert pipeline.db is not None
    first = pipeline.db.con
    if checkpoint == "checkpoint":
        first.execute("SET checkpoint_threshold = '1KB'")
    ballast = fill(tmpfs, leave=1 << 20)
    component = "projection:main:md"
    full_before = sample("tapeline_disk_full_total", projection="main")
    await run_feed(SimFeed(["A", "B"], ticks=20_000, seed=5, mean_gap_ms=50), publisher)  # the bus has room

    said = await _wait_alerts(nc, provisioned, component, 1)
    assert not said[0].resolved and "No space left on device" in said[0].message  # the cause, not ROLLBACK's error
    assert sample("tapeline_stalled", component=component, kind="disk_full") == 1
    assert sample("tapeline_disk_full_total", projection="main") > full_before

    # The projector waits; the process and the handlers go on: new ticks still become bars.
    md = MD.stream(provisioned)
    bars = len(await stored(nc, md, f"{provisioned}.md.bar.>"))
    later = 1_767_300_000_000_000_000
    await run_feed(SimFeed(["A", "B"], ticks=2000, seed=6, mean_gap_ms=50, start_ns=later), publisher)
    await wait_until(lambda: _count(nc, md, f"{provisioned}.md.bar.>", more_than=bars), timeout=120)
    assert not waiter.done()

    ballast.unlink()
    freed = time.monotonic()
    await wait_until(lambda: sample("tapeline_stalled", component=component, kind="disk_full") == 0, timeout=120)
    print(f"\nprojection ({checkpoint}) resumed {time.monotonic() - freed:.1f}s after space was freed")
    await wait_until(lambda: caught_up(nc, pipeline), timeout=120)
    ticks = len(await stored(nc, md, f"{provisioned}.md.tick.>"))
    assert pipeline.db is not None
    assert pipeline.db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (ticks, ticks)
    assert [a.resolved for a in await _wait_alerts(nc, provisioned, component, 2)] == [False, True]
    try:
        first.execute("SELECT 1")
        invalidated = False
    except duckdb.Error:  # DuckDB invalidated it (a checkpoint failed), or the sink closed it to reopen
        invalidated = True
    assert invalidated == (pipeline.db.con is not first)  # reopened exactly when it had to be
    assert not waiter.done()
    await pipeline.stop()


async def _wait_alerts(nc: Client, prefix: str, source: str, n: int) -> list[Alert]:
    found: list[Alert] = []

    async def enough() -> bool:
        found[:] = await alerts(nc, prefix, "disk_full", source)
        return len(found) >= n

    await wait_until(enough, timeout=120)
    return found


async def _count(nc: Client, stream: str, subject: str, *, more_than: int) -> bool:
    return len(await stored(nc, stream, subject)) > more_than


def test_replay_refuses_to_start_without_room_for_the_rebuild(tmpfs: Path, nats_url: str, prefix: str) -> None:
    live = tmpfs / "data" / "projections" / "tapeline.duckdb"
    ProjectionDb(live).close()
    cfg = write_config(tmpfs, prefix, nats_url)
    done = subprocess.run([*TAPELINE, "replay", "-c", str(cfg), "--verify"], capture_output=True, text=True, timeout=99)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "needs about" in lines[0] and "MiB free" in lines[0], done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmpfs / "data" / "replay").exists()


def test_space_estimate_is_one_and_a_half_times_the_live_projections_plus_a_margin(tmp_path: Path) -> None:
    live = tmp_path / "live.duckdb"
    live.write_bytes(b"\0" * 1000)
    vectors = tmp_path / "vectors" / "t.lance"
    vectors.mkdir(parents=True)
    (vectors / "data").write_bytes(b"\0" * 3000)
    assert check_space(tmp_path / "replay" / "r.duckdb", live, tmp_path / "vectors") == 6000 + SPACE_MARGIN


async def test_market_data_is_capped_in_bytes_and_discards_old(nc: Client, prefix: str) -> None:
    api = JetStreamApi(nc)
    assert Retention().md_max_bytes == 10 * 1024**3
    await provision(nc, prefix, Retention(md_max_bytes=64 * 1024**2))
    info = await api.stream_info(MD.stream(prefix))
    assert info is not None
    assert (info["config"]["max_bytes"], info["config"]["discard"]) == (64 * 1024**2, "old")
    # More than the server can reserve: the stream still works, without a byte limit (and a warning).
    await provision(nc, f"{prefix}x", Retention(md_max_bytes=1 << 60))
    info = await api.stream_info(MD.stream(f"{prefix}x"))
    assert info is not None and info["config"]["max_bytes"] == -1


async def test_stopping_while_waiting_for_disk_space_is_prompt_and_loses_nothing(
    tmpfs: Path, nc: Client, provisioned: str, publisher: Publisher
) -> None:
    db = tmpfs / "p.duckdb"
    pipeline = Pipeline(nc, provisioned, configs=FAST, db_path=db)
    await pipeline.start()
    waiter = asyncio.create_task(pipeline.wait())
    ballast = fill(tmpfs, leave=1 << 20)
    await run_feed(SimFeed(["A"], ticks=20_000, seed=7, mean_gap_ms=50), publisher)
    await _wait_alerts(nc, provisioned, "projection:main:md", 1)
    await asyncio.wait_for(pipeline.stop(), 30)  # the waiting batch is given up, unacked
    assert waiter.done() and waiter.exception() is None

    ballast.unlink()
    again = Pipeline(nc, provisioned, configs=FAST, db_path=db)
    await again.start()
    await wait_until(lambda: caught_up(nc, again), timeout=120)
    ticks = len(await stored(nc, MD.stream(provisioned), f"{provisioned}.md.tick.>"))
    assert again.db is not None
    assert again.db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (ticks, ticks)
    await again.stop()
