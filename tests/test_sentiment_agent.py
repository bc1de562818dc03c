"""The sentiment agent as a pure handler: hand-made score sequences, hand-computed signals."""

from __future__ import annotations

import pytest

from tapeline.bus.components import react
from tapeline.handlers.sentiment import SentimentAgent, SentimentConfig
from tapeline.schemas.events import SentimentScore, Signal

T0 = 1_767_222_000_000_000_000
HOUR = 3600 * 10**9


def score(n: int, ts: int, value: float, relevance: float = 1.0, **kw: object) -> SentimentScore:
    fields: dict[str, object] = {
        "event_id": f"s{n}",
        "ts_event": ts,
        "ts_init": ts,
        "source": "test",
        "ticker": "NVDA",
        "score": value,
        "relevance": relevance,
        "impact": 0.5,
        "news_id": f"news-{n}",
        "llm_call_id": f"call-{n}",
        "provider": "gemini",
        "reply_bytes": 100,
    }
    fields.update(kw)
    return SentimentScore(**fields)  # type: ignore[arg-type]


def run(agent: SentimentAgent, scores: list[SentimentScore]) -> list[Signal]:
    out: list[Signal] = []
    for s in scores:
        out += [e for e in react(agent, s) if isinstance(e, Signal)]
    return out


def test_relevance_and_recency_weights() -> None:
    agent = SentimentAgent(SentimentConfig(half_life_s=3600, evidence=1.0))
    sigs = run(agent, [score(1, T0, 0.8, 1.0), score(2, T0 + HOUR, -0.4, 0.5)])
    first, second = sigs
    assert first.agent == "sentiment" and first.symbol == "NVDA"
    assert first.strength == pytest.approx(0.8) and first.direction == "BULLISH"
    assert first.confidence == pytest.approx(1 / 2)  # W = 1, no dispersion
    # an hour later the first weighs 1 * 0.5, the second 0.5 * 1: (0.5*0.8 + 0.5*-0.4) / 1.0
    assert second.strength == pytest.approx(0.2)
    dispersion = (0.5 * 0.6 + 0.5 * 0.6) / 1.0
    assert second.confidence == pytest.approx(1.0 / 2.0 * (1 - dispersion / 2), abs=1e-6)
    assert second.ts_event == T0 + HOUR
    assert "news-1" in second.key_factors[0] and "from 2 of 2 scores" in second.summary
    assert second.metrics["source_calls.gemini"] == 2 and second.metrics["source_bytes"] == 200


def test_neutral_fallbacks_weigh_nothing_but_count_as_failed_calls() -> None:
    agent = SentimentAgent(SentimentConfig(half_life_s=3600))
    sigs = run(
        agent,
        [
            score(1, T0, -0.6, 0.9),
            score(2, T0, 1.0, 1.0, neutral_fallback=True, provider="openai", reply_bytes=7),
        ],
    )
    assert sigs[-1].strength == pytest.approx(-0.6) and sigs[-1].direction == "BEARISH"
    assert sigs[-1].metrics["source_failed"] == 1
    assert sigs[-1].metrics["source_calls.openai"] == 1 and sigs[-1].metrics["source_calls.gemini"] == 1
    assert "1 neutral fallbacks" in sigs[-1].summary
    assert all("news-2" not in f for f in sigs[-1].key_factors)
    only_fallback = run(SentimentAgent(), [score(3, T0, 1.0, neutral_fallback=True)])
    assert only_fallback[0].strength == 0 and only_fallback[0].confidence == 0
    assert only_fallback[0].direction == "NEUTRAL"


def test_horizon_drops_old_scores_and_duplicates_count_once() -> None:
    agent = SentimentAgent(SentimentConfig(half_life_s=3600, horizon_s=2 * 3600))
    s1 = score(1, T0, 0.9)
    sigs = run(agent, [s1, s1, score(2, T0 + 3 * HOUR, -0.5)])
    assert sigs[1].metrics["scores"] == 1  # the redelivered score counted once
    assert sigs[2].strength == pytest.approx(-0.5) and sigs[2].metrics["scores"] == 1  # the first aged out
    assert sigs[2].metrics["source_calls.gemini"] == 1 and sigs[2].metrics["source_bytes"] == 100  # its call too
    assert run(agent, [score(3, T0, 0.9)]) == []  # arrives older than the horizon: nothing changes


def test_same_input_same_signal_ids() -> None:
    seq = [score(i, T0 + i * HOUR, (-1) ** i * 0.3 * i % 1) for i in range(6)]
    a, b = run(SentimentAgent(), seq), run(SentimentAgent(), seq)
    assert [(s.event_id, s.strength, s.confidence) for s in a] == [(s.event_id, s.strength, s.confidence) for s in b]
    assert len({s.event_id for s in a}) == 6
