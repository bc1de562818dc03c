"""File importer: real shared data, garbage rows rejected with line numbers, Parquet, the file feed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client

from tapeline.adapters.files import FileFeed, FileSource, read_bars, read_ticks
from tapeline.adapters.runner import run_feed
from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import Alert, Bar, Tick
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import stored

NS = 1_000_000_000


def test_daily_bars_use_the_close_column_not_adj_close(shared_data: Path) -> None:
    r = read_bars(shared_data / "bars" / "nvda-daily-1999-2014.csv", "NVDA")
    assert not r.rejected
    assert len(r.events) == 4012
    first = r.events[0]
    assert isinstance(first, Bar)
    # 1999-01-22,1.750000,1.953125,1.552083,1.640625,1.518424,67867200
    assert (first.open, first.high, first.low, first.close, first.volume) == (
        1.75,
        1.953125,
        1.552083,
        1.640625,
        67867200,
    )
    assert first.start_ns == 916963200 * NS and first.ts_event == first.start_ns + 86400 * NS
    assert [b.ts_event for b in r.events] == sorted(b.ts_event for b in r.events)


def test_minute_bars_header_without_time_column(shared_data: Path) -> None:
    r = read_bars(shared_data / "bars" / "index-future-1min-2006.csv", "IDX", interval="1m")
    assert not r.rejected
    assert len(r.events) == 30889
    b = r.events[0]
    assert isinstance(b, Bar)
    # 2006-01-02,09:01:00,3602.00,3603.00,3597.00,3599.00,5699,0 -> closes 09:01, opened 09:00
    assert b.ts_event == 1136192460 * NS and b.start_ns == 1136192400 * NS
    assert (b.open, b.high, b.low, b.close, b.volume) == (3602, 3603, 3597, 3599, 5699)


def test_ticks_same_millisecond_get_seq_and_stable_ids(shared_data: Path) -> None:
    path = shared_data / "ticks" / "index-future-ticks-2015-09-23.csv"
    r1 = read_ticks(path, "IDX")
    r2 = read_ticks(path, "IDX")
    assert not r1.rejected and len(r1.events) == 135
    assert [t.event_id for t in r1.events] == [t.event_id for t in r2.events]
    assert len({t.event_id for t in r1.events}) == 135
    pair = [t for t in r1.events if isinstance(t, Tick) and t.ts_event == 1443041902316 * 1_000_000]
    assert [(t.seq, t.last, t.volume) for t in pair] == [(0, 3068.0, 60.0), (1, 3069.0, 1.0)]


def test_fx_quotes_day_first(shared_data: Path) -> None:
    r = read_ticks(shared_data / "ticks" / "fx-bidask-2010-03-02.csv", "EURGBP")
    assert not r.rejected and len(r.events) == 10
    t = r.events[0]
    assert isinstance(t, Tick)
    assert (t.bid, t.ask, t.last) == (0.5346, 0.5347, 0.0)
    assert t.ts_event == 1267548830 * NS  # 02/03/2010 = 2 March 2010 16:53:50 UTC


GARBAGE = """\
time,open,high,low,close,volume
2024-01-02T00:00:00Z,10,11,9,10.5,100
2024-01-03T00:00:00Z,abc,11,9,10.5,100
2024-01-04T00:00:00Z,10,11,9,NaN,100
2024-01-05T00:00:00Z,-10,11,9,10.5,100
2024-01-06T00:00:00Z,10,11,9,10.5,100
2024-01-05T12:00:00Z,10,11,9,10.5,100
2024-01-06T00:00:00Z,10,11,9,10.5,100
2024-01-07T00:00:00Z,10,9,11,10.5,100
not-a-date,10,11,9,10.5,100
2024-01-08T00:00:00Z,10,11,9,10.5,-5
2024-01-09T00:00:00Z,10,11,9,10.5

