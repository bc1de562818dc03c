"""Local HTTP stand-ins for the Marketaux and Tiingo news APIs, speaking their documented JSON.

Marketaux ``GET /v1/news/all`` (key in the ``api_token`` query parameter; ``symbols``,
``published_after``, ``limit``, ``page``; ``{"meta": {found, returned, limit, page}, "data": [...]}``;
errors ``{"error": {"code", "message"}}``) and Tiingo ``GET /tiingo/news`` (``Authorization: Token``;
``tickers``, ``startDate``, ``limit``, ``offset``; a JSON array; errors ``{"detail": ...}``).
``fail`` queues scripted answers (429 with ``Retry-After``, 5xx) served before the real ones;
``requests`` records what the client sent.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    target: str  # the raw request target, as a proxy log would show it


@dataclass
class Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class NewsApiStandIn:
    """Serves both APIs on one local port."""

    def __init__(self, *, marketaux_key: str = "mx-secret-0001", tiingo_key: str = "tg-secret-0002") -> None:
        self.marketaux_key = marketaux_key
        self.tiingo_key = tiingo_key
        self.marketaux: list[dict[str, Any]] = []  # articles, newest first (the API's default order)
        self.tiingo: list[dict[str, Any]] = []
        self.fail: dict[str, list[Scripted]] = {"/v1/news/all": [], "/tiingo/news": []}
        self.requests: list[Request] = []
        self.plan_limit = 3  # Marketaux's free-plan page size cap
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> NewsApiStandIn:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        _method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        parts = urlsplit(target)
        req = Request(parts.path, dict(parse_qsl(parts.query)), headers, target)
        self.requests.append(req)
        status, body, extra = self._answer(req)
        data = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(data)), "Connection": "close", **extra}
        writer.write(f"HTTP/1.1 {status} X\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode())
        writer.write(b"\r\n" + data)
        await writer.drain()
        writer.close()

    def _answer(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path not in self.fail:
            return 404, {"error": {"code": "invalid_api_endpoint", "message": "API route does not exist."}}, {}
        if self.fail[req.path]:
            s = self.fail[req.path].pop(0)
            return s.status, s.body, s.headers
        return self._marketaux(req) if req.path == "/v1/news/all" else self._tiingo(req)

    def _marketaux(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        q = req.query
        if q.get("api_token") != self.marketaux_key:
            return 401, {"error": {"code": "invalid_api_token", "message": "An invalid API token was supplied."}}, {}
        try:
            after = datetime.fromisoformat(q["published_after"] + "+00:00") if "published_after" in q else None
            limit = min(int(q.get("limit", self.plan_limit)), self.plan_limit)
            page = int(q.get("page", "1"))
        except ValueError:
            return (
                400,
                {"error": {"code": "malformed_parameters", "message": "The parameter(s) are incorrectly formatted."}},
                {},
            )
        wanted = set(q["symbols"].split(",")) if q.get("symbols") else None
        found = []
        for a in self.marketaux:
            if after and datetime.fromisoformat(a["published_at"]) <= after:
                continue
            ents = a["entities"]
            if wanted is not None:
                if not any(e["symbol"] in wanted for e in ents):
                    continue
                if q.get("filter_entities") == "true":
                    ents = [e for e in ents if e["symbol"] in wanted]
            found.append({**a, "entities": ents})
        data = found[(page - 1) * limit : page * limit]
        meta = {"found": len(found), "returned": len(data), "limit": limit, "page": page}
        return 200, {"meta": meta, "data": data}, {"X-RateLimit-Limit": "60"}

    def _tiingo(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.headers.get("authorization") != f"Token {self.tiingo_key}":
            return 401, {"detail": "Invalid token."}, {}
        q = req.query
        wanted = set(q["tickers"].split(",")) if q.get("tickers") else None
        start = q.get("startDate", "")
        found = [
            a
            for a in self.tiingo
            if a["publishedDate"][:10] >= start and (wanted is None or wanted & set(a["tickers"]))
        ]
        limit, offset = int(q.get("limit", "100")), int(q.get("offset", "0"))
        return 200, found[offset : offset + limit], {}


def marketaux_article(n: int, published: str, symbols: list[str], *, url: str = "", title: str = "") -> dict[str, Any]:
    """An article as ``/v1/news/all`` documents it."""
    return {
        "uuid": f"00000000-0000-4000-8000-{n:012d}",
        "title": title or f"Marketaux story {n}",
        "description": f"Description {n}",
        "keywords": "",
        "snippet": f"Snippet {n}",
        "url": url or f"https://news.example.com/mx/{n}",
        "image_url": "",
        "language": "en",
        "published_at": published,
        "source": "news.example.com",
        "relevance_score": None,
        "entities": [
            {
                "symbol": s,
                "name": s,
                "exchange": None,
                "exchange_long": None,
                "country": "us",
                "type": "equity",
                "industry": "Technology",
                "match_score": 10.5,
                "sentiment_score": 0.25,
                "highlights": [{"highlight": "...", "sentiment": 0.25, "highlighted_in": "title"}],
            }
            for s in symbols
        ],
        "similar": [],
    }


def tiingo_article(n: int, published: str, tickers: list[str], *, url: str = "", title: str = "") -> dict[str, Any]:
    """An article as ``/tiingo/news`` documents it."""
    return {
        "id": n,
        "title": title or f"Tiingo story {n}",
        "url": url or f"https://blog.example.org/tg/{n}",
        "description": f"Long-form description {n}",
        "publishedDate": published,
        "crawlDate": published,
        "source": "blog.example.org",
        "tickers": [t.lower() for t in tickers],
        "tags": ["Earnings"],
    }
