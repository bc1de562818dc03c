"""Decisions: per-agent reasoning, the S4 envelope contract as a consumer reads it, JSON Schema, and
SentimentScore -> decision end to end on a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import pytest
import structlog
from nats.aio.client import Client

from tapeline import contract
from tapeline.bus.components import react
from tapeline.bus.publisher import Publisher
from tapeline.handlers.decision import DecisionConfig, DecisionSynthesis
from tapeline.pipeline import Pipeline
from tapeline.schemas.codec import encode
from tapeline.schemas.events import DecisionEnvelope, SentimentScore, Signal
from tapeline.schemas.export import export_json_schemas
from tapeline.schemas.subjects import decisions_bucket
from tests.helpers import FAST, wait_until

T0 = 1_767_222_000_000_000_000  # 2025-12-31 23:00 UTC


def signal(agent: str, strength: float, confidence: float, n: int = 0, **metrics: float) -> Signal:
    return Signal(
        event_id=f"{agent}{n}",
        ts_event=T0 + n,
        ts_init=0,
        source="test",
        correlation_id="corr-1",
        symbol="NVDA",
        agent=agent,
        domain="test",
        direction="BULLISH" if strength > 0 else "BEARISH",
        strength=strength,
        confidence=confidence,
        summary=f"{agent} says {strength:+.1f}",
        metrics=metrics,
    )


def decide(signals: list[Signal], **cfg: object) -> DecisionEnvelope:
    handler = DecisionSynthesis(DecisionConfig(**cfg))  # type: ignore[arg-type]
    out = [e for s in signals for e in react(handler, s)]
    assert isinstance(out[-1], DecisionEnvelope)
    return out[-1]


def test_reasoning_names_each_agent_contribution() -> None:
    env = decide(
        [
            signal("momentum", 0.6, 0.5),
            signal("sentiment", -0.2, 1.0, 1, **{"source_calls.gemini": 3, "source_failed": 1, "source_bytes": 900}),
            signal("astrology", 1.0, 1.0, 2),
        ]
    )
    # ensemble = (1*0.6*0.5 + 1*-0.2*1.0 + 0) / (0.5 + 1.0) = 0.1/1.5
    assert env.synthesis.ensemble_score == pytest.approx(0.1 / 1.5, abs=1e-6)
    reasoning = env.synthesis.reasoning
    assert "momentum +0.20 (strength +0.60, conf 0.50, w 1)" in reasoning
    assert "sentiment -0.13 (strength -0.20, conf 1.00, w 1)" in reasoning
    assert "astrology +0.00 (strength +1.00, conf 1.00, w 0)" in reasoning  # unlisted: shown, no vote
    body = env.decision
    assert body is not None and env.schema_version == "1"
    assert body.source_metrics.total_calls == 3 and body.source_metrics.failed == 1
    assert body.source_metrics.successful == 2 and body.source_metrics.total_bytes == 900
    assert body.source_metrics.by_source == {"gemini": 3}
    assert body.target.trade_date == "2025-12-31" and body.synthesis == msgspec.convert(
        msgspec.to_builtins(env.synthesis), type(body.synthesis)
    )
    assert [p.phase for p in body.phase_timings] == ["synthesis"]
    assert env.correlation_id == "corr-1" and env.published_at is not None


def test_the_contract_consumer_reads_our_envelope_and_enforces_its_ranges() -> None:
    env = decide([signal("momentum", 0.9, 0.9), signal("sentiment", 0.8, 0.7, 1, **{"source_calls.openai": 2})])
    payload = encode(env)
    got = contract.decode_envelope(payload)
    assert got is not None and got.schema_version == "1" and got.correlation_id == env.correlation_id
    assert got.decision.synthesis.verdict == "BUY" and got.decision.target.ticker == "NVDA"
    assert got.decision.source_metrics.by_source == {"openai": 2}
    assert {s.agent for s in got.decision.agent_signals} == {"momentum", "sentiment"}

    def mutated(path: tuple[str, ...], value: object) -> bytes:
        d = json.loads(payload)
        node = d
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) else node[int(key)]
        node[path[-1]] = value
        return json.dumps(d).encode()

    refused = [
        mutated(("schema_version",), "2"),  # a future version: skipped before the body is read
        mutated(("decision", "synthesis", "confidence"), 1.5),
        mutated(("decision", "synthesis", "ensemble_score"), -1.01),
        mutated(("decision", "agent_signals", "0", "summary"), "x" * 301),
        mutated(("decision", "agent_signals", "0", "key_factors"), [str(i) for i in range(11)]),
        b"{not json",
    ]
    old = json.loads(payload)
    for key in ("schema_version", "decision", "published_at"):
        del old[key]
    refused.append(json.dumps(old).encode())  # written before the contract: no schema_version
    with structlog.testing.capture_logs() as logs:
        assert [contract.decode_envelope(p) for p in refused] == [None] * len(refused)
    events = [entry["event"] for entry in logs]
    assert sum("unknown schema_version" in e for e in events) == 2
    assert sum("validation failed" in e for e in events) == 4
    assert contract.decode_envelope(mutated(("decision", "agent_signals", "0", "summary"), "x" * 300)) is not None


def test_exported_schema_validates_a_published_envelope(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "decision.schema.json").read_text())
    env = decide([signal("momentum", 0.5, 0.5), signal("sentiment", 0.5, 0.5, 1, **{"source_calls.gemini": 1})])
    doc = json.loads(encode(env))
    jsonschema.validate(doc, schema)
    body_schema = schema["$defs"]["AgentSignalBody"]["properties"]
    assert body_schema["summary"]["maxLength"] == 300 and body_schema["key_factors"]["maxItems"] == 10
    doc["decision"]["synthesis"]["confidence"] = 2.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


async def test_sentiment_score_to_decision_a_contract_consumer_reads(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """Scores published -> sentiment signal -> envelope on the decision subject, read by the contract
    consumer unmodified; the KV answers by ticker and by (ticker, trade date)."""
    p = Pipeline(
        nc, provisioned, configs=FAST, db_path=tmp_path / "p.duckdb", selected=("sentiment", "decision", "projector")
    )
    await p.start()
    sub = await nc.subscribe(f"{provisioned}.decision.*")
    scores = [
        SentimentScore(
            event_id=f"score-{i}",
            ts_event=T0 + i * 60 * 10**9,
            ts_init=0,
            source="parser",
            ticker="BRK.B",
            score=0.9 if i else -0.3,
            relevance=0.8,
            impact=0.5,
            news_id=f"news-{i}",
            llm_call_id=f"call-{i}",
            provider="openai" if i == 2 else "gemini",
            reply_bytes=250,
            neutral_fallback=i == 3,
        )
        for i in range(4)
    ]
    await publisher.publish(scores)
    export_json_schemas(tmp_path / "schemas")
    schema = json.loads((tmp_path / "schemas" / "decision.schema.json").read_text())
    envelopes: list[contract.Envelope] = []
    while len(envelopes) < 4:
        msg = await sub.next_msg(timeout=60)
        jsonschema.validate(json.loads(msg.data), schema)  # as published, against the exported schema
        env = contract.decode_envelope(msg.data)
        assert env is not None, msg.data
        envelopes.append(env)
    await sub.unsubscribe()
    last = envelopes[-1].decision
    assert last.target.ticker == "BRK.B" and "sentiment" in last.synthesis.reasoning
    assert [s.agent for s in last.agent_signals] == ["sentiment"]
    assert last.source_metrics.total_calls == 4 and last.source_metrics.failed == 1
    assert last.source_metrics.by_source == {"gemini": 3, "openai": 1} and last.source_metrics.total_bytes == 1000
    kv = await nc.jetstream().key_value(decisions_bucket(provisioned))

    async def indexed() -> bool:
        return await contract.on_date(kv, "BRK.B", "2025-12-31") is not None

    async def latest_sourced() -> bool:  # the server sources the latest key from the stream in its own time
        got = await contract.latest(kv, "BRK.B")
        return got is not None and got.correlation_id == envelopes[-1].correlation_id

    await wait_until(indexed, timeout=60)
    await wait_until(latest_sourced, timeout=60)
    now = await contract.latest(kv, "BRK.B")
    assert now is not None and now.correlation_id == envelopes[-1].correlation_id

    async def day_is_last() -> bool:
        got = await contract.on_date(kv, "BRK.B", "2025-12-31")
        return got is not None and got.correlation_id == envelopes[-1].correlation_id and got.decision == last

    await wait_until(day_is_last, timeout=60)
    assert await contract.on_date(kv, "BRK.B", "2026-01-01") is None
    await p.stop()
