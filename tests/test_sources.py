"""The rest of the source set: Polygon aggregate files, Tiingo daily prices, yfinance bars."""

from __future__ import annotations

import csv
import gzip
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pandas as pd
import pytest

from tapeline.adapters.bar_poll import BarPollFeed, PriceSourceError, SourceUnavailable
from tapeline.adapters.config import TiingoPricesConfig, YFinanceConfig
from tapeline.adapters.files import FileImportError, read_bars
from tapeline.adapters.polygon import PolygonFeed, PolygonSource, read_polygon
from tapeline.adapters.tiingo_prices import TiingoPrices
from tapeline.adapters.yfinance_feed import YFinancePrices, bars_from_frame
from tapeline.schemas.events import Alert, Bar
from tests.standins.tiingo_prices import Scripted, TiingoPricesStandIn, price_row

NS = 1_000_000_000
DAY = 86_400 * NS
NY = ZoneInfo("America/New_York")
TOKEN = "tg-prices-secret-0003"


def _polygon_from_daily(src: Path, dst: Path, ticker: str, *, flat: bool = False) -> int:
    """Write a real daily file as Polygon aggregates: t = the New York midnight the day starts at."""
    n = 0
    with src.open() as fh, dst.open("w", newline="") as out:
        w = csv.writer(out)
        w.writerow(
            ["ticker", "volume", "open", "close", "high", "low", "window_start", "transactions"]
            if flat
            else ["ticker", "v", "vw", "o", "c", "h", "l", "t", "n"]
        )
        for r in csv.DictReader(fh):
            d = date.fromisoformat(r["Date"])
            start_ms = int(datetime(d.year, d.month, d.day, tzinfo=NY).timestamp() * 1000)
            o, h, lo, c, v = r["Open"], r["High"], r["Low"], r["Close"], r["Volume"]
            if flat:
                w.writerow([ticker, v, o, c, h, lo, start_ms * 1_000_000, 1000 + n])
            else:
                w.writerow([ticker, v, c, o, c, h, lo, start_ms, 1000 + n])
            n += 1
    return n


# ---------------------------------------------------------------- Polygon


@pytest.mark.parametrize("flat", [False, True])
def test_polygon_daily_aggregates_match_the_daily_file(tmp_path: Path, shared_data: Path, flat: bool) -> None:
    src = shared_data / "bars" / "nvda-daily-1999-2014.csv"
    path = tmp_path / "nvda-aggs.csv"
    rows = _polygon_from_daily(src, path, "NVDA", flat=flat)
    r = read_polygon(path)
    assert not r.rejected and r.rows == rows == 4012
    want = read_bars(src, "NVDA").events
    # daily windows (04:00/05:00 UTC, New York midnight) become 00:00 UTC bars: the same ids as the file
    assert [b.event_id for b in r.events] == [b.event_id for b in want]
    first = r.events[0]
    assert isinstance(first, Bar) and first.venue == "polygon"
    assert (first.open, first.close, first.volume, first.ticks) == (1.75, 1.640625, 67867200, 1000)
    assert first.start_ns == 916963200 * NS  # 1999-01-22 00:00 UTC