2024-01-10T00:00:00Z,10,12,9,11,inf
2024-01-11T00:00:00Z,10,12,9,11,300
"""


def test_garbage_rows_rejected_with_line_and_reason(tmp_path: Path) -> None:
    p = tmp_path / "bars.csv"
    p.write_text(GARBAGE)
    r = read_bars(p, "X")
    reasons = {x.line: x.reason for x in r.rejected}
    assert set(reasons) == {3, 4, 5, 7, 8, 9, 10, 11, 12, 14}
    assert "not a number" in reasons[3]
    assert "finite" in reasons[4]
    assert "positive" in reasons[5]
    assert "out of order" in reasons[7]
    assert "duplicate" in reasons[8] and "line 6" in reasons[8]
    assert "below low" in reasons[9]
    assert "time" in reasons[10]
    assert "negative" in reasons[11]
    assert "fields" in reasons[12]
    assert "finite" in reasons[14]
    assert [b.close for b in r.events] == [10.5, 10.5, 11.0]  # lines 2, 6, 15
    assert r.rows == 13  # the blank line is not a row
    assert "line 3" in r.report()


def test_tick_garbage_and_generic_epoch_format(tmp_path: Path) -> None:
    p = tmp_path / "ticks.csv"
    p.write_text(
        "timestamp,bid,ask,last,size\n"
        "1704153600000,1.0,1.1,1.05,5\n"  # epoch ms
        "1704153600000,1.0,1.1,1.06,5\n"  # same ms, new values: seq 1
        "1704153600000,1.0,1.1,1.06,5\n"  # exact repeat: duplicate
        "1704153600001,1.2,1.1,1.05,5\n"  # ask below bid
        "1704153599000,1.0,1.1,1.05,5\n"  # out of order
        "1704153601,1.0,1.1,1.07,2\n"  # epoch seconds
    )
    r = read_ticks(p, "X")
    assert {x.line for x in r.rejected} == {4, 5, 6}
    assert [(t.ts_event, t.seq, t.last) for t in r.events] == [
        (1704153600000 * 1_000_000, 0, 1.05),
        (1704153600000 * 1_000_000, 1, 1.06),
        (1704153601 * NS, 0, 1.07),
    ]


def test_parquet_same_rules(tmp_path: Path) -> None:
    p = tmp_path / "bars.parquet"
    ts = pa.array([1_704_153_600 * NS, 1_704_240_000 * NS, 1_704_326_400 * NS], pa.timestamp("ns", tz="UTC"))
    t = pa.table(
        {"timestamp": ts, "open": [1.0, 2.0, 3.0], "high": [1.5, 2.5, float("nan")], "low": [0.5, 1.5, 2.5],
         "close": [1.2, 2.2, 3.2], "volume": [10, 20, 30]}
    )  # fmt: skip
    pq.write_table(t, p)
    r = read_bars(p, "X")
    assert [x.line for x in r.rejected] == [3]
    assert [b.start_ns for b in r.events] == [1_704_153_600 * NS, 1_704_240_000 * NS]


async def test_file_feed_publishes_and_reports(
    tmp_path: Path, shared_data: Path, nc: Client, publisher: Publisher, provisioned: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(GARBAGE)
    feed = FileFeed(
        [
            FileSource(shared_data / "ticks" / "fx-bidask-2010-03-02.csv", "FX", "ticks"),
            FileSource(bad, "BAD", "bars", "1d"),
        ]
    )
    stats = await run_feed(feed, publisher)
    assert stats.events == 10 + 3 + 1
    md = await stored(nc, MD.stream(provisioned))
    assert sum(isinstance(e, Tick) for e in md) == 10 and sum(isinstance(e, Bar) for e in md) == 3
    ops = [e for e in await stored(nc, OPS.stream(provisioned)) if isinstance(e, Alert)]
    assert len(ops) == 1 and ops[0].kind == "rows_rejected" and "line 3" in ops[0].message
    # re-running the same files stores nothing new: ids are deterministic
    await run_feed(FileFeed(feed.sources), publisher)
    assert len(await stored(nc, MD.stream(provisioned))) == len(md)
    assert len(await stored(nc, OPS.stream(provisioned))) == 1


REPO = Path(__file__).resolve().parents[1]


def test_example_config_is_valid() -> None:
    from tapeline.adapters.config import validate_feeds
    from tapeline.config import load_settings

    s = load_settings(REPO / "tapeline.example.toml")
    validate_feeds(s.feeds)
    assert [t.venue for t in s.feeds.mt5] == ["mt5-raw", "mt5-orders"]
    assert [c.multiplier for c in s.feeds.ibkr.contracts] == [100.0, 1.0]


def test_cli_bad_value_names_key_and_fix(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tapeline.feeds import feed_app

    bad = tmp_path / "t.toml"
    bad.write_text("[feeds.ibkr]\nport = 99999\n")
    r = CliRunner().invoke(feed_app, ["ibkr", "--nats", "nats://127.0.0.1:1", "--config", str(bad)])
    assert r.exit_code == 2 and "feeds.ibkr.port" in r.output and "7497" in r.output
    bad.write_text('[feeds.sources]\nactive = "both"\n')
    r = CliRunner().invoke(feed_app, ["auto", "--config", str(bad)])
    assert r.exit_code == 2 and "feeds.sources.active" in r.output
    bad.write_text('[[feeds.mt5]]\nname = "raw"\npassword_env = "hunter2 is my password"\n')
    r = CliRunner().invoke(feed_app, ["mt5", "--config", str(bad)])
    assert r.exit_code == 2 and "feeds.mt5[0].password_env" in r.output


def test_cli_mt5_stops_at_start_without_the_package(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tapeline.feeds import feed_app

    cfg = tmp_path / "t.toml"
    cfg.write_text('[[feeds.mt5]]\nname = "raw"\nsymbols = ["EURUSD"]\n')
    r = CliRunner().invoke(feed_app, ["mt5", "--nats", "nats://127.0.0.1:1", "--config", str(cfg)])
    assert r.exit_code == 2 and "only for Windows" in r.output


def test_cli_files_runs_against_nats(tmp_path: Path, shared_data: Path, nats_url: str, prefix: str) -> None:
    from typer.testing import CliRunner

    from tapeline.feeds import feed_app

    cfg = tmp_path / "t.toml"
    fx = shared_data / "ticks" / "fx-bidask-2010-03-02.csv"
    cfg.write_text(f'[[feeds.files.sources]]\npath = "{fx}"\nsymbol = "FX"\nkind = "ticks"\n')
    r = CliRunner().invoke(feed_app, ["files", "--nats", nats_url, "--config", str(cfg), "--prefix", prefix])
    assert r.exit_code == 0, r.output

    import asyncio

    from tapeline.bus.connection import NatsSettings, connect

    async def count() -> int:
        nc = await connect(NatsSettings(url=nats_url))
        try:
            return len(await stored(nc, MD.stream(prefix)))
        finally:
            await nc.drain()

    assert asyncio.run(count()) == 10
