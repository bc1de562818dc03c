"""Decision synthesis: the latest signal of each agent for a symbol -> a versioned envelope.

ensemble = sum(w * strength * confidence) / sum(w * confidence) over fresh signals;
BUY above ``threshold``, SELL below ``-threshold``, HOLD between. Confidence is the weighted mean
confidence scaled by how much the agents agree. Signals older than ``max_age_s`` (event time)
no longer vote. That age is also the handler's state window: after a restart the runner replays
exactly ``max_age_s`` of signals (event time) before resuming, so the votes equal an uninterrupted run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Window, draft
from tapeline.schemas.events import AgentSignal, AnyEvent, DecisionEnvelope, Event, Signal, Synthesis, Target, Verdict


class DecisionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    weights: dict[str, float] = msgspec.field(default_factory=lambda: {"momentum": 1.0, "sentiment": 1.0})
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.25
    max_age_s: Annotated[float, msgspec.Meta(gt=0)] = 3 * 86400.0  # older signals no longer vote
    exchange: str = ""
    asset_class: str = "equity"

    def __post_init__(self) -> None:  # by hand, so the message names the agent (load_settings adds the section)
        for agent, w in self.weights.items():
            if not w >= 0:
                raise ValueError(f"weights.{agent}: {w} is negative; weights are >= 0, e.g. 1.0")


class DecisionSynthesis(Handler):
    name: ClassVar[str] = "decision"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = DecisionConfig
    emits: ClassVar[tuple[type[Event], ...]] = (DecisionEnvelope,)
    consumes = (Consumes(Signal),)

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
        fresh = [s for s in by_agent.values() if event.ts_event - s.ts_event <= self.max_age_ns]
        num = den = conf_sum = w_sum = 0.0
        for s in fresh:
            w = self.weights.get(s.agent, 0.5)
            num += w * s.strength * s.confidence
            den += w * s.confidence
            conf_sum += w * s.confidence
            w_sum += w
        score = num / den if den > 0 else 0.0
        signs = {1 if s.strength > 0 else -1 for s in fresh if s.direction != "NEUTRAL"}
        agreement = 1.0 if len(signs) <= 1 else 0.5
        confidence = (conf_sum / w_sum if w_sum else 0.0) * agreement
        verdict: Verdict = "BUY" if score > self.threshold else "SELL" if score < -self.threshold else "HOLD"
        votes = ", ".join(f"{s.agent} {s.direction.lower()} ({s.strength:+.2f})" for s in fresh)
        reasoning = f"{verdict}: ensemble {score:+.2f} from {votes}; threshold ±{self.threshold:.2f}"
        trade_date = datetime.fromtimestamp(event.ts_event / 1e9, UTC).date().isoformat()
        return [
            draft(
                DecisionEnvelope,
                ts_event=event.ts_event,
                target=Target(
                    ticker=event.symbol, trade_date=trade_date, exchange=self.exchange, asset_class=self.asset_class
                ),
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
                phase_timings={"synthesis_ms": round((time.perf_counter() - started) * 1000, 4)},
            )
        ]
