"""The decision handler, made cheaper per signal in issue 14 (session 8), emits exactly what it did:
a verbatim copy of ``DecisionSynthesis.handle`` as it was is kept here as the reference, and for many
random signal streams (several symbols and agents, unlisted agents, stale and out-of-order signals,
NaN and out-of-range values, long summaries, source-call metrics, some that make ``int()`` raise,
event times a hair either side of midnight) every envelope must encode to the same bytes, stamped
by the runner too, and every exception, counter and state must be the same.
``synthesis_ms`` is wall time: both read the same fake clock, which also pins when it is read."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from tapeline.bus import components
from tapeline.bus.components import react
from tapeline.handlers import decision
from tapeline.handlers.decision import DecisionConfig, DecisionSynthesis, _clamp, source_metrics
from tapeline.schemas.components import draft
from tapeline.schemas.events import (
    ENVELOPE_SCHEMA_VERSION,
    KEY_FACTORS_MAX,
    SUMMARY_MAX_CHARS,
    AgentSignal,
    AgentSignalBody,
    AnyEvent,
    DecisionBody,
    DecisionEnvelope,
    Event,
    PhaseTiming,
    Signal,
    Synthesis,
    SynthesisBody,
    Target,
    Verdict,
)

DAY_NS = 86_400 * 10**9
T0 = 1_767_139_200 * 10**9  # 2025-12-31 00:00 UTC
AGENTS = ["momentum", "model", "price_move", "sentiment", "similarity", "astrology", "zeta"]
_enc = msgspec.json.Encoder()


class Clock:
    """perf_counter for both implementations: 0.25 ms per read, so synthesis_ms pins the reads."""

    def __init__(self) -> None:
        self.reads = itertools.count()

    def perf_counter(self) -> float:
        return next(self.reads) * 0.00025


_ref_clock = Clock()


class Reference(DecisionSynthesis):
    """``handle`` and ``_contribution`` as they were before session 8 (handlers/decision.py), verbatim
    but for the clock."""

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Signal):
            return []
        started = _ref_clock.perf_counter()
        by_agent = self._latest.setdefault(event.symbol, {})
        by_agent[event.agent] = event
        fresh = sorted(
            (s for s in by_agent.values() if event.ts_event - s.ts_event <= self.max_age_ns), key=lambda s: s.agent
        )
        num = den = w_sum = 0.0
        for s in fresh:
            w = self.weights.get(s.agent, 0.0)
            num += w * s.strength * s.confidence
            den += w * s.confidence
            w_sum += w
        score = _clamp(num / den, -1.0, 1.0) if den > 0 else 0.0
        voting = [s for s in fresh if self.weights.get(s.agent, 0.0) > 0]
        signs = {1 if s.strength > 0 else -1 for s in voting if s.direction != "NEUTRAL"}
        agreement = 1.0 if len(signs) <= 1 else 0.5
        confidence = _clamp((den / w_sum if w_sum else 0.0) * agreement, 0.0, 1.0)
        verdict: Verdict = "BUY" if score > self.threshold else "SELL" if score < -self.threshold else "HOLD"
        self.counters[verdict] = self.counters.get(verdict, 0) + 1  # decisions per verdict (a metric)
        votes = ", ".join(self._contribution(s, den) for s in fresh)
        reasoning = (
            f"{verdict}: ensemble {score:+.2f} = {votes or 'no fresh signals'}; "
            f"agreement {agreement:.1f}; threshold ±{self.threshold:.2f}"
        )
        trade_date = datetime.fromtimestamp(event.ts_event / 1e9, UTC).date().isoformat()
        target = Target(
            ticker=event.symbol, trade_date=trade_date, exchange=self.exchange, asset_class=self.asset_class
        )
        synthesis_ms = round((_ref_clock.perf_counter() - started) * 1000, 4)
        return [
            draft(
                DecisionEnvelope,
                ts_event=event.ts_event,
                target=target,
                synthesis=Synthesis(
                    verdict=verdict,
                    confidence=round(confidence, 6),
                    ensemble_score=round(score, 6),
                    reasoning=reasoning,
                ),
                agent_signals=[
                    AgentSignal(
                        agent=s.agent,
                        domain=s.domain,
                        signal=s.direction,
                        confidence=s.confidence,
                        summary=s.summary,
                        key_factors=s.key_factors,
                    )
                    for s in fresh
                ],
                source_metrics={"agents": float(len(fresh)), **{f"{s.agent}_strength": s.strength for s in fresh}},
                phase_timings={"synthesis_ms": synthesis_ms},
                schema_version=ENVELOPE_SCHEMA_VERSION,
                decision=DecisionBody(
                    target=target,
                    synthesis=SynthesisBody(
                        verdict=verdict,
                        confidence=round(confidence, 6),
                        ensemble_score=round(score, 6),
                        reasoning=reasoning,
                    ),
                    agent_signals=[
                        AgentSignalBody(
                            agent=s.agent,
                            domain=s.domain,
                            signal=s.direction,
                            confidence=_clamp(s.confidence, 0.0, 1.0),
                            summary=s.summary[:SUMMARY_MAX_CHARS],
                            key_factors=s.key_factors[:KEY_FACTORS_MAX],
                        )
                        for s in fresh
                    ],
                    source_metrics=source_metrics(fresh),
                    phase_timings=[PhaseTiming(phase="synthesis", ms=synthesis_ms)],
                ),
                published_at=datetime.fromtimestamp(event.ts_event // 1000 / 1e6, UTC),
            )
        ]

    def _contribution(self, s: Signal, den: float) -> str:
        w = self.weights.get(s.agent, 0.0)
        part = w * s.strength * s.confidence / den if den > 0 else 0.0
        return f"{s.agent} {part:+.2f} (strength {s.strength:+.2f}, conf {s.confidence:.2f}, w {w:g})"


def _pick(rng: random.Random, usual: float, *odd: float) -> float:
    return rng.choice(odd) if odd and rng.random() < 0.08 else usual


def _metrics(rng: random.Random) -> dict[str, float]:
    m: dict[str, float] = {}
    if rng.random() < 0.5:
        return {"z": rng.uniform(-3, 3)} if rng.random() < 0.5 else {}
    for provider in rng.sample(["gemini", "marketaux", "tiingo"], rng.randint(0, 3)):
        m[f"source_calls.{provider}"] = float(rng.randint(0, 9))
    if rng.random() < 0.6:
        m["source_failed"] = float(rng.randint(0, 12))
    if rng.random() < 0.6:
        m["source_bytes"] = rng.choice([0.0, 512.0, 1e6, 7.9])
    if rng.random() < 0.03:
        m[rng.choice(["source_bytes", "source_failed", "source_calls.gemini"])] = rng.choice(
            [float("nan"), float("inf")]
        )
    return m


def _ts(rng: random.Random, t: int) -> int:
    """Mostly forward in small steps; sometimes a hair either side of midnight, back, or a long gap."""
    r = rng.random()
    if r < 0.06:
        midnight = (t // DAY_NS + 1) * DAY_NS
        return midnight + rng.choice([-1_000_000_001, -1000, -501, -500, -499, -1, 0, 1, 499, 500, 501, 999_999_999])
    if r < 0.10:
        return t - rng.randint(0, 3 * 3600 * 10**9)
    if r < 0.13:
        return t + rng.randint(1, 5) * DAY_NS
    return t + rng.randint(0, 90 * 10**9)


def stream(seed: int, n: int) -> Iterator[Signal]:
    rng = random.Random(seed)
    symbols = ["NVDA", "AAPL", "BRK.B"][: rng.randint(1, 3)]
    t = T0 + rng.randint(0, DAY_NS)
    for i in range(n):
        t = _ts(rng, t)
        agent = rng.choice(AGENTS)
        strength = _pick(rng, round(rng.uniform(-1, 1), rng.choice([2, 6])), 0.0, 1.0, -1.0, 0.25, float("nan"))
        yield Signal(
            event_id=f"sig{seed}-{i}",
            ts_event=t,
            ts_init=0,
            source=agent,
            correlation_id=rng.choice(["", "corr-1"]),
            symbol=rng.choice(symbols),
            agent=agent,
            domain=rng.choice(["technical", "news", "event"]),
            direction=rng.choice(["BULLISH", "BEARISH", "NEUTRAL"]),
            strength=strength,
            confidence=_pick(rng, rng.random(), 0.0, 1.0, 1.5, -0.2, float("nan")),
            summary="x" * rng.choice([0, 12, 299, 300, 301, 420]),
            key_factors=[f"f{k}" for k in range(rng.choice([0, 2, 10, 11, 15]))],
            metrics=_metrics(rng),
        )


CONFIGS: list[dict[str, Any]] = [
    {},
    {"weights": {"momentum": 1.0, "model": 0.5, "price_move": 0.0, "zeta": 2.0}, "threshold": 0.1},
    {"max_age_s": 3600.0, "exchange": "XNAS", "asset_class": "crypto", "threshold": 0.6},
    {"weights": {}, "max_age_s": 1e-6},
]


def _outcome(fn: Any, s: Signal) -> bytes | tuple[type, str]:
    try:
        return _enc.encode(fn(s))
    except Exception as e:  # compared, not hidden: both must raise the same
        return type(e), str(e)


def run_both(monkeypatch: pytest.MonkeyPatch, cfg: dict[str, Any], signals: list[Signal], stamped: bool) -> int:
    """Feed both handlers the same stream; returns how many raised (to show the edge cases are hit)."""
    global _ref_clock
    _ref_clock = Clock()
    monkeypatch.setattr(decision, "time", Clock())
    monkeypatch.setattr(components, "time", SimpleNamespace(time_ns=lambda: 1_700_000_000_000_000_000))
    new, ref = DecisionSynthesis(DecisionConfig(**cfg)), Reference(DecisionConfig(**cfg))
    raised = 0
    for s in signals:
        if stamped:
            a, b = _outcome(lambda e: react(new, e), s), _outcome(lambda e: react(ref, e), s)
        else:
            a, b = _outcome(new.handle, s), _outcome(ref.handle, s)
        assert a == b, s
        raised += isinstance(a, tuple)
    assert new.counters == ref.counters
    return raised


@pytest.mark.parametrize("cfg", CONFIGS)
def test_same_envelopes_as_before(monkeypatch: pytest.MonkeyPatch, cfg: dict[str, Any]) -> None:
    raised = 0
    for seed in range(12):
        raised += run_both(monkeypatch, cfg, list(stream(seed, 400)), stamped=seed % 2 == 0)
    assert raised > 0  # NaN/inf source metrics reached int() in both


# sha256 of the JSON of every stamped output of stream(99, 600) at the default config, written down from
# the implementation before session 8: the reference copy above cannot drift from it unnoticed either
PINNED = "15d2a97bf1ee214e6cfb9ef2a40be82fa04adabe88bee658553476df480eb259"


def test_envelopes_are_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision, "time", Clock())
    monkeypatch.setattr(components, "time", SimpleNamespace(time_ns=lambda: 1_700_000_000_000_000_000))
    h, digest, n = DecisionSynthesis(), hashlib.sha256(), 0
    for s in stream(99, 600):
        out = _outcome(lambda e: react(h, e), s)
        digest.update(out if isinstance(out, bytes) else repr(out).encode())
        n += isinstance(out, bytes)
    assert n > 500
    assert digest.hexdigest() == PINNED
