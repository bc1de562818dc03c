"""``tapeline perf``: performance per account from the read models, and decision hit rates.

``tapeline perf`` reads ``equity_curve`` (``projections/portfolio.py``) through the projector's
query service (or the DuckDB file when nothing runs), prints P&L, return, max drawdown, Sharpe,
Sortino, Calmar and win rate (days with a gain) per day / week / month / all time, the closed
trades won (average cost), and writes a PNG of equity over
drawdown. ``tapeline perf decisions`` reads ``decision_returns`` and shows the hit rate of
BUY/SELL decisions by confidence bucket and of each agent's call inside them (BULLISH/BEARISH).
Equity = ``[portfolio] initial_cash`` + the curve's P&L.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tapeline.bus.connection import NatsConnectError, NatsSettings
from tapeline.bus.logging import configure_logging
from tapeline.chart import equity_chart
from tapeline.config import ConfigError, Settings, load_settings
from tapeline.feeds import ConfigOpt, config_exit
from tapeline.projections.portfolio import (
    HORIZONS,
    PERIODS,
    CurvePoint,
    Figures,
    Period,
    TradeStats,
    drawdowns,
    performance,
    trade_stats,
)
from tapeline.projections.query import QueryError, query_file, query_remote
from tapeline.session import nats_session, running_embedded

console = Console()
Rows = Callable[[str], Awaitable[list[list[Any]]]]
NatsOpt = Annotated[str, typer.Option("--nats", help="NATS URL (default: TAPELINE_NATS_URL or embedded)")]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help="subject prefix (namespace)")]

perf_app = typer.Typer(
    help="Performance: equity, P&L, drawdown, Sharpe/Sortino/Calmar, win rate; decision hit rates.",
    rich_markup_mode=None,
    invoke_without_command=True,
)


def file_rows(path: Path) -> Rows:
    async def rows(sql: str) -> list[list[Any]]:
        res = await asyncio.to_thread(query_file, path, sql)
        if res.error:
            raise QueryError(res.error)
        return res.rows

    return rows


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def accounts(rows: Rows) -> list[str]:
    return [str(r[0]) for r in await rows("SELECT DISTINCT account FROM equity_curve ORDER BY 1")]


async def curve(rows: Rows, account: str, initial: float) -> list[CurvePoint]:
    """The account's daily equity: ``initial`` + P&L since inception."""
    got = await rows(f"SELECT day, pnl FROM equity_curve WHERE account = {quote(account)} ORDER BY day")
    return [CurvePoint(_day(d), initial + float(p)) for d, p in got]


async def trades(rows: Rows, account: str) -> TradeStats:
    """Closed trades of the account (average cost), from its fills in stream order."""
    got = await rows(
        "SELECT symbol, side, quantity, price, commission FROM fills "
        f"WHERE account = {quote(account)} ORDER BY ts_event, seq"
    )
    return trade_stats([(str(a), str(b), float(c), float(d), float(e)) for a, b, c, d, e in got])


def trades_line(t: TradeStats) -> str:
    return f"closed trades: {t.closed:,}, won {t.win_rate:.0%}, realised P&L {t.realised:+,.2f} (average cost)"


def _day(v: Any) -> date:
    return v.date() if isinstance(v, datetime) else date.fromisoformat(str(v)[:10])


def _bucket(c: float) -> str:
    lo = min(4, max(0, int(c * 5))) / 5
    return f"{lo:.1f}-{lo + 0.2:.1f}"


