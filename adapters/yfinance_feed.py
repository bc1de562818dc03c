"""yfinance bars for the live set, with its caches in the data directory.

yfinance keeps SQLite caches (ticker time zones, cookies, ISINs) in one per-user folder by
default; several processes (two feeds, a test run beside a live one) opening them at once crash
with ``database is locked``. :func:`init_cache` points every cache at ``<data_dir>/yfinance``
(``set_tz_cache_location``, which in yfinance >= 0.2.4x moves the cookie and ISIN caches too) before
any download, so each data directory has its own.

The network is one small function, :func:`download` (``Ticker.history``, run in a thread); the
rest is :func:`bars_from_frame`, which turns a DataFrame shaped like yfinance's into bars: a
DatetimeIndex (tz-aware in the exchange's zone, or naive) and ``Open, High, Low, Close, Volume``
columns (single level, or yf.download's (Price, Ticker) MultiIndex). Daily bars start at 00:00 UTC
of their exchange date (one id with the same day from Tiingo, files or the store); intraday bars
keep their exact UTC start. NaN rows (Yahoo's empty holidays) and inconsistent rows are skipped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from tapeline.adapters.bar_poll import BarPollFeed, SourceUnavailable, vendor_ticker
from tapeline.adapters.config import YFinanceConfig
from tapeline.schemas.events import Bar
from tapeline.schemas.ids import bar_id
from tapeline.schemas.intervals import interval_ns

log = structlog.get_logger("tapeline.feed")
VENUE = "yfinance"
DAY_NS = 86_400_000_000_000
Download = Callable[[str, date, date, str, bool], Any]


def init_cache(cache_dir: Path) -> Path:
    """Every yfinance SQLite cache under ``cache_dir`` (created), before any download."""
    import yfinance as yf

    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    yf.set_tz_cache_location(str(cache_dir))
    return cache_dir


def download(ticker: str, start: date, end: date, interval: str, adjusted: bool) -> Any:
    """The one network call: Yahoo's bars of ``ticker`` in [start, end) as yfinance's DataFrame."""
    import yfinance as yf

    return yf.Ticker(ticker).history(
        start=start.isoformat(),
        end=end.isoformat(),
        interval=interval,
        auto_adjust=adjusted,
        actions=False,
        raise_errors=True,
    )


def _column(frame: Any, name: str, ticker: str) -> Any:
    cols = frame.columns
    if getattr(cols, "nlevels", 1) > 1:  # yf.download: (Price, Ticker)
        for key in ((name, ticker), (ticker, name)):
            if key in cols:
                return frame[key]
        return frame[name].iloc[:, 0]
    return frame[name]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def bars_from_frame(frame: Any, symbol: str, interval: str, *, ticker: str = "", venue: str = VENUE) -> list[Bar]:
    """Bars from a DataFrame shaped like yfinance's (see the module docstring)."""
    if frame is None or len(frame) == 0:
        return []
    step = interval_ns(interval)
    daily = step >= DAY_NS
    ticker = ticker or vendor_ticker(symbol)
    cols = {n: _column(frame, n, ticker).tolist() for n in ("Open", "High", "Low", "Close")}
    try:
        volume = _column(frame, "Volume", ticker).tolist()
    except KeyError:
        volume = [0.0] * len(frame)
    now = time.time_ns()
    out: list[Bar] = []
    skipped = 0
    for i, stamp in enumerate(frame.index):
        o, h, lo, c = (cols[n][i] for n in ("Open", "High", "Low", "Close"))
        if not all(_finite(x) and x > 0 for x in (o, h, lo, c)) or not (lo <= o <= h and lo <= c <= h):
            skipped += 1
            continue
        if daily:
            d = stamp.date()  # the exchange's date, whatever the index's zone
            start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000_000
        else:
            ts = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
            start = int(ts.value)
        v = volume[i]
        out.append(
            Bar(
                event_id=bar_id(symbol, interval, start, start + step),
                ts_event=start + step,
                ts_init=now,
                source=venue,
                symbol=symbol,
                interval=interval,
                start_ns=start,
                open=float(o),
                high=float(h),
                low=float(lo),
                close=float(c),
                volume=float(v) if _finite(v) and v > 0 else 0.0,
                venue=venue,
            )
        )
    if skipped:
        log.info("yfinance rows skipped", symbol=symbol, skipped=skipped, kept=len(out))
    out.sort(key=lambda b: b.start_ns)
    return out


class YFinancePrices:
    """``fetch(symbol, days)`` -> bars of the last ``days`` (a history Fetch); the cache is set up first."""

    def __init__(
        self,
        cfg: YFinanceConfig,
        cache_dir: Path,
        *,
        download: Download = download,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.cache_dir = init_cache(cache_dir)
        self.download = download
        self.clock = clock

    async def fetch(self, symbol: str, days: int) -> list[Bar]:
        today = datetime.fromtimestamp(self.clock() / 1e9, UTC).date()
        start, end = today - timedelta(days=days), today + timedelta(days=1)
        ticker = vendor_ticker(symbol)
        try:
            frame = await asyncio.to_thread(self.download, ticker, start, end, self.cfg.interval, self.cfg.adjusted)
        except Exception as e:  # yfinance raises many kinds (network, Yahoo's answers); all mean "not now"
            raise SourceUnavailable(f"yfinance: {symbol}: {type(e).__name__}: {' '.join(str(e).split())[:160]}") from e
        return bars_from_frame(frame, symbol, self.cfg.interval, ticker=ticker)


def yfinance_feed(cfg: YFinanceConfig, symbols: list[str], data_dir: Path, **kw: Any) -> BarPollFeed:
    """The live set's yfinance feed; its caches in ``cfg.cache_dir`` or ``<data_dir>/yfinance``."""
    client = YFinancePrices(cfg, Path(cfg.cache_dir) if cfg.cache_dir else Path(data_dir) / "yfinance", **kw)
    return BarPollFeed(
        "yfinance",
        client.fetch,
        symbols,
        interval=cfg.interval,
        warmup_days=cfg.warmup_days,
        poll_days=cfg.poll_days,
        poll_interval_s=cfg.poll_interval_s,
    )
