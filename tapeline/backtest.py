"""``tapeline backtest``: the price files through decisions, risk and a paper broker, judged against buy-and-hold.

The file feed's events (``[feeds.files]``: bars, ticks, the alerts it raises) and the news files
(``[news.files]``: FNSPID, SemEval) are merged by event time and run through every declared handler
with the in-process runner (bars, features, momentum, decision, scanner, sizing, risk gate,
breakers, portfolio, ...), exactly as they run live. Approved orders fill by the paper broker's own
rule (``adapters/brokers/paper.py``: the first later tick at the quote, or the open of the first
bar that starts after the approval; the ``[execution]`` slippage and commission), and each fill
goes back through the handlers, so risk, breakers and the portfolio see it as they would live.
Gateways make no calls (no LLM, no broker, no webhook): a news-driven agent votes only from what
is already recorded.

Risk, sizing, the scanner and the breakers read bars of their own ``interval`` (``1m`` by default);
the backtest sets it to the files' bar interval (``momentum.interval``) so daily files can trade.

Every input and derived event is published under ``<prefix>-backtest-<name>`` (inspect it with the
usual tools: ``tapeline status --prefix ...``) and projected into ``<data_dir>/backtest/<name>.duckdb``;
the performance figures come from that file's ``equity_curve``, the same read model ``tapeline perf``
uses, next to buy-and-hold of the same starting cash split equally over the files' symbols.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from tapeline.adapters.brokers.base import ExecutionConfig
from tapeline.adapters.brokers.paper import PaperBroker
from tapeline.adapters.runner import Feed
from tapeline.bus.inprocess import InProcessRunner
from tapeline.config import Settings
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.portfolio import CurvePoint, Figures, TradeStats, buy_and_hold, performance
from tapeline.projections.table import Row
from tapeline.projections.tables import TABLES
from tapeline.schemas.components import Component, Handler
from tapeline.schemas.events import (
    Bar,
    DecisionEnvelope,
    Event,
    NewsItem,
    OrderApproved,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    Tick,
)
from tapeline.schemas.subjects import FAMILIES

console = Console()
ALIGNED = ("scanner", "sizing", "risk", "breakers")  # components whose bar interval follows the files


class BacktestResult(msgspec.Struct):
    inputs: int
    derived: int
    counts: dict[str, int]  # decisions, intents, approved, rejected, fills
    accounts: dict[str, list[Figures]]  # all-time figures per account
    curves: dict[str, list[CurvePoint]]
    trades: dict[str, TradeStats]
    baseline: list[Figures]
    baseline_curve: list[CurvePoint]
    seconds: float
    db_path: str


def aligned_configs(configs: dict[str, Any]) -> dict[str, Any]:
    """The components' configs with the risk side reading the files' bar interval."""
    out = dict(configs)
    interval = configs["momentum"].interval
    for name in ALIGNED:
        if name in out and hasattr(out[name], "interval"):
            out[name] = msgspec.structs.replace(out[name], interval=interval)
    return out


async def read_feed(feed: Feed) -> list[Event]:
    """Every event of a finite feed, merged by event time (each source kept in its order)."""
    per_batch: list[list[Event]] = []
    async for batch in feed.stream():
        per_batch.append(list(batch))
    return list(heapq.merge(*per_batch, key=lambda e: e.ts_event))


async def simulate(inputs: Sequence[Event], components: Sequence[Component], execution: ExecutionConfig) -> list[Event]:
    """Inputs through the handlers, approvals filled by the paper rule, fills fed back: every derived event."""
    runner = InProcessRunner([c for c in components if isinstance(c, Handler)], "bt")
    paper = PaperBroker(execution)
    working: list[OrderApproved] = []
    derived: list[Event] = []
    for e in inputs:
        if working and isinstance(e, Bar | Tick):
            fills: list[Event] = []
            still: list[OrderApproved] = []
            for o in working:
                f = paper._fill_at(o, e) if o.symbol == e.symbol else None  # the paper broker's price rule
                if f is None:
                    still.append(o)
                else:
                    fills.append(f)
            working = still
            for f in fills:
                derived.append(f)
                derived += await runner.run([f])  # type: ignore[list-item]
        out = await runner.run([e])  # type: ignore[list-item]
        derived += out
        working += [o for o in out if isinstance(o, OrderApproved)]
    return derived


def project(path: Path, events: Sequence[Event]) -> ProjectionDb:
    """All events into a fresh DuckDB file through the read-model declarations (one commit per stream)."""
    if path.exists():
        path.unlink()
    db = ProjectionDb(path)
    seqs: dict[str, int] = defaultdict(int)
    rows: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    by_type: dict[type, list[Any]] = defaultdict(list)
    for t in TABLES:
        for et in t.events:
            by_type[et].append(t)
    for e in events:
        seqs[e.family] += 1
        for t in by_type.get(type(e), ()):
            rows[t.family.key][t.name].extend(t.rows(e, seqs[e.family]))
    for fam in FAMILIES:
        if fam.key in rows:
            tables = {t.name: rows[fam.key].get(t.name, []) for t in TABLES if t.family == fam}
            db.commit(fam.key, tables, seqs[fam.key], {})
    return db


def _day(ns: int) -> date:
    return datetime.fromtimestamp(ns / 1e9, UTC).date()


def baseline_closes(inputs: Sequence[Event], interval: str) -> dict[str, list[tuple[date, float]]]:
    """The last close per symbol and UTC day of the files' bars."""
    last: dict[str, dict[date, float]] = defaultdict(dict)
    for e in inputs:
        if isinstance(e, Bar) and e.interval == interval and e.close > 0:
            last[e.symbol][_day(e.ts_event)] = e.close
    return {s: sorted(d.items()) for s, d in last.items()}


