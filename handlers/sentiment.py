"""Sentiment agent: the news sentiment scores of a ticker -> one ``Signal(agent="sentiment")``.

Each score ``i`` (``score_i`` in [-1, 1]) weighs

    w_i = max(relevance_i, 0) * 0.5 ** (age_i / half_life_s)

where ``age_i`` is the newest score's event time minus score ``i``'s (event time, never the wall
clock, so a replay gives the same signal). A neutral fallback (the LLM reply was unusable) weighs 0:
it says nothing about the ticker, but it is counted as a failed call.

    strength   = sum(w_i * score_i) / sum(w_i)          (0 when no weight)
    confidence = W / (W + evidence) * (1 - dispersion / 2)

with ``W = sum(w_i)``: one fresh, fully relevant article gives ``1 / (1 + evidence)``, more evidence
saturates towards 1; ``dispersion`` is the weighted mean absolute deviation of the scores from the
strength (0 when they agree, up to 2), so conflicting news lowers confidence.

Scores older than ``horizon_s`` are dropped; that horizon is also the state window the runner
replays after a restart. Duplicates (a redelivered score) count once: scores are keyed by event id.
The signal's ``metrics`` carry the LLM calls behind it (``source_calls.<provider>``,
``source_failed``, ``source_bytes``), which the decision sums into its ``source_metrics``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from tapeline.handlers.decision import SOURCE_BYTES, SOURCE_CALLS, SOURCE_FAILED
from tapeline.schemas.components import Consumes, Handler, Window, draft
from tapeline.schemas.events import KEY_FACTORS_MAX, AnyEvent, Event, SentimentScore, Signal


class SentimentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 12 * 3600.0  # a score counts half after this age
    horizon_s: Annotated[float, msgspec.Meta(gt=0)] = 3 * 86400.0  # older scores are dropped
    evidence: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # total weight at which confidence is 1/2
    neutral_band: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1  # |strength| below: NEUTRAL


class SentimentAgent(Handler):
    name: ClassVar[str] = "sentiment"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = SentimentConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Signal,)
    consumes = (Consumes(SentimentScore),)

    def __init__(self, config: SentimentConfig | None = None) -> None:
        super().__init__(config)
        cfg: SentimentConfig = self.config
        self.cfg = cfg
        self.state = Window(cfg.horizon_s)
        self._scores: dict[str, dict[str, SentimentScore]] = {}  # ticker -> event id -> score

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, SentimentScore):
            return []
        scores = self._scores.setdefault(event.ticker, {})
        scores[event.event_id] = event
        now = max(s.ts_event for s in scores.values())
        horizon_ns = int(self.cfg.horizon_s * 1e9)
        for key in [k for k, s in scores.items() if now - s.ts_event > horizon_ns]:
            del scores[key]
        if event.event_id not in scores:  # arrived older than the horizon: changes nothing
            return []
        return [self._signal(event, sorted(scores.values(), key=lambda s: (s.ts_event, s.event_id)), now)]

    def _weight(self, s: SentimentScore, now: int) -> float:
        if s.neutral_fallback:
            return 0.0
        age_s = (now - s.ts_event) / 1e9
        decay: float = 0.5 ** (age_s / self.cfg.half_life_s)
        return max(0.0, min(1.0, s.relevance)) * decay

    def _signal(self, event: SentimentScore, scores: list[SentimentScore], now: int) -> Signal:
        weights = [self._weight(s, now) for s in scores]
        total = sum(weights)
        pairs = list(zip(weights, scores, strict=True))
        strength = sum(w * max(-1.0, min(1.0, s.score)) for w, s in pairs) / total if total else 0.0
        dispersion = sum(w * abs(s.score - strength) for w, s in pairs) / total if total else 0.0
        confidence = total / (total + self.cfg.evidence) * (1 - min(dispersion, 2.0) / 2)
        band = self.cfg.neutral_band
        direction = "NEUTRAL" if abs(strength) < band else ("BULLISH" if strength > 0 else "BEARISH")
        fallbacks = sum(s.neutral_fallback for s in scores)
        used = sum(w > 0 for w in weights)
        drivers = sorted((p for p in pairs if p[0] > 0), key=lambda p: (-abs(p[0] * p[1].score), p[1].event_id))
        key_factors = [f"{s.news_id or s.event_id}: score {s.score:+.2f}, weight {w:.2f}" for w, s in drivers]
        key_factors = key_factors[:KEY_FACTORS_MAX]
        metrics: dict[str, float] = {
            "weight": round(total, 6),
            "dispersion": round(dispersion, 6),
            "scores": float(len(scores)),
            "fallbacks": float(fallbacks),
        }
        calls = {s.llm_call_id or s.event_id: s for s in scores}  # one call may score several tickers
        metrics[SOURCE_FAILED] = float(sum(s.neutral_fallback for s in calls.values()))
        metrics[SOURCE_BYTES] = float(sum(s.reply_bytes for s in calls.values()))
        for s in calls.values():
            key = SOURCE_CALLS + (s.provider or s.model or "llm")
            metrics[key] = metrics.get(key, 0.0) + 1.0
        summary = (
            f"news sentiment {strength:+.2f} from {used} of {len(scores)} scores"
            f" ({fallbacks} neutral fallbacks), half-life {self.cfg.half_life_s / 3600:g}h"
        )
        if drivers:
            top = drivers[0][1]
            summary += f"; strongest {top.news_id or top.event_id} {top.score:+.2f}"
        return draft(
            Signal,
            ts_event=now,
            symbol=event.ticker,
            agent="sentiment",
            domain="news",
            direction=direction,
            strength=round(strength, 6),
            confidence=round(max(0.0, min(1.0, confidence)), 6),
            summary=summary[:300],
            key_factors=key_factors,
            metrics=metrics,
        )
