"""One read-model discipline for DuckDB and LanceDB: per-table tracking, backfill, changed schemas, acks.

Real DuckDB and LanceDB files and a real nats-server; no embedding model (market states need none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import duckdb
import lancedb
import pyarrow as pa
import pytest
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import react
from tapeline.bus.publisher import Publisher
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec
from tapeline.handlers.bars import BarAggregator, BarsConfig
from tapeline.pipeline import Pipeline
from tapeline.projections.duckdb import PRE_TRACKING, ProjectionDb
from tapeline.projections.runtimes import projection_bindings
from tapeline.projections.table import ReadModelChanged, schema_hash
from tapeline.projections.tables import BARS, TABLES
from tapeline.projections.vectors import (
    CHECKPOINT_SCHEMA,
    CHECKPOINTS,
    MARKET_RETURNS,
    MARKET_STATES,
    MarketReturns,
    MarketStates,
    VectorSink,
    VectorStore,
)
from tapeline.replay.rebuild import rebuild, verify
from tapeline.schemas.events import Bar, DeadLetter, Enrichment, Event
from tapeline.schemas.features import MARKET_DIM
from tapeline.schemas.ids import derive_event_id
from tests.helpers import (
    FAST,
    TAPELINE,
    caught_up,
    consumer_state,
    stream_last_seq,
    wait_stored,
    wait_until,
    write_config,
)
from tests.vector_support import enrichments

REBUILD_FIX = "rebuild it with `tapeline replay --verify --swap`"
# The `_checkpoints` table as projections/duckdb.py created it before tracking was per read model.
OLD_CHECKPOINTS = (
    "CREATE TABLE IF NOT EXISTS _checkpoints (projection VARCHAR, stream VARCHAR, last_seq BIGINT, "
    "events BIGINT, updated_ns BIGINT, PRIMARY KEY (projection, stream))"
)


def _market(ticks: int, seed: int) -> list[Event]:
    """Ticks with the 1-second bars they make, in stream order (as the bar handler publishes them)."""
    agg = BarAggregator(BarsConfig(intervals=["1s"]))
    out: list[Event] = []
    for t in SimFeed(["A", "B"], ticks=ticks, seed=seed, mean_gap_ms=40).generate():
        out.append(t)
        out.extend(e for e in react(agg, t) if isinstance(e, Bar))
    return out


async def _project(nc: Client, prefix: str, db: ProjectionDb, *, upto_md: int | None = None) -> dict[str, int]:
    """Run the DuckDB projection consumers until every family is at its stream's end (md: ``upto_md``).

    Returns each consumer's start sequence.
    """
    publisher = await Publisher(nc, prefix, role="test-projection").start()
    bindings = projection_bindings(prefix, db, stop_at=None if upto_md is None else {"md": upto_md})
    runtimes = [ConsumerRuntime(nc, publisher, b.spec, b.sink, start_seq=b.start_seq) for b in bindings]
    tasks = [asyncio.create_task(rt.run()) for rt in runtimes]

    async def done() -> bool:
        for b in bindings:
            end = await stream_last_seq(nc, b.sink.stream)
            if upto_md is not None and b.sink.family.key == "md":
                end = upto_md
            if b.sink.last_seq < end:
                return False
        return True

    try:
        await wait_until(done, timeout=60)
    finally:
        for rt in runtimes:
            rt.stop()
        await asyncio.gather(*tasks)
        await publisher.close()
    return {b.spec.durable: b.start_seq for b in bindings}


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_table_added_to_a_stream_with_history_backfills_itself(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    events = _market(3000, seed=31)
    n_bars = sum(isinstance(e, Bar) for e in events)
    first, rest = events[:2000], events[2000:]
    await publisher.publish(first)
    live = tmp_path / "live.duckdb"
    db = ProjectionDb(live, tables=tuple(t for t in TABLES if t is not BARS), views=())
    await _project(nc, provisioned, db)
    assert "bars" not in db.checkpoints() and db.checkpoint("ticks") == 2000
    db.close()

    # The table is added: a partial backfill first, as if the projector stopped half-way through it.
    db = ProjectionDb(live)
    assert db.checkpoints()["bars"] == 0 and db.checkpoint("ticks") == 2000
    starts = await _project(nc, provisioned, db, upto_md=700)
    assert starts["projector_md"] == 1  # the lowest checkpoint of the family (bars: 0) + 1
    assert db.checkpoint("bars") == 700 and db.checkpoint("ticks") == 2000
    db.close()
    # Verify bounds each table by its own checkpoint: bars up to 700, ticks up to 2000.
    checks, _ = await verify(nc, provisioned, live, tmp_path / "verify.duckdb")
    assert [c.verdict for c in checks] == ["ok"] * len(TABLES), [c for c in checks if c.verdict != "ok"]
    bars_upto_700 = sum(isinstance(e, Bar) for e in events[:700])
    assert next(c for c in checks if c.table == "bars").live.startswith(f"{bars_upto_700}:")

    # Restart with the full table set: the family consumer starts after the lowest checkpoint.
    await publisher.publish(rest)
    p = Pipeline(nc, provisioned, configs=FAST, db_path=live, selected=["projector"])
    await p.start()
    assert next(r for r in p.consumers if r.durable == "projector_md").start_seq == 701
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    await p.stop()

    await rebuild(nc, provisioned, tmp_path / "scratch.duckdb")
    a, b = ProjectionDb(live), ProjectionDb(tmp_path / "scratch.duckdb")
    try:
        assert a.content_hashes() == b.content_hashes()
        assert a.content_hashes()["bars"].startswith(f"{n_bars}:")
        assert a.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (3000, 3000)
        assert a.checkpoint("bars") == a.checkpoint("ticks") == len(events)
    finally:
        a.close()
        b.close()


def test_changed_read_model_is_refused_and_the_file_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    ProjectionDb(path).close()
    bars_v2 = dataclasses.replace(BARS, version=2)
    assert bars_v2.schema_hash != BARS.schema_hash
    with pytest.raises(ReadModelChanged) as refused:
        ProjectionDb(path, tables=tuple(bars_v2 if t is BARS else t for t in TABLES))
    assert str(refused.value) == (
        f"read model 'bars' changed (schema {BARS.schema_hash} -> {bars_v2.schema_hash}): {REBUILD_FIX}"
    )
    assert _rows(path, "SELECT schema_hash FROM _checkpoints WHERE read_model = 'bars'") == [(BARS.schema_hash,)]

    con = duckdb.connect(str(path))  # the columns changed under an unchanged declaration
    con.execute("ALTER TABLE bars DROP COLUMN venue")
    con.close()
    with pytest.raises(ReadModelChanged, match=rf"'bars' changed \(schema [0-9a-f]{{12}} -> {BARS.schema_hash}\)"):
        ProjectionDb(path)


def _old_file(path: Path, prefix: str, events: list[Event], *, drop_venue: bool = False) -> None:
    """A projection file as the code before per-table tracking left it: one checkpoint row per stream."""
    con = duckdb.connect(str(path))
    con.execute(OLD_CHECKPOINTS)
    for t in TABLES:
        con.register("_empty", t.to_arrow([]))
        con.execute(f"CREATE TABLE IF NOT EXISTS {t.name} AS SELECT * FROM _empty LIMIT 0")
        con.unregister("_empty")
        rows = [r for seq, e in enumerate(events, 1) if type(e) in t.events for r in t.rows(e, seq)]
        if rows:
            con.register("_batch", t.to_arrow(rows))
            con.execute(f"INSERT INTO {t.name} SELECT * FROM _batch")
            con.unregister("_batch")
    if drop_venue:
        con.execute("ALTER TABLE bars DROP COLUMN venue")
    con.execute(
        "INSERT INTO _checkpoints VALUES ('main', ?, ?, ?, ?)",
        [f"{prefix.upper()}_MD", len(events), len(events), time.time_ns()],
    )
    con.close()


async def test_old_checkpoint_shape_is_upgraded_in_place_and_keeps_projecting(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    events = _market(2500, seed=32)
    first = events[:1500]
    await publisher.publish(first)
    live = tmp_path / "old.duckdb"
    _old_file(live, provisioned, first)
    checks, _ = await verify(nc, provisioned, live, tmp_path / "verify-old.duckdb")  # reads the old shape as is
    assert all(c.verdict == "ok" for c in checks), [c for c in checks if c.verdict != "ok"]

    await publisher.publish(events[1500:])
    p = Pipeline(nc, provisioned, configs=FAST, db_path=live, selected=["projector"])
    await p.start()
    assert next(r for r in p.consumers if r.durable == "projector_md").start_seq == 1501
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    await p.stop()

    tracked = dict(
        (str(m), (int(str(q)), str(h)))
        for m, q, h in _rows(live, "SELECT read_model, last_seq, schema_hash FROM _checkpoints")
    )
    assert tracked["ticks"] == (len(events), TABLES[0].schema_hash)
    assert tracked["bars"] == (len(events), BARS.schema_hash)
    assert tracked["news"] == (0, next(t for t in TABLES if t.name == "news").schema_hash)
    await rebuild(nc, provisioned, tmp_path / "scratch.duckdb")
    a, b = ProjectionDb(live), ProjectionDb(tmp_path / "scratch.duckdb")
    try:
        assert a.content_hashes() == b.content_hashes()
        assert a.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (2500, 2500)
    finally:
        a.close()
        b.close()

    stale = tmp_path / "stale.duckdb"  # an old file whose bars no longer match the declaration
    _old_file(stale, provisioned, first, drop_venue=True)
    with pytest.raises(ReadModelChanged, match=rf"'bars' changed \(schema {PRE_TRACKING} -> {BARS.schema_hash}\)"):
        ProjectionDb(stale)


async def test_cli_refuses_a_changed_read_model_and_replay_swap_rebuilds_it(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    live = tmp_path / "data" / "projections" / "tapeline.duckdb"
    await publisher.publish(_market(1500, seed=33))
    p = Pipeline(nc, provisioned, configs=FAST, db_path=live, selected=["projector"])
    await p.start()
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    await p.stop()
    # As if bars had been built by an earlier declaration without the venue column.
    old_hash = schema_hash(1, [c for c in BARS.columns if c[0] != "venue"])
    con = duckdb.connect(str(live))
    con.execute("ALTER TABLE bars DROP COLUMN venue")
    con.execute("UPDATE _checkpoints SET schema_hash = ? WHERE read_model = 'bars'", [old_hash])
    con.close()
    env = {**os.environ, "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TAPELINE, *args, "-c", str(cfg)], capture_output=True, text=True, timeout=120, env=env)

    up = await asyncio.to_thread(cli, "up", "--only", "projector")
    out = up.stdout + up.stderr
    assert up.returncode == 2, out
    assert "Traceback" not in out
    assert f"read model 'bars' changed (schema {old_hash} -> {BARS.schema_hash}): {REBUILD_FIX}" in out.splitlines()

    swapped = await asyncio.to_thread(cli, "replay", "--verify", "--swap")
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    verdicts = [line for line in swapped.stdout.splitlines() if "changed schema, rebuilt" in line]
    assert len(verdicts) == 1 and "bars" in verdicts[0], swapped.stdout
    assert "swapped" in swapped.stdout
    await rebuild(nc, provisioned, tmp_path / "scratch.duckdb")
    a, b = ProjectionDb(live), ProjectionDb(tmp_path / "scratch.duckdb")  # opens: nothing is refused now
    try:
        assert a.content_hashes() == b.content_hashes()
        assert a.tracking()["bars"].schema_hash == BARS.schema_hash
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- LanceDB read models

T0 = 1_767_225_600_000_000_000
MIN_NS = 60_000_000_000


def _bars(n: int, *, poison_at: int | None = None) -> list[Bar]:
    """A random walk of 1-minute bars; ``poison_at`` gets a negative close (which :class:`PickyStates` rejects)."""
    rng = random.Random(7)
    price, out = 100.0, []
    for i in range(n):
        price *= math.exp(rng.gauss(0, 0.01))
        ts = T0 + (i + 1) * MIN_NS
        close = -1.0 if i == poison_at else price
        out.append(
            Bar(
                event_id=derive_event_id(ts, "test-bar", i),
                ts_event=ts,
                ts_init=ts,
                source="test",
                symbol="SYN",
                interval="1m",
                start_ns=ts - MIN_NS,
                open=price,
                high=price * 1.01,
                low=price * 0.99,
                close=close,
                volume=1000.0 + i,
            )
        )
    return out


def test_vector_checkpoint_records_the_schema_and_a_change_is_refused_until_rebuilt(tmp_path: Path) -> None:
    states = enrichments(_bars(300))
    store = VectorStore(tmp_path / "v")
    assert MarketStates(store).run(enumerate(states, 1)) == 300  # the last position: warm-up rows included
    assert store.count(MARKET_STATES) == 240  # ... but skipped: the first 60 bars have too little history
    spec = store.specs[MARKET_STATES]
    assert spec.events == (Enrichment,) and spec.version == 2
    assert store.checkpoint(MARKET_STATES).schema_hash == spec.schema_hash
    reference = store.checksum(MARKET_STATES)

    changed = VectorStore(tmp_path / "v", market_dim=MARKET_DIM + 1)
    with pytest.raises(ReadModelChanged) as refused:
        MarketStates(changed).start()
    table_dir = tmp_path / "v" / "market_states.lance"
    assert str(refused.value) == (
        f"read model 'market_states' changed (schema {spec.schema_hash} -> "
        f"{changed.specs[MARKET_STATES].schema_hash}): stop the vectors role and delete {table_dir}; "
        "it rebuilds from the stream on start"
    )
    shutil.rmtree(table_dir)  # the documented fix: the table backfills from sequence 1
    again = VectorStore(tmp_path / "v")
    proj = MarketStates(again)
    assert proj.start() == 0
    assert proj.run(enumerate(states, 1)) == 300
    assert again.checksum(MARKET_STATES) == reference


# market_states as version 1 wrote it: one row per bar, features computed in the projection.
V1_MARKET_STATES = pa.schema(
    [
        *[pa.field(n, pa.string(), nullable=False) for n in ("bar_event_id", "symbol", "interval")],
        *[pa.field(n, pa.int64(), nullable=False) for n in ("ts_event", "stream_seq")],
        *[pa.field(n, pa.float64()) for n in ("open", "high", "low", "close", "volume")],
        pa.field("warm", pa.bool_(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), MARKET_DIM)),
        *[pa.field(f"fwd_ret_{h}", pa.float64(), nullable=True) for h in (1, 5, 20)],
    ]
)


def test_a_version_1_market_states_table_is_refused_with_the_rebuild_fix(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "v")
    lancedb.connect(str(tmp_path / "v")).create_table(MARKET_STATES, schema=V1_MARKET_STATES)
    old_hash = schema_hash(1, [(f.name, f.type) for f in V1_MARKET_STATES])
    row = {"table": [MARKET_STATES], "stream": ["INTEL"], "last_seq": [5], "model": ["features-v1:12"]}
    cp = pa.table({**row, "written_ns": [1], "schema_hash": [old_hash]}, schema=CHECKPOINT_SCHEMA)
    store.table(CHECKPOINTS).add(cp)
    with pytest.raises(ReadModelChanged) as refused:
        MarketStates(VectorStore(tmp_path / "v")).start()
    new_hash = store.specs[MARKET_STATES].schema_hash
    assert str(refused.value) == (
        f"read model 'market_states' changed (schema {old_hash} -> {new_hash}): stop the vectors role "
        f"and delete {tmp_path / 'v' / 'market_states.lance'}; it rebuilds from the stream on start"
    )


def test_vector_checkpoints_without_schema_hash_are_upgraded(tmp_path: Path) -> None:
    bars = _bars(400)
    ref = VectorStore(tmp_path / "ref")
    MarketReturns(ref).run(enumerate(bars, 1))
    store = VectorStore(tmp_path / "v")
    MarketReturns(store).run(enumerate(bars[:250], 1))
    # Rewrite the checkpoint table as the code before schema hashes wrote it.
    db = lancedb.connect(str(tmp_path / "v"))
    cp = store.checkpoint(MARKET_RETURNS)
    db.drop_table(CHECKPOINTS)
    old = pa.schema(
        [
            pa.field("table", pa.string(), nullable=False),
            pa.field("stream", pa.string(), nullable=False),
            pa.field("last_seq", pa.int64(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("written_ns", pa.int64(), nullable=False),
        ]
    )
    row = {"table": [MARKET_RETURNS], "stream": [cp.stream], "last_seq": [250], "model": [cp.model], "written_ns": [1]}
    db.create_table(CHECKPOINTS, schema=old).add(pa.table(row, schema=old))
    reopened = VectorStore(tmp_path / "v")
    assert reopened.checkpoint(MARKET_RETURNS).schema_hash == ""
    proj = MarketReturns(reopened)
    assert proj.start() == 250
    assert proj.run(enumerate(bars, 1)) == 400
    assert reopened.checkpoint(MARKET_RETURNS).schema_hash == reopened.specs[MARKET_RETURNS].schema_hash
    assert reopened.checksum(MARKET_RETURNS) == ref.checksum(MARKET_RETURNS)


def test_vector_commit_retried_after_failing_half_way_duplicates_nothing(tmp_path: Path) -> None:
    """The sink retries a failed batch in place: rows the failed commit added must not stay twice."""
    bars = _bars(300)
    ref = VectorStore(tmp_path / "ref")
    MarketReturns(ref).run(enumerate(bars, 1))
    store = VectorStore(tmp_path / "v")
    proj = MarketReturns(store)
    proj.run(enumerate(bars[:100], 1))
    for seq, bar in enumerate(bars[100:], 101):
        proj.apply(seq, bar)
    write_checkpoint = store.write_checkpoint

    def disk_full(*args: object, **kw: object) -> None:
        raise OSError("no space left on device")

    store.write_checkpoint = disk_full  # type: ignore[method-assign]
    with pytest.raises(OSError):
        proj.flush(force=True)  # the rows are added, the checkpoint is not
    store.write_checkpoint = write_checkpoint  # type: ignore[method-assign]
    assert store.count(MARKET_RETURNS) == 300 and store.checkpoint(MARKET_RETURNS).last_seq == 100
    assert proj.flush(force=True) == 300
    assert store.count(MARKET_RETURNS) == 300
    assert store.checksum(MARKET_RETURNS) == ref.checksum(MARKET_RETURNS)


DURABLE = "market_returns_md"


class PickyReturns(MarketReturns):
    """A market-returns read model that rejects a bar with a non-positive close: its poison."""

    def _take(self, seq: int, event: Event) -> None:
        if isinstance(event, Bar) and event.close <= 0:
            raise ValueError(f"bar {event.event_id} has close {event.close}")
        super()._take(seq, event)


class HeldSink(VectorSink):
    """A vector sink whose idle commit waits for ``release``, so a test can see what is acked before it."""

    def __init__(self, projection: MarketReturns, **kw: float) -> None:
        super().__init__(projection, **kw)
        self.release = asyncio.Event()

    async def idle(self) -> None:
        if self.release.is_set():
            await super().idle()


async def test_vector_sink_dead_letters_poison_and_acks_only_committed_rows(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    stream = f"{provisioned.upper()}_MD"
    bars = _bars(211, poison_at=50)
    store = VectorStore(tmp_path / "v")
    proj = PickyReturns(store, stream=stream, batch_rows=100_000)
    sink = HeldSink(proj, commit_every_s=3600.0)
    spec = ConsumerSpec(stream=stream, durable=DURABLE, filter_subjects=(f"{provisioned}.md.bar.>",), ordered=True)
    rt = ConsumerRuntime(nc, publisher, spec, sink, start_seq=sink.last_seq + 1)
    task = asyncio.create_task(rt.run())

    async def acked() -> int:
        info = await consumer_state(nc, stream, DURABLE)
        return int(info["ack_floor"]["stream_seq"]) if info else -1

    def acked_to(seq: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await acked() == seq

        return check

    try:
        await publisher.publish(bars[:200])
        await wait_until(lambda: proj.seen == 200, timeout=60)
        letters = await wait_stored(nc, f"{provisioned.upper()}_OPS", "", bool, within=60)
        assert [(e.stream_seq, e.consumer) for e in letters if isinstance(e, DeadLetter)] == [(51, DURABLE)]
        info = await consumer_state(nc, stream, DURABLE)
        assert info is not None and info["num_ack_pending"] == 200  # processed, buffered: nothing acked
        assert await acked() == 0 and store.checkpoint(MARKET_RETURNS).last_seq == 0

        sink.commit_every_s = 0.0  # the oldest buffered message waited longer: the next fetch commits
        await publisher.publish(bars[200:201])
        await wait_until(lambda: store.checkpoint(MARKET_RETURNS).last_seq == 201, timeout=60)
        await wait_until(acked_to(201), timeout=60)

        sink.commit_every_s = 3600.0
        await publisher.publish(bars[201:])
        await wait_until(lambda: proj.seen == 211, timeout=60)
        assert await acked() == 201 and store.checkpoint(MARKET_RETURNS).last_seq == 201
        sink.release.set()  # idle commits now; the held delivery is acked after it
        await wait_until(acked_to(211), timeout=60)
        assert store.checkpoint(MARKET_RETURNS).last_seq == 211
        assert not task.done() and rt.dead == 1
    finally:
        rt.stop()
        await task
    ids = store.scan(MARKET_RETURNS, ["bar_event_id"])["bar_event_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 210 and bars[50].event_id not in ids


async def test_a_live_vector_table_is_compacted_as_it_goes(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """Every commit adds a LanceDB fragment and version: the live sink compacts every ``optimize_every``
    commits, so a long-running vectors process does not accumulate them (it grew in a 10-minute soak)."""
    stream = f"{provisioned.upper()}_MD"
    bars = _bars(40)
    store = VectorStore(tmp_path / "v")
    proj = MarketReturns(store, stream=stream, batch_rows=1)
    sink = VectorSink(proj, commit_every_s=0.0, optimize_every=5)
    spec = ConsumerSpec(stream=stream, durable=DURABLE, filter_subjects=(f"{provisioned}.md.bar.>",), ordered=True)
    rt = ConsumerRuntime(nc, publisher, spec, sink, start_seq=sink.last_seq + 1)
    task = asyncio.create_task(rt.run())
    try:
        for i in range(0, 40, 2):  # twenty fetches, each a commit
            await publisher.publish(bars[i : i + 2])
            await wait_until(lambda i=i: store.checkpoint(MARKET_RETURNS).last_seq == i + 2, timeout=60)
    finally:
        rt.stop()
        await task
    assert sink.optimized >= 3, sink.optimized
    table = store.table(MARKET_RETURNS)
    assert table.stats()["fragment_stats"]["num_fragments"] <= 5  # compacted: not one fragment per commit
    assert table.count_rows() == 40 and store.checkpoint(MARKET_RETURNS).last_seq == 40


async def test_a_live_vector_table_gets_its_index_once_big_enough(tmp_path: Path) -> None:
    """Above ``index_min_rows`` a table is searched through its ANN index: the live sink builds it."""
    from tapeline.bus.consumer import Delivery
    from tapeline.bus.runtime import Received

    store = VectorStore(tmp_path / "v")
    store.specs[MARKET_STATES] = dataclasses.replace(store.specs[MARKET_STATES], index_min_rows=200)
    sink = VectorSink(MarketStates(store, batch_rows=1), commit_every_s=0.0, optimize_every=3)
    states = enrichments(_bars(400))
    for i in range(0, len(states), 20):  # fetches of 20 messages, each a commit
        chunk = states[i : i + 20]
        await sink.process(
            [Received(Delivery("s", b"", b"", "", i + j + 1, 1, 0, 0), [e]) for j, e in enumerate(chunk)]
        )
    assert store.count(MARKET_STATES) >= 200 and store.has_index(MARKET_STATES)
    probe = store.scan(MARKET_STATES, ["vector"])["vector"][0].as_py()
    assert store.search(MARKET_STATES, probe, k=1)  # searched through the index
