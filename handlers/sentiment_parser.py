"""``sentiment_parser``: a recorded ``LlmCall`` -> one ``SentimentScore`` per ticker it asked about.

The reply is data and must be exactly ``{"scores": [{"ticker", "score", "relevance", "impact"}]}``
with one entry per asked ticker (DESIGN §7):

* any other key, a missing key, a non-number, a non-finite number, a ticker that was not asked
  about, a ticker twice or a ticker missing, text around the JSON, or a provider error: the whole
  reply is refused; every asked ticker gets a neutral score (0, 0, 0) with ``neutral_fallback``
  and the reason in ``detail``, and one warning ``Alert`` is emitted (kind ``llm_reply_invalid``
  or ``llm_call_failed``);
* a finite number outside its range (score [-1, 1], relevance and impact [0, 1]) is clamped and
  the score is flagged ``clamped`` with the fields named in ``detail``.

So whatever an article makes a model say, the most it can do is set the scores of its own tickers,
within range: the parser emits nothing but these two event types. It is pure (no I/O), so replay
and what-if re-run it on the recorded calls and get the same scores and ids.
"""

from __future__ import annotations

import math
from typing import ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, draft
from tapeline.schemas.events import Alert, AnyEvent, Event, LlmCall, SentimentScore

RANGES: dict[str, tuple[float, float]] = {"score": (-1.0, 1.0), "relevance": (0.0, 1.0), "impact": (0.0, 1.0)}


class ScoreItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ticker: str
    score: float
    relevance: float
    impact: float


class Reply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scores: list[ScoreItem]


_decode = msgspec.json.Decoder(Reply)


class InvalidReply(ValueError):
    """The reply is not the strict format (the message says how)."""


class Parsed(msgspec.Struct, frozen=True):
    ticker: str
    score: float
    relevance: float
    impact: float
    clamped: list[str]


def parse_reply(text: str, tickers: list[str]) -> list[Parsed]:
    """Validate a raw reply against the asked tickers; clamp finite out-of-range values."""
    try:
        reply = _decode.decode(text)
    except msgspec.ValidationError as e:
        raise InvalidReply(f"not the strict format: {e}") from None
    except msgspec.DecodeError as e:
        raise InvalidReply(f"not a JSON object: {e}") from None
    by_ticker: dict[str, ScoreItem] = {}
    for item in reply.scores:
        if item.ticker not in tickers:
            raise InvalidReply(f"scores a ticker it was not asked about ({item.ticker[:24]!r})")
        if item.ticker in by_ticker:
            raise InvalidReply(f"scores {item.ticker!r} twice")
        by_ticker[item.ticker] = item
    missing = [t for t in tickers if t not in by_ticker]
    if missing:
        raise InvalidReply(f"no score for {missing}")
    out: list[Parsed] = []
    for t in tickers:
        item = by_ticker[t]
        values: dict[str, float] = {}
        clamped: list[str] = []
        for field, (lo, hi) in RANGES.items():
            v = getattr(item, field)
            if not math.isfinite(v):
                raise InvalidReply(f"{field} of {t!r} is not a finite number")
            values[field] = min(max(v, lo), hi)
            if values[field] != v:
                clamped.append(f"{field} {v:g}")
        out.append(Parsed(t, values["score"], values["relevance"], values["impact"], clamped))
    return out


class SentimentParser(Handler):
    """Recorded LLM replies -> validated sentiment scores (or neutral fallbacks and an alert)."""

    name: ClassVar[str] = "sentiment_parser"
    role: ClassVar[str] = "intel"
    emits: ClassVar[tuple[type[Event], ...]] = (SentimentScore, Alert)
    consumes = (Consumes(LlmCall),)

    def handle(self, event: AnyEvent) -> list[Event]:
        assert isinstance(event, LlmCall)
        if not event.tickers:
            return []
        try:
            if event.error:
                raise InvalidReply(f"provider error: {event.error}")
            parsed = parse_reply(event.response_text, event.tickers)
        except InvalidReply as e:
            return self._fallback(event, str(e)[:300])
        out: list[Event] = []
        for p in parsed:
            self._count("clamped" if p.clamped else "scored")
            out.append(
                self._score(
                    event,
                    p.ticker,
                    p.score,
                    p.relevance,
                    p.impact,
                    clamped=bool(p.clamped),
                    detail=", ".join(p.clamped),
                )
            )
        return out

    def _score(self, call: LlmCall, ticker: str, score: float, relevance: float, impact: float, **kw: object) -> Event:
        return draft(
            SentimentScore,
            ts_event=call.ts_event,
            ticker=ticker,
            score=score,
            relevance=relevance,
            impact=impact,
            news_id=call.news_id,
            llm_call_id=call.event_id,
            prompt_version=call.prompt_version,
            variant=call.variant,
            model=call.model,
            provider=call.provider,
            reply_bytes=len(call.response_text.encode()),
            **kw,
        )

    def _fallback(self, call: LlmCall, reason: str) -> list[Event]:
        self._count("fallback", len(call.tickers))
        kind = "llm_call_failed" if call.error else "llm_reply_invalid"
        out = [self._score(call, t, 0.0, 0.0, 0.0, neutral_fallback=True, detail=reason) for t in call.tickers]
        out.append(
            draft(
                Alert,
                ts_event=call.ts_event,
                severity="warning",
                kind=kind,
                key=f"{self.name}:{call.news_id or call.event_id}",
                message=f"{call.provider} {call.model} {call.variant}: neutral scores for {call.tickers}: {reason}",
            )
        )
        return out

    def _count(self, outcome: str, n: int = 1) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + n
