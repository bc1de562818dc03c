"""A feed of vendor bars (Tiingo daily, yfinance): the last ``warmup_days`` on start, then a poll.

Vendors answer "bars of symbol S for the last N days" (``fetch(symbol, days)``, the same shape as
the history store's warm-up fetch). On start each symbol's last ``warmup_days`` are published (the
30-day warm-up of the live set); every ``poll_interval_s`` the last ``poll_days`` are asked again
and only bars that are new or changed are published. Bar ids depend on (symbol, interval, start)
only, so a vendor bar and the same day from a file or the store are one event.

A vendor that keeps failing (429/5xx/network after its retries: :class:`SourceUnavailable`) raises
a warning ``source_unavailable`` alert for the symbol and is asked again at the next poll (resolved
when it answers). A configuration problem (a refused key, an unknown ticker:
:class:`PriceSourceError`) stops the feed with one line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import structlog

from tapeline.adapters.alerts import AlertLatch
from tapeline.schemas.events import Bar, Event

log = structlog.get_logger("tapeline.feed")
Fetch = Callable[[str, int], Awaitable[list[Bar]]]


class PriceSourceError(ValueError):
    """A price vendor cannot be used as configured (missing/refused key, unknown ticker); one line."""


class SourceUnavailable(RuntimeError):
    """The vendor kept failing (429/5xx/network) after every retry; asked again at the next poll."""


def vendor_ticker(symbol: str) -> str:
    """Share classes as Tiingo and Yahoo spell them: ``BRK.B`` -> ``BRK-B``."""
    return symbol.replace(".", "-")


class BarPollFeed:
    """Warm-up then polls of one vendor's bars for a set of symbols (the feed protocol)."""

    batch_safe: ClassVar[bool] = True  # no ticks: nothing of it goes in batch messages (adapters.runner)

    def __init__(
        self,
        name: str,
        fetch: Fetch,
        symbols: Sequence[str],
        *,
        interval: str = "1d",
        warmup_days: int = 30,
        poll_days: int = 5,
        poll_interval_s: float = 3600.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.name = name
        self.fetch = fetch
        self.symbols = list(symbols)
        self.interval = interval
        self.warmup_days = warmup_days
        self.poll_days = poll_days
        self.poll_interval_s = poll_interval_s
        self.latch = AlertLatch(name, clock)
        self.published: dict[tuple[str, str, int], tuple[float, ...]] = {}
        self.polls = 0

    def series(self) -> list[tuple[str, str]]:
        """(symbol, interval) this feed delivers (for the history store's warm-up)."""
        return [(s, self.interval) for s in self.symbols]

    def _fresh(self, bars: list[Bar]) -> list[Event]:
        out: list[Event] = []
        for b in bars:
            key = (b.symbol, b.interval, b.start_ns)
            values = (b.open, b.high, b.low, b.close, b.volume)
            if self.published.get(key) != values:
                self.published[key] = values
                out.append(b)
        return out

    async def poll(self, days: int) -> list[Event]:
        """One round over every symbol: new or changed bars, and alerts for vendors that failed."""
        out: list[Event] = []
        for sym in self.symbols:
            try:
                bars = await self.fetch(sym, days)
            except SourceUnavailable as e:
                log.warning("price source unavailable", feed=self.name, symbol=sym, error=str(e))
                out += self.latch.raise_("source_unavailable", str(e), severity="warning", symbol=sym)
                continue
            out += self.latch.resolve("source_unavailable", f"{sym}: {self.name} answers again", symbol=sym)
            out += self._fresh(bars)
        self.polls += 1
        return out

    async def stream(self) -> AsyncIterator[list[Event]]:
        days = self.warmup_days
        while True:
            events = await self.poll(days)
            log.info("vendor bars", feed=self.name, poll=self.polls, days=days, events=len(events))
            if events:
                yield events
            days = self.poll_days
            await asyncio.sleep(self.poll_interval_s)
