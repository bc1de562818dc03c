"""Heartbeat watchdog: pure reactions, and end to end through the real consumer runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nats.aio.client import Client

from tapeline.adapters.alerts import ClockConfig, ClockFeed, HeartbeatClock
from tapeline.adapters.runner import run_feed
from tapeline.bus.components import ComponentRunner
from tapeline.bus.publisher import Publisher
from tapeline.handlers.watchdog import HeartbeatWatchdog, WatchdogConfig
from tapeline.schemas.components import draft
from tapeline.schemas.events import Alert, ClockTick, Event, Heartbeat
from tapeline.schemas.subjects import OPS
from tests.helpers import wait_stored

S = 1_000_000_000


def hb(feed: str, t: float, *, stale: bool = False, interval: float = 1.0) -> Heartbeat:
    return draft(Heartbeat, ts_event=int(t * S), feed=feed, interval_s=interval, stale=stale)


def clock(t: float) -> ClockTick:
    return draft(ClockTick, ts_event=int(t * S), schedule="watchdog", scheduled_ns=int(t * S))


def alerts(out: list[Event]) -> list[tuple[str, str, bool]]:
    return [(a.kind, a.feed, a.resolved) for a in out if isinstance(a, Alert)]


def test_missing_then_back() -> None:
    wd = HeartbeatWatchdog(WatchdogConfig(expected={"mt5-raw": 1.0}, missed_intervals=3))
    assert wd.handle(hb("mt5-raw", 100)) == []
    assert wd.handle(clock(102.9)) == []
    out = wd.handle(clock(103.1))
    assert alerts(out) == [("heartbeat_missing", "mt5-raw", False)]
    a = out[0]
    assert isinstance(a, Alert) and a.severity == "critical" and a.key == "watchdog:heartbeat_missing:mt5-raw"
    assert a.ts_event == int(103.1 * S)
    assert wd.handle(clock(110)) == []  # raised once, not on every tick
    assert alerts(wd.handle(hb("mt5-raw", 111))) == [("heartbeat_missing", "mt5-raw", True)]


def test_learns_interval_and_expected_feed_never_seen() -> None:
    wd = HeartbeatWatchdog(WatchdogConfig(expected={"ibkr": 2.0}, missed_intervals=2))
    wd.handle(hb("sim", 0, interval=0.5))
    assert alerts(wd.handle(hb("sim", 0.9, interval=0.5))) == []
    out = wd.handle(clock(4.1))  # sim silent 3.2s > 2 x 0.5; ibkr never seen for 4.1s > 2 x 2
    assert sorted(alerts(out)) == [("heartbeat_missing", "ibkr", False), ("heartbeat_missing", "sim", False)]


def test_stale_heartbeat_alerts_and_resolves() -> None:
    wd = HeartbeatWatchdog()
    assert alerts(wd.handle(hb("ibkr", 1, stale=True))) == [("feed_stale", "ibkr", False)]
    assert wd.handle(hb("ibkr", 2, stale=True)) == []
    assert alerts(wd.handle(hb("ibkr", 3))) == [("feed_stale", "ibkr", True)]


class Beating:
    """A feed that only beats (our own HeartbeatClock), until told to stop."""

    name = "beater"

    def __init__(self, interval: float) -> None:
        self.hb = HeartbeatClock("beater", interval)
        self.stop = asyncio.Event()

    async def stream(self) -> AsyncIterator[list[Heartbeat]]:
        while not self.stop.is_set():
            yield [self.hb.beat(connected=True, stale=False, symbols=1)]
            await asyncio.sleep(self.hb.interval_s)


async def test_end_to_end_through_the_bus(nc: Client, publisher: Publisher, provisioned: str) -> None:
    """Beats every 0.5 s, missing after 3: this loop may stall up to 1.5 s without a false alert."""
    wd = HeartbeatWatchdog(WatchdogConfig(expected={"beater": 0.5}, missed_intervals=3))
    rt = ComponentRunner(nc, publisher, wd, provisioned)
    runtime = asyncio.create_task(rt.run())
    ticker = asyncio.create_task(run_feed(ClockFeed(ClockConfig(interval_s=0.05)), publisher))
    beater = Beating(0.5)
    feed = asyncio.create_task(run_feed(beater, publisher))
    subject = f"{provisioned}.ops.alert.>"
    await wait_stored(nc, OPS.stream(provisioned), f"{provisioned}.ops.heartbeat.>", lambda e: len(e) >= 3)
    beater.stop.set()  # the feed dies
    await feed
    evs = await wait_stored(nc, OPS.stream(provisioned), subject, lambda e: len(e) >= 1)
    assert alerts(evs) == [("heartbeat_missing", "beater", False)]
    beater2 = Beating(0.5)
    feed2 = asyncio.create_task(run_feed(beater2, publisher))  # it comes back
    evs = await wait_stored(nc, OPS.stream(provisioned), subject, lambda e: len(e) >= 2)
    assert alerts(evs) == [("heartbeat_missing", "beater", False), ("heartbeat_missing", "beater", True)]
    beater2.stop.set()
    rt.stop()
    for t in (ticker, feed2):
        t.cancel()
    await asyncio.gather(ticker, feed2, return_exceptions=True)
    await asyncio.wait_for(runtime, 60)
