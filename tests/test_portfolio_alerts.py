"""Price-move monitor and ops alerts: pure reactions, and the monitor's trigger reaching a decision."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from tapeline.bus.components import react
from tapeline.bus.inprocess import InProcessRunner
from tapeline.bus.publisher import Publisher
from tapeline.handlers.alerting import OpsAlerts
from tapeline.handlers.decision import DecisionSynthesis
from tapeline.handlers.monitor import MonitorConfig, PriceMoveMonitor
from tapeline.pipeline import Pipeline
from tapeline.schemas.components import draft
from tapeline.schemas.events import (
    Alert,
    Bar,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    DeadLetter,
    DecisionEnvelope,
    Event,
    Signal,
)
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import OPS
from tests.helpers import wait_stored

MIN = 60 * 10**9
T0 = 1_700_000_000 * 10**9


def bar(sym: str, minute: float, close: float, interval: str = "1m") -> Bar:
    t = T0 + int(minute * MIN)
    return draft(
        Bar, ts_event=t, symbol=sym, interval=interval, start_ns=t - MIN, open=close, high=close, low=close, close=close
    )


def moves(out: list[Event]) -> list[tuple[str, str]]:
    return [(a.symbol, a.message.split()[2]) for a in out if isinstance(a, Alert)]


def feed(m: PriceMoveMonitor, bars: list[Bar]) -> list[Event]:
    out: list[Event] = []
    for b in bars:
        out += react(m, b)
    return out


def test_five_percent_within_fifteen_minutes_then_cooldown() -> None:
    m = PriceMoveMonitor()
    out = feed(m, [bar("NVDA", 0, 100.0), bar("NVDA", 10, 104.9), bar("NVDA", 14, 105.0)])
    assert moves(out) == [("NVDA", "+5.00%")]
    sig = next(e for e in out if isinstance(e, Signal))
    assert (sig.agent, sig.direction, sig.symbol) == ("price_move", "BULLISH", "NVDA")
    # within the cooldown: a further fall of 5% from the high is not reported again...
    assert moves(feed(m, [bar("NVDA", 20, 99.0)])) == []
    # ...after it (and more than 15 min after the trigger), a 5% fall is
    out = feed(m, [bar("NVDA", 30, 99.0), bar("NVDA", 31, 94.0)])
    assert moves(out) == [("NVDA", "-5.05%")]


def test_slow_moves_other_intervals_and_non_stocks_are_ignored() -> None:
    m = PriceMoveMonitor()
    slow = [bar("AAPL", i * 5, 100.0 * 1.015**i) for i in range(8)]  # +1.5% per 5 min: 4.6% in 15 min
    assert moves(feed(m, slow)) == []
    assert moves(feed(m, [bar("ORCL", 0, 100.0, "1d"), bar("ORCL", 1, 120.0, "1d")])) == []
    assert moves(feed(m, [bar("EURUSD", 0, 1.0), bar("EURUSD", 1, 1.1)])) == []
    assert moves(feed(m, [bar("BRK.B", 0, 100.0), bar("BRK.B", 1, 90.0)])) == [("BRK.B", "-10.00%")]
    anything = PriceMoveMonitor(MonitorConfig(stocks_only=False, threshold=0.02, window_s=60))
    assert moves(feed(anything, [bar("EURUSD", 0, 1.0), bar("EURUSD", 1, 1.03)])) == [("EURUSD", "+3.00%")]
    assert anything.state.seconds == 900  # the window the runner replays covers the cooldown


def test_bad_configuration_names_the_key() -> None:
    with pytest.raises(ValueError, match="interval"):
        MonitorConfig(interval="fortnight")
    with pytest.raises(ValueError, match="stock_pattern"):
        MonitorConfig(stock_pattern="[A-")


async def test_a_move_triggers_a_fresh_decision() -> None:
    runner = InProcessRunner([PriceMoveMonitor(), DecisionSynthesis()], "tape")
    out = await runner.run([bar("NVDA", 0, 100.0), bar("NVDA", 5, 93.0)])
    kinds = [type(e).__name__ for e in out]
    assert kinds == ["Alert", "Signal", "DecisionEnvelope"]
    env = out[2]
    assert isinstance(env, DecisionEnvelope) and env.target.ticker == "NVDA"
    assert env.causation_id == out[1].event_id
    assert [a.agent for a in env.agent_signals] == ["price_move"]


def test_breakers_and_dead_letters_become_alerts() -> None:
    h = OpsAlerts()
    trip = draft(CircuitBreakerTripped, ts_event=T0, breaker="daily_loss", scope="account:paper", reason="lost $2,100")
    resume = draft(
        CircuitBreakerResumed, ts_event=T0 + MIN, breaker="daily_loss", scope="account:paper", operator="ann"
    )
    (a,) = react(h, trip)
    (b,) = react(h, resume)
    assert isinstance(a, Alert) and isinstance(b, Alert)
    assert (a.severity, a.kind, a.resolved) == ("critical", "breaker", False)
    assert (b.kind, b.resolved, b.key) == ("breaker", True, a.key)
    assert "lost $2,100" in a.message and "ann" in b.message

    def dead(consumer: str) -> DeadLetter:
        return draft(
            DeadLetter,
            ts_event=T0,
            stream="TAPE_MD",
            stream_seq=42,
            subject_of_message="tape.md.bar.1m.NVDA",
            consumer=consumer,
            reason="bad payload",
            deliveries=5,
        )

    (d,) = react(h, dead("momentum_md"))
    assert isinstance(d, Alert) and d.kind == "dead_letter" and "TAPE_MD #42" in d.message
    assert react(h, dead("notifier_ops")) == []  # a failed notification must not alert about itself


async def test_ops_alerts_on_a_real_server(nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path) -> None:
    prefix = provisioned
    p = Pipeline(nc, prefix, configs={}, db_path=tmp_path / "p.duckdb", selected=["ops_alerts"])
    await p.start()
    try:
        trip = draft(CircuitBreakerTripped, ts_event=T0, breaker="drawdown", scope="account:paper", reason="20% down")
        quiet = draft(
            DeadLetter,
            ts_event=T0,
            stream="X",
            stream_seq=1,
            subject_of_message="s",
            consumer="notifier_ops",
            reason="r",
        )
        loud = draft(
            DeadLetter, ts_event=T0, stream="X", stream_seq=2, subject_of_message="s", consumer="bars_md", reason="r"
        )
        await publisher.publish(
            [msgspec.structs.replace(e, event_id=new_event_id(T0), source="test") for e in (trip, quiet, loud)]
        )
        evs = await wait_stored(
            nc,
            OPS.stream(prefix),
            f"{prefix}.ops.alert.>",
            lambda evs: sum(isinstance(e, Alert) for e in evs) >= 2,
            60,
        )
        got = sorted((e.kind, e.key) for e in evs if isinstance(e, Alert))
        assert got == [("breaker", "breaker:drawdown:account:paper"), ("dead_letter", "deadletter:X:2")]
    finally:
        await p.stop()