async def backtest(
    inputs: Sequence[Event],
    components: Sequence[Component],
    *,
    execution: ExecutionConfig,
    initial_cash: float,
    interval: str,
    db_path: Path,
) -> tuple[BacktestResult, list[Event]]:
    from tapeline.perf import accounts, curve, file_rows, trades

    started = time.perf_counter()
    derived = await simulate(inputs, components, execution)
    project(db_path, [*inputs, *derived]).close()
    rows = file_rows(db_path)
    figures: dict[str, list[Figures]] = {}
    curves: dict[str, list[CurvePoint]] = {}
    closed: dict[str, TradeStats] = {}
    for name in await accounts(rows):
        closed[name] = await trades(rows, name)
        curves[name] = await curve(rows, name, initial_cash)
        figures[name] = performance(initial_cash, curves[name], "all")
    bh = buy_and_hold(initial_cash, baseline_closes(inputs, interval))
    kinds = {
        "decisions": DecisionEnvelope,
        "intents": OrderIntent,
        "approved": OrderApproved,
        "rejected": OrderRejected,
        "fills": OrderFilled,
    }
    counts = {k: sum(isinstance(e, t) for e in derived) for k, t in kinds.items()}
    return (
        BacktestResult(
            inputs=len(inputs),
            derived=len(derived),
            counts=counts,
            accounts=figures,
            curves=curves,
            trades=closed,
            baseline=performance(initial_cash, bh, "all"),
            baseline_curve=bh,
            seconds=time.perf_counter() - started,
            db_path=str(db_path),
        ),
        derived,
    )


# ---------------------------------------------------------------- the command's body


async def run_backtest(s: Settings, configs: dict[str, Any], name: str, png: Path, publish: bool) -> BacktestResult:
    """Read the files, simulate, project, publish under ``<prefix>-backtest-<name>``, print and chart."""
    from tapeline.adapters.sources import files_feed
    from tapeline.perf import figures_table, trades_line, write_chart
    from tapeline.system import COMPONENTS

    configs = aligned_configs(configs)
    say = console.print
    inputs = await read_feed(files_feed(s.feeds))
    news_cfg = configs["news"]
    if news_cfg.files.fnspid or news_cfg.files.semeval.path:  # the [news.files] files, as the news feed reads them
        from tapeline.adapters.news.feed import NewsFeed

        news = await read_feed(NewsFeed(msgspec.structs.replace(news_cfg, providers=["files"])))
        inputs = list(heapq.merge(inputs, news, key=lambda e: e.ts_event))
    bars = sum(isinstance(e, Bar) for e in inputs)
    items = sum(isinstance(e, NewsItem) for e in inputs)
    say(f"read {len(inputs):,} events ({bars:,} bars, {items:,} news items) from the files")
    handlers = [c(configs.get(c.name)) for c in COMPONENTS if issubclass(c, Handler)]
    initial = float(configs["portfolio"].initial_cash)
    interval = str(configs["momentum"].interval)
    result, derived = await backtest(
        inputs,
        handlers,
        execution=configs["execution"],
        initial_cash=initial,
        interval=interval,
        db_path=s.data_path / "backtest" / f"{name}.duckdb",
    )
    target = f"{s.prefix}-backtest-{name}"
    if publish:
        from tapeline.bus.publisher import Publisher
        from tapeline.pipeline import provision_system
        from tapeline.session import nats_session

        async with nats_session(s.nats_url, s.data_path, name="tapeline-backtest") as (nc, _):
            await provision_system(nc, target)
            pub = await Publisher(nc, target, role="backtest").start()
            try:
                every = [*inputs, *derived]
                for i in range(0, len(every), 5000):
                    await pub.publish(every[i : i + 5000])
            finally:
                await pub.close()
    c = result.counts
    say(
        f"backtest [bold]{name}[/]: {result.derived:,} derived events in {result.seconds:.1f}s; "
        f"{c['decisions']:,} decisions -> {c['intents']:,} intents -> {c['approved']:,} approved, "
        f"{c['rejected']:,} rejected -> {c['fills']:,} fills"
    )
    if not result.accounts:
        say(figures_table(f"Buy and hold of {interval} closes (no fills: the strategy never traded)", result.baseline))
    for account, figs in result.accounts.items():
        say(figures_table(f"Backtest of {account} vs buy and hold (all time)", figs, result.baseline))
        say(trades_line(result.trades[account]))
        out = png if len(result.accounts) == 1 else png.with_name(f"{png.stem}-{account}{png.suffix}")
        write_chart(out, initial, result.curves[account], _aligned(result.curves[account], result.baseline_curve))
        say(f"equity (blue) vs buy and hold (orange) and drawdown: {out}")
    say(f"read models: {result.db_path}" + (f"; events under {target}" if publish else ""))
    return result


def _aligned(pts: Sequence[CurvePoint], base: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The baseline on the strategy's days (its last value at or before each), for one chart."""
    out: list[CurvePoint] = []
    j, last = 0, base[0].equity if base else 0.0
    for p in pts:
        while j < len(base) and base[j].day <= p.day:
            last = base[j].equity
            j += 1
        out.append(CurvePoint(p.day, last))
    return out if base else []
