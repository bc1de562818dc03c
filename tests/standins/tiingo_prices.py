"""A local HTTP stand-in for Tiingo's end-of-day prices API, speaking its documented JSON.

``GET /tiingo/daily/<ticker>/prices?startDate&endDate&resampleFreq`` with ``Authorization: Token``;
a JSON array of ``{date, open, high, low, close, volume, adjOpen, adjHigh, adjLow, adjClose,
adjVolume, divCash, splitFactor}`` (``date`` as ``YYYY-MM-DDT00:00:00.000Z``), dates within
[startDate, endDate]. Errors as Tiingo sends them: 401 ``{"detail": "Invalid token."}``, 404
``{"detail": "Error: Ticker 'X' not found"}``. ``fail`` queues scripted answers (429 with
``Retry-After``, 5xx) served first; ``requests`` records what the client sent.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def price_row(day: str, close: float, *, split: float = 1.0, volume: int = 1_000_000) -> dict[str, Any]:
    """One row; raw prices are ``split`` times the adjusted ones (as before a split)."""
    adj = {"adjOpen": close * 0.99, "adjHigh": close * 1.01, "adjLow": close * 0.98, "adjClose": close}
    return {
        "date": f"{day}T00:00:00.000Z",
        "open": adj["adjOpen"] * split,
        "high": adj["adjHigh"] * split,
        "low": adj["adjLow"] * split,
        "close": close * split,
        "volume": int(volume / split),
        **adj,
        "adjVolume": volume,
        "divCash": 0.0,
        "splitFactor": 1.0,
    }


class TiingoPricesStandIn:
    def __init__(self, *, token: str = "tg-prices-secret-0003") -> None:
        self.token = token
        self.prices: dict[str, list[dict[str, Any]]] = {}  # ticker (lower case) -> rows, oldest first
        self.fail: list[Scripted] = []
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> TiingoPricesStandIn:
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
        req = Request(parts.path, dict(parse_qsl(parts.query)), headers)
        self.requests.append(req)
        status, body, extra = self._answer(req)
        data = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(data)), "Connection": "close", **extra}
        writer.write(f"HTTP/1.1 {status} X\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode())
        writer.write(b"\r\n" + data)
        await writer.drain()
        writer.close()

    def _answer(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        segs = req.path.strip("/").split("/")
        if len(segs) != 4 or segs[:2] != ["tiingo", "daily"] or segs[3] != "prices":
            return 404, {"detail": "Not found."}, {}
        if req.headers.get("authorization") != f"Token {self.token}":
            return 401, {"detail": "Invalid token."}, {}
        if self.fail:
            s = self.fail.pop(0)
            return s.status, s.body, s.headers
        ticker = segs[2].lower()
        if ticker not in self.prices:
            return 404, {"detail": f"Error: Ticker '{segs[2]}' not found"}, {}
        start, end = req.query.get("startDate", "0000"), req.query.get("endDate", "9999")
        return 200, [r for r in self.prices[ticker] if start <= r["date"][:10] <= end], {}