def test_polygon_rejects_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    t0 = 1_704_171_600_000  # 2024-01-02 00:00 New York, in ms
    lines = [
        "ticker,v,vw,o,c,h,l,t,n",
        f"AAPL,100,10,10,10.5,11,9.5,{t0},5",
        f"MSFT,200,20,20,21,22,19,{t0},6",
        f"AAPL,100,10,10,10.5,11,9.5,{t0},5",  # 4: duplicate
        f"AAPL,100,10,10,12,11,9.5,{t0 + 86_400_000},5",  # 5: close above high
        "AAPL,100,10,10,10.5,11,9.5,2024-01-04,5",  # 6: not an epoch
        f"AAPL,-1,10,10,10.5,11,9.5,{t0 + 3 * 86_400_000},5",  # 7: negative volume
        f"AAPL,100,10,nan,10.5,11,9.5,{t0 + 4 * 86_400_000},5",  # 8: NaN
        f"AAPL,100,10,10,10.5,11,9.5,{t0 + 6 * 86_400_000},5",
        f"AAPL,100,10,10,10.5,11,9.5,{t0 + 5 * 86_400_000},5",  # 10: out of order for AAPL
        f"MSFT,200,20,20,21,22,19,{t0 + 86_400_000}",  # 11: a field short
    ]
    path = tmp_path / "aggs.csv"
    path.write_text("\n".join(lines) + "\n")
    r = read_polygon(path)
    assert [(x.line, x.reason.split(":")[0].split(" ")[0]) for x in r.rejected] == [
        (4, "duplicate"),
        (5, "open"),
        (6, "t"),
        (7, "v"),
        (8, "o"),
        (10, "out"),
        (11, "expected"),
    ]
    assert sorted((b.symbol, b.start_ns) for b in r.events) == [
        ("AAPL", 1_704_153_600 * NS),
        ("AAPL", 1_704_153_600 * NS + 6 * DAY),
        ("MSFT", 1_704_153_600 * NS),
    ]
    only = read_polygon(path, symbols=["MSFT"])
    assert {b.symbol for b in only.events} == {"MSFT"}


def test_polygon_minute_windows_keep_their_start_and_bad_files_fail_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv.gz"
    t0 = 1_704_205_800_000  # 2024-01-02 14:30 UTC
    with gzip.open(path, "wt") as fh:
        fh.write("v,o,c,h,l,t\n" + "".join(f"10,5,5,5,5,{t0 + i * 60_000}\n" for i in range(3)))
    with pytest.raises(FileImportError, match="no ticker column"):
        read_polygon(path, interval="1m")
    r = read_polygon(path, symbol="ES", interval="1m")
    assert [b.start_ns for b in r.events] == [(t0 + i * 60_000) * 1_000_000 for i in range(3)]
    assert r.events[0].ts_event == r.events[0].start_ns + 60 * NS
    bad = tmp_path / "bad.csv"
    bad.write_text("date,open,high,low,close\n2024-01-02,1,1,1,1\n")
    with pytest.raises(FileImportError) as e:
        read_polygon(bad, symbol="X")
    assert "\n" not in str(e.value) and "no t (ms) or window_start" in str(e.value)


async def test_polygon_feed_reports_rejections_and_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("ticker,o,h,l,c,t\nX,1,1,1,1,1704171600000\nX,1,1,1,zero,1704258000000\n")
    feed = PolygonFeed([PolygonSource(good), PolygonSource(tmp_path / "b.zip")])
    (tmp_path / "b.zip").write_bytes(b"PK\x03\x04rest")
    out = [e for batch in [b async for b in feed.stream()] for e in batch]
    bars = [e for e in out if isinstance(e, Bar)]
    kinds = [e.kind for e in out if isinstance(e, Alert)]
    assert len(bars) == 1 and kinds == ["rows_rejected", "file_unreadable"]


# ---------------------------------------------------------------- Tiingo


