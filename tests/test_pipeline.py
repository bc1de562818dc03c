"""The backbone end to end on a real nats-server and real DuckDB files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import msgspec
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import ComponentRunner
from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.publisher import Publisher, PublishError
from tapeline.pipeline import Pipeline
from tapeline.schemas import AnyEvent, Bar, Event, Signal, Tick, decisions_bucket, new_event_id
from tapeline.schemas.components import Consumes, Handler, Replay, Snapshot, StatePolicy, Window, draft
from tests.helpers import FAST, caught_up, read_stream, stream_last_seq, wait_until


async def test_provisioning_is_idempotent_and_records_are_protected(nc: Client, provisioned: str) -> None:
    api = JetStreamApi(nc)
    from tapeline.bus.topology import provision

    again = await provision(nc, provisioned)
    assert set(again.values()) == {"unchanged"}
    decision = await api.stream_info(f"{provisioned.upper()}_DECISION")
    assert decision and decision["config"]["deny_purge"] and decision["config"]["discard"] == "new"
    md = await api.stream_info(f"{provisioned.upper()}_MD")
    assert md and md["config"]["max_age"] > 0 and not md["config"].get("deny_purge", False)
    with pytest.raises(JetStreamError, match="purge"):
        await api.call(f"STREAM.PURGE.{provisioned.upper()}_DECISION")


async def test_publisher_deduplicates_by_event_id(publisher: Publisher, nc: Client, provisioned: str) -> None:
    tick = Tick(event_id=new_event_id(), ts_event=1, ts_init=1, source="t", venue="v", symbol="X", last=1.0)
    first = await publisher.publish([tick])
    second = await publisher.publish([tick, tick])
    assert (first.stored, second.stored, second.duplicates) == (1, 0, 2)
    assert await stream_last_seq(nc, f"{provisioned.upper()}_MD") == 1


async def test_publishing_outside_any_stream_fails_clearly(nc: Client, prefix: str) -> None:
    pub = await Publisher(nc, prefix, ack_timeout=1.0, max_attempts=1).start()
    tick = Tick(event_id=new_event_id(), ts_event=1, ts_init=1, source="t", venue="v", symbol="X", last=1.0)
    with pytest.raises(PublishError, match="no stream captures"):
        await pub.publish([tick])
    await pub.close()


async def test_malformed_payload_is_dead_lettered_and_nothing_is_lost(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb")
    await p.start()
    feed = SimFeed(["NVDA", "ORCL"], ticks=3000, seed=3)
    ticks = list(feed.generate())
    await publisher.publish(ticks[:1500])
    # By hand, as a careless producer would: garbage on a tick subject, in the middle of the flow.
    bad = await nc.jetstream().publish(f"{provisioned}.md.tick.sim.NVDA", b'{"type":"tick","bid":"oops"}')
    await publisher.publish(ticks[1500:])
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    db = p.db
    assert db is not None
    dead = db.con.execute("SELECT stream, stream_seq, reason, consumer FROM dead_letters").fetchall()
    consumers = {row[3] for row in dead}
    assert {"bars_md", "projector_md"} <= consumers
    assert all(row[0] == f"{provisioned.upper()}_MD" and row[1] == bad.seq for row in dead)
    assert all(row[2].startswith("undecodable: tick:") and "$.bid" in row[2] for row in dead), dead
    assert db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (3000, 3000)
    bars = await read_stream(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>")
    assert len(bars) > 0 and db.con.execute("SELECT count(*) FROM bars").fetchone() == (len(bars),)
    # The projector runs with its [projector] defaults and reports what its DuckDB holds.
    limits = "SELECT current_setting('memory_limit'), current_setting('checkpoint_threshold')"
    assert db.con.execute(limits).fetchone() == ("256.0 MiB", "4.0 MiB")
    held = REGISTRY.get_sample_value("tapeline_projection_memory_bytes", {"projection": "main"})
    assert held is not None and 0 < held < 256 * 1024 * 1024
    await p.stop()


async def test_a_client_that_is_not_ours_gets_decisions(nc: Client, provisioned: str, tmp_path: Path) -> None:
    """Plain nats-py, hand-written JSON on documented subjects, no Tapeline imports used."""
    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb")
    await p.start()
    js = nc.jetstream()
    sub = await nc.subscribe(f"{provisioned}.decision.ACME")
    t0 = 1_767_222_000_000_000_000
    for i in range(12):  # 12 one-second bars, momentum over 3
        ts = t0 + i * 1_000_000_000
        tick = {
            "type": "tick",
            "event_id": f"foreign-{i:04d}",
            "ts_event": ts,
            "ts_init": time.time_ns(),
            "source": "foreign",
            "venue": "xnas",
            "symbol": "ACME",
            "last": 100 + i * (1 + i % 2),
            "volume": 10,
        }
        await js.publish(
            f"{provisioned}.md.tick.xnas.ACME",
            json.dumps(tick).encode(),
            headers={"Nats-Msg-Id": tick["event_id"], "Content-Type": "application/json"},
        )
    msg = await sub.next_msg(timeout=60)
    await sub.unsubscribe()
    envelope = json.loads(msg.data)
    assert envelope["type"] == "decision" and envelope["target"]["ticker"] == "ACME"
    assert envelope["synthesis"]["verdict"] in {"BUY", "HOLD", "SELL"}
    assert msg.headers and msg.headers["Tapeline-Type"] == "decision"
    kv = await js.key_value(decisions_bucket(provisioned))

    async def in_kv() -> bool:
        try:
            return (await kv.get("ACME")).value is not None
        except Exception:
            return False

    await wait_until(in_kv, timeout=60)
    latest = json.loads((await kv.get("ACME")).value or b"{}")
    assert latest["target"]["ticker"] == "ACME" and latest["version"] == 1
    await p.stop()


class _Flaky(Handler):
    """Fails on one symbol always (poison), on another twice (transient)."""

    name = "flaky"
    emits = (Signal,)
    consumes = (Consumes(Tick),)

    def __init__(self) -> None:
        super().__init__()
        self.attempts: dict[str, int] = {}

    def handle(self, event: AnyEvent) -> Sequence[Event]:
        assert isinstance(event, Tick)
        n = self.attempts[event.event_id] = self.attempts.get(event.event_id, 0) + 1
        if event.symbol == "POISON" or (event.symbol == "SHAKY" and n <= 2):
            raise RuntimeError(f"cannot handle {event.symbol}")
        return [
            draft(
                Signal,
                ts_event=event.ts_event,
                symbol=event.symbol,
                agent="t",
                domain="t",
                direction="NEUTRAL",
                strength=0.0,
                confidence=0.0,
            )
        ]


async def test_transient_failures_retry_and_poison_is_dead_lettered(
    nc: Client, provisioned: str, publisher: Publisher
) -> None:
    h = _Flaky()
    runner = ComponentRunner(nc, publisher, h, provisioned)
    runner.specs = [msgspec.structs.replace(sp, max_deliver=3, backoff_s=0.05) for sp in runner.specs]
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: runner.runtimes, timeout=20)
    rt = runner.runtimes[0]
    ticks = [
        Tick(event_id=new_event_id(), ts_event=i, ts_init=time.time_ns(), source="t", venue="v", symbol=s, last=1.0)
        for i, s in enumerate(["OK", "SHAKY", "POISON", "OK"])
    ]
    await publisher.publish(ticks)

    async def settled() -> bool:
        return rt.processed == 3 and rt.dead == 1

    await wait_until(settled, timeout=60)
    runner.stop()
    await task
    signals = await read_stream(nc, f"{provisioned.upper()}_INTEL", f"{provisioned}.intel.>")
    assert sorted(e.symbol for _, e in signals) == ["OK", "OK", "SHAKY"]  # type: ignore[union-attr]
    letters = await read_stream(nc, f"{provisioned.upper()}_OPS", f"{provisioned}.ops.deadletter.>")
    assert len(letters) == 1
    (_, letter) = letters[0]
    assert "failed 3 times" in letter.reason and "POISON" in letter.reason  # type: ignore[union-attr]
    assert h.attempts[ticks[2].event_id] == 3


async def test_replay_rebuild_hashes_equal_live(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    from tapeline.replay.rebuild import verify

    p = Pipeline(nc, provisioned, configs=FAST, db_path=tmp_path / "live.duckdb")
    await p.start()
    await run_feed(SimFeed(["A", "B"], ticks=4000, seed=11), publisher)
    await wait_until(lambda: caught_up(nc, p), timeout=60)
    checks, stats = await verify(nc, provisioned, tmp_path / "live.duckdb", tmp_path / "rebuilt.duckdb")
    assert stats.events > 4000
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.table: c.live.split(":")[0] for c in checks}["ticks"] == "4000"
    await p.stop()
    # Tamper with the live projection: verification must now fail on exactly that table.
    con = duckdb.connect(str(tmp_path / "live.duckdb"))
    con.execute("DELETE FROM bars WHERE seq = (SELECT max(seq) FROM bars)")
    con.close()
    checks, _ = await verify(nc, provisioned, tmp_path / "live.duckdb", tmp_path / "rebuilt2.duckdb")
    assert [c.table for c in checks if not c.ok] == ["bars"]


def bars_runner(nc: Client, publisher: Publisher, prefix: str, h: Handler) -> ComponentRunner:
    """The bars handler on the bus, as the pipeline runs it (ordered, lease, state policy)."""
    return ComponentRunner(nc, publisher, h, prefix)


async def processed(r: ComponentRunner) -> int:
    return sum(rt.processed for rt in r.runtimes)


@pytest.mark.parametrize("policy", [Window(5.0), Replay(), Snapshot(every_s=0.0)], ids=["window", "replay", "snapshot"])
async def test_a_crash_and_restart_give_the_outputs_of_one_uninterrupted_run(
    nc: Client, provisioned: str, publisher: Publisher, policy: StatePolicy
) -> None:
    """For each state policy: crash mid-stream (state lost, acks kept, no final snapshot), restart with a
    fresh handler, and require the stored bars (ids and contents) to equal one uninterrupted run."""
    from tapeline.bus.inprocess import InProcessRunner
    from tapeline.handlers.bars import BarAggregator, BarsConfig

    class Bars(BarAggregator):
        state = policy

    cfg = BarsConfig(intervals=["1s"])
    ticks = list(SimFeed(["A", "B"], ticks=900, seed=3, mean_gap_ms=40).generate())
    expected = [(b.event_id, b.start_ns, b.ticks) for b in await InProcessRunner([Bars(cfg)], provisioned).run(ticks)]
    k1, k2 = 300, 600
    first = bars_runner(nc, publisher, provisioned, Bars(cfg))
    task = asyncio.create_task(first.run())
    await publisher.publish(ticks[:k1])
    await wait_until(lambda: first.runtimes and first.runtimes[0].last_acked >= k1, timeout=60)
    for rt in first.runtimes:  # from here on nothing is saved: the state is lost at the crash
        rt.after_ack = rt.on_stop = None
    await publisher.publish(ticks[k1:k2])
    await wait_until(lambda: first.runtimes[0].last_acked >= k2, timeout=60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    second = bars_runner(nc, publisher, provisioned, Bars(cfg))
    task = asyncio.create_task(second.run())
    await publisher.publish(ticks[k2:])
    await wait_until(lambda: second.runtimes and second.runtimes[0].last_acked >= len(ticks), timeout=60)
    second.stop()
    await task
    bars = [b for _, b in await read_stream(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>")]
    assert [(b.event_id, b.start_ns, b.ticks) for b in bars if isinstance(b, Bar)] == expected
    if not isinstance(policy, Snapshot):
        assert second.warmed > 0, "the restarted handler replayed nothing"


async def test_restart_after_the_duplicate_window_publishes_nothing_twice(
    nc: Client, provisioned: str, publisher: Publisher
) -> None:
    """A handler that died after publishing but before acknowledging, restarted after the window."""
    from tapeline.bus.components import snapshots_bucket
    from tapeline.bus.topology import Retention, durable_config, provision
    from tapeline.handlers.bars import BarAggregator, BarsConfig

    await provision(nc, provisioned, Retention(duplicate_window_s=1, record_duplicate_window_s=1))
    ticks = list(SimFeed(["A", "B"], ticks=2000, seed=4, mean_gap_ms=40).generate())
    await publisher.publish(ticks)
    first = bars_runner(nc, publisher, provisioned, BarAggregator(BarsConfig(intervals=["1s"])))
    task = asyncio.create_task(first.run())
    await wait_until(lambda: first.runtimes and first.runtimes[0].last_acked >= len(ticks), timeout=60)
    first.stop()
    await task
    stream = f"{provisioned.upper()}_MD"
    before = [e.event_id for _, e in await read_stream(nc, stream, f"{provisioned}.md.bar.>")]
    # The acknowledgements and the snapshot are lost, as when the process dies between publishing and acking.
    api = JetStreamApi(nc)
    await api.delete_consumer(stream, "bars_md")
    await api.ensure_consumer(stream, durable_config("bars_md", [f"{provisioned}.md.tick.>"], ack_policy="all"))
    await api.call(f"STREAM.PURGE.KV_{snapshots_bucket(provisioned)}")
    await asyncio.sleep(1.5)  # past the duplicate window: JetStream itself would now store copies
    second = bars_runner(nc, publisher, provisioned, BarAggregator(BarsConfig(intervals=["1s"])))
    task = asyncio.create_task(second.run())
    await wait_until(lambda: second.runtimes and second.runtimes[0].last_acked >= len(ticks), timeout=60)
    second.stop()
    await task
    after = [e.event_id for _, e in await read_stream(nc, stream, f"{provisioned}.md.bar.>")]
    assert len(before) > 50 and after == before, f"{len(after) - len(before)} bars published twice"
