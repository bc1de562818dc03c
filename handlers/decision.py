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
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Window, draft
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
    total = sum(by_source.values())
    failed = min(failed, total)
    return SourceMetrics(
        total_calls=total,
        successful=total - failed,
        failed=failed,
        total_bytes=total_bytes,
        by_source=dict(sorted(by_source.items())),
    )


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
        self._latest: dict[str, dict[str, Signal]] = {}

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Signal):
            return []
        started = time.perf_counter()
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
        synthesis_ms = round((time.perf_counter() - started) * 1000, 4)
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
