"""Time sanity: implausible timestamps are dead-lettered, late ticks are counted and alerted."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from tapeline.bus.components import ComponentRunner
from tapeline.bus.publisher import Publisher
from tapeline.handlers.bars import BarAggregator, BarsConfig
from tapeline.schemas.components import Rejected
from tapeline.schemas.events import Alert, Bar, DeadLetter, Tick
from tapeline.schemas.ids import new_event_id
from tests.helpers import stored, wait_stored

S = 1_000_000_000
NOW = 1_790_000_000 * S  # 2026


def tick(symbol: str, t_ns: int, recorded_ns: int | None = None, price: float = 100.0) -> Tick:
    return Tick(
        event_id=new_event_id(t_ns),
        ts_event=t_ns,
        ts_init=recorded_ns if recorded_ns is not None else t_ns,
        source="t",
        venue="v",
        symbol=symbol,
        last=price,
    )


def test_a_tick_stamped_in_2100_is_rejected_and_the_symbol_goes_on() -> None:
    bars = BarAggregator(BarsConfig(intervals=["1m"]))
    bars.handle(tick("A", NOW))
    with pytest.raises(Rejected, match="max_future_s"):
        bars.handle(tick("A", 4_102_444_800 * S, recorded_ns=NOW + S))  # 2100-01-01
    out = bars.handle(tick("A", NOW + 61 * S))
    assert [type(e) for e in out] == [Bar], "the bar still closes: the bad tick held nothing hostage"


def test_late_ticks_are_counted_and_a_symbol_with_only_late_ticks_alerts_then_resolves() -> None:
    bars = BarAggregator(BarsConfig(intervals=["1m"], late_alert_s=600))
    bars.handle(tick("A", NOW + 3600 * S))  # opens the bar at +1 h
    alerts: list[Alert] = []
    for i in range(1, 13):  # every minute of recording time, a tick stamped an hour earlier: all late
        alerts += [
            e
            for e in bars.handle(tick("A", NOW + i * S, recorded_ns=NOW + 3600 * S + i * 60 * S))
            if isinstance(e, Alert)
        ]
    assert bars.counters["late"] == 12
    assert [(a.kind, a.resolved, a.symbol) for a in alerts] == [("late_ticks", False, "A")]
    back = [e for e in bars.handle(tick("A", NOW + 3700 * S)) if isinstance(e, Alert)]
    assert [(a.kind, a.resolved) for a in back] == [("late_ticks", True)]


async def test_an_implausible_tick_is_dead_lettered_with_its_reason_on_the_bus(
    nc: Client, provisioned: str, publisher: Publisher
) -> None:
    runner = ComponentRunner(nc, publisher, BarAggregator(BarsConfig(intervals=["1m"])), provisioned)
    task = asyncio.create_task(runner.run())
    good = [tick("A", NOW + i * 10 * S) for i in range(20)]  # 200 s: three 1-minute bars close
    bad = tick("A", 4_102_444_800 * S, recorded_ns=NOW)
    await publisher.publish([*good[:10], bad, *good[10:]])
    letters = await wait_stored(nc, f"{provisioned.upper()}_OPS", f"{provisioned}.ops.deadletter.>", bool)
    bars = [e for e in await stored(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>") if isinstance(e, Bar)]
    runner.stop()
    await task
    (letter,) = letters
    assert isinstance(letter, DeadLetter) and letter.consumer == "bars_md" and "max_future_s" in letter.reason
    assert bad.event_id in letter.reason and len(bars) == 3
