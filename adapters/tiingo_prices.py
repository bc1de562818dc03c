"""Tiingo end-of-day prices: daily bars for the live set.

Documented API (https://www.tiingo.com/documentation/end-of-day):
``GET /tiingo/daily/<ticker>/prices?startDate=YYYY-MM-DD&endDate=YYYY-MM-DD&resampleFreq=daily``
with the token in the ``Authorization: Token <key>`` header. The answer is a JSON array of
``{date, open, high, low, close, volume, adjOpen, adjHigh, adjLow, adjClose, adjVolume, divCash,
splitFactor}``; ``date`` is the trading day at ``T00:00:00.000Z``. Raw prices are as traded;
``adj*`` are split- and dividend-adjusted (CRSP method), the default here so a split is not read
as a crash. Errors carry ``{"detail": ...}``: 401/403 (a refused token) and 404 (an unknown
ticker) stop the feed with one line; 429 and 5xx (and network errors) are retried with
exponential backoff honouring ``Retry-After``, then reported as :class:`SourceUnavailable`.

The token travels only in the header; no message or log carries it.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import msgspec
import structlog

from tapeline.adapters.bar_poll import BarPollFeed, PriceSourceError, SourceUnavailable, vendor_ticker
from tapeline.adapters.config import TiingoPricesConfig
from tapeline.adapters.news.http import error_detail, retry_after_s
from tapeline.schemas.events import Bar
from tapeline.schemas.ids import bar_id

log = structlog.get_logger("tapeline.feed")
VENUE = "tiingo"
DAY_NS = 86_400_000_000_000


class PriceRow(msgspec.Struct, frozen=True, kw_only=True):
    date: str
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    volume: float | None = None
    adjOpen: float | None = None
    adjHigh: float | None = None
    adjLow: float | None = None
    adjClose: float | None = None
    adjVolume: float | None = None


_rows = msgspec.json.Decoder(list[PriceRow])


def _good(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) and v > 0 for v in values)


def bars_from_rows(rows: list[PriceRow], symbol: str, *, adjusted: bool = True, venue: str = VENUE) -> list[Bar]:
    """Daily bars (start 00:00 UTC of ``date``); rows with missing, non-positive or inconsistent
    prices are skipped and counted in the log, never published."""
    now = time.time_ns()
    out: list[Bar] = []
    skipped = 0
    for r in rows:
        if adjusted:
            o, h, lo, c, v = r.adjOpen, r.adjHigh, r.adjLow, r.adjClose, r.adjVolume
        else:
            o, h, lo, c, v = r.open, r.high, r.low, r.close, r.volume
        try:
            d = date.fromisoformat(r.date[:10])
        except ValueError:
            skipped += 1
            continue
        if not _good(o, h, lo, c) or not (lo <= o <= h and lo <= c <= h):  # type: ignore[operator]
            skipped += 1
            continue
        assert o is not None and h is not None and lo is not None and c is not None
        start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000_000
        ts = start + DAY_NS
        out.append(
            Bar(
                event_id=bar_id(symbol, "1d", start, ts),
                ts_event=ts,
                ts_init=now,
                source=venue,
                symbol=symbol,
                interval="1d",
                start_ns=start,
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=max(0.0, v) if v is not None and math.isfinite(v) else 0.0,
                venue=venue,
            )
        )
    if skipped:
        log.warning("tiingo rows skipped", symbol=symbol, skipped=skipped, kept=len(out))
    out.sort(key=lambda b: b.start_ns)
    return out


class TiingoPrices:
    """The client: ``fetch(symbol, days)`` -> daily bars of the last ``days`` (a history Fetch)."""

    def __init__(
        self,
        cfg: TiingoPricesConfig,
        *,
        key: str | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        key = key if key is not None else os.environ.get(cfg.key_env, "")
        if not key:
            raise PriceSourceError(
                f"feeds.tiingo: {cfg.key_env} is not set; export your Tiingo token or put it in .env "
                '(or leave "tiingo" out of [feeds.sources] bars)'
            )
        self.cfg = cfg
        self.clock = clock
        self._headers = {"Authorization": f"Token {key}", "Content-Type": "application/json"}
        self.http = client or httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s)
        self.requests = 0

    def __repr__(self) -> str:
        return f"TiingoPrices(base_url={self.cfg.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def fetch(self, symbol: str, days: int) -> list[Bar]:
        today = datetime.fromtimestamp(self.clock() / 1e9, UTC).date()
        start = today - timedelta(days=days)
        rows = await self.prices(symbol, start, today)
        return bars_from_rows(rows, symbol, adjusted=self.cfg.adjusted)

    async def prices(self, symbol: str, start: date, end: date) -> list[PriceRow]:
        path = f"/tiingo/daily/{vendor_ticker(symbol)}/prices"
        params = {"startDate": start.isoformat(), "endDate": end.isoformat(), "resampleFreq": "daily"}
        body = await self._get(path, params, symbol)
        try:
            return _rows.decode(body)
        except msgspec.ValidationError as e:
            raise SourceUnavailable(f"tiingo: {symbol}: unexpected answer ({e})") from None

    async def _get(self, path: str, params: dict[str, str], symbol: str) -> bytes:
        cfg = self.cfg
        delay = cfg.backoff_initial_s
        for attempt in range(cfg.retries + 1):
            self.requests += 1
            wait = delay
            try:
                resp = await self.http.get(path, params=params, headers=self._headers)
            except httpx.TransportError as e:
                reason = f"network error {type(e).__name__}"
            else:
                status = resp.status_code
                if status < 400:
                    return resp.content
                detail = error_detail(resp)
                if status in (401, 403):
                    raise PriceSourceError(
                        f"tiingo: the API refused the token (HTTP {status} {detail}); check {cfg.key_env} "
                        "in the environment or .env"
                    )
                if status == 404:
                    raise PriceSourceError(
                        f"tiingo: no prices for {symbol!r} (HTTP 404 {detail}); fix the symbol in "
                        "feeds.tiingo.symbols (or the market feed's symbols)"
                    )
                if status != 429 and status < 500:
                    raise PriceSourceError(f"tiingo: {symbol}: HTTP {status} {detail}")
                reason = f"HTTP {status} {detail}"
                hinted = retry_after_s(resp.headers.get("Retry-After"))
                if hinted is not None:
                    wait = max(min(cfg.backoff_max_s, delay), hinted)
            if attempt == cfg.retries:
                raise SourceUnavailable(f"tiingo: {symbol}: failed {attempt + 1} times, last: {reason}")
            wait *= 1 + random.random() * 0.1
            log.warning("tiingo request retried", symbol=symbol, reason=reason, wait_s=round(wait, 2))
            await asyncio.sleep(wait)
            delay = min(cfg.backoff_max_s, delay * 2)
        raise AssertionError("unreachable")


def tiingo_feed(cfg: TiingoPricesConfig, symbols: list[str], **kw: Any) -> BarPollFeed:
    """The live set's Tiingo daily-bar feed."""
    client = TiingoPrices(cfg, **kw)
    return BarPollFeed(
        "tiingo-prices",
        client.fetch,
        symbols,
        warmup_days=cfg.warmup_days,
        poll_days=cfg.poll_days,
        poll_interval_s=cfg.poll_interval_s,
    )
