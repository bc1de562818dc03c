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

import bisect
from typing import Annotated, ClassVar

import msgspec
import numpy as np

from tapeline.handlers.decision import SOURCE_BYTES, SOURCE_CALLS, SOURCE_FAILED
from tapeline.schemas.components import Consumes, Handler, Window, draft
from tapeline.schemas.events import KEY_FACTORS_MAX, AnyEvent, Event, SentimentScore, Signal


class SentimentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 12 * 3600.0  # a score counts half after this age
    horizon_s: Annotated[float, msgspec.Meta(gt=0)] = 3 * 86400.0  # older scores are dropped
    evidence: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # total weight at which confidence is 1/2
    neutral_band: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1  # |strength| below: NEUTRAL


class _Book:
    """A ticker's scores within the horizon, ordered by (event time, id), as columns for numpy, with
    the LLM calls behind them counted as scores come and go (one call may score several tickers)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, str]] = []  # (ts_event, event_id)
        self.ts: list[int] = []
        self.scores: list[float] = []
        self.relevance: list[float] = []  # clamped to [0, 1]; 0 for a neutral fallback
        self.labels: list[str] = []  # what a key factor names: the news id
        self.call_ids: list[str] = []
        self.fallback: list[bool] = []
        self.fallbacks = 0
        self.by_source: dict[str, int] = {}  # distinct calls per provider
        self.failed_calls = 0
        self.reply_bytes = 0
        self._calls: dict[str, tuple[str, bool, int]] = {}  # call id -> (provider, failed, bytes)
        self._refs: dict[str, int] = {}

    def add(self, s: SentimentScore) -> None:
        key = (s.ts_event, s.event_id)
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return  # a redelivery: held already
        call = s.llm_call_id or s.event_id
        self.keys.insert(i, key)
        self.ts.insert(i, s.ts_event)
        self.scores.insert(i, max(-1.0, min(1.0, s.score)))
        self.relevance.insert(i, 0.0 if s.neutral_fallback else max(0.0, min(1.0, s.relevance)))
        self.labels.insert(i, s.news_id or s.event_id)
        self.call_ids.insert(i, call)
        self.fallback.insert(i, s.neutral_fallback)
        self.fallbacks += s.neutral_fallback
        self._refs[call] = self._refs.get(call, 0) + 1
        if call not in self._calls:
            self._calls[call] = info = (s.provider or s.model or "llm", s.neutral_fallback, s.reply_bytes)
            self._count(info, 1)

    def prune(self, oldest: int) -> None:
        n = bisect.bisect_left(self.ts, oldest)
        if not n:
            return
        for i in range(n):
            self.fallbacks -= self.fallback[i]
            call = self.call_ids[i]
            self._refs[call] -= 1
            if not self._refs[call]:
                del self._refs[call]
                self._count(self._calls.pop(call), -1)
        for col in (self.keys, self.ts, self.scores, self.relevance, self.labels, self.call_ids, self.fallback):
            del col[:n]

    def _count(self, info: tuple[str, bool, int], sign: int) -> None:
        provider, failed, size = info
        self.by_source[provider] = self.by_source.get(provider, 0) + sign
        if not self.by_source[provider]:
            del self.by_source[provider]
        self.failed_calls += sign * failed
        self.reply_bytes += sign * size


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
        self._books: dict[str, _Book] = {}

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, SentimentScore):
            return []
        book = self._books.setdefault(event.ticker, _Book())
        book.add(event)
        now = book.keys[-1][0]
        book.prune(now - int(self.cfg.horizon_s * 1e9))
        if (event.ts_event, event.event_id) < book.keys[0]:  # older than the horizon: changes nothing
            return []
        return [self._signal(event.ticker, book, now)]

    def _signal(self, ticker: str, book: _Book, now: int) -> Signal:
        ages = (now - np.array(book.ts, dtype=np.float64)) / 1e9
        weights = np.array(book.relevance) * np.exp2(-ages / self.cfg.half_life_s)
        scores = np.array(book.scores)
        total = float(weights.sum())
        strength = float(weights @ scores) / total if total > 0 else 0.0
        dispersion = float(weights @ np.abs(scores - strength)) / total if total > 0 else 0.0
        confidence = total / (total + self.cfg.evidence) * (1 - min(dispersion, 2.0) / 2)
        band = self.cfg.neutral_band
        direction = "NEUTRAL" if abs(strength) < band else ("BULLISH" if strength > 0 else "BEARISH")
        impact = weights * np.abs(scores)
        used = int(np.count_nonzero(weights > 0))
        top = [int(i) for i in np.lexsort((np.arange(len(impact)), -impact))[:KEY_FACTORS_MAX] if weights[i] > 0]
        key_factors = [f"{book.labels[i]}: score {scores[i]:+.2f}, weight {weights[i]:.2f}" for i in top]
        fallbacks = book.fallbacks
        metrics: dict[str, float] = {
            "weight": round(total, 6),
            "dispersion": round(dispersion, 6),
            "scores": float(len(book.keys)),
            "fallbacks": float(fallbacks),
            SOURCE_FAILED: float(book.failed_calls),
            SOURCE_BYTES: float(book.reply_bytes),
            **{SOURCE_CALLS + provider: float(n) for provider, n in book.by_source.items()},
        }
        summary = (
            f"news sentiment {strength:+.2f} from {used} of {len(book.keys)} scores"
            f" ({fallbacks} neutral fallbacks), half-life {self.cfg.half_life_s / 3600:g}h"
        )
        if top:
            summary += f"; strongest {book.labels[top[0]]} {scores[top[0]]:+.2f}"
        return draft(
            Signal,
            ts_event=now,
            symbol=ticker,
            agent="sentiment",
            domain="news",
            direction=direction,
            strength=round(strength, 6),
            confidence=round(max(0.0, min(1.0, confidence)), 6),
            summary=summary[:300],
            key_factors=key_factors,
            metrics=metrics,
        )
