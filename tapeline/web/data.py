"""What the page and ``tapeline ask`` read: named read-only queries over the DuckDB projection.

Reads go through the projector's query service (``<prefix>.svc.query``: live data, the one writer
keeps the file) and, when no projector answers (after ``tapeline demo``), through a read-only open
of the file (``projections.query``): never a write. Every query is one SELECT built here from a
fixed template; user input enters only as quoted literals (:func:`quote`).

A panel whose table or view does not exist yet (the portfolio read models before that issue lands,
``ask_exchanges`` on an old projection) answers with its ``empty`` text, not an error: panels light
up as their events appear.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from tapeline.projections.portfolio import CurvePoint, Period, drawdowns
from tapeline.projections.portfolio import performance as period_figures
from tapeline.projections.query import QueryError, QueryResult, query_file, query_remote


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class Panel(msgspec.Struct, frozen=True):
    """A query's rows as the page shows them, or why there are none."""

    columns: list[str]
    rows: list[list[Any]]
    empty: str = ""  # set when there is nothing to show: what makes it appear
    error: str = ""


def _missing(error: str) -> bool:
    return "Catalog Error" in error or "does not exist" in error


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Reader:
    """Read-only SQL over the projection: the projector's query service, else the file."""

    def __init__(self, nc: Client | None, prefix: str, db_path: Path, *, timeout_s: float = 10.0) -> None:
        self.nc = nc
        self.prefix = prefix
        self.db_path = db_path
        self.timeout_s = timeout_s

    async def query(self, sql: str) -> QueryResult:
        if self.nc is not None and self.nc.is_connected:
            try:
                return await query_remote(self.nc, self.prefix, sql, timeout=self.timeout_s)
            except (NoRespondersError, NatsTimeout):
                pass  # no projector (or a busy one): read the file, read-only
        try:
            return await asyncio.to_thread(query_file, self.db_path, sql)
        except QueryError as e:
            return QueryResult([], [], error=str(e))

    async def rows(self, sql: str) -> list[list[Any]]:
        """Rows of ``sql``; raises :class:`QueryError` with DuckDB's reason."""
        res = await self.query(sql)
        if res.error:
            raise QueryError(res.error)
        return res.rows

    async def panel(self, sql: str, empty: str) -> Panel:
        res = await self.query(sql)
        if res.error:
            return Panel([], [], empty=empty) if _missing(res.error) else Panel([], [], error=res.error)
        rows = [[_jsonable(v) for v in r] for r in res.rows]
        return Panel(res.columns, rows, empty="" if rows else empty)


