"""Pre-trade risk, sizing and the scanner as pure handlers (the runners are tested in test_risk_nats)."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import pytest

from tapeline.bus.components import react
from tapeline.bus.inprocess import InProcessRunner
from tapeline.handlers.risk import CHECKS, RiskConfig, RiskGate, expected_shortfall
from tapeline.handlers.scanner import Scanner, ScannerConfig, grade_of
from tapeline.handlers.sizing import Sizer, SizingConfig, client_order_id
from tapeline.schemas.codec import decode, encode
from tapeline.schemas.components import Rejected
from tapeline.schemas.events import (
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    Event,
    OrderApproved,
    OrderIntent,
    OrderRejected,
    RiskCheck,
    Scan,
)
from tapeline.schemas.ids import new_event_id
from tests.risk_support import MIN, T0, decision, fill, intent, walk

CFG = RiskConfig(interval="1m")


def gate(cfg: RiskConfig = CFG, **walks: Any) -> RiskGate:
    g = RiskGate(cfg)
    for bars in walks.values():
        for b in bars:
            g.handle(b)
    return g


def fresh_gate() -> RiskGate:
    return gate(aaa=walk("AAA", 200, seed=1), bbb=walk("BBB", 200, seed=2))


def verdict(g: RiskGate, i: OrderIntent) -> tuple[list[RiskCheck], Event]:
    out = react(g, i)
    checks = [e for e in out if isinstance(e, RiskCheck)]
    return checks, out[-1]


def halt(scope: str = "all") -> CircuitBreakerTripped:
    return CircuitBreakerTripped(
        event_id=new_event_id(), ts_event=T0, ts_init=T0, source="cli", breaker="halt", scope=scope, reason="test"
    )


def test_a_sound_intent_passes_every_check_and_is_approved() -> None:
    g = fresh_gate()
    checks, last = verdict(g, intent("AAA", 5, stop_loss=99.0 * 0.9, take_profit=0.0))
    assert [c.check for c in checks] == [c.__name__.removeprefix("check_") for c in CHECKS]
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert isinstance(last, OrderApproved) and last.quantity == 5 and last.side == "BUY"
    es = next(c for c in checks if c.check == "es95")
    assert 0 < es.value <= es.limit == 10.0


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"qty": math.nan}, "quantity"),
        ({"qty": 0.0}, "quantity"),
        ({"qty": -3.0}, "quantity"),
        ({"symbol": "ZZZ"}, "symbol"),
        ({"qty": 20_000.0}, "order_size"),
        ({"qty": 600.0}, "order_notional"),
        ({"order_type": "LIMIT", "limit_price": 1_000.0}, "collar"),
        ({"order_type": "LIMIT", "limit_price": 0.0}, "collar"),
        ({"stop_loss": 10_000.0}, "collar"),
        ({"qty": 300.0}, "es95"),
        ({"side": "HOLD"}, "fields"),
    ],
)
def test_a_bad_intent_is_rejected_naming_the_failed_check(change: dict[str, Any], failed: str) -> None:
    g = fresh_gate()
    kw = dict(change)
    checks, last = verdict(g, intent(kw.pop("symbol", "AAA"), kw.pop("qty", 5.0), **kw))
    assert isinstance(last, OrderRejected) and last.broker == "risk"
    assert failed in {c.check for c in checks if not c.passed}
    assert f"{failed}:" in last.reason


def test_position_and_exposure_limits_count_fills_and_working_orders() -> None:
    cfg = RiskConfig(interval="1m", max_position=12, max_gross_exposure=5_000, max_net_exposure=5_000)
    g = gate(cfg, aaa=walk("AAA", 200, seed=1))
    g.handle(fill("AAA", "BUY", 5, 100.0, ts=T0 + 300 * MIN))
    _, first = verdict(g, intent("AAA", 5))
    assert isinstance(first, OrderApproved)  # 10 units after it (5 filled + 5)
    checks, second = verdict(g, intent("AAA", 5))  # 15 with the working order: over 12
    assert isinstance(second, OrderRejected)
    assert {c.check for c in checks if not c.passed} >= {"position"}
    checks, big = verdict(g, intent("AAA", 45, side="SELL"))  # -35 units, about $3.5k net, and position
    assert isinstance(big, OrderRejected) and "position" in big.reason


def test_correlation_to_the_portfolio_above_the_limit_is_rejected() -> None:
    rng = random.Random(9)
    common = [rng.gauss(0, 0.002) for _ in range(200)]
    g = gate(
        aaa=walk("AAA", 200, seed=1, common=common),
        ccc=walk("CCC", 200, seed=3, common=common),
        bbb=walk("BBB", 200, seed=2),
    )
    g.handle(fill("CCC", "BUY", 5, 100.0, ts=T0 + 300 * MIN))
    checks, last = verdict(g, intent("AAA", 2))
    rho = next(c for c in checks if c.check == "correlation")
    assert isinstance(last, OrderRejected) and not rho.passed and rho.value > 0.3
    checks, last = verdict(g, intent("BBB", 2))  # independent of the portfolio
    rho = next(c for c in checks if c.check == "correlation")
    assert rho.passed and abs(rho.value) < 0.3 and isinstance(last, OrderApproved)


def test_a_breaker_blocks_its_scope_until_resumed_and_duplicates_are_refused() -> None:
    g = fresh_gate()
    g.handle(halt("symbol:AAA"))
    _, a = verdict(g, intent("AAA", 2))
    _, b = verdict(g, intent("BBB", 2))
    assert isinstance(a, OrderRejected) and "halt[symbol:AAA]" in a.reason and isinstance(b, OrderApproved)
    g.handle(halt("venue:sim"))  # the venue of both symbols' bars
    _, b2 = verdict(g, intent("BBB", 2))
    assert isinstance(b2, OrderRejected) and "breakers" in b2.reason
    for scope in ("symbol:AAA", "venue:sim"):
        g.handle(
            CircuitBreakerResumed(
                event_id=new_event_id(),
                ts_event=T0,
                ts_init=T0,
                source="cli",
                breaker="halt",
                scope=scope,
                operator="ann",
                note="ok",
            )
        )
    once = intent("AAA", 2)
    _, ok = verdict(g, once)
    _, again = verdict(g, msgspec.structs.replace(once, event_id=new_event_id()))
    assert isinstance(ok, OrderApproved) and isinstance(again, OrderRejected) and "duplicate" in again.reason


def _bad_intent(rng: random.Random, g: RiskGate) -> OrderIntent:
    """One intent with 1-3 defects, any of which must get it rejected (both symbols trade near $100)."""
    kw: dict[str, Any] = {"symbol": rng.choice(["AAA", "BBB"]), "qty": float(rng.randint(1, 5))}
    px = g.book.bars.price(kw["symbol"])
    junk = ["", " ", "\x00", "buy", "HOLD", "SHORT", "💥", "x" * 500, "NaN", "DROP TABLE", "\n"]
    defects = [
        lambda: kw.update(qty=rng.choice([math.nan, math.inf, -math.inf, 0.0, -0.0, -rng.uniform(1e-9, 1e9)])),
        lambda: kw.update(symbol=rng.choice(["ZZZ", "AAA ", "aaa", "BRK.B", "\u00c5AA", "x" * 80, "A\tB"])),
        lambda: kw.update(qty=rng.uniform(1e4 + 1, 1e15)),
        lambda: kw.update(qty=float(rng.randint(501, 9_999))),  # notional over $50k at ~$100
        lambda: kw.update(
            order_type="LIMIT",
            limit_price=rng.choice(
                [math.nan, 0.0, -5.0, math.inf, px * rng.uniform(1.051, 1e4), px * rng.uniform(1e-6, 0.949)]
            ),
        ),
        lambda: kw.update(side=rng.choice(junk)),
        lambda: kw.update(order_type=rng.choice(["STOP", "", "market", "LIMIT_OR_WHAT"])),
        lambda: kw.update(account=rng.choice(["\x00", "x" * 65, "a\nb", " "])),
        lambda: kw.update(client_order_id=rng.choice(["", "\x7f", "y" * 100])),
        lambda: kw.update(stop_loss=rng.choice([math.nan, px * 1.001, 1e9, -1.0]), side="BUY"),
        lambda: kw.update(take_profit=rng.choice([px * 0.999, 1.0, math.inf]), side="BUY"),
        lambda: kw.update(qty=float(rng.randint(150, 480))),  # ES95 well over $10, notional under $50k
        lambda: kw.update(halted=True),
    ]
    for d in rng.sample(defects, rng.randint(1, 3)):
        d()
    halted = kw.pop("halted", False)
    i = intent(kw.pop("symbol"), kw.pop("qty"), **kw)
    return msgspec.structs.replace(i, source="halted" if halted else "test")


def test_fuzz_ten_thousand_bad_intents_are_all_rejected_with_a_reason() -> None:
    rng = random.Random(20261122)
    open_gate, halted_gate = fresh_gate(), fresh_gate()
    halted_gate.handle(halt())
    rejected = dead = approved = 0
    for n in range(10_000):
        bad = _bad_intent(rng, open_gate)
        g = halted_gate if bad.source == "halted" else open_gate
        try:
            out = react(g, bad)
        except Rejected as e:  # no account/symbol to answer on: dead-lettered with the reason
            assert str(e)
            dead += 1
            continue
        approved += sum(isinstance(e, OrderApproved) for e in out)
        verdicts = [e for e in out if isinstance(e, OrderRejected)]
        assert len(verdicts) == 1 and verdicts[0].reason and verdicts[0].broker == "risk", bad
        rejected += 1
        if n % 97 == 0:  # what is published must survive JSON (no NaN/inf leaks into values)
            for e in out:
                assert decode(encode(e)).events == [e]
    assert approved == 0
    assert rejected + dead == 10_000 and rejected > 9_000


def test_expected_shortfall_is_the_mean_of_the_worst_tail() -> None:
    assert expected_shortfall([0.01] * 95 + [-0.05] * 5) == pytest.approx(0.05)
    assert expected_shortfall([-0.02, 0.01, 0.03]) == pytest.approx(0.02)  # at least one return


# ---------------------------------------------------------------- scanner and sizer


def test_the_scanner_grades_candidates_and_reports_its_skip_rate() -> None:
    sc = Scanner(ScannerConfig(interval="1m"))
    for b in walk("AAA", 30, seed=1, volume=50_000):
        sc.handle(b)
    strong = react(sc, decision("AAA", "BUY", 0.95, agree=3))
    weak = react(sc, decision("AAA", "SELL", 0.3, agree=1, disagree=2))
    assert react(sc, decision("AAA", "HOLD", 0.9)) == []
    s, w = strong[0], weak[0]
    assert isinstance(s, Scan) and isinstance(w, Scan)
    assert s.passed and s.grade in ("A", "A+") and s.score >= 7.0 and s.skip_rate == 0.0
    assert not w.passed and w.grade in ("B", "C") and w.skip_rate == 0.5 and "skip rate 50%" in w.reasoning
    assert sc.gauges["skip_ratio"] == {"all": 0.5} and sc.counters == {"passed": 1, "skipped": 1}
    assert [grade_of(x) for x in (8.5, 8.49, 7.0, 6.99, 5.5, 0.0)] == ["A+", "A", "A", "B", "B", "C"]


def test_the_sizer_turns_a_passed_scan_into_a_bounded_intent() -> None:
    sz = Sizer(SizingConfig(interval="1m"))
    for b in walk("AAA", 80, seed=1):
        sz.handle(b)
    d = decision("AAA", "SELL", 0.9)
    scan = Scan(
        event_id=new_event_id(),
        ts_event=d.ts_event,
        ts_init=d.ts_event,
        source="scanner",
        symbol="AAA",
        decision_id=d.event_id,
        verdict="SELL",
        confidence=0.9,
        score=8.0,
        grade="A",
        passed=True,
    )
    out = react(sz, scan)
    assert len(out) == 1 and isinstance(out[0], OrderIntent)
    i = out[0]
    px = sz.bars.price("AAA")
    assert i.side == "SELL" and i.quantity >= 1 and i.quantity == int(i.quantity)
    assert i.take_profit < px < i.stop_loss
    assert (i.stop_loss - px) * i.quantity <= 10.0 + 1e-9  # the loss at the stop is bounded
    assert i.client_order_id == client_order_id("paper", d.event_id) and react(sz, scan)[0].event_id == i.event_id
    assert react(sz, msgspec.structs.replace(scan, confidence=0.2)) == []
    assert react(sz, msgspec.structs.replace(scan, passed=False)) == []


async def test_decision_to_approved_order_in_process() -> None:
    comps = [Scanner(ScannerConfig()), Sizer(SizingConfig()), RiskGate(RiskConfig())]
    bars = walk("AAA", 100, seed=1) + walk("BBB", 100, seed=2, start=50.0)
    runner = InProcessRunner(comps, "tape")
    await runner.run(sorted(bars, key=lambda b: b.ts_event))
    out = await runner.run([decision("AAA", "BUY", 0.95, agree=3), decision("BBB", "BUY", 0.2, agree=1)])
    scans = [e for e in out if isinstance(e, Scan)]
    approved = [e for e in out if isinstance(e, OrderApproved)]
    assert [s.passed for s in scans] == [True, False]
    assert len(approved) == 1 and approved[0].symbol == "AAA" and approved[0].stop_loss > 0
    assert sum(isinstance(e, RiskCheck) for e in out) == len(CHECKS)
