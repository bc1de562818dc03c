"""Tick -> bar aggregation on event time, for any set of intervals.

A bar closes when the first tick at or after its end arrives (no wall clock, so replay gives the
same bars). Empty intervals produce no bar. A tick older than the open bar is *late*: counted
(``tapeline_component_events_total{component="bars",outcome="late"}``) and ignored; a symbol that
has had only late ticks for ``late_alert_s`` of event time raises an alert (resolved by its next
on-time tick). A tick stamped more than ``max_future_s`` after it was recorded (``ts_init``) is
implausible (a clock gone wrong, a year-2100 timestamp) and is rejected: the runner dead-letters it
with the reason, so it can never hold a symbol's bars hostage.
State (the open bar per symbol and interval) has no time bound, so it is snapshotted.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Rejected, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, Bar, Event, Tick
from tapeline.schemas.intervals import interval_ns

Positive = Annotated[float, msgspec.Meta(gt=0)]


class BarsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    intervals: list[str] = msgspec.field(default_factory=lambda: ["1m"])
    max_future_s: Positive = 3600.0  # ts_event later than ts_init by more than this: rejected
    late_alert_s: Positive = 600.0  # only late ticks for this long (event time): alert

    def __post_init__(self) -> None:  # messages name the key within [bars]; load_settings adds the section
        if not self.intervals:
            raise ValueError('intervals: list at least one interval, e.g. ["1m"]')
        for iv in self.intervals:
            try:
                interval_ns(iv)
            except ValueError as e:
                raise ValueError(f"intervals: {e}") from None


class _Open(msgspec.Struct):
    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int
    venue: str


class _State(msgspec.Struct):
    open: dict[str, dict[str, _Open]]  # symbol -> interval -> open bar
    late_since: dict[str, int]  # symbol -> ts_event of its first late tick in the current run of late ones
    alerted: list[str]


class BarAggregator(Handler):
    name: ClassVar[str] = "bars"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = BarsConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Bar, Alert)
    consumes = (Consumes(Tick),)
    state = Snapshot()
    urgent = True  # on the tick -> decision path: served first in its process

    def __init__(self, config: BarsConfig | None = None) -> None:
        super().__init__(config)
        cfg: BarsConfig = self.config
        self.intervals = [(iv, interval_ns(iv)) for iv in cfg.intervals]
        self.max_future_ns = int(cfg.max_future_s * 1e9)
        self.late_alert_ns = int(cfg.late_alert_s * 1e9)
        self._s = _State({}, {}, [])

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Tick):
            return []
        ts = event.ts_event
        if event.ts_init and ts - event.ts_init > self.max_future_ns:
            raise Rejected(
                f"ts_event is {(ts - event.ts_init) / 3.6e12:.1f} h after ts_init "
                f"(limit bars.max_future_s = {self.max_future_ns / 1e9:g} s)"
            )
        price = event.price
        if price <= 0:
            return []
        out: list[Event] = []
        vol = event.volume_real or event.volume
        late = False
        symbol = event.symbol
        bars = self._s.open.get(symbol)
        if bars is None:
            bars = self._s.open[symbol] = {}
        for iv, ns in self.intervals:  # the per-tick path: locals, and comparisons where max()/min() would call
            start = ts - ts % ns
            bar = bars.get(iv)
            if bar is None or start > bar.start:
                if bar is not None:
                    out.append(self._close(symbol, iv, ns, bar))
                bars[iv] = _Open(start, price, price, price, price, vol, 1, event.venue)
            elif start < bar.start:
                late = True
            else:
                if price > bar.high:  # max(bar.high, price), NaN included
                    bar.high = price
                if price < bar.low:
                    bar.low = price
                bar.close = price
                bar.volume += vol
                bar.ticks += 1
        if late or self._s.late_since:  # the common case, on time with no symbol late, costs nothing more
            out += self._lateness(event, late)
        return out

    def _lateness(self, tick: Tick, late: bool) -> list[Event]:
        sym = tick.symbol
        if late:
            self.counters["late"] = self.counters.get("late", 0) + 1
            first = self._s.late_since.setdefault(sym, tick.ts_init or tick.ts_event)
            now = tick.ts_init or tick.ts_event
            if now - first >= self.late_alert_ns and sym not in self._s.alerted:
                self._s.alerted.append(sym)
                return [self._alert(tick, False, f"{sym}: only late ticks for {(now - first) / 6e10:.0f} min")]
            return []
        self._s.late_since.pop(sym, None)
        if sym in self._s.alerted:
            self._s.alerted.remove(sym)
            return [self._alert(tick, True, f"{sym}: ticks are on time again")]
        return []

    @staticmethod
    def _alert(tick: Tick, resolved: bool, message: str) -> Alert:
        return draft(
            Alert,
            ts_event=tick.ts_event,
            severity="info" if resolved else "warning",
            kind="late_ticks",
            key=f"bars:late_ticks:{tick.symbol}",
            message=message,
            resolved=resolved,
            feed=tick.venue,
            symbol=tick.symbol,
        )

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

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._s)

    def restore(self, data: bytes) -> None:
        self._s = msgspec.msgpack.decode(data, type=_State)
