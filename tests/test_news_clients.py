"""The Marketaux and Tiingo clients against local stand-ins speaking the providers' documented JSON."""

from __future__ import annotations

import msgspec
import pytest

from tapeline.adapters.news.config import MarketauxConfig, TiingoConfig
from tapeline.adapters.news.http import NewsSourceError, NewsUnavailable, retry_after_s
from tapeline.adapters.news.marketaux import MarketauxClient
from tapeline.adapters.news.tiingo import TiingoClient
from tests.standins.news_http import NewsApiStandIn, Scripted, marketaux_article, tiingo_article

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}
T0 = 1_735_689_600_000_000_000  # 2025-01-01 00:00 UTC


def err(code: str, message: str) -> dict[str, dict[str, str]]:
    """Marketaux's documented error envelope."""
    return {"error": {"code": code, "message": message}}


def mx(api: NewsApiStandIn, **kw: object) -> MarketauxClient:
    cfg = msgspec.convert({"base_url": api.url, "symbols": ["NVDA", "BRK.B"], **FAST, **kw}, MarketauxConfig)
    return MarketauxClient(cfg, api.marketaux_key)


def tg(api: NewsApiStandIn, **kw: object) -> TiingoClient:
    return TiingoClient(msgspec.convert({"base_url": api.url, **FAST, **kw}, TiingoConfig), api.tiingo_key)


async def test_marketaux_pages_through_after_a_429_with_retry_after() -> None:
    async with NewsApiStandIn() as api:
        api.marketaux = [marketaux_article(i, f"2025-01-0{9 - i}T10:00:00.000000Z", ["NVDA", "AMD"]) for i in range(7)]
        api.marketaux.append(marketaux_article(99, "2025-01-05T10:00:00.000000Z", ["AMD"]))  # not asked for
        api.fail["/v1/news/all"].append(
            Scripted(
                429, {"error": {"code": "rate_limit_reached", "message": "Too many requests."}}, {"Retry-After": "1"}
            )
        )
        client = mx(api)
        items = await client.fetch(T0)
        await client.aclose()
    assert len(items) == 7 and {it.provider for it in items} == {"marketaux"}
    assert all(it.tickers == ["NVDA"] for it in items)  # filter_entities=true: only the asked symbols
    first = next(it for it in items if it.article_id.endswith("000000000000"))
    assert first.title == "Marketaux story 0" and first.summary == "Description 0"
    assert first.url == "https://news.example.com/mx/0" and first.published_ns == first.ts_event
    pages = [r.query for r in api.requests]
    assert [p["page"] for p in pages] == ["1", "1", "2", "3"]  # the 429'd page asked again, then 3 pages of 3
    assert pages[0]["symbols"] == "NVDA,BRK.B" and pages[0]["filter_entities"] == "true"
    assert pages[0]["language"] == "en" and pages[0]["published_after"] == "2025-01-01T00:00:00"


async def test_marketaux_empty_answer_and_stop_on_short_page() -> None:
    async with NewsApiStandIn() as api:
        client = mx(api)
        assert await client.fetch(T0) == []
        await client.aclose()
    assert len(api.requests) == 1


async def test_refused_key_is_one_line_naming_the_variable_never_the_key() -> None:
    async with NewsApiStandIn() as api:
        bad = MarketauxClient(msgspec.convert({"base_url": api.url, **FAST}, MarketauxConfig), "wrong-key-123")
        with pytest.raises(NewsSourceError) as e:
            await bad.fetch(T0)
        await bad.aclose()
        tbad = TiingoClient(msgspec.convert({"base_url": api.url, **FAST}, TiingoConfig), "wrong-key-456")
        with pytest.raises(NewsSourceError) as t:
            await tbad.fetch(T0)
        await tbad.aclose()
    for err, var, key in ((e, "MARKETAUX_API_KEY", "wrong-key-123"), (t, "TIINGO_API_KEY", "wrong-key-456")):
        msg = str(err.value)
        assert "\n" not in msg and var in msg and "401" in msg and key not in msg
    assert "invalid_api_token" in str(e.value) and "Invalid token." in str(t.value)
    assert len(api.requests) == 2  # 401 is not retried


def test_missing_key_is_refused_before_any_request() -> None:
    with pytest.raises(NewsSourceError, match="TIINGO_API_KEY is not set"):
        TiingoClient(TiingoConfig(), "")


async def test_marketaux_quota_and_bad_parameters() -> None:
    async with NewsApiStandIn() as api:
        client = mx(api)
        api.fail["/v1/news/all"].append(Scripted(402, err("usage_limit_reached", "Usage limit reached.")))
        with pytest.raises(NewsUnavailable, match="usage_limit_reached"):
            await client.fetch(T0)
        bad = err("malformed_parameters", "The symbols parameter(s) are incorrectly formatted.")
        api.fail["/v1/news/all"].append(Scripted(400, bad))
        with pytest.raises(NewsSourceError, match="malformed_parameters"):
            await client.fetch(T0)
        await client.aclose()
    assert len(api.requests) == 2  # neither is retried


async def test_tiingo_token_header_offsets_and_5xx_then_success() -> None:
    async with NewsApiStandIn() as api:
        api.tiingo = [tiingo_article(i, f"2025-01-0{1 + i % 8}T12:00:00Z", ["NVDA"]) for i in range(5)]
        api.fail["/tiingo/news"].append(Scripted(503, {"detail": "maintenance"}))
        client = tg(api, limit=2, tickers=["NVDA"])
        items = await client.fetch(T0)
        await client.aclose()
    assert sorted(it.article_id for it in items) == ["0", "1", "2", "3", "4"]
    assert all(it.tickers == ["NVDA"] and it.provider == "tiingo" for it in items)
    assert [r.query["offset"] for r in api.requests] == ["0", "0", "2", "4"]
    assert api.requests[-1].query["startDate"] == "2025-01-01" and api.requests[-1].query["tickers"] == "nvda"
    assert all(api.tiingo_key not in r.target for r in api.requests)  # the key travels in the header only
    assert all(r.headers["authorization"] == f"Token {api.tiingo_key}" for r in api.requests)


async def test_gives_up_after_the_retries() -> None:
    async with NewsApiStandIn() as api:
        api.fail["/tiingo/news"] += [Scripted(500, {"detail": "boom"})] * 3
        client = tg(api, retries=2)
        with pytest.raises(NewsUnavailable, match="failed 3 times, last: HTTP 500 boom"):
            await client.fetch(T0)
        await client.aclose()


async def test_tiingo_error_body_with_status_200_is_refused() -> None:
    async with NewsApiStandIn() as api:
        api.fail["/tiingo/news"].append(Scripted(200, {"detail": "Error: you have run over your hourly limit"}))
        client = tg(api)
        with pytest.raises(NewsSourceError, match="hourly limit"):
            await client.fetch(T0)
        await client.aclose()


def test_retry_after_forms() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
