"""The momentum handler keeps each close's log return instead of recomputing the window's (issue 14,
session 8): a verbatim copy of ``MomentumSignal.handle`` as it was is the reference, and every Signal
(as bytes), every exception and the snapshot must be the same, on simulated bars and on random
walks bent into edge cases (NaN, inf, zero and negative closes, magnitudes that underflow a ratio to 0
so math.log raises, one-ulp moves, other intervals), across a snapshot and restore mid-stream."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import msgspec
import pytest

from tapeline.adapters.sim import SimFeed
from tapeline.handlers import momentum
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.momentum import MomentumConfig, MomentumSignal
from tapeline.schemas.components import draft
from tapeline.schemas.events import AnyEvent, Bar, Event, Signal

T0 = 1_767_225_600_000_000_000
MIN_NS = 60_000_000_000
_enc = msgspec.json.Encoder()


class Reference(MomentumSignal):
    """``handle`` as it was before session 8 (handlers/momentum.py), verbatim."""

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Bar) or event.interval != self.interval or event.close <= 0:
            return []
        closes = self._closes.setdefault(event.symbol, [])
        closes.append(event.close)
        if len(closes) > self.window + 1:
            del closes[0]
        if len(closes) <= self.window:
            return []
        rets = [math.log(b / a) for a, b in itertools.pairwise(closes)]
        mean = sum(rets) / len(rets)
        sigma = math.sqrt(sum((r - mean) ** 2 for r in rets) / max(1, len(rets) - 1))
        total = math.log(closes[-1] / closes[0])
        z = total / (sigma * math.sqrt(self.window)) if sigma > 0 else 0.0
        strength = math.tanh(z / 2)
        direction = "NEUTRAL" if abs(strength) < self.neutral_band else ("BULLISH" if strength > 0 else "BEARISH")
        return [
            draft(
                Signal,
                ts_event=event.ts_event,
                symbol=event.symbol,
                agent="momentum",
                domain="technical",
                direction=direction,
                strength=round(strength, 6),
                confidence=round(min(1.0, abs(z) / 3), 6),
                summary=f"{self.window}-bar return {math.expm1(total):+.2%}, z={z:+.2f}",
                key_factors=[f"return_{self.window}={math.expm1(total):+.4f}", f"volatility={sigma:.5f}"],
                metrics={"z": round(z, 6), "return": round(math.expm1(total), 8), "volatility": round(sigma, 8)},
            )
        ]


def bar(symbol: str, i: int, close: float, interval: str = "1m") -> Bar:
    return Bar(
        event_id=f"b{i}",
        ts_event=T0 + i * MIN_NS,
        ts_init=0,
        source="test",
        symbol=symbol,
        interval=interval,
        start_ns=T0 + (i - 1) * MIN_NS,
        open=close,
        high=close,
        low=close,
        close=close,
    )


def edge_bars(seed: int, n: int) -> Iterator[Bar]:
    rng = random.Random(seed)
    price = {s: 10 ** rng.uniform(-2, 4) for s in ("NVDA", "EURUSD", "BRK.B")}
    for i in range(n):
        sym = rng.choice(list(price))
        r = rng.random()
        if r < 0.02:
            close = rng.choice([float("nan"), float("inf"), 0.0, -1.0, -0.0, 5e-324, 1e-300, 1e300, 1.7e308])
        elif r < 0.05:
            close = math.nextafter(price[sym], math.inf)
        elif r < 0.08:
            close = price[sym]  # flat
        else:
            price[sym] *= math.exp(rng.gauss(0, 0.01))
            close = price[sym]
        yield bar(sym, i, close, rng.choice(["1m"] * 9 + ["5m"]))


def sim_bars() -> list[Bar]:
    agg = BarAggregator()
    ticks = SimFeed(["NVDA", "AAPL", "BRK.B"], ticks=30_000, seed=4).generate()
    return [b for t in ticks for b in agg.handle(t) if isinstance(b, Bar)]


def _outcome(h: MomentumSignal, b: Bar) -> bytes | tuple[type, str]:
    try:
        return _enc.encode(h.handle(b))
    except Exception as e:  # compared: both must raise the same
        return type(e), str(e)


def _no_round(x: float, ndigits: int | None = None) -> float:
    return x


@pytest.mark.parametrize("window", [2, 5, 20])
@pytest.mark.parametrize("rounded", [True, False])
def test_same_signals_as_before(monkeypatch: pytest.MonkeyPatch, window: int, rounded: bool) -> None:
    """Unrounded too (``round`` is the identity in both modules): the outputs round to 6-8 digits,
    which would hide a last-bit difference in z, sigma or the return."""
    if not rounded:
        monkeypatch.setattr(momentum, "round", _no_round, raising=False)
        monkeypatch.setitem(globals(), "round", _no_round)
    streams = [sim_bars(), *(list(edge_bars(seed, 1500)) for seed in range(6))]
    emitted = raised = 0
    for bars in streams:
        cfg = MomentumConfig(interval="1m", window=window)
        new, ref = MomentumSignal(cfg), Reference(cfg)
        for i, b in enumerate(bars):
            if i == len(bars) // 2:  # a restart: both restored from their own snapshot
                assert new.snapshot() == ref.snapshot()
                new, ref, data = MomentumSignal(cfg), Reference(cfg), new.snapshot()
                new.restore(data)
                ref.restore(data)
            a, r = _outcome(new, b), _outcome(ref, b)
            assert a == r, (i, b)
            emitted += isinstance(a, bytes) and a != b"[]"
            raised += isinstance(a, tuple)
        assert new.snapshot() == ref.snapshot()
    assert emitted > 1000 and raised > 0  # signals, and math.log's ValueError reached in both