# Each panel: (SQL, what makes rows appear). ``{symbol}`` is a quoted literal when the panel takes one.
PANELS: dict[str, tuple[str, str]] = {
    "latest": (
        "SELECT ticker, verdict, round(confidence, 2) AS confidence, round(ensemble_score, 2) AS ensemble, "
        "ts_event AS as_of, reasoning, event_id FROM latest_decisions ORDER BY ticker",
        "no decisions yet: run `tapeline demo` or `tapeline up`",
    ),
    "decisions": (
        "SELECT ts_event AS as_of, ticker, verdict, round(confidence, 2) AS confidence, "
        "round(ensemble_score, 2) AS ensemble, reasoning, event_id FROM decisions ORDER BY ts_event DESC, seq DESC "
        "LIMIT 30",
        "no decisions yet",
    ),
    "positions": (
        "SELECT account, symbol, quantity, round(mark, 4) AS mark, round(market_value, 2) AS market_value, "
        "round(pnl, 2) AS pnl FROM equity WHERE quantity != 0 ORDER BY account, symbol",
        "no positions: they appear with the first fill (execution with broker = paper or mt5)",
    ),
    "orders": (
        "SELECT ts_event AS time, stage, account, symbol, side, quantity, order_type, broker, reason "
        "FROM orders ORDER BY ts_event DESC, seq DESC LIMIT 30",
        "no orders yet: they appear when the risk role turns decisions into intents",
    ),
    "fills": (
        "SELECT ts_event AS time, account, symbol, side, quantity, round(price, 4) AS price, commission, broker "
        "FROM fills ORDER BY ts_event DESC, seq DESC LIMIT 30",
        "no fills yet",
    ),
    "breakers": (
        "SELECT breaker, scope, state, reason, operator, ts_event AS since FROM circuit_breakers "
        "QUALIFY row_number() OVER (PARTITION BY breaker, scope ORDER BY ts_event DESC, seq DESC) = 1 "
        "ORDER BY state DESC, breaker, scope",
        "no breaker has tripped",
    ),
    "feeds": (
        "SELECT feed, ts_event AS last_beat, round(lag_ms, 1) AS lag_ms, stale, connected, symbols, "
        "events_since_last FROM heartbeats "
        "QUALIFY row_number() OVER (PARTITION BY feed ORDER BY ts_event DESC, seq DESC) = 1 ORDER BY feed",
        "no feed heartbeats yet: feeds send them while `tapeline feed` or `up` runs",
    ),
    "alerts": (
        "SELECT ts_event AS time, severity, kind, message, resolved FROM alerts ORDER BY ts_event DESC, seq DESC "
        "LIMIT 30",
        "no alerts",
    ),
    "dead_letters": (
        "SELECT ts_event AS time, stream, stream_seq, consumer, reason FROM dead_letters "
        "ORDER BY ts_event DESC, seq DESC LIMIT 30",
        "no dead letters: every message was processed",
    ),
    "news": (
        "SELECT n.published, n.provider, array_to_string(n.tickers, ',') AS tickers, n.title, "
        "round(avg(s.score), 2) AS sentiment, round(avg(s.relevance), 2) AS relevance FROM news n "
        "LEFT JOIN sentiment s ON s.news_id IN (n.event_id, n.article_id) "
        "GROUP BY ALL ORDER BY n.published DESC LIMIT 30",
        "no news yet: `tapeline feed news` (or [news] in the demo) brings it in",
    ),
    "controls": (
        "SELECT ts_event AS time, action, operator, origin, note, detail FROM operator_actions "
        "ORDER BY ts_event DESC, seq DESC LIMIT 20",
        "no control actions yet",
    ),
    "asks": (
        "SELECT ts_event AS time, mode, question, answer FROM ask_exchanges ORDER BY ts_event DESC, seq DESC LIMIT 20",
        "nothing asked yet",
    ),
    "signals": (
        "SELECT agent, domain, signal, round(confidence, 2) AS confidence, summary, "
        "array_to_string(key_factors, '; ') AS key_factors FROM decision_signals WHERE decision_id = {symbol} "
        "ORDER BY agent",
        "this decision carries no agent signals",
    ),
    "symbol_decisions": (
        "SELECT ts_event AS as_of, verdict, round(confidence, 2) AS confidence, round(ensemble_score, 2) AS ensemble, "
        "reasoning, event_id FROM decisions WHERE ticker = {symbol} ORDER BY ts_event DESC, seq DESC LIMIT 30",
        "no decisions for this symbol yet",
    ),
}


async def panel(reader: Reader, name: str, arg: str = "") -> Panel:
    """The named panel (``arg``: the symbol or decision id it is about). Raises KeyError for an unknown name."""
    sql, empty = PANELS[name]
    return await reader.panel(sql.replace("{symbol}", quote(arg)), empty)


class Candle(msgspec.Struct, frozen=True):
    time: int  # UNIX seconds of the bar start (lightweight-charts' UTCTimestamp)
    open: float
    high: float
    low: float
    close: float


class Marker(msgspec.Struct, frozen=True):
    time: int
    verdict: str
    confidence: float
    event_id: str


class Chart(msgspec.Struct, frozen=True):
    symbol: str
    interval: str
    candles: list[Candle]
    markers: list[Marker]
    empty: str = ""


