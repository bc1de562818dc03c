"""Portfolio: the live handler (cash, positions, equity, alerts, gauges), the DuckDB read models
(equity curve, decision forward returns) and the performance figures, on real DuckDB files."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import msgspec
import pytest

from tapeline.bus.components import react
from tapeline.handlers.portfolio import Portfolio, PortfolioConfig
from tapeline.perf import decision_hit_rates, file_rows
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.portfolio import CurvePoint, buy_and_hold, drawdowns, performance, trade_stats
from tapeline.projections.tables import TABLES
from tapeline.schemas.components import draft
from tapeline.schemas.events import (
    AgentSignal,
    Alert,
    Bar,
    DecisionEnvelope,
    Event,
    OrderFilled,
    Synthesis,
    Target,
)

DAY = 86_400 * 10**9
T0 = 19_700 * DAY  # a UTC midnight (2023-12-09)


def bar(sym: str, day: int, close: float, *, interval: str = "1d", hour: int = 20) -> Bar:
    t = T0 + day * DAY + hour * 3_600 * 10**9
    return draft(
        Bar, ts_event=t, symbol=sym, interval=interval, start_ns=t - DAY, open=close, high=close, low=close, close=close
    )


def fill(
    sym: str, day: int, side: str, qty: float, price: float, *, account: str = "paper", fee: float = 1.0
) -> OrderFilled:
    return draft(
        OrderFilled,
        ts_event=T0 + day * DAY + 15 * 3_600 * 10**9,
        account=account,
        symbol=sym,
        client_order_id=f"c-{sym}-{day}-{side}",
        broker="paper",
        fill_id=f"f-{sym}-{day}-{side}",
        side=side,
        quantity=qty,
        price=price,
        commission=fee,
    )


def decision(sym: str, day: int, verdict: str, confidence: float, agents: dict[str, str]) -> DecisionEnvelope:
    t = T0 + day * DAY + 21 * 3_600 * 10**9
    return draft(
        DecisionEnvelope,
        ts_event=t,
        target=Target(ticker=sym, trade_date="x"),
        synthesis=Synthesis(verdict=verdict, confidence=confidence, ensemble_score=0.5),  # type: ignore[arg-type]
        agent_signals=[AgentSignal(agent=a, domain="d", signal=s, confidence=0.5) for a, s in agents.items()],  # type: ignore[arg-type]
    )


def project(path: Path, events: list[Event]) -> ProjectionDb:
    """Real projection rows: each event through its tables' declarations, committed as the projector does."""
    db = ProjectionDb(path)
    for seq, e in enumerate(events, 1):
        e = msgspec.structs.replace(e, event_id=e.event_id or f"e{seq}")
        for t in TABLES:
            if type(e) in t.events:
                db.commit(t.family.key, {t.name: list(t.rows(e, seq))}, seq, {})
    return db


