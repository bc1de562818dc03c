"""IBKR feed against a stand-in IB object firing ib_async's events and error codes; real JetStream."""

from __future__ import annotations

import asyncio
import csv
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client

from tapeline.adapters.config import IbkrConfig, IbkrContractConfig
from tapeline.adapters.ibkr import IbkrFeed
from tapeline.adapters.runner import run_feed
from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import Alert, Bar, Heartbeat, Tick
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import stored, wait_stored, wait_until
from tests.standins.ib import T0, IBStandIn, minute_bars


def config(**kw: object) -> IbkrConfig:
    base: dict[str, object] = {
        "contracts": [
            IbkrContractConfig(symbol="NVDA"),  # US stock: x100 by default
            IbkrContractConfig(symbol="ES", sec_type="FUT", exchange="CME", local_symbol="ESZ5"),
            IbkrContractConfig(symbol="AAPL", volume_multiplier=1.0),  # an account that reports shares
        ],
        "heartbeat_s": 0.2, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "warmup_days": 30,
    }  # fmt: skip
    base.update(kw)
    return IbkrConfig(**base)  # type: ignore[arg-type]


def real_trades(shared_data: Path) -> list[tuple[datetime, float, float]]:
    with (shared_data / "ticks" / "index-future-ticks-2015-09-23.csv").open() as fh:
        return [
            (datetime.fromisoformat(r["Datetime"]).replace(tzinfo=UTC), float(r["Close"]), float(r["Volume"]))
            for r in csv.DictReader(fh)
        ]


async def test_client_id_rotation_on_326() -> None:
    ib = IBStandIn()
    ib.in_use = {1, 99}
    feed = IbkrFeed(config(), ib=ib)
    ib.errorEvent += feed._on_error
    assert await feed.connect() == 100
    assert ib.connect_attempts == [1, 99, 100]


async def test_warmup_bars_ticks_and_volume_scaling(
    shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    ib = IBStandIn(history={"NVDA": minute_bars(T0, 5)})
    feed = IbkrFeed(config(), ib=ib)
    task = asyncio.create_task(run_feed(feed, publisher))
    md = MD.stream(provisioned)
    bars = await wait_stored(nc, md, f"{provisioned}.md.bar.>", lambda e: len(e) == 5)
    assert ib.history_requests[0] == ("NVDA", "30 D", "1 min", "TRADES")
    b0 = bars[0]
    assert isinstance(b0, Bar) and b0.start_ns == int(T0.timestamp()) * 10**9 and b0.interval == "1m"
    assert b0.volume == 10 * 100  # round lots -> shares
    await wait_until(lambda: len(ib.subscriptions) == 3)
    assert {g for _, g in ib.subscriptions} == {"233"}

    trades = real_trades(shared_data)
    for when, price, size in trades:
        assert ib.trade("ES", price, size, when)
    ib.trade("NVDA", 120.5, 3, T0)
    ib.trade("AAPL", 190.25, 3, T0)
    ib.quote("NVDA", 120.4, 120.6, T0 + timedelta(seconds=1))
    n = len(trades) + 3
    ticks = await wait_stored(nc, md, f"{provisioned}.md.tick.>", lambda e: len(e) == n)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    es = [t for t in ticks if isinstance(t, Tick) and t.symbol == "ES"]
    # one tick per trade (type 4 and RTVolume 48 of the same trade are not counted twice), size x1
    assert [(t.ts_event // 1_000_000, t.last, t.volume) for t in es] == [
        (int(w.timestamp() * 1000), p, s) for w, p, s in trades
    ]
    assert [t.seq for t in es if t.ts_event == 1443041902316 * 1_000_000] == [0, 1]
    by = {(t.symbol, t.flags & 8 > 0): t for t in ticks if isinstance(t, Tick)}
    assert by[("NVDA", True)].volume == 300.0  # 3 round lots
    assert by[("AAPL", True)].volume == 3.0  # configured multiplier 1
    q = by[("NVDA", False)]
    assert (q.bid, q.ask, q.volume, q.flags) == (120.4, 120.6, 0.0, 2 | 4)
    assert len({t.event_id for t in ticks}) == n


async def test_connectivity_loss_alert_stale_resubscribe(nc: Client, publisher: Publisher, provisioned: str) -> None:
    ib = IBStandIn()
    feed = IbkrFeed(config(), ib=ib, warmup=False)
    task = asyncio.create_task(run_feed(feed, publisher))
    ops, md = OPS.stream(provisioned), MD.stream(provisioned)
    await wait_until(lambda: len(ib.subscriptions) == 3)
    ib.trade("NVDA", 100.0, 1, T0)

    ib.lose()  # 1100
    t0 = time.time_ns()
    alerts = await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) == 1)
    a = alerts[0]
    assert isinstance(a, Alert) and (a.kind, a.severity, a.resolved) == ("broker_disconnected", "critical", False)
    assert a.ts_event - t0 < 2 * 200_000_000
    await wait_stored(nc, ops, f"{provisioned}.ops.heartbeat.>",
                      lambda e: any(isinstance(h, Heartbeat) and h.stale and h.ts_event > t0 for h in e))  # fmt: skip
    assert not ib.trade("NVDA", 101.0, 1, T0 + timedelta(seconds=1))  # nothing flows while lost

    ib.restore(data_lost=True)  # 1101: subscriptions are gone until re-requested
    await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) == 2)
    assert len(ib.subscriptions) == 6 and ib.cancels == 3 and feed.resubscriptions == 1
    assert ib.trade("NVDA", 102.0, 1, T0 + timedelta(seconds=2))
    ticks = await wait_stored(nc, md, f"{provisioned}.md.tick.>", lambda e: len(e) == 2)
    await wait_stored(nc, ops, f"{provisioned}.ops.heartbeat.>",
                      lambda e: isinstance(e[-1], Heartbeat) and not e[-1].stale)  # fmt: skip
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [t.last for t in ticks if isinstance(t, Tick)] == [100.0, 102.0]
    alerts = [x for x in await stored(nc, ops, f"{provisioned}.ops.alert.>") if isinstance(x, Alert)]
    assert [(x.kind, x.resolved) for x in alerts] == [("broker_disconnected", False), ("broker_disconnected", True)]


async def test_socket_drop_reconnects_with_backoff_and_resubscribes(
    nc: Client, publisher: Publisher, provisioned: str
) -> None:
    ib = IBStandIn()
    feed = IbkrFeed(config(), ib=ib, warmup=False)
    task = asyncio.create_task(run_feed(feed, publisher))
    ops, md = OPS.stream(provisioned), MD.stream(provisioned)
    await wait_until(lambda: len(ib.subscriptions) == 3)
    t0 = time.time_ns()
    ib.drop(refuse_next=3)  # TWS restarts; three connects are refused
    alerts = await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) == 1)
    assert alerts[0].ts_event - t0 < 2 * 200_000_000
    await wait_stored(nc, ops, f"{provisioned}.ops.alert.>", lambda e: len(e) == 2)
    assert len(ib.connect_attempts) == 1 + 4 and feed.reconnects == 2
    assert len(ib.subscriptions) == 6  # resubscribed every contract
    assert ib.trade("ES", 3000.0, 2, T0)
    await wait_stored(nc, md, f"{provisioned}.md.tick.>", lambda e: len(e) == 1)
    hbs = [h for h in await stored(nc, ops, f"{provisioned}.ops.heartbeat.>") if isinstance(h, Heartbeat)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert any(h.stale and not h.connected for h in hbs)