def _cfg(url: str, **kw: Any) -> TiingoPricesConfig:
    return TiingoPricesConfig(base_url=url, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


NOW = int(datetime(2024, 1, 10, 21, tzinfo=UTC).timestamp()) * NS


async def test_tiingo_daily_prices_request_and_normalisation() -> None:
    async with TiingoPricesStandIn() as api:
        days = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"]
        api.prices["brk-b"] = [price_row(d, 100.0 + i, split=2.0) for i, d in enumerate(days)]
        api.prices["brk-b"].insert(4, {**price_row("2024-01-06", 1.0), "adjHigh": None})  # a bad row: skipped
        client = TiingoPrices(_cfg(api.url), key=TOKEN, clock=lambda: NOW)
        bars = await client.fetch("BRK.B", 7)
        req = api.requests[-1]
        assert req.path == "/tiingo/daily/BRK-B/prices"
        assert req.query == {"startDate": "2024-01-03", "endDate": "2024-01-10", "resampleFreq": "daily"}
        assert req.headers["authorization"] == f"Token {TOKEN}"
        assert [b.start_ns for b in bars] == [
            int(datetime.fromisoformat(d + "T00:00:00+00:00").timestamp()) * NS for d in days[1:]
        ]
        b = bars[0]
        assert (b.symbol, b.interval, b.venue, b.close, b.volume) == ("BRK.B", "1d", "tiingo", 101.0, 1_000_000)
        assert b.ts_event == b.start_ns + DAY
        raw = await TiingoPrices(_cfg(api.url, adjusted=False), key=TOKEN, clock=lambda: NOW).fetch("BRK.B", 7)
        assert raw[0].close == 202.0  # raw prices are twice the adjusted ones before the split
        await client.aclose()


async def test_tiingo_backs_off_on_429_and_5xx_then_gives_up_for_this_poll() -> None:
    async with TiingoPricesStandIn() as api:
        api.prices["aapl"] = [price_row("2024-01-09", 185.0)]
        api.fail = [Scripted(429, {"detail": "slow down"}, {"Retry-After": "0"}), Scripted(503, {"detail": "busy"})]
        client = TiingoPrices(_cfg(api.url, retries=2), key=TOKEN, clock=lambda: NOW)
        assert [b.close for b in await client.fetch("AAPL", 5)] == [185.0]
        assert len(api.requests) == 3
        api.fail = [Scripted(500, {"detail": "boom"})] * 3
        with pytest.raises(SourceUnavailable, match="failed 3 times, last: HTTP 500 boom"):
            await client.fetch("AAPL", 5)
        # the feed turns that into a warning alert for the symbol, resolved when Tiingo answers again
        feed = BarPollFeed("tiingo-prices", client.fetch, ["AAPL"])
        api.fail = [Scripted(502, {"detail": "bad gateway"})] * 3
        first = await feed.poll(5)
        assert [(e.kind, e.severity, e.symbol) for e in first if isinstance(e, Alert)] == [
            ("source_unavailable", "warning", "AAPL")
        ]
        second = await feed.poll(5)
        assert [e.resolved for e in second if isinstance(e, Alert)] == [True]
        assert [b.close for b in second if isinstance(b, Bar)] == [185.0]
        assert await feed.poll(5) == []  # nothing new, nothing republished
        await client.aclose()


async def test_tiingo_refused_token_and_unknown_ticker_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIINGO_API_KEY", raising=False)
    with pytest.raises(PriceSourceError, match="TIINGO_API_KEY is not set"):
        TiingoPrices(TiingoPricesConfig())
    async with TiingoPricesStandIn() as api:
        wrong = TiingoPrices(_cfg(api.url), key="tg-wrong", clock=lambda: NOW)
        with pytest.raises(PriceSourceError) as e:
            await wrong.fetch("AAPL", 5)
        msg = str(e.value)
        assert "HTTP 401 Invalid token." in msg and "TIINGO_API_KEY" in msg and "tg-wrong" not in msg
        assert len(api.requests) == 1  # never retried
        right = TiingoPrices(_cfg(api.url), key=TOKEN, clock=lambda: NOW)
        with pytest.raises(PriceSourceError, match=r"no prices for 'NOPE' \(HTTP 404 Error: Ticker 'NOPE' not found"):
            await right.fetch("NOPE", 5)
        for c in (wrong, right):
            await c.aclose()
    assert "tg-" not in repr(right)


async def test_tiingo_network_errors_are_retried() -> None:
    transport = httpx.AsyncHTTPTransport(retries=0)
    http = httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=transport, timeout=2)  # discard port: refused
    client = TiingoPrices(_cfg("http://127.0.0.1:9", retries=1), key=TOKEN, client=http)
    with pytest.raises(SourceUnavailable, match="network error ConnectError"):
        await client.fetch("AAPL", 5)
    assert client.requests == 2
    await client.aclose()


# ---------------------------------------------------------------- yfinance


def _yahoo_daily(tz: str | None) -> pd.DataFrame:
    idx = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"], name="Date")
    if tz:
        idx = idx.tz_localize(tz)
    return pd.DataFrame(
        {
            "Open": [185.0, 184.0, float("nan"), 181.0],
            "High": [186.0, 185.0, float("nan"), 182.5],
            "Low": [183.0, 182.0, float("nan"), 180.0],
            "Close": [185.5, 184.2, float("nan"), 181.9],
            "Volume": [82_488_700, 58_414_500, 0, 62_303_300],
        },
        index=idx,
    )