def run(p: Portfolio, events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        out += react(p, e)  # type: ignore[arg-type]
    return out


def test_portfolio_equity_alerts_and_gauges() -> None:
    p = Portfolio(PortfolioConfig(initial_cash=10_000.0, large_change_usd=5_000.0))
    out = run(
        p,
        [
            bar("NVDA", 0, 100.0),
            fill("NVDA", 1, "BUY", 60, 100.0),  # $6,000: a large change
            bar("NVDA", 1, 110.0),
            fill("NVDA", 2, "SELL", 10, 105.0),  # $1,050: not large
            bar("NVDA", 2, 90.0),
        ],
    )
    kinds = [(a.kind, a.key) for a in out if isinstance(a, Alert)]
    assert kinds == [
        ("position_change", "portfolio:position:paper:NVDA"),
        ("daily_pnl", "portfolio:daily_pnl:paper"),  # day 1 ended when the day-2 fill arrived
    ]
    summary = next(a for a in out if isinstance(a, Alert) and a.kind == "daily_pnl")
    # day 1: bought 60 @ 100 (+1 fee) and marked at 110: equity 10,000 - 6,001 + 6,600 = 10,599
    assert "equity $10,599.00" in summary.message and "+599.00" in summary.message
    cash = 10_000 - 6_001 + 1_050 - 1
    assert p.gauges["equity"]["paper"] == pytest.approx(cash + 50 * 90.0)
    assert p.gauges["daily_pnl"]["paper"] == pytest.approx(cash + 50 * 90.0 - 10_599.0)
    assert all(e.event_id for e in out)  # stamped: deterministic ids

    restored = Portfolio(PortfolioConfig(initial_cash=10_000.0, large_change_usd=5_000.0))
    restored.restore(p.snapshot())
    assert restored.gauges == p.gauges
    again = run(restored, [bar("NVDA", 3, 95.0)])
    assert [a.kind for a in again if isinstance(a, Alert)] == ["daily_pnl"]


def test_equity_curve_view_matches_the_handler(tmp_path: Path) -> None:
    events: list[Event] = [
        bar("NVDA", 0, 100.0),
        bar("ORCL", 0, 50.0),
        fill("NVDA", 0, "BUY", 10, 100.0),
        fill("ORCL", 1, "BUY", 20, 50.0, account="ib"),
        bar("NVDA", 1, 110.0),
        bar("ORCL", 1, 55.0),
        fill("NVDA", 2, "SELL", 5, 99.0),
        bar("NVDA", 2, 99.0),
        bar("ORCL", 2, 45.0),
        bar("NVDA", 3, 120.0),
    ]
    db = project(tmp_path / "p.duckdb", events)
    rows = db.con.execute("SELECT account, day, cash_flow, market_value, pnl FROM equity_curve").fetchall()
    curve = {(a, d.date().isoformat()): (c, mv, pnl) for a, d, c, mv, pnl in rows}
    assert curve[("paper", "2023-12-09")] == pytest.approx((-1_001.0, 1_000.0, -1.0))
    assert curve[("paper", "2023-12-11")] == pytest.approx((-507.0, 495.0, -12.0))
    assert curve[("paper", "2023-12-12")] == pytest.approx((-507.0, 600.0, 93.0))
    assert ("ib", "2023-12-09") not in curve  # an account's curve starts at its first fill
    assert curve[("ib", "2023-12-11")] == pytest.approx((-1_001.0, 900.0, -101.0))
    latest = dict(db.con.execute("SELECT account, pnl FROM portfolio_accounts").fetchall())
    assert latest == pytest.approx({"paper": 93.0, "ib": -101.0})

    p = Portfolio(PortfolioConfig(initial_cash=100_000.0))
    run(p, events)
    assert p.gauges["equity"]["paper"] == pytest.approx(100_000.0 + 93.0)
    assert p.gauges["equity"]["ib"] == pytest.approx(100_000.0 - 101.0)
    db.close()


async def test_decision_forward_returns(tmp_path: Path) -> None:
    closes = [100.0, 101.0, 99.0, 102.0, 103.0, 110.0, 90.0]
    events: list[Event] = [bar("NVDA", d, c) for d, c in enumerate(closes)]
    events += [
        decision("NVDA", 0, "BUY", 0.9, {"momentum": "BULLISH", "sentiment": "BEARISH"}),
        decision("NVDA", 1, "SELL", 0.3, {"momentum": "BEARISH"}),
        decision("NVDA", 6, "BUY", 0.7, {"momentum": "BULLISH"}),
    ]
    db = project(tmp_path / "d.duckdb", events)
    rows = db.con.execute(
        "SELECT verdict, entry, ret_1, ret_5, ret_20 FROM decision_returns ORDER BY ts_event"
    ).fetchall()
    assert rows[0][:4] == ("BUY", 100.0, pytest.approx(0.01), pytest.approx(0.10))
    assert rows[1][:4] == ("SELL", 101.0, pytest.approx(99 / 101 - 1), pytest.approx(90 / 101 - 1))
    assert rows[0][4] is None and rows[2][2] is None  # no bars that far yet
    db.close()

    used, by_bucket, by_agent = await decision_hit_rates(file_rows(tmp_path / "d.duckdb"), horizon=1, interval=None)
    assert used == "1d"
    assert by_bucket["0.8-1.0"] == (1, 1.0)  # BUY then up
    assert by_bucket["0.2-0.4"] == (1, 1.0)  # SELL then down
    assert by_agent["momentum"] == (2, 1.0)
    assert by_agent["sentiment"] == (1, 0.0)  # bearish, the price rose


def test_performance_figures() -> None:
    days = [date(2024, 1, d) for d in (2, 3, 4, 5, 8, 9)]
    equity = [101.0, 99.0, 99.0, 104.0, 102.0, 106.0]
    pts = [CurvePoint(d, e) for d, e in zip(days, equity, strict=True)]
    (whole,) = performance(100.0, pts, "all")
    assert whole.pnl == pytest.approx(6.0) and whole.ret == pytest.approx(0.06)
    assert whole.max_drawdown == pytest.approx(2 / 101)
    assert whole.win_rate == pytest.approx(3 / 5)  # three gains, two losses; the flat day does not count
    rets = [e / p - 1 for e, p in zip(equity, [100.0, *equity[:-1]], strict=True)]
    mean = sum(rets) / 6
    sd = math.sqrt(sum((r - mean) ** 2 for r in rets) / 5)
    assert whole.sharpe == pytest.approx(mean / sd * math.sqrt(252))
    assert whole.sortino > whole.sharpe > 0  # few, small losses
    assert whole.calmar > 0
    weeks = performance(100.0, pts, "week")
    assert [w.period for w in weeks] == ["2024-W01", "2024-W02"]
    assert weeks[1].start_equity == 104.0 and weeks[1].pnl == pytest.approx(2.0)
    assert [d.period for d in performance(100.0, pts, "day")][:2] == ["2024-01-02", "2024-01-03"]
    assert performance(100.0, pts, "month")[0].period == "2024-01"
    assert drawdowns([1.0, 2.0, 1.0, 3.0]) == [0.0, 0.0, 0.5, 0.0]

    t = trade_stats(
        [
            ("A", "BUY", 10, 100.0, 1.0),
            ("A", "BUY", 10, 110.0, 1.0),  # average 105
            ("A", "SELL", 5, 120.0, 1.0),  # +75 - 1: won
            ("A", "SELL", 25, 100.0, 1.0),  # closes 15 at -5 each (-76) and opens a short of 10 at 100
            ("A", "BUY", 10, 90.0, 1.0),  # covers the short: +100 - 1: won
        ]
    )
    assert (t.closed, t.won, t.win_rate) == (3, 2, pytest.approx(2 / 3))
    assert t.realised == pytest.approx(74.0 - 76.0 + 99.0)

    bh = buy_and_hold(1_000.0, {"A": [(days[0], 10.0), (days[1], 20.0)], "B": [(days[1], 5.0)]})
    # 500 in each at its first close; A doubles
    assert bh == [CurvePoint(days[0], 500.0 + 500.0), CurvePoint(days[1], 1_000.0 + 500.0)]
