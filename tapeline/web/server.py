"""``tapeline web``: the live dashboard, a small HTTP server on asyncio streams (no framework).

* ``GET /`` the page, ``/static/*`` its assets (lightweight-charts ships in the package: no CDN).
* ``GET /api/stream``: Server-Sent Events. One core NATS subscription per family the page shows
  (decisions, bars, breakers, alerts, heartbeats, orders, control actions, asks) is fanned out to every
  open page as it arrives: pushed, never polled. A page too slow to keep up is disconnected (its
  queue is bounded); the browser's EventSource reconnects and the page reloads its panels.
* ``GET /api/panel/<name>[?arg=]``, ``/api/chart?symbol=``, ``/api/performance``, ``/api/similar?symbol=``:
  JSON read through :class:`~tapeline.web.data.Reader` (the projector's query service, else the
  DuckDB file read-only). The server never writes a table.
* ``POST /api/control``, ``POST /api/ask``: see :mod:`tapeline.web.control` and :mod:`tapeline.ask`.

It binds to loopback unless told otherwise: a dashboard of a trading system is not for the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.events import (
    Alert,
    AskExchange,
    Bar,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    DecisionEnvelope,
    Event,
    Heartbeat,
    OperatorAction,
    OrderFilled,
)
from tapeline.web import data

log = structlog.get_logger("tapeline.web")

LIVE_TYPES: tuple[type[Event], ...] = (
    DecisionEnvelope,
    Bar,  # the chart of the chosen symbol moves with its bars
    CircuitBreakerTripped,
    CircuitBreakerResumed,
    Alert,
    Heartbeat,
    OrderFilled,
    OperatorAction,
    AskExchange,
)
QUEUE = 1000  # events buffered per page before it is dropped (it reconnects and reloads)
MAX_BODY = 64 * 1024
KEEPALIVE_S = 15.0
_encode = msgspec.json.Encoder().encode


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request(msgspec.Struct):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request], Awaitable[Any]]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 500: "Error"}


def live_subjects(prefix: str) -> list[str]:
    return sorted({t.subject_pattern(prefix) for t in LIVE_TYPES})


class WebServer:
    """Serves the page, the read API and the live event stream for one prefix."""

    def __init__(self, nc: Client, prefix: str, reader: data.Reader, *, initial_cash: float = 100_000.0) -> None:
        self.nc = nc
        self.prefix = prefix
        self.reader = reader
        self.initial_cash = initial_cash
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/api/chart"): self._chart,
            ("GET", "/api/performance"): self._performance,
        }
        self._pages: set[asyncio.Queue[bytes | None]] = set()
        self._subs: list[Any] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add an endpoint (the control and ask endpoints are added by their modules)."""
        self.routes[(method, path)] = handler

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> int:
        for subject in live_subjects(self.prefix):
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_event))
        self._server = await asyncio.start_server(self._client, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for q in list(self._pages):
            q.put_nowait(None)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ------------------------------------------------------------------ live events

    async def _on_event(self, msg: Msg) -> None:
        try:
            events = decode(msg.data).events
        except MalformedEvent:
            return  # the consumers dead-letter it; the page only shows what decodes
        for ev in events:
            self.broadcast(ev)

    def broadcast(self, ev: Event) -> None:
        frame = b"event: " + ev.tag.encode() + b"\ndata: " + _encode(ev) + b"\n\n"
        for q in list(self._pages):
            try:
                q.put_nowait(frame)
            except asyncio.QueueFull:
                self._pages.discard(q)
                q.get_nowait()
                q.put_nowait(None)  # too slow: close it; EventSource reconnects and reloads

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        self._pages.add(q)
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Connection: keep-alive\r\nX-Accel-Buffering: no\r\n\r\nretry: 1000\n: connected\n\n"
            )
            await writer.drain()
            while True:
                try:
                    frame = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if frame is None:
                    return
                writer.write(frame)
                await writer.drain()
        finally:
            self._pages.discard(q)

    # ------------------------------------------------------------------ HTTP

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await _read_request(reader)
            if req is None:
                return
            if req.method == "GET" and req.path == "/api/stream":
                await self._stream(writer)
                return
            status, ctype, body = await self._dispatch(req)
            head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            head += f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, req: Request) -> tuple[int, str, bytes]:
        try:
            if req.method == "GET" and (req.path == "/" or req.path.startswith("/static/")):
                return _static(req.path)
            if req.method == "GET" and req.path.startswith("/api/panel/"):
                name = req.path.removeprefix("/api/panel/")
                if name not in data.PANELS:
                    raise HttpError(404, f"no panel {name!r}")
                result: Any = await data.panel(self.reader, name, req.query.get("arg", ""))
            else:
                handler = self.routes.get((req.method, req.path))
                if handler is None:
                    allowed = [m for m, p in self.routes if p == req.path]
                    raise HttpError(405 if allowed else 404, f"{req.method} {req.path}: not here")
                result = await handler(req)
        except HttpError as e:
            return e.status, "application/json", _encode({"error": str(e)})
        except Exception as e:  # a bug or the outside world (NATS gone): the page shows it, the server goes on
            log.exception("web request failed", path=req.path)
            return 500, "application/json", _encode({"error": f"{type(e).__name__}: {e}"})
        return 200, "application/json", _encode(result)

    async def _chart(self, req: Request) -> data.Chart:
        return await data.chart(self.reader, _need(req, "symbol"))

    async def _performance(self, req: Request) -> list[data.Performance]:
        return await data.performance(self.reader, self.initial_cash)


def _need(req: Request, key: str) -> str:
    value = req.query.get(key, "").strip()
    if not value:
        raise HttpError(400, f"missing ?{key}=")
    return value


def json_body(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError:
        raise HttpError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _ = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    size = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(min(size, MAX_BODY)) if size else b""
    url = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    return Request(method.upper(), unquote(url.path), query, headers, body)


STATIC = resources.files("tapeline.web") / "static"


def _static(path: str) -> tuple[int, str, bytes]:
    name = "index.html" if path == "/" else path.removeprefix("/static/")
    if "/" in name or name.startswith("."):
        raise HttpError(404, "not found")
    f = STATIC / name
    if not f.is_file():
        raise HttpError(404, f"no {name}")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype.endswith("javascript"):
        ctype += "; charset=utf-8"
    return 200, ctype, f.read_bytes()
