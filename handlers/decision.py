"""Decision synthesis: the latest signal of each agent for a symbol -> a versioned envelope.

ensemble = sum(w * strength * confidence) / sum(w * confidence) over fresh signals;
BUY above ``threshold``, SELL below ``-threshold``, HOLD between. Confidence is the weighted mean
confidence scaled by how much the agents agree. Signals older than ``max_age_s`` (event time)
no longer vote. That age is also the handler's state window: after a restart the runner replays
exactly ``max_age_s`` of signals (event time) before resuming, so the votes equal an uninterrupted run.

Weights come from ``[decision] weights``; an agent not listed there gets weight 0: it is shown in the
envelope and the reasoning but does not vote, so a new agent never moves decisions until configured.
The reasoning names each agent's contribution to the ensemble (``w * strength * confidence / sum(w *
confidence)``; the contributions add up to the ensemble score).

The envelope also carries the S4 contract body (``decision``): ``source_metrics`` count the news/LLM
calls behind the fresh signals, which agents report in their ``Signal.metrics`` under
``source_calls.<provider>`` (calls), ``source_failed`` (failed calls) and ``source_bytes`` (bytes).
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Window
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
    SourceMetrics,
    Synthesis,
    SynthesisBody,
    Target,
    Verdict,
)

SOURCE_CALLS = "source_calls."  # + provider: calls to that provider behind the signal
SOURCE_FAILED = "source_failed"
SOURCE_BYTES = "source_bytes"


def _default_weights() -> dict[str, float]:
    return {"momentum": 1.0, "sentiment": 1.0, "model": 1.0, "similarity": 0.5}


class DecisionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    weights: dict[str, float] = msgspec.field(default_factory=_default_weights)  # unlisted agents: 0
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.25
    max_age_s: Annotated[float, msgspec.Meta(gt=0)] = 3 * 86400.0  # older signals no longer vote
    exchange: str = ""
    asset_class: str = "equity"

    def __post_init__(self) -> None:  # by hand, so the message names the agent (load_settings adds the section)
        for agent, w in self.weights.items():
            if not w >= 0:
                raise ValueError(f"weights.{agent}: {w} is negative; weights are >= 0, e.g. 1.0")


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def _summed(by_source: dict[str, int], failed: int, total_bytes: int) -> SourceMetrics:
    total = sum(by_source.values())
    failed = min(failed, total)
    return SourceMetrics(
        total_calls=total,
        successful=total - failed,
        failed=failed,
        total_bytes=total_bytes,
        by_source=dict(sorted(by_source.items())),
    )


def source_metrics(signals: list[Signal]) -> SourceMetrics:
    """Sum the calls the signals report in their metrics (see the module docstring)."""
    by_source: dict[str, int] = {}
    failed = total_bytes = 0
    for s in signals:
        for key, value in s.metrics.items():
            if key.startswith(SOURCE_CALLS):
                name = key[len(SOURCE_CALLS) :]
                by_source[name] = by_source.get(name, 0) + int(value)
        failed += int(s.metrics.get(SOURCE_FAILED, 0))
        total_bytes += int(s.metrics.get(SOURCE_BYTES, 0))
    return _summed(by_source, failed, total_bytes)


class _Vote:
    """What one signal adds to every decision of its symbol while it is the agent's latest: computed
    once when it arrives (it used to be recomputed, and its two nested structs rebuilt, per decision)."""

    __slots__ = (
        "agent_body",
        "agent_signal",
        "head",
        "num",
        "sign",
        "signal",
        "sources",
        "strength_key",
        "tail",
        "w",
        "wc",
    )

    def __init__(self, s: Signal, w: float) -> None:
        self.signal = s
        self.w = w
        self.num = w * s.strength * s.confidence  # the same products, in the same order, as the sums had
        self.wc = w * s.confidence
        self.sign = (1 if s.strength > 0 else -1) if w > 0 and s.direction != "NEUTRAL" else 0  # 0: no vote
        self.head = f"{s.agent} "
        self.tail = f" (strength {s.strength:+.2f}, conf {s.confidence:.2f}, w {w:g})"
        self.strength_key = f"{s.agent}_strength"
        self.agent_signal = AgentSignal(
            agent=s.agent,
            domain=s.domain,
            signal=s.direction,
            confidence=s.confidence,
            summary=s.summary,
            key_factors=s.key_factors,
        )
        self.agent_body = AgentSignalBody(
            agent=s.agent,
            domain=s.domain,
            signal=s.direction,
            confidence=_clamp(s.confidence, 0.0, 1.0),
            summary=s.summary[:SUMMARY_MAX_CHARS],
            key_factors=s.key_factors[:KEY_FACTORS_MAX],
        )
        self.sources = _sources(s)


_Sources = tuple[dict[str, int], int, int]
_NO_SOURCES: _Sources = ({}, 0, 0)  # shared by every signal that reports no calls (most)


def _sources(s: Signal) -> _Sources | None:
    """(calls by provider, failed, bytes) the signal reports; None if a value is no integer (NaN, inf):
    :func:`source_metrics` then raises exactly what it always did, for every decision it is fresh in."""
    m = s.metrics
    if not m:
        return _NO_SOURCES
    try:
        calls = {k[len(SOURCE_CALLS) :]: int(v) for k, v in m.items() if k.startswith(SOURCE_CALLS)}
        failed, total_bytes = int(m.get(SOURCE_FAILED, 0)), int(m.get(SOURCE_BYTES, 0))
    except (ValueError, OverflowError, TypeError):
        return None
    return (calls, failed, total_bytes) if calls or failed or total_bytes else _NO_SOURCES


def _source_metrics(fresh: list[_Vote]) -> SourceMetrics:
    """:func:`source_metrics` of the fresh signals, from what each reported (integer sums: any order)."""
    by_source: dict[str, int] = {}
    failed = total_bytes = 0
    reported = False
    for v in fresh:
        sources = v.sources
        if sources is _NO_SOURCES:
            continue
        if sources is None:
            return source_metrics([v.signal for v in fresh])  # raises, as it did
        reported = True
        calls, f, b = sources
        for name, n in calls.items():
            by_source[name] = by_source.get(name, 0) + n
        failed += f
        total_bytes += b
    if not reported:
        return SourceMetrics()  # all zero, no providers
    return _summed(by_source, failed, total_bytes)


class DecisionSynthesis(Handler):
    name: ClassVar[str] = "decision"
    version: ClassVar[int] = 2  # 2: contract body, per-agent contributions in the reasoning, unlisted agents weigh 0
    Config: ClassVar[type[msgspec.Struct]] = DecisionConfig
    emits: ClassVar[tuple[type[Event], ...]] = (DecisionEnvelope,)
    consumes = (Consumes(Signal),)
    urgent = True  # on the tick -> decision path: served first in its process

    def __init__(self, config: DecisionConfig | None = None) -> None:
        super().__init__(config)
        cfg: DecisionConfig = self.config
        self.weights = cfg.weights
        self.threshold = cfg.threshold
        self.max_age_ns = int(cfg.max_age_s * 1e9)
        self.exchange = cfg.exchange
        self.asset_class = cfg.asset_class
        self.state = Window(cfg.max_age_s)  # exactly what the logic uses
        self._latest: dict[str, dict[str, _Vote]] = {}  # symbol -> agent -> vote, agents in sorted order
        self._tail = f"; threshold ±{self.threshold:.2f}"
        self._day = (1, 0, "")  # event times [lo, hi] (ns) whose trade date is known to be the string

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Signal):
            return []
        started = time.perf_counter()
        ts = event.ts_event
        by_agent = self._latest.get(event.symbol)
        vote = _Vote(event, self.weights.get(event.agent, 0.0))
        if by_agent is None:
            self._latest[event.symbol] = {event.agent: vote}
            fresh = [vote]
        else:
            if event.agent in by_agent:
                by_agent[event.agent] = vote  # keeps its place
            else:  # a new agent: keep the agents sorted, so the votes come out in the order they are shown
                by_agent[event.agent] = vote
                by_agent = self._latest[event.symbol] = dict(sorted(by_agent.items()))
            max_age = self.max_age_ns
            fresh = [v for v in by_agent.values() if ts - v.signal.ts_event <= max_age]
        num = den = w_sum = 0.0
        signs = 0  # bit 1: a positive vote, bit 2: a negative one
        for v in fresh:
            num += v.num
            den += v.wc
            w_sum += v.w
            signs |= 1 if v.sign > 0 else 2 if v.sign < 0 else 0
        score = _clamp(num / den, -1.0, 1.0) if den > 0 else 0.0
        agreement = 0.5 if signs == 3 else 1.0
        confidence = _clamp((den / w_sum if w_sum else 0.0) * agreement, 0.0, 1.0)
        verdict: Verdict = "BUY" if score > self.threshold else "SELL" if score < -self.threshold else "HOLD"
        self.counters[verdict] = self.counters.get(verdict, 0) + 1  # decisions per verdict (a metric)
        if den > 0:
            votes = ", ".join([f"{v.head}{v.num / den:+.2f}{v.tail}" for v in fresh])
        else:
            votes = ", ".join([f"{v.head}{0.0:+.2f}{v.tail}" for v in fresh])
        reasoning = (
            f"{verdict}: ensemble {score:+.2f} = {votes or 'no fresh signals'}; agreement {agreement:.1f}{self._tail}"
        )
        target = Target(
            ticker=event.symbol, trade_date=self._trade_date(ts), exchange=self.exchange, asset_class=self.asset_class
        )
        synthesis_ms = round((time.perf_counter() - started) * 1000, 4)
        confidence = round(confidence, 6)
        score = round(score, 6)
        strengths = {"agents": float(len(fresh))}
        for v in fresh:
            strengths[v.strength_key] = v.signal.strength
        return [
            DecisionEnvelope(  # a draft (as ``draft()`` makes it): the runner stamps its identity
                event_id="",
                ts_event=ts,
                ts_init=0,
                source="",
                target=target,
                synthesis=Synthesis(verdict=verdict, confidence=confidence, ensemble_score=score, reasoning=reasoning),
                agent_signals=[v.agent_signal for v in fresh],
                source_metrics=strengths,
                phase_timings={"synthesis_ms": synthesis_ms},
                schema_version=ENVELOPE_SCHEMA_VERSION,
                decision=DecisionBody(
                    target=target,
                    synthesis=SynthesisBody(
                        verdict=verdict, confidence=confidence, ensemble_score=score, reasoning=reasoning
                    ),
                    agent_signals=[v.agent_body for v in fresh],
                    source_metrics=_source_metrics(fresh),
                    phase_timings=[PhaseTiming(phase="synthesis", ms=synthesis_ms)],
                ),
                published_at=datetime.fromtimestamp(ts // 1000 / 1e6, UTC),
            )
        ]

    def _trade_date(self, ts: int) -> str:
        """The UTC date of ``ts`` as ``datetime.fromtimestamp(ts / 1e9)`` rounds it: computed once a day,
        reused for times at least a second from either midnight (far beyond that float's rounding)."""
        lo, hi, day = self._day
        if lo <= ts <= hi:
            return day
        d = datetime.fromtimestamp(ts / 1e9, UTC).date()
        midnight = (d - _EPOCH).days * _DAY_NS
        self._day = (midnight + 10**9, midnight + _DAY_NS - 10**9, d.isoformat())
        return self._day[2]


_EPOCH = date(1970, 1, 1)
_DAY_NS = 86_400 * 10**9
