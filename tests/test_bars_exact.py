"""The bar aggregator's per-tick path, tightened in issue 14 (session 6), emits exactly what it did: a
verbatim copy of the handler as first written is the reference, and every output (bars, alerts, dead
letter reasons) and the state must be equal byte for byte on simulated ticks with late, future-stamped,
quote-only, non-positive and NaN-priced ticks mixed in, over several intervals."""

from __future__ import annotations

import math
import random

import msgspec

from tapeline.adapters.sim import SimFeed
from tapeline.handlers.bars import BarAggregator, BarsConfig, _Open
from tapeline.schemas.components import Rejected
from tapeline.schemas.events import AnyEvent, Event, Tick


class RefBarAggregator(BarAggregator):
    """``BarAggregator.handle`` as first written."""

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Tick):
            return []
        if event.ts_init and event.ts_event - event.ts_init > self.max_future_ns:
            raise Rejected(
                f"ts_event is {(event.ts_event - event.ts_init) / 3.6e12:.1f} h after ts_init "
                f"(limit bars.max_future_s = {self.max_future_ns / 1e9:g} s)"
            )
        price = event.price
        if price <= 0:
            return []
        out: list[Event] = []
        vol = event.volume_real or event.volume
        late = False
        bars = self._s.open.get(event.symbol)
        if bars is None:
            bars = self._s.open[event.symbol] = {}
        for iv, ns in self.intervals:
            start = event.ts_event - event.ts_event % ns
            bar = bars.get(iv)
            if bar is None or start > bar.start:
                if bar is not None:
                    out.append(self._close(event.symbol, iv, ns, bar))
                bars[iv] = _Open(start, price, price, price, price, vol, 1, event.venue)
            elif start < bar.start:
                late = True
            else:
                bar.high = max(bar.high, price)
                bar.low = min(bar.low, price)
                bar.close = price
                bar.volume += vol
                bar.ticks += 1
        if late or self._s.late_since:
            out += self._lateness(event, late)
        return out


def _ticks() -> list[Tick]:
    rng = random.Random(6)
    out = []
    for i, t in enumerate(SimFeed(("NVDA", "ORCL", "AAPL"), ticks=40_000, seed=5).generate()):
        k = rng.random()
        if k < 0.02:  # late: two minutes back (a run of them raises the late alert)
            t = msgspec.structs.replace(t, ts_event=t.ts_event - 120_000_000_000)
        elif k < 0.025:  # quote only: the mid
            t = msgspec.structs.replace(t, last=0.0)
        elif k < 0.03:  # bad prices: NaN everywhere (the price is NaN), a negative trade (the mid), inf
            x = rng.choice((math.nan, -1.0, math.inf))
            t = msgspec.structs.replace(t, last=x, bid=x if x != x else t.bid, ask=x if x != x else t.ask)
        elif k < 0.032:  # stamped far in the future: rejected
            t = msgspec.structs.replace(t, ts_event=t.ts_init + 10**13)
        elif k < 0.035:
            t = msgspec.structs.replace(t, volume_real=0.0)
        if 20_000 <= i < 20_400 and t.symbol == "ORCL":  # a long run of late ticks for one symbol
            t = msgspec.structs.replace(t, ts_event=t.ts_event - 3_600_000_000_000, ts_init=t.ts_init + i * 10**10)
        out.append(t)
    return out


def _outcome(h: BarAggregator, t: Tick) -> bytes:
    try:
        encoded: bytes = msgspec.msgpack.encode(h.handle(t))
    except Rejected as e:
        return f"Rejected: {e}".encode()
    return encoded


def test_every_output_of_the_bar_aggregator_is_identical_to_the_reference() -> None:
    cfg = BarsConfig(intervals=["1m", "5m", "1h"], late_alert_s=60)
    new, ref = BarAggregator(cfg), RefBarAggregator(cfg)
    kinds: dict[bytes, int] = {}
    for t in _ticks():
        got = _outcome(new, t)
        assert got == _outcome(ref, t), t
        kinds[got[:3]] = kinds.get(got[:3], 0) + 1
    assert new.counters == ref.counters and new.counters["late"] > 500
    assert msgspec.msgpack.encode(new._s) == msgspec.msgpack.encode(ref._s)
    assert kinds.get(b"Rej", 0) > 10 and len(kinds) >= 4  # rejections, no output, one bar, several bars/alerts