@pytest.mark.parametrize("tz", ["America/New_York", None])
def test_yfinance_daily_frame_becomes_bars_at_utc_midnight(tz: str | None) -> None:
    bars = bars_from_frame(_yahoo_daily(tz), "AAPL", "1d")
    assert [datetime.fromtimestamp(b.start_ns / NS, UTC).isoformat() for b in bars] == [
        "2024-01-02T00:00:00+00:00",
        "2024-01-03T00:00:00+00:00",
        "2024-01-05T00:00:00+00:00",  # the NaN row (a holiday Yahoo fills with NaN) is skipped
    ]
    assert (bars[0].open, bars[0].close, bars[0].volume, bars[0].venue) == (185.0, 185.5, 82_488_700, "yfinance")
    # the same day from Tiingo (or a file, or the store) has the same id
    from tapeline.adapters.tiingo_prices import bars_from_rows, PriceRow  # noqa: I001

    row = PriceRow(date="2024-01-02T00:00:00.000Z", adjOpen=185, adjHigh=186, adjLow=183, adjClose=185.5)
    assert bars_from_rows([row], "AAPL")[0].event_id == bars[0].event_id


def test_yfinance_multiindex_and_intraday_frames() -> None:
    frame = _yahoo_daily("America/New_York")
    multi = pd.concat({"BRK-B": frame, "AAPL": frame * 2}, axis=1).swaplevel(0, 1, axis=1)  # (Price, Ticker)
    bars = bars_from_frame(multi, "BRK.B", "1d")
    assert [b.close for b in bars] == [185.5, 184.2, 181.9]
    idx = pd.DatetimeIndex(["2024-01-02 09:30", "2024-01-02 09:31"]).tz_localize("America/New_York")
    minute = pd.DataFrame({"Open": [1.0, 2.0], "High": [1.0, 2.0], "Low": [1.0, 2.0], "Close": [1.0, 2.0],
                           "Volume": [5, 6]}, index=idx)  # fmt: skip
    mb = bars_from_frame(minute, "X", "1m")
    assert [b.start_ns for b in mb] == [1_704_205_800 * NS, 1_704_205_860 * NS]  # 14:30 and 14:31 UTC
    assert bars_from_frame(pd.DataFrame(), "X", "1d") == []


async def test_yfinance_cache_lives_in_the_data_dir_and_downloads_go_through_one_function(tmp_path: Path) -> None:
    from yfinance import cache

    calls: list[tuple[Any, ...]] = []

    def fake_download(ticker: str, start: date, end: date, interval: str, adjusted: bool) -> pd.DataFrame:
        calls.append((ticker, start, end, interval, adjusted))
        return _yahoo_daily("America/New_York")

    def broken(*_: Any) -> pd.DataFrame:
        raise ConnectionError("Yahoo is unreachable")

    prices = YFinancePrices(YFinanceConfig(), tmp_path / "data" / "yfinance", download=fake_download, clock=lambda: NOW)
    assert cache._TzDBManager.get_location() == str((tmp_path / "data" / "yfinance").resolve())
    assert cache._CookieDBManager.get_location() == str((tmp_path / "data" / "yfinance").resolve())
    tz = cache.get_tz_cache()
    tz.store("AAPL", "America/New_York")
    assert tz.lookup("AAPL") == "America/New_York"
    db = tmp_path / "data" / "yfinance" / "tkr-tz.db"
    with closing(sqlite3.connect(db)) as con:
        row = con.execute("select value from _tz_kv where key = 'AAPL'").fetchone()
    assert row == ("America/New_York",)
    bars = await prices.fetch("BRK.B", 30)
    assert calls == [("BRK-B", date(2023, 12, 11), date(2024, 1, 11), "1d", True)] and len(bars) == 3
    prices.download = broken
    with pytest.raises(SourceUnavailable, match="ConnectionError: Yahoo is unreachable"):
        await prices.fetch("AAPL", 5)
