"""Circuit breakers as a pure handler: trips, automatic and manual resumes; the gate obeys them."""

from __future__ import annotations

from tapeline.bus.components import react
from tapeline.bus.inprocess import InProcessRunner
from tapeline.handlers.breakers import Breakers, BreakersConfig
from tapeline.handlers.risk import RiskConfig, RiskGate
from tapeline.schemas.events import (
    Bar,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    ClockTick,
    Event,
    Heartbeat,
    OrderApproved,
    OrderRejected,
)
from tapeline.schemas.ids import new_event_id
from tests.risk_support import MIN, T0, fill, intent, walk

DAY = 86_400 * 10**9


def mark(symbol: str, close: float, ts: int) -> Bar:
    return Bar(
        event_id=new_event_id(ts),
        ts_event=ts,
        ts_init=ts,
        source="t",
        symbol=symbol,
        interval="1m",
        start_ns=ts - MIN,
        open=close,
        high=close,
        low=close,
        close=close,
    )


def trips(out: list[Event]) -> list[tuple[str, str, bool]]:
    return [(e.breaker, e.scope, e.hard) for e in out if isinstance(e, CircuitBreakerTripped)]


def resumes(out: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.breaker, e.scope, e.operator) for e in out if isinstance(e, CircuitBreakerResumed)]


def test_daily_loss_trips_soft_and_resumes_on_the_next_utc_day() -> None:
    b = Breakers(BreakersConfig(max_daily_loss=2_000))
    assert react(b, fill("AAA", "BUY", 100, 100.0, ts=T0)) == []
    assert trips(react(b, mark("AAA", 85.0, T0 + MIN))) == []  # -1,500
    out = react(b, mark("AAA", 75.0, T0 + 2 * MIN))  # -2,500
    assert trips(out) == [("daily_loss", "account:paper", False)]
    tripped = out[0]
    assert isinstance(tripped, CircuitBreakerTripped) and tripped.value == 2_500 and tripped.limit == 2_000
    assert react(b, mark("AAA", 74.0, T0 + 3 * MIN)) == []  # tripped once, not again
    assert b.gauges["tripped"]["daily_loss"] == 1.0 and b.gauges["tripped"]["drawdown"] == 0.0  # the metric
    next_day = (T0 // DAY + 1) * DAY + MIN
    assert resumes(react(b, mark("AAA", 74.0, next_day))) == [("daily_loss", "account:paper", "auto")]
    assert b.gauges["tripped"]["daily_loss"] == 0.0


def test_drawdown_trips_at_its_limit_and_resumes_below_the_resume_level() -> None:
    b = Breakers(BreakersConfig(equity=10_000, max_daily_loss=1e9, max_drawdown=0.2, resume_drawdown=0.15))
    react(b, fill("AAA", "BUY", 100, 100.0, ts=T0))
    assert trips(react(b, mark("AAA", 78.0, T0 + MIN))) == [("drawdown", "account:paper", False)]  # 22%
    assert resumes(react(b, mark("AAA", 83.0, T0 + 2 * MIN))) == []  # 17%: not yet
    assert resumes(react(b, mark("AAA", 86.0, T0 + 3 * MIN))) == [("drawdown", "account:paper", "auto")]  # 14%


def _round_trip(b: Breakers, ts: int, pnl_per_share: float) -> list[Event]:
    react(b, fill("AAA", "BUY", 10, 100.0, ts=ts))
    return react(b, fill("AAA", "SELL", 10, 100.0 + pnl_per_share, ts=ts + MIN))


def test_consecutive_losses_trip_hard_and_only_a_human_resumes() -> None:
    b = Breakers(BreakersConfig(max_consecutive_losses=3))
    assert trips(_round_trip(b, T0, -1) + _round_trip(b, T0 + 10 * MIN, +1)) == []  # a win resets the count
    out = [e for k in range(3) for e in _round_trip(b, T0 + (20 + 10 * k) * MIN, -1)]
    assert trips(out) == [("consecutive_losses", "account:paper", True)]
    assert resumes(react(b, mark("AAA", 100.0, T0 + 2 * DAY))) == []  # a new day, still tripped: hard
    own = next(e for e in out if isinstance(e, CircuitBreakerTripped))
    assert react(b, own) == []  # its own trip coming back changes nothing
    human = CircuitBreakerResumed(
        event_id=new_event_id(),
        ts_event=T0,
        ts_init=T0,
        source="cli",
        breaker="consecutive_losses",
        scope="account:paper",
        operator="ann",
        note="ok",
    )
    react(b, human)
    assert b.s.tripped == {} and b.s.accounts["paper"].losses == 0
    assert trips(_round_trip(b, T0 + 3 * DAY, -1)) == []  # counting starts again


def test_a_stale_or_silent_feed_trips_its_venue_and_a_fresh_heartbeat_resumes_it() -> None:
    b = Breakers()

    def hb(ts: int, stale: bool = False) -> Heartbeat:
        return Heartbeat(
            event_id=new_event_id(ts),
            ts_event=ts,
            ts_init=ts,
            source="mt5",
            feed="mt5-raw",
            interval_s=5.0,
            stale=stale,
        )

    def clock(ts: int) -> ClockTick:
        return ClockTick(
            event_id=new_event_id(ts), ts_event=ts, ts_init=ts, source="clock", schedule="watchdog", scheduled_ns=ts
        )

    assert react(b, hb(T0)) == []
    assert trips(react(b, hb(T0 + 5 * 10**9, stale=True))) == [("stale_feed", "venue:mt5-raw", False)]
    assert resumes(react(b, hb(T0 + 10 * 10**9))) == [("stale_feed", "venue:mt5-raw", "auto")]
    assert trips(react(b, clock(T0 + 20 * 10**9))) == []  # 10 s silent: within 3 x 5 s
    out = react(b, clock(T0 + 26 * 10**9))
    assert trips(out) == [("stale_feed", "venue:mt5-raw", False)] and "no heartbeat for 16.0s" in str(out[0])
    assert resumes(react(b, hb(T0 + 27 * 10**9))) == [("stale_feed", "venue:mt5-raw", "auto")]


async def test_the_gate_rejects_while_a_breaker_covers_the_order_and_approves_after() -> None:
    runner = InProcessRunner([Breakers(BreakersConfig(max_daily_loss=100)), RiskGate(RiskConfig())], "tape")
    await runner.run(walk("AAA", 100, seed=1, venue="sim"))
    last = walk("AAA", 100, seed=1)[-1].ts_event
    out = await runner.run([fill("AAA", "BUY", 10, 120.0, ts=last + 1)])  # bought far above the mark: -$200
    assert [e.breaker for e in out if isinstance(e, CircuitBreakerTripped)] == ["daily_loss"]
    rejected = await runner.run([intent("AAA", 1, ts_event=last + 2)])
    assert isinstance(rejected[-1], OrderRejected) and "daily_loss[account:paper]" in rejected[-1].reason
    other = await runner.run([intent("AAA", 1, ts_event=last + 3, account="other")])
    assert isinstance(other[-1], OrderApproved)  # the breaker's scope is the account
