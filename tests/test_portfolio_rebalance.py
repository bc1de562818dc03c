"""Rebalance: the pure plan, the schedule, the handler's runs and intents, and the CLI commands
(`tapeline rebalance`, `tapeline perf`, `tapeline perf decisions`) as real processes on a DuckDB file."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tapeline.bus.components import react
from tapeline.handlers.rebalance import Inputs, RebalanceConfig, Rebalancer, plan, slot_at
from tapeline.schemas.components import draft
from tapeline.schemas.events import Bar, ClockTick, Event, OrderIntent, RebalancePlan, SentimentScore
from tests.helpers import TAPELINE
from tests.test_portfolio import DAY, bar, decision, fill, project

CFG = RebalanceConfig(lookback=2, top_n=2, max_weight=0.5, min_trade=100.0, threshold=0.02, initial_cash=10_000.0)


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def test_plan_ranks_weights_and_skips_small_trades() -> None:
    inp = Inputs(
        closes={"A": [100.0, 105.0, 110.0], "B": [50.0, 50.0, 51.0], "C": [20.0, 19.0, 18.0], "D": [10.0, 10.0]},
        sentiment={"B": [(0, 0.8)], "C": [(0, 1.0)]},
        positions={"B": 98.0, "C": 10.0, "OLD": 5.0},
        cash=-5_000.0,
    )
    items = {i.symbol: i for i in plan(CFG, inp, 0)}
    # A: momentum +10%; B: +2% + 0.5 * 0.8 = 0.42; C: -10% + 0.5 = 0.40; D has too few bars
    assert list(items) == ["B", "C", "A"]
    equity = 10_000 - 5_000 + 98 * 51 + 10 * 18
    b, c, a = items["B"], items["C"], items["A"]
    assert (b.target_weight, c.target_weight, a.target_weight) == (0.5, 0.5, 0.0)
    assert c.action == "BUY" and c.delta_quantity == int(0.5 * equity / 18 - 10)
    # B holds 98 x 51 = 4,998 of 10,178 (49.1%): within the 2% threshold, so HOLD
    assert b.action == "HOLD" and b.delta_quantity == 0
    assert a.action == "HOLD" and a.momentum == pytest.approx(0.1)
    assert "OLD" not in items  # held but unpriced: cannot be planned

    # below min_trade: a 1-share trade is not worth it
    small = Inputs(closes={"A": [10.0, 10.0, 11.0]}, positions={"A": 100.0})
    (only,) = plan(RebalanceConfig(lookback=2, top_n=1, initial_cash=1.0, max_weight=1.0), small, 0)
    assert only.action == "HOLD"


def test_weekly_schedule_in_exchange_time() -> None:
    cfg = RebalanceConfig()  # Mondays 09:35 New York
    # Wednesday 2024-03-13 12:00 UTC -> Monday 2024-03-11 09:35 EDT = 13:35 UTC
    assert slot_at(cfg, ns("2024-03-13T12:00:00+00:00")) == ns("2024-03-11T13:35:00+00:00")
    # Monday 2024-03-11 13:00 UTC is before the open: the previous Monday (EST then: 14:35 UTC)
    assert slot_at(cfg, ns("2024-03-11T13:00:00+00:00")) == ns("2024-03-04T14:35:00+00:00")
    daily = RebalanceConfig(every="day", at="16:00", timezone="UTC")
    assert slot_at(daily, ns("2024-03-13T15:00:00+00:00")) == ns("2024-03-12T16:00:00+00:00")
    with pytest.raises(ValueError, match="timezone"):
        RebalanceConfig(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="at: "):
        RebalanceConfig(at="9h35")


def clock(text: str) -> ClockTick:
    t = ns(text)
    return draft(ClockTick, ts_event=t, schedule="watchdog", scheduled_ns=t)


def run(h: Rebalancer, events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        out += react(h, e)  # type: ignore[arg-type]
    return out


def bar_at(sym: str, when: str, close: float) -> Bar:
    t = ns(when)
    return draft(
        Bar, ts_event=t, symbol=sym, interval="1d", start_ns=t - DAY, open=close, high=close, low=close, close=close
    )


def test_handler_runs_once_per_instant_and_sends_intents_unless_dry_run() -> None:
    cfg = RebalanceConfig(lookback=2, top_n=1, max_weight=1.0, min_trade=100.0, dry_run=False)
    h = Rebalancer(cfg)
    history: list[Event] = [
        clock("2024-03-05T12:00:00+00:00"),  # the first event only sets the clock (last Monday 09:35 passed)
        bar_at("NVDA", "2024-03-06T21:00:00+00:00", 100.0),
        bar_at("ORCL", "2024-03-06T21:00:00+00:00", 50.0),
        bar_at("NVDA", "2024-03-07T21:00:00+00:00", 110.0),
        bar_at("ORCL", "2024-03-07T21:00:00+00:00", 49.0),
        clock("2024-03-08T12:00:00+00:00"),
    ]
    assert run(h, history) == []
    sentiment = draft(
        SentimentScore, ts_event=ns("2024-03-08T22:00:00+00:00"), ticker="ORCL", score=1.0, relevance=1.0, impact=1.0,
        news_id="n1",
    )  # fmt: skip
    out = run(
        h,
        [
            bar_at("NVDA", "2024-03-08T21:00:00+00:00", 120.0),  # +20%
            bar_at("ORCL", "2024-03-08T21:00:00+00:00", 48.0),  # -4%, but sentiment 0.5 x 1.0
            sentiment,
            clock("2024-03-11T13:40:00+00:00"),
            clock("2024-03-11T13:50:00+00:00"),
        ],
    )
    plans = [e for e in out if isinstance(e, RebalancePlan)]
    intents = [e for e in out if isinstance(e, OrderIntent)]
    assert len(plans) == 1  # once per scheduled instant
    assert [(i.symbol, i.action) for i in plans[0].items] == [("ORCL", "BUY"), ("NVDA", "HOLD")]
    assert [(i.symbol, i.side, i.quantity) for i in intents] == [("ORCL", "BUY", 2083.0)]  # 100,000 / 48
    assert intents[0].client_order_id.startswith("rb-") and intents[0].event_id

    again = Rebalancer(cfg)
    again.restore(h.snapshot())
    assert run(again, [clock("2024-03-11T14:00:00+00:00")]) == []
    assert len(run(again, [clock("2024-03-18T14:00:00+00:00")])) == 2  # next Monday: plan + intent

    dry = Rebalancer(RebalanceConfig(lookback=2, top_n=1, max_weight=1.0))
    dry.restore(h.snapshot())
    assert [type(e) for e in run(dry, [clock("2024-03-18T14:00:00+00:00")])] == [RebalancePlan]


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # Rich tables at full width
    return subprocess.run([*TAPELINE, *args, "-c", str(config)], capture_output=True, text=True, timeout=120, env=env)


def test_cli_perf_decisions_and_rebalance_on_the_read_models(tmp_path: Path) -> None:
    closes = {
        "NVDA": [100.0, 102.0, 101.0, 105.0, 108.0, 104.0, 110.0],
        "ORCL": [50.0, 49.0, 48.0, 47.0, 48.0, 46.0, 45.0],
    }
    events: list[Event] = [bar(s, d, c) for s, cs in closes.items() for d, c in enumerate(cs)]
    events += [
        fill("NVDA", 1, "BUY", 100, 102.0),
        fill("ORCL", 2, "BUY", 100, 48.0),
        fill("NVDA", 4, "SELL", 50, 108.0),
    ]
    events += [
        decision("NVDA", 0, "BUY", 0.9, {"momentum": "BULLISH"}),
        decision("ORCL", 0, "SELL", 0.5, {"momentum": "BEARISH"}),
    ]
    project(tmp_path / "data" / "projections" / "tapeline.duckdb", events).close()
    config = tmp_path / "tapeline.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nmetrics_port = 0\n[portfolio]\ninitial_cash = 50000.0\n'
        "[rebalance]\nlookback = 3\ntop_n = 1\nmax_weight = 1.0\n"
    )
    png = tmp_path / "out" / "equity.png"
    r = cli("perf", "--period", "week", "--png", str(png), config=config)
    assert r.returncode == 0, r.stderr
    assert "Performance of paper by week" in r.stdout and "Sharpe" in r.stdout and "all time" in r.stdout
    # all time: NVDA 50 @ 110 + 50 sold @ 108, ORCL 100 @ 45: P&L = 50*8 + 50*6 - 300 - 3 fees = 397
    assert "+397.00" in r.stdout
    assert "closed trades: 1, won 100%" in r.stdout  # sold 50 NVDA at 108 over a 102 average
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    r = cli("perf", "decisions", "--horizon", "1", config=config)
    assert r.returncode == 0, r.stderr
    assert "0.8-1.0" in r.stdout and "momentum" in r.stdout and "100.0%" in r.stdout

    r = cli("rebalance", "--now", config=config)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "NVDA" in r.stdout and "SELL" in r.stdout  # ORCL falls: sold off
    r = cli("rebalance", config=config)
    assert r.returncode == 0 and "none stored yet" in r.stdout
    r = cli("rebalance", "--execute", config=config)
    assert r.returncode == 2 and "--now" in r.stderr and "Traceback" not in r.stderr
    r = cli("perf", "--period", "year", config=config)
    assert r.returncode == 2 and "--period" in r.stderr


def test_cli_perf_without_a_projection_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "tapeline.toml"
    config.write_text(f'data_dir = "{tmp_path / "none"}"\nmetrics_port = 0\n')
    r = cli("perf", config=config)
    assert r.returncode == 1 and "no projection" in r.stderr and len(r.stderr.strip().splitlines()) == 1
