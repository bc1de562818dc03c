"""A consumer of our decision subjects written to the S4 envelope contract (``schema_version`` "1").

This is what a downstream engine (the seed's "trtools2") would write, in msgspec instead of
pydantic: its own types, declared from the contract and not imported from ``schemas.events``, so
it reads the envelopes exactly as published (``<prefix>.decision.<ticker>``, JSON), unmodified.

* :func:`decode_envelope` reads ``schema_version`` *before* the body and skips any other version
  with a warning (``None``); then it validates the body, ranges included (confidence 0..1, ensemble
  score -1..1, summary at most 300 characters, at most 10 key factors): an invalid body is skipped
  with a warning too. Unknown fields are ignored, so the producer may add fields.
* Point lookups in the decisions KV bucket (``<prefix>_decisions``): :func:`latest` by ticker (the
  key is the ticker's subject token: the bucket sources the decision stream) and :func:`on_date` by
  (ticker, trade date) (key ``<ticker token>.<YYYY-MM-DD>``, written by the ``decision_index`` read
  model, :mod:`projections.decision_index`). Same lookups with the nats CLI:
  ``nats kv get tape_decisions NVDA`` and ``nats kv get tape_decisions NVDA.2026-05-11``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tapeline.schemas.subjects import encode_token

log = structlog.get_logger("tapeline.contract")

SCHEMA_VERSION = "1"
Verdict = Literal["BUY", "HOLD", "SELL"]
Direction = Literal["BULLISH", "BEARISH", "NEUTRAL"]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Signed = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]


class AgentSignalView(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    domain: str
    signal: Direction
    confidence: Unit
    summary: Annotated[str, msgspec.Meta(max_length=300)] = ""
    key_factors: Annotated[list[str], msgspec.Meta(max_length=10)] = []


class TargetView(msgspec.Struct, frozen=True, kw_only=True):
    ticker: str
    trade_date: str = ""
    exchange: str = ""
    asset_class: str = "equity"


class SynthesisView(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    confidence: Unit
    ensemble_score: Signed
    reasoning: str = ""


class SourceMetricsSummary(msgspec.Struct, frozen=True, kw_only=True):
    total_calls: int = 0
    successful: int = 0
    failed: int = 0
    total_bytes: int = 0
    by_source: dict[str, int] = {}


class MarketMindDecision(msgspec.Struct, frozen=True, kw_only=True):
    target: TargetView
    synthesis: SynthesisView
    agent_signals: list[AgentSignalView] = []
    source_metrics: SourceMetricsSummary = msgspec.field(default_factory=SourceMetricsSummary)
    phase_timings: list[dict[str, Any]] = []
    arena_total_seconds: float | None = None


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    schema_version: Literal["1"]
    decision: MarketMindDecision
    published_at: datetime
    correlation_id: str
    arena_id: str = ""
    meta: dict[str, Any] = {}


class _Head(msgspec.Struct):
    schema_version: Any = None


_head = msgspec.json.Decoder(_Head)
_body = msgspec.json.Decoder(Envelope)


def decode_envelope(payload: bytes | str) -> Envelope | None:
    """The envelope in a message, or None (with a warning) for another schema version or an invalid body."""
    try:
        version = _head.decode(payload).schema_version
    except msgspec.DecodeError as exc:
        log.warning("decode_envelope: malformed JSON", error=str(exc))
        return None
    if version != SCHEMA_VERSION:
        log.warning("decode_envelope: skipping unknown schema_version (this consumer speaks v1)", version=version)
        return None
    try:
        return _body.decode(payload)
    except msgspec.ValidationError as exc:
        log.warning("decode_envelope: validation failed", error=str(exc))
        return None


def latest_key(ticker: str) -> str:
    return encode_token(ticker)


def date_key(ticker: str, trade_date: str) -> str:
    return f"{encode_token(ticker)}.{trade_date}"


async def _get(kv: KeyValue, key: str) -> Envelope | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return decode_envelope(entry.value or b"")


async def latest(kv: KeyValue, ticker: str) -> Envelope | None:
    """What we think about ``ticker`` now: the latest envelope, or None."""
    return await _get(kv, latest_key(ticker))


async def on_date(kv: KeyValue, ticker: str, trade_date: str) -> Envelope | None:
    """The last envelope of ``ticker`` for ``trade_date`` (ISO date, UTC), or None."""
    return await _get(kv, date_key(ticker, trade_date))
