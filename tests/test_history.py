"""History store: Parquet partitioned by symbol, warm-up merge without gaps or duplicates, self-healing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from nats.aio.client import Client

from tapeline.adapters.config import IbkrConfig, IbkrContractConfig
from tapeline.adapters.files import read_bars
from tapeline.adapters.history import DAY_NS, HistoryFeed, HistoryStore, warm_up
from tapeline.adapters.ibkr import IbkrFeed
from tapeline.adapters.runner import run_feed
from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import Alert, Bar, Event
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import stored, wait_stored
from tests.standins.ib import T0, IBStandIn, minute_bars


def nvda(shared_data: Path) -> list[Bar]:
    return [
        b for b in read_bars(shared_data / "bars" / "nvda-daily-1999-2014.csv", "NVDA").events if isinstance(b, Bar)
    ]


def test_append_is_idempotent_and_partitioned(tmp_path: Path, shared_data: Path) -> None:
    bars = nvda(shared_data)
    store = HistoryStore(tmp_path, compact_after_parts=3)
    assert store.append(bars) == 4012
    assert store.append(bars) == 0  # same bars again: nothing written
    assert store.append(bars[:10]) == 0
    assert len(store.parts("NVDA", "1d")) == 1
    brk = msgspec.structs.replace(bars[0], symbol="BRK.B")
    store.append([brk])
    assert (tmp_path / "symbol=BRK=2EB" / "interval=1d").is_dir()
    assert store.series() == [("BRK.B", "1d"), ("NVDA", "1d")]
    # a fresh store object reads the same bars back, with the same ids as the file import
    again = HistoryStore(tmp_path).load("NVDA", "1d")
    assert [b.event_id for b in again] == [b.event_id for b in bars]
    assert [(b.open, b.close, b.volume) for b in again] == [(b.open, b.close, b.volume) for b in bars]
    # a corrected bar replaces the stored one; small parts get compacted
    fixed = msgspec.structs.replace(bars[-1], close=20.0)
    for i in range(4):
        store.append([msgspec.structs.replace(fixed, volume=float(i))])
    assert len(store.parts("NVDA", "1d")) <= 3
    assert HistoryStore(tmp_path).load("NVDA", "1d")[-1].volume == 3.0


async def test_warm_up_merges_without_gap_or_duplicate(tmp_path: Path, shared_data: Path) -> None:
    bars = nvda(shared_data)
    now = bars[-1].ts_event
    window = now - 30 * DAY_NS
    live = [b for b in bars if b.start_ns >= window]
    store = HistoryStore(tmp_path)
    store.append([b for b in bars if b.start_ns < window + 10 * DAY_NS])  # overlaps the live window

    async def fetch(symbol: str, days: int) -> list[Bar]:
        assert (symbol, days) == ("NVDA", 30)
        return live

    m = await warm_up(store, "NVDA", "1d", fetch, days=30, now_ns=now)
    assert not m.gaps
    assert [b.event_id for b in m.bars] == [b.event_id for b in bars]  # complete, once each
    assert len(HistoryStore(tmp_path).load("NVDA", "1d")) == 4012  # the store healed itself


async def test_warm_up_reports_a_gap_it_cannot_fill(tmp_path: Path, shared_data: Path) -> None:
    bars = nvda(shared_data)
    now = bars[-1].ts_event
    window = now - 30 * DAY_NS
    store = HistoryStore(tmp_path)
    store.append([b for b in bars if b.start_ns < window - 20 * DAY_NS])

    async def fetch(symbol: str, days: int) -> list[Bar]:
        return [b for b in bars if b.start_ns >= window]

    m = await warm_up(store, "NVDA", "1d", fetch, days=30, now_ns=now)
    assert len(m.gaps) == 1
    a, b = m.gaps[0]
    assert a < window <= b + DAY_NS


class ListFeed:
    name = "replayer"

    def __init__(self, batches: list[list[Event]]) -> None:
        self.batches = batches

    async def stream(self) -> AsyncIterator[list[Event]]:
        for b in self.batches:
            yield b


async def test_history_feed_publishes_once_and_heals(
    tmp_path: Path, shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    bars = nvda(shared_data)[:100]
    store = HistoryStore(tmp_path)
    store.append(bars[:60])
    # the live source re-sends 50..79 (overlap) and then new bars 80..99, some twice
    live = ListFeed([list(bars[50:80]), list(bars[80:90]), list(bars[85:100])])
    feed = HistoryFeed(live, store, [("NVDA", "1d")])
    await run_feed(feed, publisher)
    md = await stored(nc, MD.stream(provisioned))
    assert [e.event_id for e in md] == [b.event_id for b in bars]  # no gap, no duplicate, in order
    assert feed.healed == 40
    assert len(HistoryStore(tmp_path).load("NVDA", "1d")) == 100
    # restart: the store now has everything; a second run publishes nothing new
    await run_feed(HistoryFeed(ListFeed([list(bars[90:100])]), HistoryStore(tmp_path), [("NVDA", "1d")]), publisher)
    assert len(await stored(nc, MD.stream(provisioned))) == 100


async def test_ibkr_warmup_feeds_the_store(tmp_path: Path, nc: Client, publisher: Publisher, provisioned: str) -> None:
    ib = IBStandIn(history={"NVDA": minute_bars(T0, 30)})
    cfg = IbkrConfig(contracts=[IbkrContractConfig(symbol="NVDA")], heartbeat_s=0.2)
    store = HistoryStore(tmp_path)
    store.append(list(await _bars_of(minute_bars(T0 - (T0 - T0), 10))))
    feed = HistoryFeed(IbkrFeed(cfg, ib=ib), store, [("NVDA", "1m")], clock=lambda: int(T0.timestamp() * 1e9))
    task = asyncio.create_task(run_feed(feed, publisher))
    await wait_stored(nc, MD.stream(provisioned), "", lambda e: len(e) >= 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    md = [e for e in await stored(nc, MD.stream(provisioned)) if isinstance(e, Bar)]
    assert len(md) == 30 and len({b.start_ns for b in md}) == 30
    assert len(HistoryStore(tmp_path).load("NVDA", "1m")) == 30
    assert not [
        e for e in await stored(nc, OPS.stream(provisioned)) if isinstance(e, Alert) and e.kind == "history_gap"
    ]


async def _bars_of(raw: list) -> list[Bar]:  # type: ignore[type-arg]
    feed = IbkrFeed(IbkrConfig(contracts=[IbkrContractConfig(symbol="NVDA")]), ib=IBStandIn(history={"NVDA": raw}))
    await feed.connect()
    await feed._qualify()
    return await feed.fetch_bars("NVDA", 30)
