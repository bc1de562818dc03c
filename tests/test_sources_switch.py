"""``[feeds.sources] active`` switches the whole price set; warm-up for files and MT5; live bars healed."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

from tapeline.adapters.bar_poll import BarPollFeed
from tapeline.adapters.config import FeedsConfig
from tapeline.adapters.files import FileFeed
from tapeline.adapters.history import HistoryFeed, HistoryStore
from tapeline.adapters.history_appender import HistoryAppender
from tapeline.adapters.mt5 import Mt5Feed
from tapeline.adapters.polygon import PolygonFeed
from tapeline.adapters.runner import run_feed
from tapeline.adapters.sources import MergedFeed, market_feed
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.config import ConfigError, load_settings
from tapeline.feeds import feed_app
from tapeline.pipeline import Pipeline
from tapeline.schemas.events import Bar, Tick
from tapeline.schemas.ids import tick_id
from tapeline.schemas.subjects import MD
from tests.helpers import FAST, stored, wait_stored, wait_until
from tests.standins.metatrader5 import MetaTrader5StandIn, trade_ticks_from_csv
from tests.standins.tiingo_prices import TiingoPricesStandIn, price_row
from tests.test_sources import _polygon_from_daily, _yahoo_daily

NS = 1_000_000_000
TOKEN = "tg-prices-secret-0003"


def feeds(tmp_path: Path, toml: str) -> FeedsConfig:
    cfg = tmp_path / "t.toml"
    cfg.write_text(toml)
    return load_settings(cfg).feeds


def legacy_toml(tmp_path: Path, shared_data: Path, *, history: bool = False) -> str:
    polygon = tmp_path / "orcl-aggs.csv"
    _polygon_from_daily(shared_data / "bars" / "orcl-daily-1995-2014.csv", polygon, "ORCL")
    nvda = shared_data / "bars" / "nvda-daily-1999-2014.csv"
    text = (
        f'[[feeds.files.sources]]\npath = "{nvda}"\nsymbol = "NVDA"\n'
        f'[[feeds.polygon.sources]]\npath = "{polygon}"\nsymbols = ["ORCL"]\n'
    )
    if history:
        text += f'[feeds.history]\nenabled = true\nstore_dir = "{tmp_path / "history"}"\n'
    return text


def test_active_switches_the_whole_price_set(tmp_path: Path, shared_data: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TIINGO_API_KEY", TOKEN)
    legacy = market_feed(feeds(tmp_path, legacy_toml(tmp_path, shared_data)), data_dir=tmp_path)
    assert isinstance(legacy, MergedFeed)
    assert [type(f) for f in legacy.feeds] == [FileFeed, PolygonFeed]
    live_toml = (
        '[feeds.sources]\nactive = "live"\n[feeds.ibkr]\ncontracts = [{symbol = "AAPL"}, {symbol = "ES", '
        'sec_type = "FUT"}]\n[feeds.history]\nenabled = true\nstore_dir = "' + str(tmp_path / "h") + '"\n'
    )
    live = market_feed(feeds(tmp_path, live_toml), data_dir=tmp_path / "data")
    assert isinstance(live, HistoryFeed) and isinstance(live.live, MergedFeed)
    names = [f.name for f in live.live.feeds]
    assert names == ["ibkr", "tiingo-prices", "yfinance"]
    tiingo, yf = live.live.feeds[1], live.live.feeds[2]
    assert isinstance(tiingo, BarPollFeed) and isinstance(yf, BarPollFeed)
    assert tiingo.symbols == yf.symbols == ["AAPL"]  # the stock contracts; futures are not Tiingo's
    assert live.series == [("AAPL", "1m"), ("ES", "1m"), ("AAPL", "1d")]
    assert (tmp_path / "data" / "yfinance").is_dir()  # the cache is set up before any download
    # the same file, with only the active set changed, runs the other set; a set can leave vendors out
    only = feeds(tmp_path, live_toml.replace('active = "live"', 'active = "live"\nlive = {market = "ibkr"}'))
    assert type(market_feed(only, data_dir=tmp_path)).__name__ == "IbkrFeed"  # no vendors, and history "none"


def test_bad_source_config_is_one_line_naming_the_key(tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(ConfigError, match=r"feeds\.sources\.live\.bars\[0\].*use one of polygon, tiingo, yfinance"):
        feeds(tmp_path, '[feeds.sources]\nlive = {market = "ibkr", bars = ["bloomberg"]}\n')
    with pytest.raises(ConfigError, match=r"feeds\.mt5\[0\]\.bar_interval: '7m' is not an MT5 timeframe"):
        feeds(tmp_path, '[[feeds.mt5]]\nname = "raw"\nbar_interval = "7m"\n')
    with pytest.raises(ConfigError, match=r"feeds\.tiingo\.key_env: 'my token' is not an environment variable"):
        feeds(tmp_path, '[feeds.tiingo]\nkey_env = "my token"\n')
    with pytest.raises(ConfigError, match=r"feeds\.yfinance\.interval.*use one of"):
        feeds(tmp_path, '[feeds.yfinance]\ninterval = "2d"\n')
    monkeypatch.delenv("TIINGO_API_KEY", raising=False)
    cfg = tmp_path / "live.toml"
    cfg.write_text('[feeds.sources]\nactive = "live"\n[feeds.ibkr]\ncontracts = [{symbol = "AAPL"}]\n')
    r = CliRunner().invoke(feed_app, ["auto", "--nats", "nats://127.0.0.1:1", "--config", str(cfg)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "TIINGO_API_KEY is not set" in lines[0], r.output
    cfg.write_text('[[feeds.polygon.sources]]\npath = "gone.csv"\nsymbol = "X"\n')
    r = CliRunner().invoke(feed_app, ["auto", "--nats", "nats://127.0.0.1:1", "--config", str(cfg)])
    assert r.exit_code == 2 and "feeds.polygon.sources[0].path: gone.csv is not a file" in r.output


def test_legacy_set_publishes_files_and_polygon_and_fills_the_store(
    tmp_path: Path, shared_data: Path, nats_url: str, prefix: str
) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(legacy_toml(tmp_path, shared_data, history=True))
    args = ["auto", "--nats", nats_url, "--config", str(cfg), "--prefix", prefix]
    r = CliRunner().invoke(feed_app, args)
    assert r.exit_code == 0, r.output

    async def bars() -> list[Bar]:
        nc = await connect(NatsSettings(url=nats_url))
        try:
            return [e for e in await stored(nc, MD.stream(prefix)) if isinstance(e, Bar)]
        finally:
            await nc.drain()

    got = asyncio.run(bars())
    by = {s: [b for b in got if b.symbol == s] for s in ("NVDA", "ORCL")}
    assert len(by["NVDA"]) == 4012 and len(by["ORCL"]) > 4000
    assert {b.venue for b in by["ORCL"]} == {"polygon"}
    store = HistoryStore(tmp_path / "history")
    assert store.series() == [("NVDA", "1d"), ("ORCL", "1d")]
    assert len(store.load("ORCL", "1d")) == len(by["ORCL"])
    # a second run warms up from the store first and publishes nothing it already stored
    r = CliRunner().invoke(feed_app, args)
    assert r.exit_code == 0, r.output
    assert len(asyncio.run(bars())) == len(got)


async def test_live_set_runs_ticks_tiingo_and_yfinance_side_by_side(
    tmp_path: Path, shared_data: Path, nc: Client, publisher: Publisher, prefix: str, monkeypatch: Any
) -> None:
    data = {"US500": trade_ticks_from_csv(shared_data / "ticks" / "index-future-ticks-2015-09-23.csv")}
    mt5 = MetaTrader5StandIn(data)
    mt5.release_all()
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=i)).isoformat() for i in range(5, 0, -1)]

    def download(ticker: str, start: date, end: date, interval: str, adjusted: bool) -> pd.DataFrame:
        frame = _yahoo_daily("America/New_York")
        frame.index = pd.DatetimeIndex([d for d in days[:4]]).tz_localize("America/New_York")
        return frame

    async with TiingoPricesStandIn(token=TOKEN) as api:
        api.prices["spy"] = [price_row(d, 500.0 + i) for i, d in enumerate(days)]
        toml = (
            '[feeds.sources]\nactive = "live"\nlive = {market = "mt5", bars = ["tiingo", "yfinance"]}\n'
            '[[feeds.mt5]]\nname = "raw"\nsymbols = ["US500"]\npoll_interval_s = 0.01\ndefault_session = "always"\n'
            f'[feeds.tiingo]\nsymbols = ["SPY"]\nbase_url = "{api.url}"\n[feeds.yfinance]\nsymbols = ["QQQ"]\n'
        )
        monkeypatch.setenv("TIINGO_API_KEY", TOKEN)
        from tests.test_mt5 import start_of

        cfg = feeds(tmp_path, toml)
        feed = market_feed(cfg, data_dir=tmp_path, mt5=mt5, resume=start_of(data), yfinance={"download": download})
        task = asyncio.create_task(run_feed(feed, publisher))
        try:
            evs = await wait_stored(
                nc,
                MD.stream(prefix),
                "",
                lambda es: (
                    len([e for e in es if isinstance(e, Tick)]) == 135
                    and {e.venue for e in es if isinstance(e, Bar)} == {"tiingo", "yfinance"}
                ),
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    tiingo = sorted(e.close for e in evs if isinstance(e, Bar) and e.symbol == "SPY")
    assert tiingo == [500.0, 501.0, 502.0, 503.0, 504.0]
    assert len([e for e in evs if isinstance(e, Bar) and e.symbol == "QQQ"]) == 3  # the NaN row skipped
    assert api.requests[0].path == "/tiingo/daily/SPY/prices"


async def test_mt5_warm_up_publishes_copy_rates_bars_before_ticks(tmp_path: Path, shared_data: Path) -> None:
    from tests.test_mt5 import cfg, start_of

    data = {"US500": trade_ticks_from_csv(shared_data / "ticks" / "index-future-ticks-2015-09-23.csv")}
    msc = data["US500"]["time_msc"]
    now_ns = int(msc[len(msc) // 2]) * 1_000_000  # the terminal's history reaches "now", mid-file
    mt5 = MetaTrader5StandIn(data, login=5001, password="pw", server="Demo-Server")
    feed = Mt5Feed(cfg(symbols=("US500",)), mt5=mt5, password="pw", resume=start_of(data), clock=lambda: now_ns)
    store = HistoryStore(tmp_path / "h")
    hist = HistoryFeed(feed, store, [("US500", "1m")], days=30, clock=lambda: now_ns)
    mt5.release_all()
    batches = []
    async for events in hist.stream():
        batches.append(events)
        if any(isinstance(e, Tick) for e in events):
            break
    first_bars = [e for b in batches[:-1] for e in b if isinstance(e, Bar)]  # bars before any tick
    assert first_bars and not [e for e in batches[-1] if isinstance(e, Bar)]
    # completed minutes only, built from the ticks before "now"; ts_event = start + 1 minute
    expect: dict[int, list[float]] = {}
    for r in data["US500"]:
        start = int(r["time"]) // 60 * 60 * NS
        if start + 60 * NS <= now_ns:
            expect.setdefault(start, []).append(float(r["last"]))
    assert [(b.start_ns, b.open, b.high, b.low, b.close) for b in first_bars] == [
        (s, p[0], max(p), min(p), p[-1]) for s, p in sorted(expect.items())
    ]
    assert all(b.interval == "1m" and b.ts_event == b.start_ns + 60 * NS for b in first_bars)
    assert [b.start_ns for b in store.load("US500", "1m")] == sorted(expect)  # healed into the store
    assert mt5.calls["copy_rates_range"] == 1


async def test_bars_built_from_live_ticks_are_appended_to_the_history_store(
    tmp_path: Path, nc: Client, publisher: Publisher, prefix: str
) -> None:
    t0 = int(datetime(2024, 3, 4, 14, 30, tzinfo=UTC).timestamp()) * NS

    def ticks(first: int, n: int) -> list[Tick]:
        return [
            Tick(
                event_id=tick_id("sim", "AAPL", t0 + i * NS // 2, 0),
                ts_event=t0 + i * NS // 2,
                ts_init=t0,
                source="sim",
                venue="sim",
                symbol="AAPL",
                last=100.0 + i % 7,
                volume=1.0,
            )
            for i in range(first, first + n)
        ]

    pipeline = Pipeline(nc, prefix, configs=FAST, db_path=tmp_path / "p.duckdb", selected=("bars",))
    await pipeline.start()
    store = HistoryStore(tmp_path / "history")
    appender = HistoryAppender(nc, publisher, prefix, store)
    try:
        await appender.start()
        await publisher.publish(ticks(0, 20))  # 10 seconds of ticks -> nine closed 1 s bars
        await wait_until(lambda: len(store.load("AAPL", "1s")) == 9)
        await appender.stop()
        # built while the store's owner is down: appended when it is back (the durable kept its place)
        await publisher.publish(ticks(20, 10))
        await wait_stored(nc, MD.stream(prefix), "", lambda es: len([e for e in es if isinstance(e, Bar)]) == 14)
        again = HistoryAppender(nc, publisher, prefix, store)
        await again.start()
        await wait_until(lambda: len(store.load("AAPL", "1s")) == 14)
        assert again.sink.seen == 5  # only what it had not acked before
        await again.stop()
    finally:
        await pipeline.stop()
    stored_bars = store.load("AAPL", "1s")
    built = [e for e in await stored(nc, MD.stream(prefix)) if isinstance(e, Bar)]
    assert [(b.start_ns, b.open, b.close, b.ticks) for b in stored_bars] == sorted(
        (b.start_ns, b.open, b.close, b.ticks) for b in built
    )
    assert HistoryStore(tmp_path / "history").load("AAPL", "1s")[-1].close == stored_bars[-1].close  # on disk
