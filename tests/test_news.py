"""News importers, cross-provider dedup, the news feed through JetStream, and the source switch."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path

import msgspec
import pytest
import structlog
from nats.aio.client import Client

from tapeline.adapters.files import FileImportError
from tapeline.adapters.news.config import NewsConfig
from tapeline.adapters.news.dedup import Deduper, canonical_url, normalise_title
from tapeline.adapters.news.feed import NewsFeed
from tapeline.adapters.news.fnspid import read_fnspid
from tapeline.adapters.runner import run_feed
from tapeline.bus.publisher import Publisher
from tapeline.bus.topology import Retention
from tapeline.config import load_settings
from tapeline.dotenv import load_dotenv
from tapeline.pipeline import provision_system
from tapeline.schemas.events import Alert, NewsItem
from tests.helpers import stored
from tests.standins.news_http import NewsApiStandIn, marketaux_article, tiingo_article

HEADER = (
    "Date,Article_title,Stock_symbol,Url,Publisher,Author,Article,"
    "Lsa_summary,Luhn_summary,Textrank_summary,Lexrank_summary\n"
)
A2 = "2023-12-15 09:30:00 UTC,AMD and Nvidia team up"
FNSPID = (
    HEADER
    + "2023-12-16 22:00:00 UTC,Nvidia beats estimates,NVDA,https://www.nasdaq.com/a/1?utm_source=x,"
    + 'Nasdaq,Ann,"Body\nover two lines",LSA one,,,\n'  # lines 2-3
    + f"{A2},NVDA,https://www.nasdaq.com/a/2,Nasdaq,,,,Luhn two,,\n"  # 4
    + f"{A2},AMD,https://www.nasdaq.com/a/2,Nasdaq,,,,,,\n"  # 5: the same story, a second symbol
    + f"{A2},AMD,https://www.nasdaq.com/a/2,Nasdaq,,,,,,\n"  # 6: a repeat
    + "yesterday,Bad date,NVDA,https://www.nasdaq.com/a/3,Nasdaq,,,,,,\n"  # 7
    + "2023-12-14 09:30:00 UTC,,NVDA,https://www.nasdaq.com/a/4,Nasdaq,,,,,,\n"  # 8
    + "2023-12-14 09:30:00 UTC,Bad url,NVDA,ftp://x/5,Nasdaq,,,,,,\n"  # 9
    + "2023-12-14 09:30:00 UTC,Bad symbol,NV DA,https://www.nasdaq.com/a/6,Nasdaq,,,,,,\n"  # 10
    + "2023-12-14 09:30:00 UTC,Short row,NVDA\n"  # 11
    + "\n"  # 12 blank
    + "2099-01-01 00:00:00 UTC,From the future,NVDA,https://www.nasdaq.com/a/7,Nasdaq,,,,,,\n"  # 13
    + "2020-03-02 14:00:00 UTC,Oracle cloud deal,ORCL,,Benzinga,,,,,,\n"  # 14: no URL is fine
)


def test_fnspid_rows_validated_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "nvda.csv"
    path.write_text(FNSPID, encoding="utf-8")
    got = read_fnspid(path)
    assert [(r.line, r.reason.split(":")[0]) for r in got.rejected] == [
        (6, "duplicate of line 5"),
        (7, "Date"),
        (8, "Article_title"),
        (9, "Url"),
        (10, "Stock_symbol"),
        (11, "expected 11 fields, got 3"),
        (13, "Date"),
    ]
    assert "in the future" in got.rejected[-1].reason and got.rows == 11
    assert [it.title for it in got.items] == ["Oracle cloud deal", "AMD and Nvidia team up", "Nvidia beats estimates"]
    merged = got.items[1]
    assert merged.tickers == ["NVDA", "AMD"] and merged.summary == "Luhn two" and merged.provider == "fnspid"
    assert got.items[2].summary == "LSA one" and got.items[2].url.endswith("utm_source=x")
    again = read_fnspid(path)
    assert [it.event_id for it in again.items] == [it.event_id for it in got.items]  # a rerun gives the same ids
    assert "line 7: Date" in got.report()


def test_fnspid_whole_file_errors(tmp_path: Path) -> None:
    wrong = tmp_path / "prices.csv"
    wrong.write_text("Date,Open,High,Low,Close\n2020-01-01,1,1,1,1\n")
    with pytest.raises(FileImportError, match="not an FNSPID news file: no articletitle, stocksymbol"):
        read_fnspid(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_fnspid(empty).note == "empty file"
    only = tmp_path / "header.csv"
    only.write_text(HEADER)
    assert read_fnspid(only).note == "header only, no data rows"
    gz = tmp_path / "news.csv.gz"
    gz.write_bytes(gzip.compress(FNSPID.encode()))
    assert len(read_fnspid(gz).items) == 3


def test_dedup_normalises_urls_and_titles() -> None:
    assert canonical_url("https://www.Example.com/a/?utm_source=x&id=2&fbclid=z#top") == "example.com/a?id=2"
    assert canonical_url("http://example.com/a") == canonical_url("https://example.com/a/")
    assert normalise_title("Bilfinger win Â£100m  BP contract!") == normalise_title("bilfinger WIN £100m BP contract")
    d = Deduper(window_s=3600)

    def item(url: str, title: str, t_s: int, provider: str = "tiingo") -> NewsItem:
        return NewsItem(event_id="", ts_event=t_s * 10**9, ts_init=0, source=provider, provider=provider,
                        article_id="", title=title, url=url, published_ns=t_s * 10**9)  # fmt: skip

    assert d.admit(item("https://x.com/1", "Story one", 0))
    assert not d.admit(item("https://www.x.com/1/?utm_medium=rss", "Other words", 60))  # same URL
    assert not d.admit(item("https://y.com/9", "STORY ONE.", 120))  # same title, other site
    assert d.admit(item("https://y.com/10", "Story one", 7200))  # the same title hours later is news again
    assert d.dropped == 2


async def test_feed_dedups_across_providers_and_keeps_keys_out(
    nc: object, provisioned: str, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with NewsApiStandIn() as api:
        monkeypatch.setenv("MARKETAUX_API_KEY", api.marketaux_key)
        monkeypatch.setenv("TIINGO_API_KEY", api.tiingo_key)
        api.marketaux = [
            marketaux_article(
                1, "2029-12-31T23:00:00.000000Z", ["NVDA"], url="https://www.wire.com/nvda-up?utm_source=mx"
            ),
            marketaux_article(2, "2029-12-31T22:00:00.000000Z", ["NVDA"], title="Nvidia guidance raised"),
        ]
        api.tiingo = [
            tiingo_article(10, "2029-12-31T23:00:05Z", ["NVDA"], url="https://wire.com/nvda-up"),  # same URL
            tiingo_article(11, "2029-12-31T22:30:00Z", ["NVDA"], title="NVIDIA guidance raised!"),  # same title
            tiingo_article(12, "2029-12-31T21:00:00Z", ["AAPL"]),
        ]
        cfg = msgspec.convert(
            {"providers": ["marketaux", "tiingo"],
             "marketaux": {"base_url": api.url, "symbols": ["NVDA"], "lookback_s": 10 * 365 * 86400},
             "tiingo": {"base_url": api.url, "lookback_s": 10 * 365 * 86400}},
            NewsConfig,
        )  # fmt: skip
        feed = NewsFeed(cfg, polls=1)
        with structlog.testing.capture_logs() as logs:
            stats = await run_feed(feed, publisher)
    assert stats.events == 3 and feed.counters == {"published": 3, "duplicate": 2}
    events = await stored(nc, f"{provisioned.upper()}_NEWS")  # type: ignore[arg-type]
    by_provider = sorted((e.provider, e.title) for e in events if isinstance(e, NewsItem))
    assert by_provider == [("marketaux", "Marketaux story 1"), ("marketaux", "Nvidia guidance raised"),
                           ("tiingo", "Tiingo story 12")]  # fmt: skip
    raw = b"".join(msgspec.json.encode(e) for e in events) + repr(logs).encode()
    assert api.marketaux_key.encode() not in raw and api.tiingo_key.encode() not in raw


async def test_a_restarted_feed_publishes_nothing_twice_after_the_duplicate_window(
    nc: Client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await provision_system(nc, prefix, Retention(record_duplicate_window_s=1))  # JetStream forgets ids after 1 s
    async with NewsApiStandIn() as api:
        monkeypatch.setenv("MARKETAUX_API_KEY", api.marketaux_key)
        api.marketaux = [marketaux_article(n, f"2029-12-31T2{n}:00:00.000000Z", ["NVDA"]) for n in (1, 2)]
        cfg = msgspec.convert(
            {
                "providers": ["marketaux"],
                "marketaux": {"base_url": api.url, "symbols": ["NVDA"], "lookback_s": 10 * 365 * 86400},
            },
            NewsConfig,
        )
        pub = await Publisher(nc, prefix, role="test").start()
        try:
            first = NewsFeed(cfg, polls=1)
            assert (await run_feed(first, pub)).events == 2
            await asyncio.sleep(1.5)  # past the duplicate window: only the feed itself can tell what is stored
            api.marketaux.append(marketaux_article(3, "2029-12-31T23:00:00.000000Z", ["NVDA"]))
            again = NewsFeed(cfg, polls=1)
            assert (await run_feed(again, pub)).events == 1 and again.counters["published"] == 1
        finally:
            await pub.close()
    titles = [e.title for e in await stored(nc, f"{prefix.upper()}_NEWS") if isinstance(e, NewsItem)]
    assert titles == ["Marketaux story 1", "Marketaux story 2", "Marketaux story 3"]
    assert again.resume_ns["marketaux"] > 0


async def test_refused_key_stops_the_feed_with_an_alert_that_names_no_key(
    nc: object, provisioned: str, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with NewsApiStandIn() as api:
        monkeypatch.setenv("TIINGO_API_KEY", "not-the-key-789")
        cfg = msgspec.convert({"providers": ["tiingo"], "tiingo": {"base_url": api.url}}, NewsConfig)
        with pytest.raises(ValueError, match="check TIINGO_API_KEY"):
            await run_feed(NewsFeed(cfg, polls=1), publisher)
    alerts = [e for e in await stored(nc, f"{provisioned.upper()}_OPS") if isinstance(e, Alert)]  # type: ignore[arg-type]
    assert alerts and alerts[0].kind == "feed_failed" and "not-the-key-789" not in alerts[0].message


async def test_files_feed_publishes_fnspid_and_semeval_with_alerts(
    nc: object, provisioned: str, publisher: Publisher, tmp_path: Path, shared_data: Path
) -> None:
    path = tmp_path / "nvda.csv"
    path.write_text(FNSPID, encoding="utf-8")
    semeval = {"path": str(shared_data / "news" / "semeval2017-task5-headlines.json"),
               "symbols": ["NVDA", "BRK.B"], "start": "2020-01-01T00:00:00", "end": "2020-12-31T00:00:00"}  # fmt: skip
    cfg = msgspec.convert({"providers": ["files"], "files": {"fnspid": [str(path)], "semeval": semeval}}, NewsConfig)
    feed = NewsFeed(cfg)
    await run_feed(feed, publisher)
    events = await stored(nc, f"{provisioned.upper()}_NEWS")  # type: ignore[arg-type]
    news = [e for e in events if isinstance(e, NewsItem)]
    assert {e.provider for e in news} == {"fnspid", "semeval"}
    sem = [e for e in news if e.provider == "semeval"]
    assert 500 < len(sem) < 571  # repeated headlines are one item
    assert all(1577836800 * 10**9 <= e.published_ns <= 1609372800 * 10**9 for e in sem)
    assert any(e.tickers == ["BRK.B"] and "Berkshire" in e.title for e in sem)  # the documented mapping
    ops = [e for e in await stored(nc, f"{provisioned.upper()}_OPS") if isinstance(e, Alert)]  # type: ignore[arg-type]
    assert [a.kind for a in ops] == ["rows_rejected"] and "line 6: duplicate of line 5" in ops[0].message
    again = NewsFeed(cfg)
    ids = [e.event_id for b in [b async for b in again.stream()] for e in b if isinstance(e, NewsItem)]
    assert sorted(ids) == sorted(e.event_id for e in news)  # a rerun gives the same ids


async def test_a_restarted_files_feed_imports_only_new_rows_after_the_duplicate_window(
    nc: Client, prefix: str, tmp_path: Path
) -> None:
    await provision_system(nc, prefix, Retention(record_duplicate_window_s=1))  # JetStream forgets ids after 1 s
    path = tmp_path / "nvda.csv"
    path.write_text(FNSPID, encoding="utf-8")
    cfg = msgspec.convert({"providers": ["files"], "files": {"fnspid": [str(path)]}}, NewsConfig)
    pub = await Publisher(nc, prefix, role="test").start()
    try:
        first = NewsFeed(cfg)
        await run_feed(first, pub)
        imported = first.counters["published"]
        await asyncio.sleep(1.5)  # past the duplicate window: only the feed itself can tell what is stored
        with path.open("a", encoding="utf-8") as f:  # one new story appended to the file
            f.write("2023-12-17 08:00:00 UTC,Nvidia ships a new chip,NVDA,https://www.nasdaq.com/a/8,Nasdaq,,,,,,\n")
        again = NewsFeed(cfg)
        await run_feed(again, pub)
    finally:
        await pub.close()
    assert imported >= 3 and again.counters["stored_before"] == imported and again.counters["published"] == 1
    news = [e for e in await stored(nc, f"{prefix.upper()}_NEWS") if isinstance(e, NewsItem)]
    assert len(news) == imported + 1 == len({e.event_id for e in news})
    assert news[-1].title == "Nvidia ships a new chip"


def test_source_switch_selects_news(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "live.toml"
    live.write_text('[feeds.sources]\nactive = "live"\n')
    assert load_settings(live).news.providers == ["marketaux", "tiingo"]
    assert load_settings(None, feed="sim").news.providers == ["files"]  # legacy: the news files
    one = tmp_path / "one.toml"
    one.write_text('[feeds.sources]\nactive = "live"\nlive = {market = "ibkr", news = "tiingo"}\n')
    assert load_settings(one).news.providers == ["tiingo"]
    off = tmp_path / "off.toml"
    off.write_text("[news]\nproviders = []\n")
    assert not NewsFeed(load_settings(off).news).active()
    sim = load_settings(None, feed="sim").news.files.semeval
    assert sim.symbols == ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B"] and sim.start.startswith("2026-01-01")


def test_dotenv_fills_what_the_environment_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAPELINE_TEST_A", raising=False)
    monkeypatch.setenv("TAPELINE_TEST_B", "from-env")
    (tmp_path / ".env").write_text(
        '# keys\nexport TAPELINE_TEST_A="from file"\nTAPELINE_TEST_B=from-dotenv\nnot a line\n'
    )
    try:
        assert load_dotenv(tmp_path / "missing", tmp_path / ".env") == ["TAPELINE_TEST_A"]
        assert os.environ["TAPELINE_TEST_A"] == "from file" and os.environ["TAPELINE_TEST_B"] == "from-env"
    finally:
        os.environ.pop("TAPELINE_TEST_A", None)
