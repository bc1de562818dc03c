"""Tick -> bar aggregation on event time, for any set of intervals.

A bar closes when the first tick at or after its end arrives (no wall clock, so replay gives the
same bars). Empty intervals produce no bar; a tick older than the open bar is late and ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.base import Handler, draft
from schemas.events import AnyEvent, Bar, Event, Tick
from schemas.intervals import interval_ns


class _Open:
    __slots__ = ("close", "high", "low", "open", "start", "ticks", "venue", "volume")

    def __init__(self, start: int, price: float, volume: float, venue: str) -> None:
        self.start = start
        self.open = self.high = self.low = self.close = price
        self.volume = volume
        self.ticks = 1
        self.venue = venue


class BarAggregator(Handler):
    name = "bars"
    version = 1
    outputs = ("md.bar.>",)

    def __init__(self, intervals: Sequence[str] = ("1m",)) -> None:
        self.intervals = [(iv, interval_ns(iv)) for iv in intervals]
        self.subjects = ("md.tick.>",)
        self.warmup_s = 2 * max(ns for _, ns in self.intervals) / 1e9
        self._open: dict[tuple[str, str], _Open] = {}
        self.late = 0

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Tick):
            return []
        price = event.price
        if price <= 0:
            return []
        out: list[Event] = []
        vol = event.volume_real or event.volume
        for iv, ns in self.intervals:
            start = event.ts_event - event.ts_event % ns
            key = (event.symbol, iv)
            bar = self._open.get(key)
            if bar is None or start > bar.start:
                if bar is not None:
                    out.append(self._close(event.symbol, iv, ns, bar))
                self._open[key] = _Open(start, price, vol, event.venue)
            elif start < bar.start:
                self.late += 1
            else:
                bar.high = max(bar.high, price)
                bar.low = min(bar.low, price)
                bar.close = price
                bar.volume += vol
                bar.ticks += 1
        return out

    @staticmethod
    def _close(symbol: str, iv: str, ns: int, b: _Open) -> Bar:
        return draft(
            Bar,
            ts_event=b.start + ns,
            symbol=symbol,
            interval=iv,
            start_ns=b.start,
            open=b.open,
            high=b.high,
            low=b.low,
            close=b.close,
            volume=b.volume,
            ticks=b.ticks,
            venue=b.venue,
        )
