"""Tiingo News: broad news from ``GET /tiingo/news``.

Documented API (https://www.tiingo.com/documentation/news): the key goes in the
``Authorization: Token <key>`` header; ``tickers`` and ``tags`` (comma separated), ``startDate`` /
``endDate`` (``YYYY-MM-DD``, on the published date), ``limit`` (at most 1000), ``offset`` and
``sortBy`` (``publishedDate`` or ``crawlDate``). The answer is a JSON array of ``{id, title, url,
description, publishedDate, crawlDate, source, tickers, tags}``; a page shorter than ``limit`` is the
last. Errors carry ``{"detail": ...}``; 429 and 5xx are retried with backoff.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import msgspec
import structlog

from tapeline.adapters.files import parse_time_ns
from tapeline.adapters.news.config import TiingoConfig
from tapeline.adapters.news.dedup import news_id
from tapeline.adapters.news.http import Backoff, NewsSourceError, error_text, get_json
from tapeline.schemas.events import NewsItem

PROVIDER = "tiingo"
PATH = "/tiingo/news"
log = structlog.get_logger("tapeline.news")


class Article(msgspec.Struct, frozen=True, kw_only=True):
    id: int | str
    title: str
    url: str = ""
    description: str | None = ""
    publishedDate: str
    crawlDate: str = ""
    source: str | None = ""
    tickers: list[str] = []
    tags: list[str] = []


def to_item(a: Article, now: int) -> NewsItem:
    published = parse_time_ns(a.publishedDate)
    return NewsItem(
        event_id=news_id(published, a.url, a.title),
        ts_event=published,
        ts_init=now,
        source=PROVIDER,
        provider=PROVIDER,
        article_id=str(a.id),
        title=" ".join(a.title.split()),
        tickers=list(dict.fromkeys(t.upper() for t in a.tickers if t)),
        summary=(a.description or "")[:1000],
        url=a.url,
        published_ns=published,
    )


class TiingoClient:
    """Fetches the articles published since a date, ``limit`` per page, following ``offset``."""

    def __init__(self, cfg: TiingoConfig, key: str) -> None:
        if not key:
            raise NewsSourceError(
                f"tiingo: {cfg.key_env} is not set; export it or put it in .env "
                "(or leave tiingo out of [feeds.sources] news)"
            )
        self.cfg = cfg
        self.backoff = Backoff(initial_s=cfg.backoff_initial_s, max_s=cfg.backoff_max_s, retries=cfg.retries)
        self._headers = {"Authorization": f"Token {key}", "Content-Type": "application/json"}
        self.http = httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s)
        self.skipped = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def fetch(self, published_after_ns: int) -> list[NewsItem]:
        cfg = self.cfg
        start = datetime.fromtimestamp(published_after_ns / 1e9, UTC).strftime("%Y-%m-%d")
        params: dict[str, str | int] = {"startDate": start, "limit": cfg.limit, "sortBy": "publishedDate"}
        if cfg.tickers:
            params["tickers"] = ",".join(t.lower() for t in cfg.tickers)
        if cfg.tags:
            params["tags"] = ",".join(cfg.tags)
        items: list[NewsItem] = []
        now = time.time_ns()
        for page in range(cfg.max_pages):
            body = await get_json(self.http, PROVIDER, PATH, params={**params, "offset": page * cfg.limit},
                                  headers=self._headers, key_hint=cfg.key_env, backoff=self.backoff)  # fmt: skip
            if not isinstance(body, list):
                raise NewsSourceError(f"tiingo: {PATH} answered {error_text(body)} instead of a list of articles")
            for raw in body:
                try:
                    item = to_item(msgspec.convert(raw, Article), now)
                except (msgspec.ValidationError, ValueError) as e:
                    self.skipped += 1
                    log.warning("news article skipped", provider=PROVIDER, reason=str(e)[:160])
                    continue
                if item.published_ns >= published_after_ns:
                    items.append(item)
            if len(body) < cfg.limit:
                break
        return items
