"""The backbone end to end on a real nats-server and real DuckDB files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pytest
from nats.aio.client import Client

from adapters.runner import run_feed
from adapters.sim import SimFeed
from bus.jetstream import JetStreamApi, JetStreamError
from bus.publisher import Publisher, PublishError
from bus.runtime import ConsumerRuntime, ReactionSink
from handlers.base import Handler, draft
from schemas import AnyEvent, Event, Signal, Tick, decisions_bucket, new_event_id
from tapeline.pipeline import Pipeline
from tests.helpers import FAST, caught_up, read_stream, stream_last_seq, wait_until


async def test_provisioning_is_idempotent_and_records_are_protected(nc: Client, provisioned: str) -> None:
    api = JetStreamApi(nc)
    from bus.topology import provision

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
    p = Pipeline(nc, provisioned, handlers=FAST, db_path=tmp_path / "p.duckdb")
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
    assert {"h_bars_md", "proj_main_md"} <= consumers
    assert all(row[0] == f"{provisioned.upper()}_MD" and row[1] == bad.seq for row in dead)
    assert all(row[2].startswith("undecodable: tick:") and "$.bid" in row[2] for row in dead), dead
    assert db.con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() == (3000, 3000)
    bars = await read_stream(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>")
    assert len(bars) > 0 and db.con.execute("SELECT count(*) FROM bars").fetchone() == (len(bars),)
    await p.stop()


async def test_a_client_that_is_not_ours_gets_decisions(nc: Client, provisioned: str, tmp_path: Path) -> None:
    """Plain nats-py, hand-written JSON on documented subjects, no Tapeline imports used."""
    p = Pipeline(nc, provisioned, handlers=FAST, db_path=tmp_path / "p.duckdb")
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
    subjects = ("md.tick.>",)

    def __init__(self) -> None:
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
    rt = ConsumerRuntime(
        nc,
        publisher,
        stream=f"{provisioned.upper()}_MD",
        durable="flaky",
        filter_subjects=[f"{provisioned}.md.tick.>"],
        sink=ReactionSink(h, publisher),
        max_deliver=3,
        backoff_s=0.05,
    )
    task = asyncio.create_task(rt.run())
    ticks = [
        Tick(event_id=new_event_id(), ts_event=i, ts_init=time.time_ns(), source="t", venue="v", symbol=s, last=1.0)
        for i, s in enumerate(["OK", "SHAKY", "POISON", "OK"])
    ]
    await publisher.publish(ticks)

    async def settled() -> bool:
        return rt.processed == 3 and rt.dead == 1

    await wait_until(settled, timeout=60)
    rt.stop()
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
    from replay.rebuild import verify

    p = Pipeline(nc, provisioned, handlers=FAST, db_path=tmp_path / "live.duckdb")
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


def bars_runtime(nc: Client, publisher: Publisher, prefix: str, h: Handler) -> ConsumerRuntime:
    """The bars handler on the bus, as the pipeline runs it (ordered, ack all, warm-up)."""
    return ConsumerRuntime(
        nc,
        publisher,
        stream=f"{prefix.upper()}_MD",
        durable="h_bars_md",
        filter_subjects=[f"{prefix}.md.tick.>"],
        sink=ReactionSink(h, publisher),
        ack_policy="all",
        warmup=h,
        warmup_s=h.warmup_s,
        ordered=True,
    )


async def test_restarted_stateful_handler_rebuilds_its_state_from_stored_input(
    nc: Client, provisioned: str, publisher: Publisher
) -> None:
    """Stop mid-bar, restart with a fresh handler: the open bar must come out as in one clean run.

    The first run acknowledges its input 3 s after it was stored, longer than the bars' 2 s
    warm-up window, so a warm-up anchored on acknowledgement time (instead of stream time) fails.
    """
    from handlers.bars import BarAggregator
    from schemas import Bar

    ticks = list(SimFeed(["A"], ticks=400, seed=3, mean_gap_ms=40).generate())
    k = next(i for i in range(200, 400) if ticks[i].ts_event // 10**9 == ticks[i - 1].ts_event // 10**9)
    clean = BarAggregator(["1s"])
    expected = {b.start_ns: b.ticks for t in ticks for b in clean.handle(t) if isinstance(b, Bar)}

    def runtime(h: BarAggregator) -> ConsumerRuntime:
        return bars_runtime(nc, publisher, provisioned, h)

    await publisher.publish(ticks[:k])
    await asyncio.sleep(3.0)
    first = runtime(BarAggregator(["1s"]))
    task = asyncio.create_task(first.run())
    await wait_until(lambda: first.processed == k, timeout=60)
    first.stop()
    await task
    second = runtime(BarAggregator(["1s"]))
    task = asyncio.create_task(second.run())
    await publisher.publish(ticks[k:])
    await wait_until(lambda: second.processed == len(ticks) - k, timeout=60)
    second.stop()
    await task
    assert second.warmed > 0, "the restarted handler replayed nothing"
    bars = [b for _, b in await read_stream(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>")]
    assert {b.start_ns: b.ticks for b in bars if isinstance(b, Bar)} == expected


async def test_restart_after_the_duplicate_window_publishes_nothing_twice(
    nc: Client, provisioned: str, publisher: Publisher
) -> None:
    """A handler that died after publishing but before acknowledging, restarted after the window."""
    from bus.topology import Retention, durable_config, provision
    from handlers.bars import BarAggregator

    await provision(nc, provisioned, Retention(duplicate_window_s=1, record_duplicate_window_s=1))
    ticks = list(SimFeed(["A", "B"], ticks=2000, seed=4, mean_gap_ms=40).generate())
    await publisher.publish(ticks)
    first = bars_runtime(nc, publisher, provisioned, BarAggregator(["1s"]))
    task = asyncio.create_task(first.run())
    await wait_until(lambda: first.processed == len(ticks), timeout=60)
    first.stop()
    await task
    stream = f"{provisioned.upper()}_MD"
    before = [e.event_id for _, e in await read_stream(nc, stream, f"{provisioned}.md.bar.>")]
    # The acknowledgements are lost, as when the process dies between publishing and acking.
    api = JetStreamApi(nc)
    await api.delete_consumer(stream, "h_bars_md")
    await api.ensure_consumer(stream, durable_config("h_bars_md", [f"{provisioned}.md.tick.>"], ack_policy="all"))
    await asyncio.sleep(1.5)  # past the duplicate window: JetStream itself would now store copies
    second = bars_runtime(nc, publisher, provisioned, BarAggregator(["1s"]))
    task = asyncio.create_task(second.run())
    await wait_until(lambda: second.processed == len(ticks), timeout=60)
    second.stop()
    await task
    after = [e.event_id for _, e in await read_stream(nc, stream, f"{provisioned}.md.bar.>")]
    assert len(before) > 50 and after == before, f"{len(after) - len(before)} bars published twice"