async def chart(reader: Reader, symbol: str, limit: int = 600) -> Chart:
    """The symbol's last ``limit`` bars of its finest interval, and its BUY/SELL decisions on them."""
    sym = quote(symbol)
    try:
        got = await reader.rows(
            f"SELECT interval FROM bars WHERE symbol = {sym} GROUP BY interval "
            "ORDER BY min(epoch_ms(ts_event) - epoch_ms(start)), interval LIMIT 1"
        )
    except QueryError:
        got = []
    if not got:
        return Chart(symbol, "", [], [], empty=f"no bars for {symbol} yet")
    interval = str(got[0][0])
    bars = await reader.rows(
        f"SELECT epoch(start)::BIGINT, open, high, low, close FROM (SELECT * FROM bars WHERE symbol = {sym} "
        f"AND interval = {quote(interval)} ORDER BY start DESC LIMIT {int(limit)}) ORDER BY start"
    )
    candles = [Candle(int(t), float(o), float(h), float(lo), float(c)) for t, o, h, lo, c in bars]
    markers: list[Marker] = []
    if candles:
        first = candles[0].time
        # A decision sits on the bar that was open when it was made (its bar closed at or after it).
        for t, verdict, conf, eid in await reader.rows(
            f"SELECT epoch(ts_event)::BIGINT, verdict, confidence, event_id FROM decisions WHERE ticker = {sym} "
            f"AND verdict != 'HOLD' AND epoch(ts_event) >= {first} ORDER BY ts_event"
        ):
            markers.append(Marker(_bar_of(candles, int(t)), str(verdict), float(conf), str(eid)))
    return Chart(symbol, interval, candles, markers)


def _bar_of(candles: list[Candle], t: int) -> int:
    """The start of the last bar starting at or before ``t`` (markers must sit on a bar's time)."""
    lo, hi = 0, len(candles) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if candles[mid].time <= t:
            lo = mid
        else:
            hi = mid - 1
    return candles[lo].time


class Performance(msgspec.Struct, frozen=True):
    account: str
    curve: list[dict[str, Any]]  # {time (UNIX s), equity, drawdown (<= 0), pnl (that day)}
    figures: dict[str, Any]  # of the latest period: period, pnl, return, max_drawdown, sharpe, sortino, calmar, ...
    empty: str = ""


async def performance(reader: Reader, initial_cash: float, period: Period = "all") -> list[Performance]:
    """Equity curve, drawdown, daily P&L and the latest ``period``'s figures per account.

    From the portfolio's ``equity_curve`` view; the figures are ``projections.portfolio``'s, as
    ``tapeline perf`` prints them.
    """
    empty = "no equity curve yet: it appears with the first fills (execution with broker = paper or mt5)"
    try:
        rows = await reader.rows("SELECT account, day, pnl FROM equity_curve ORDER BY account, day")
    except QueryError:
        rows = []
    if not rows:
        return [Performance("", [], {}, empty=empty)]
    by_account: dict[str, list[CurvePoint]] = {}
    for account, day, pnl in rows:
        d = day.date() if isinstance(day, datetime) else date.fromisoformat(str(day)[:10])
        by_account.setdefault(str(account), []).append(CurvePoint(d, initial_cash + float(pnl)))
    out = []
    for account, points in by_account.items():
        f = period_figures(initial_cash, points, period)[-1]
        falls = drawdowns([p.equity for p in points])
        prev = [initial_cash, *(p.equity for p in points[:-1])]
        curve = [
            {"time": _epoch(p.day), "equity": p.equity, "drawdown": -dd, "pnl": p.equity - before}
            for p, dd, before in zip(points, falls, prev, strict=True)
        ]
        figures = {
            "period": f.period,
            "pnl": f.pnl,
            "return": f.ret,
            "max_drawdown": f.max_drawdown,
            "sharpe": f.sharpe,
            "sortino": f.sortino,
            "calmar": f.calmar,
            "win_rate": f.win_rate,
        }
        out.append(Performance(account, curve, figures))
    return out


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
