"""Recent bars per symbol, as the scanner, the sizer and the risk gate need them.

A :class:`BarBook` keeps the last ``keep`` bars of one interval per symbol, in event-time order
(an older or repeated bar is ignored and reported), and derives what the risk logic uses: the last
price, one-bar log returns keyed by bar start (so two symbols' returns can be aligned), realised
volatility, the average true range and the average dollar volume. Plain data, so it snapshots.
"""

from __future__ import annotations

import math

import msgspec

from tapeline.schemas.events import Bar
from tapeline.schemas.intervals import interval_ns

YEAR_S = 365.25 * 86400
TRADING_YEAR_S = 252 * 6.5 * 3600  # intraday bars: the trading hours of a US equity year
TRADING_DAYS = 252


def bars_per_year(interval: str) -> float:
    """How many bars of ``interval`` make a year, to annualise a per-bar volatility."""
    s = interval_ns(interval) / 1e9
    return TRADING_DAYS / (s / 86400) if s >= 86400 else TRADING_YEAR_S / s


class Series(msgspec.Struct):
    start: list[int] = []
    close: list[float] = []
    high: list[float] = []
    low: list[float] = []
    volume: list[float] = []
    venue: str = ""


class BarBook(msgspec.Struct):
    keep: int = 64
    series: dict[str, Series] = {}

    def add(self, bar: Bar) -> bool:
        """Take a bar; False if it is not newer than the last one of its symbol or not a usable price."""
        if not (math.isfinite(bar.close) and bar.close > 0 and math.isfinite(bar.high) and math.isfinite(bar.low)):
            return False
        s = self.series.get(bar.symbol)
        if s is None:
            s = self.series[bar.symbol] = Series([], [], [], [], [])
        elif s.start and bar.start_ns <= s.start[-1]:
            return False
        s.venue = bar.venue or s.venue
        s.start.append(bar.start_ns)
        s.close.append(bar.close)
        s.high.append(bar.high)
        s.low.append(bar.low)
        s.volume.append(bar.volume if math.isfinite(bar.volume) and bar.volume > 0 else 0.0)
        if len(s.close) > self.keep:
            for col in (s.start, s.close, s.high, s.low, s.volume):
                del col[0]
        return True

    def price(self, symbol: str) -> float:
        s = self.series.get(symbol)
        return s.close[-1] if s is not None and s.close else 0.0

    def venue(self, symbol: str) -> str:
        s = self.series.get(symbol)
        return s.venue if s is not None else ""

    def returns(self, symbol: str) -> dict[int, float]:
        """One-bar log returns keyed by the start of the bar they end at."""
        s = self.series.get(symbol)
        if s is None:
            return {}
        c = s.close
        return {s.start[i]: math.log(c[i] / c[i - 1]) for i in range(1, len(c))}

    def sigma(self, symbol: str, n: int = 20) -> float:
        """Standard deviation of the last ``n`` one-bar log returns (0 without two of them)."""
        r = list(self.returns(symbol).values())[-n:]
        if len(r) < 2:
            return 0.0
        m = sum(r) / len(r)
        return math.sqrt(sum((x - m) ** 2 for x in r) / (len(r) - 1))

    def atr(self, symbol: str, n: int = 14) -> float:
        """Average true range of the last ``n`` bars (0 without two bars)."""
        s = self.series.get(symbol)
        if s is None or len(s.close) < 2:
            return 0.0
        trs = [
            max(s.high[i] - s.low[i], abs(s.high[i] - s.close[i - 1]), abs(s.low[i] - s.close[i - 1]))
            for i in range(max(1, len(s.close) - n), len(s.close))
        ]
        return sum(trs) / len(trs)

    def dollar_volume(self, symbol: str, n: int = 20) -> float:
        """Average close x volume of the last ``n`` bars."""
        s = self.series.get(symbol)
        if s is None or not s.close:
            return 0.0
        pairs = list(zip(s.close[-n:], s.volume[-n:], strict=True))
        return sum(c * v for c, v in pairs) / len(pairs)
