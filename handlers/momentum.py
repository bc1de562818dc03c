"""Momentum signal: the N-bar return measured in units of its own volatility.

z = r_N / (sigma * sqrt(N)) with sigma the stdev of one-bar log returns over the window;
strength = tanh(z / 2) in [-1, 1]; confidence grows with |z| and saturates at |z| = 3.
Uses bar closes as delivered (for daily files: the unadjusted Close, see adapters.files).
"""

from __future__ import annotations

import itertools
import math
from collections import deque

from handlers.base import Handler, draft
from schemas.events import AnyEvent, Bar, Event, Signal
from schemas.intervals import interval_ns


class MomentumSignal(Handler):
    name = "momentum"
    version = 1
    outputs = ("intel.signal.>",)

    def __init__(self, window: int = 20, interval: str = "1m", neutral_band: float = 0.15) -> None:
        if window < 2:
            raise ValueError(f"momentum window must be at least 2 bars, got {window}")
        self.window = window
        self.interval = interval
        self.neutral_band = neutral_band
        self.subjects = (f"md.bar.{interval}.>",)
        self.warmup_s = 2 * (window + 1) * interval_ns(interval) / 1e9
        self._closes: dict[str, deque[float]] = {}

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Bar) or event.interval != self.interval or event.close <= 0:
            return []
        closes = self._closes.setdefault(event.symbol, deque(maxlen=self.window + 1))
        closes.append(event.close)
        if len(closes) <= self.window:
            return []
        c = list(closes)
        rets = [math.log(b / a) for a, b in itertools.pairwise(c)]
        mean = sum(rets) / len(rets)
        sigma = math.sqrt(sum((r - mean) ** 2 for r in rets) / max(1, len(rets) - 1))
        total = math.log(c[-1] / c[0])
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
