"""Polygon-style aggregate bars from CSV/Parquet files: the legacy set's price history.

Two layouts are recognised from the header (names matched case-insensitively, as in ``files``):

* the aggregates API's compact keys, as written to CSV by most Polygon scripts:
  ``ticker, v, vw, o, c, h, l, t, n`` with ``t`` the window **start** in UNIX milliseconds
  (``ticker`` may be absent: the source's ``symbol`` is then used);
* Polygon's flat files (``day_aggs_v1`` / ``minute_aggs_v1``):
  ``ticker, volume, open, close, high, low, window_start, transactions`` with ``window_start`` in
  UNIX nanoseconds.

``vw`` and ``n``/``transactions`` are optional; ``n`` becomes :attr:`Bar.ticks`. A file may hold
many tickers (flat files hold the whole market for a day): ``symbols`` keeps only those.

Daily aggregates are stamped by Polygon at the start of the *New York* trading day (05:00 or 04:00
UTC); a daily bar here starts at 00:00 UTC of that date, as in the daily files, the history store
and the live daily sources (Tiingo, yfinance), so the same day has one bar id everywhere. Intraday
windows keep their exact start.

Rows go through the same validation as the files importer (1-based line numbers and a reason for
every rejected row; a file that cannot be read at all raises :class:`FileImportError`), with
duplicates and out-of-order rows checked per ticker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

import structlog

from tapeline.adapters.files import (
    FileImportError,
    ImportResult,
    Rejection,
    _Bad,
    _empty,
    _fields,
    _num,
    _open_rows,
    _opt,
    file_alert,
    rejection_alert,
    sample,
)
from tapeline.schemas.events import Bar, Event
from tapeline.schemas.ids import bar_id
from tapeline.schemas.intervals import interval_ns

log = structlog.get_logger("tapeline.feed")
DAY_NS = 86_400_000_000_000
NEW_YORK = ZoneInfo("America/New_York")


@dataclass(frozen=True, slots=True)
class _Cols:
    time: str
    scale: int  # to nanoseconds
    open: str
    high: str
    low: str
    close: str
    volume: str | None
    vwap: str | None
    trades: str | None
    ticker: str | None


def _pick(present: set[str], *names: str) -> str | None:
    return next((n for n in names if n in present), None)


def _columns(path: Path, header: list[str]) -> _Cols:
    p = set(header)
    if "windowstart" in p:
        time_col, scale = "windowstart", 1
    elif "t" in p:
        time_col, scale = "t", 1_000_000
    else:
        raise FileImportError(
            f"{path}: not Polygon aggregates: no t (ms) or window_start (ns) column; "
            f"the header reads {sample(','.join(header))}"
        )
    o, h, lo, c = _pick(p, "o", "open"), _pick(p, "h", "high"), _pick(p, "l", "low"), _pick(p, "c", "close")
    if o is None or h is None or lo is None or c is None:
        raise FileImportError(
            f"{path}: Polygon aggregates need o,h,l,c (or open,high,low,close) columns; "
            f"the header reads {sample(','.join(header))}"
        )
    return _Cols(
        time_col,
        scale,
        o,
        h,
        lo,
        c,
        _pick(p, "v", "volume"),
        _pick(p, "vw", "vwap"),
        _pick(p, "n", "transactions"),
        _pick(p, "ticker", "sym", "symbol"),
    )


_EPOCH_ORDINAL = datetime(1970, 1, 1, tzinfo=UTC).toordinal()


def day_start_ns(window_start_ns: int) -> int:
    """00:00 UTC of the New York date a daily aggregate's window starts on."""
    d = datetime.fromtimestamp(window_start_ns // 1_000_000_000, NEW_YORK).toordinal()
    return (d - _EPOCH_ORDINAL) * DAY_NS


def read_polygon(
    path: Path,
    *,
    symbol: str = "",
    symbols: Sequence[str] = (),
    interval: str = "1d",
    venue: str = "polygon",
) -> ImportResult:
    """Bars of a Polygon aggregates file, validated row by row (see the module docstring).

    ``symbol``: the ticker of a file without a ticker column (or to keep only that one);
    ``symbols``: keep only these tickers of a multi-ticker file (empty: all).
    """
    step = interval_ns(interval)
    daily = step >= DAY_NS
    keep = {symbol} if symbol else set(symbols)
    result = ImportResult(events=[], path=str(path))
    with _open_rows(path) as (header, rows):
        if not header:
            return _empty(result, header)
        cols = _columns(path, header)
        if cols.ticker is None and not symbol:
            raise FileImportError(f"{path}: no ticker column; set the source's symbol to say whose bars these are")
        bars: list[Bar] = []
        seen: dict[tuple[str, int], int] = {}
        last: dict[str, int] = {}
        now = time.time_ns()
        for line, values in rows:
            result.rows += 1
            try:
                row = _fields(header, values)
                sym = row[cols.ticker].strip() if cols.ticker else symbol
                if not sym:
                    raise _Bad("empty ticker")
                if keep and sym not in keep:
                    continue
                raw_t = row[cols.time].strip()
                if not raw_t.lstrip("-").isdigit():
                    raise _Bad(f"{cols.time}: not an integer epoch ({sample(raw_t)})")
                t = int(raw_t) * cols.scale
                start = day_start_ns(t) if daily else t
                o = _num(row, cols.open, price=True)
                h = _num(row, cols.high, price=True)
                lo = _num(row, cols.low, price=True)
                c = _num(row, cols.close, price=True)
                v = _opt(row, cols.volume, price=False)
                _opt(row, cols.vwap, price=True)  # validated, not kept (Bar has no VWAP)
                n = _opt(row, cols.trades, price=False)
                if h < lo:
                    raise _Bad(f"high {h} is below low {lo}")
                if not (lo <= o <= h and lo <= c <= h):
                    raise _Bad(f"open {o} or close {c} outside low..high {lo}..{h}")
                if (sym, start) in seen:
                    raise _Bad(f"duplicate bar: {sym} has the same start as line {seen[(sym, start)]}")
                if start < last.get(sym, -(2**63)):
                    raise _Bad(f"out of order: earlier than the previous {sym} row")
            except _Bad as e:
                result.rejected.append(Rejection(line, str(e)))
                continue
            seen[(sym, start)] = line
            last[sym] = start
            ts = start + step
            bars.append(
                Bar(
                    event_id=bar_id(sym, interval, start, ts),
                    ts_event=ts,
                    ts_init=now,
                    source=venue,
                    symbol=sym,
                    interval=interval,
                    start_ns=start,
                    open=o,
                    high=h,
                    low=lo,
                    close=c,
                    volume=v,
                    ticks=int(n),
                    venue=venue,
                )
            )
    bars.sort(key=lambda b: (b.ts_event, b.symbol))
    result.events = bars
    return result if result.rows else _empty(result, header)


@dataclass(frozen=True, slots=True)
class PolygonSource:
    path: Path
    symbol: str = ""
    symbols: tuple[str, ...] = ()
    interval: str = "1d"


class PolygonFeed:
    """Publishes Polygon aggregate files once (the feed protocol), reporting bad rows like ``FileFeed``."""

    batch_safe: ClassVar[bool] = True  # it replays identically: the same start yields the same bursts

    def __init__(self, sources: Sequence[PolygonSource], *, name: str = "polygon", chunk: int = 1000) -> None:
        self.sources = list(sources)
        self.name = name
        self.chunk = chunk
        self.results: list[ImportResult] = []

    def series(self) -> list[tuple[str, str]]:
        """(symbol, interval) of the sources that name their symbol (for the history warm-up)."""
        out = [(s.symbol, s.interval) for s in self.sources if s.symbol]
        out += [(sym, s.interval) for s in self.sources if not s.symbol for sym in s.symbols]
        return list(dict.fromkeys(out))

    async def stream(self) -> AsyncIterator[list[Event]]:
        for src in self.sources:
            try:
                result = read_polygon(src.path, symbol=src.symbol, symbols=src.symbols, interval=src.interval)
            except FileImportError as e:
                log.error("file not imported", feed=self.name, path=str(src.path), reason=str(e))
                yield [file_alert(self.name, str(src.path), "file_unreadable", str(e), severity="critical")]
                continue
            self.results.append(result)
            log.info("polygon file imported", feed=self.name, path=str(src.path), imported=len(result.events),
                     rejected=len(result.rejected))  # fmt: skip
            events: list[Event] = list(result.events)
            for i in range(0, len(events), self.chunk):
                yield events[i : i + self.chunk]
            if result.note:
                yield [
                    file_alert(self.name, result.path, "file_empty", f"{result.path}: {result.note}, nothing imported")
                ]
            if result.rejected:
                yield [rejection_alert(result, self.name)]
