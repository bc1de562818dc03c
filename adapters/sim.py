"""A seeded market simulator: N symbols, geometric random walk, spread, volume, irregular gaps.

Event time starts at ``start_ns`` and advances by exponential gaps (mean ``mean_gap_ms``), so a
demo produces a day of realistic ticks in seconds of wall time. Same seed, same ticks, same ids.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import ClassVar

from tapeline.schemas.events import Tick
from tapeline.schemas.ids import tick_id

DEFAULT_SYMBOLS = ("NVDA", "ORCL", "AAPL", "MSFT", "BRK.B")
DEFAULT_START_NS = 1_767_225_600_000_000_000  # 2026-01-01 00:00 UTC


@dataclass(slots=True)
class _Sym:
    symbol: str
    price: float
    vol: float  # per-sqrt-second volatility
    spread_bp: float


class SimFeed:
    """Yields lists of ticks; ``ticks`` in total, ``chunk`` per list."""

    batch_safe: ClassVar[bool] = True  # it replays identically: the same start yields the same bursts

    def __init__(
        self,
        symbols: tuple[str, ...] | list[str] = DEFAULT_SYMBOLS,
        *,
        seed: int = 7,
        ticks: int = 100_000,
        start_ns: int = DEFAULT_START_NS,
        mean_gap_ms: float = 250.0,
        chunk: int = 500,
        venue: str = "sim",
    ) -> None:
        if not symbols:
            raise ValueError("the simulator needs at least one symbol")
        self.name = venue
        self.venue = venue
        self.ticks = ticks
        self.chunk = chunk
        self.mean_gap_ms = mean_gap_ms
        self.rng = random.Random(seed)
        self.now = start_ns
        self.syms = [
            _Sym(
                s,
                price=self.rng.uniform(20, 500),
                vol=self.rng.uniform(0.0002, 0.0008),
                spread_bp=self.rng.uniform(1, 8),
            )
            for s in symbols
        ]
        self._last: dict[str, tuple[int, int]] = {}  # symbol -> (ms, seq within that ms)

    def generate(self) -> Iterator[Tick]:
        rng = self.rng
        for _ in range(self.ticks):
            gap_ms = max(1, int(rng.expovariate(1 / self.mean_gap_ms)))
            self.now += gap_ms * 1_000_000
            s = self.syms[rng.randrange(len(self.syms))]
            drift = rng.gauss(0, s.vol * math.sqrt(gap_ms / 1000) * 10)
            s.price = max(0.01, s.price * math.exp(drift))
            half = s.price * s.spread_bp / 20_000
            bid, ask = round(s.price - half, 4), round(s.price + half, 4)
            last = round(rng.uniform(bid, ask), 4)
            volume = float(max(1, int(rng.paretovariate(1.5) * 10)))
            ms = self.now // 1_000_000
            last_ms, last_seq = self._last.get(s.symbol, (-1, -1))
            seq = last_seq + 1 if last_ms == ms else 0
            self._last[s.symbol] = (ms, seq)
            yield Tick(
                event_id=tick_id(self.venue, s.symbol, self.now, seq),
                ts_event=self.now,
                ts_init=time.time_ns(),
                source=self.venue,
                venue=self.venue,
                symbol=s.symbol,
                bid=bid,
                ask=ask,
                last=last,
                volume=volume,
                volume_real=volume,
                seq=seq,
            )

    async def stream(self) -> AsyncIterator[list[Tick]]:
        chunk: list[Tick] = []
        for t in self.generate():
            chunk.append(t)
            if len(chunk) >= self.chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
