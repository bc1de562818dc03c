"""``tapeline web``: put the server, its control and chat endpoints and the vector search together."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from rich.console import Console

from tapeline.ask import Answer, Asker, Tools, initial_cash
from tapeline.config import Settings
from tapeline.session import nats_session
from tapeline.web import data
from tapeline.web.control import Controls, operator_token
from tapeline.web.server import HttpError, Request, WebServer, json_body

log = structlog.get_logger("tapeline.web")


def similar_rows(settings: Settings, symbol: str, k: int = 8) -> data.Panel:
    """Past market states nearest to ``symbol``'s latest, with their forward returns (LanceDB, read only)."""
    from tapeline.projections.vectors import VectorStore, similar_situations

    if not settings.vectors_path.exists():
        return data.Panel([], [], empty="no vectors yet: the vectors role builds them (`tapeline demo` or `up`)")
    rows = similar_situations(VectorStore(settings.vectors_path), symbol, None, k)
    if not rows:
        return data.Panel([], [], empty=f"no market state for {symbol} yet (it needs 61 bars of history)")
    cols = ["symbol", "bar_close", "distance", "close", "fwd_ret_1", "fwd_ret_5", "fwd_ret_20"]
    out = []
    for r in rows:
        when = data._jsonable(_utc(int(r["ts_event"])))
        out.append([r["symbol"], when, round(r["distance"], 3), r["close"], *(_pct(r[c]) for c in cols[4:])])
    return data.Panel(cols, out)


def _utc(ns: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).replace(tzinfo=None)


def _pct(v: Any) -> str | None:
    return f"{float(v):+.2%}" if isinstance(v, int | float) else None


async def serve(s: Settings, host: str, port: int, console: Console) -> None:
    """Serve until SIGINT/SIGTERM."""
    async with nats_session(s.nats_url, s.data_path, name="tapeline-web", retry=True) as (nc, _):
        reader = data.Reader(nc, s.prefix, s.duckdb_path)
        server = WebServer(nc, s.prefix, reader, initial_cash=initial_cash(s))
        controls = Controls(nc, s.prefix, reader, s, operator_token())
        controls.mount(server)

        async def similar(req: Request) -> data.Panel:
            symbol = req.query.get("symbol", "").strip()
            if not symbol:
                raise HttpError(400, "missing ?symbol=")
            return await asyncio.to_thread(similar_rows, s, symbol)

        server.route("GET", "/api/similar", similar)
        asker = Asker(nc, s.prefix, Tools(reader, s))

        async def ask(req: Request) -> Answer:
            question = str(json_body(req).get("question", "")).strip()
            if not question:
                raise HttpError(400, "ask something: question is empty")
            return await asker.ask(question[:2000], origin="web")

        server.route("POST", "/api/ask", ask)
        bound = await server.start(host, port)
        mode = "operator controls on" if controls.enabled else "view-only"
        console.print(f"serving http://{host}:{bound}/ ({mode}; prefix {s.prefix}); Ctrl-C to stop", soft_wrap=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
