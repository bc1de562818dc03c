"""Marketaux: targeted news per symbol from ``GET /v1/news/all``.

Documented API (https://www.marketaux.com/documentation): the key is the ``api_token`` query
parameter; ``symbols`` (comma separated), ``filter_entities=true`` (only the queried entities on each
article), ``language``, ``published_after`` (``Y-m-d\\TH:i:s``, UTC), ``limit`` (plan-capped) and
``page``. A page is ``{"meta": {"found", "returned", "limit", "page"}, "data": [article]}`` with
``returned < limit`` on the last page; an article has ``uuid, title, description, snippet, url,
published_at, source, entities[{symbol, sentiment_score, ...}]``. Errors are
``{"error": {"code", "message"}}``: 401 ``invalid_api_token``, 402 ``usage_limit_reached``,
429 ``rate_limit_reached`` (60-second window), 5xx ``server_error`` / ``maintenance_mode``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import structlog

from tapeline.adapters.files import parse_time_ns
from tapeline.adapters.news.config import MarketauxConfig
from tapeline.adapters.news.dedup import news_id
from tapeline.adapters.news.http import Backoff, NewsSourceError, get_json
from tapeline.schemas.events import NewsItem

PROVIDER = "marketaux"
PATH = "/v1/news/all"
log = structlog.get_logger("tapeline.news")


class Entity(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str = ""
    sentiment_score: float | None = None


class Article(msgspec.Struct, frozen=True, kw_only=True):
    uuid: str
    title: str
    url: str = ""
    description: str | None = ""
    snippet: str | None = ""
    published_at: str
    source: str | None = ""
    entities: list[Entity] = []


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    found: int = 0
    returned: int = 0
    limit: int = 0
    page: int = 1


class Page(msgspec.Struct, frozen=True, kw_only=True):
    meta: Meta = Meta()
    data: list[Any] = []  # articles are decoded one by one: a bad one is skipped, not the page


def api_time(ns: int) -> str:
    """``published_after`` in the documented ``Y-m-d\\TH:i:s`` (UTC) form."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def to_item(a: Article, now: int) -> NewsItem:
    published = parse_time_ns(a.published_at)
    tickers = list(dict.fromkeys(e.symbol.upper() for e in a.entities if e.symbol))
    return NewsItem(
        event_id=news_id(published, a.url, a.title),
        ts_event=published,
        ts_init=now,
        source=PROVIDER,
        provider=PROVIDER,
        article_id=a.uuid,
        title=" ".join(a.title.split()),
        tickers=tickers,
        summary=(a.description or a.snippet or "")[:1000],
        url=a.url,
        published_ns=published,
    )


class MarketauxClient:
    """Fetches the articles published after a time for the configured symbols, page by page."""

    def __init__(self, cfg: MarketauxConfig, key: str) -> None:
        if not key:
            raise NewsSourceError(
                f"marketaux: {cfg.key_env} is not set; export it or put it in .env "
                "(or leave marketaux out of [feeds.sources] news)"
            )
        self.cfg = cfg
        self._key = key
        self.backoff = Backoff(initial_s=cfg.backoff_initial_s, max_s=cfg.backoff_max_s, retries=cfg.retries)
        self.http = httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s)
        self.skipped = 0  # articles the API sent that do not decode (logged, not published)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def fetch(self, published_after_ns: int) -> list[NewsItem]:
        """Every page (up to ``max_pages``) of articles published after the given time."""
        cfg = self.cfg
        params: dict[str, str | int] = {
            "api_token": self._key,
            "published_after": api_time(published_after_ns),
            "limit": cfg.limit,
            "filter_entities": str(cfg.filter_entities).lower(),
        }
        if cfg.symbols:
            params["symbols"] = ",".join(cfg.symbols)
        if cfg.language:
            params["language"] = cfg.language
        items: list[NewsItem] = []
        now = time.time_ns()
        for page in range(1, cfg.max_pages + 1):
            body = await get_json(self.http, PROVIDER, PATH, params={**params, "page": page},
                                  key_hint=cfg.key_env, backoff=self.backoff)  # fmt: skip
            try:
                got = msgspec.convert(body, Page)
            except msgspec.ValidationError as e:
                raise NewsSourceError(f"marketaux: {PATH} answered an unexpected shape ({e})") from None
            for raw in got.data:
                try:
                    items.append(to_item(msgspec.convert(raw, Article), now))
                except (msgspec.ValidationError, ValueError) as e:
                    self.skipped += 1
                    log.warning("news article skipped", provider=PROVIDER, reason=str(e)[:160])
            if not got.data or got.meta.returned < (got.meta.limit or cfg.limit):
                break
        return items