async def decision_hit_rates(
    rows: Rows, *, horizon: int, interval: str | None
) -> tuple[str, dict[str, tuple[int, float]], dict[str, tuple[int, float]]]:
    """(interval, {confidence bucket: (decisions, hit rate)}, {agent: (calls, hit rate)}) at ``horizon`` bars.

    A BUY hits when the price rose, a SELL when it fell (HOLDs are not calls). An agent's call is its
    BULLISH/BEARISH signal inside the decision. ``interval`` None: the interval with most realised returns.
    """
    if horizon not in HORIZONS:
        raise ValueError(f"horizon {horizon}: choose one of {list(HORIZONS)}")
    r = f"ret_{horizon}"
    if interval is None:
        got = await rows(
            f"SELECT interval FROM decision_returns WHERE {r} IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        )
        if not got:
            return "", {}, {}
        interval = str(got[0][0])
    where = f"{r} IS NOT NULL AND interval = {quote(interval)}"
    calls = await rows(
        f"SELECT confidence, (verdict = 'BUY' AND {r} > 0) OR (verdict = 'SELL' AND {r} < 0) "
        f"FROM decision_returns WHERE verdict IN ('BUY', 'SELL') AND {where}"
    )
    buckets: dict[str, list[bool]] = {}
    for conf, hit in calls:
        buckets.setdefault(_bucket(float(conf)), []).append(bool(hit))
    agent_calls = await rows(
        f"SELECT s.agent, (s.signal = 'BULLISH' AND {r} > 0) OR (s.signal = 'BEARISH' AND {r} < 0) "
        f"FROM decision_returns d JOIN decision_signals s USING (decision_id) "
        f"WHERE s.signal IN ('BULLISH', 'BEARISH') AND {where}"
    )
    agents: dict[str, list[bool]] = {}
    for agent, hit in agent_calls:
        agents.setdefault(str(agent), []).append(bool(hit))

    def rate(d: dict[str, list[bool]]) -> dict[str, tuple[int, float]]:
        return {k: (len(v), sum(v) / len(v)) for k, v in sorted(d.items())}

    return interval, rate(buckets), rate(agents)


# ---------------------------------------------------------------- output


def figures_table(title: str, figs: list[Figures], baseline: list[Figures] | None = None) -> Table:
    t = Table(title=title)
    for c in ("period", "days", "end equity", "P&L", "return", "max DD", "Sharpe", "Sortino", "Calmar", "win rate"):
        t.add_column(c, justify="left" if c == "period" else "right")
    rows = [(f, "") for f in figs] + [(f, " (buy & hold)") for f in baseline or []]
    for f, tag in rows:
        color = "green" if f.pnl > 0 else "red" if f.pnl < 0 else "white"
        t.add_row(
            f.period + tag,
            str(f.days),
            f"{f.end_equity:,.2f}",
            f"[{color}]{f.pnl:+,.2f}[/]",
            f"{f.ret:+.2%}",
            f"{f.max_drawdown:.2%}",
            f"{f.sharpe:.2f}",
            f"{f.sortino:.2f}",
            f"{f.calmar:.2f}",
            f"{f.win_rate:.0%}",
        )
    return t


def write_chart(path: Path, initial: float, pts: Sequence[CurvePoint], compare: Sequence[CurvePoint] = ()) -> None:
    eq = [p.equity for p in pts]
    equity_chart(path, eq, drawdowns([initial, *eq])[1:], baseline=initial, compare=[p.equity for p in compare])


def _settings(config: Path, prefix: str | None, nats: str) -> Settings:
    try:
        s = load_settings(config, prefix=prefix, nats_url=nats or None)
    except ConfigError as e:
        config_exit(e)
    configure_logging("warning")
    return s


async def with_rows(s: Settings, work: Callable[[Rows], Awaitable[None]]) -> None:
    """Run ``work`` against the projector's query service, or the DuckDB file when nothing runs."""
    external = NatsSettings.from_env(s.nats_url).url
    if not external and running_embedded(s.data_path) is None:
        await work(file_rows(s.duckdb_path))
        return
    async with nats_session(s.nats_url, s.data_path, name="tapeline-perf") as (nc, _):

        async def remote(sql: str) -> list[list[Any]]:
            try:
                res = await query_remote(nc, s.prefix, sql, timeout=5.0)
            except Exception:  # no projector answering: the file
                return await file_rows(s.duckdb_path)(sql)
            if res.error:
                raise QueryError(res.error)
            return res.rows

        await work(remote)


def _go(s: Settings, work: Callable[[Rows], Awaitable[None]]) -> None:
    if not s.duckdb_path.exists() and not NatsSettings.from_env(s.nats_url).url:
        typer.echo(f"no projection at {s.duckdb_path}: run `tapeline demo` or `tapeline up` first", err=True)
        raise typer.Exit(1)
    try:
        asyncio.run(with_rows(s, work))
    except (QueryError, NatsConnectError, ValueError) as e:
        typer.echo(str(e).splitlines()[0] if str(e) else type(e).__name__, err=True)
        raise typer.Exit(1) from None


@perf_app.callback()
def perf_cmd(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(help="one account (default: every account with fills)")] = None,
    period: Annotated[str, typer.Option(help="day, week, month or all")] = "all",
    png: Annotated[
        Path, typer.Option(help="chart of equity and drawdown (one file per account: NAME-ACCOUNT.png)")
    ] = Path("perf.png"),
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Performance per account: P&L, return, max DD, Sharpe, Sortino, Calmar, win rate; a PNG of equity."""
    if ctx.invoked_subcommand is not None:
        return
    if period not in PERIODS:
        typer.echo(f"--period {period!r}: choose one of {', '.join(PERIODS)}", err=True)
        raise typer.Exit(2)
    s = _settings(config, prefix, nats)
    initial = float(s.components()["portfolio"].initial_cash)
    chosen: Period = period  # type: ignore[assignment]

    async def work(rows: Rows) -> None:
        names = [account] if account else await accounts(rows)
        if not names:
            console.print("no fills yet: nothing to measure (the portfolio starts at the first fill)")
            return
        for name in names:
            pts = await curve(rows, name, initial)
            if not pts:
                raise ValueError(f"account {name!r} has no fills (accounts: {', '.join(await accounts(rows))})")
            console.print(figures_table(f"Performance of {name} by {chosen}", performance(initial, pts, chosen)))
            if chosen != "all":
                console.print(figures_table(f"{name}: all time", performance(initial, pts, "all")))
            console.print(trades_line(await trades(rows, name)))
            out = png if len(names) == 1 else png.with_name(f"{png.stem}-{name}{png.suffix}")
            write_chart(out, initial, pts)
            console.print(f"equity and drawdown chart: {out}")

    _go(s, work)


@perf_app.command("decisions")
def decisions_cmd(
    horizon: Annotated[int, typer.Option(help="bars after the decision: 1, 5 or 20")] = 5,
    interval: Annotated[str | None, typer.Option(help="bar interval (default: the one with most returns)")] = None,
    config: ConfigOpt = Path("tapeline.toml"),
    nats: NatsOpt = "",
    prefix: PrefixOpt = None,
) -> None:
    """Hit rate of decisions by confidence bucket and by agent, from realised forward returns."""
    if horizon not in HORIZONS:
        typer.echo(f"--horizon {horizon}: choose one of {', '.join(map(str, HORIZONS))}", err=True)
        raise typer.Exit(2)
    s = _settings(config, prefix, nats)

    async def work(rows: Rows) -> None:
        used, buckets, agents_ = await decision_hit_rates(rows, horizon=horizon, interval=interval)
        if not buckets and not agents_:
            console.print(f"no BUY/SELL decision has a {horizon}-bar forward return yet")
            return
        t = Table(title=f"Decision hit rate at {horizon} bars of {used}, by confidence")
        for c in ("confidence", "decisions", "hit rate"):
            t.add_column(c, justify="right")
        for k, (n, r) in buckets.items():
            t.add_row(k, f"{n:,}", f"{r:.1%}")
        console.print(t)
        a = Table(title=f"Agent calls (BULLISH/BEARISH) inside decisions, {horizon} bars of {used}")
        for c in ("agent", "calls", "hit rate"):
            a.add_column(c, justify="right" if c != "agent" else "left")
        for k, (n, r) in agents_.items():
            a.add_row(k, f"{n:,}", f"{r:.1%}")
        console.print(a)

    _go(s, work)
