"""The event catalogue: round trips, versions, upcasting, subjects, JSON Schema export."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import msgspec
import pytest

from tapeline.schemas import (
    EVENT_TYPES,
    Bar,
    DecisionEnvelope,
    MalformedEvent,
    NewsItem,
    Synthesis,
    Target,
    Tick,
    decode,
    decode_token,
    derive_event_id,
    encode,
    encode_token,
    new_event_id,
)
from tapeline.schemas.export import export_json_schemas
from tapeline.schemas.ids import id_time_ms


def _tick(**kw: object) -> Tick:
    base: dict[str, object] = dict(
        event_id=new_event_id(),
        ts_event=1_700_000_000_000_000_000,
        ts_init=1,
        source="t",
        venue="sim",
        symbol="NVDA",
        bid=1.0,
        ask=1.1,
        last=1.05,
        volume=5.0,
    )
    return Tick(**(base | kw))  # type: ignore[arg-type]


def test_round_trip_single_and_batch() -> None:
    t = _tick()
    assert decode(encode(t)).events == [t]
    batch = [_tick(), _tick(symbol="ORCL")]
    assert decode(encode(batch)).events == batch


def test_every_event_type_has_a_distinct_tag_and_family() -> None:
    tags = [cls.__struct_config__.tag for cls in EVENT_TYPES]
    assert len(tags) == len(set(tags)) == 29  # + OrderApproved, Scan, OrderReserved, OperatorAction, AskExchange
    assert all(cls.family in {"md", "news", "intel", "decision", "order", "risk", "ops"} for cls in EVENT_TYPES)


def test_earlier_version_is_upcast_into_the_current_type() -> None:
    v1 = {
        "type": "news_item",
        "version": 1,
        "event_id": "A",
        "ts_event": 1,
        "ts_init": 2,
        "source": "file",
        "provider": "fnspid",
        "article_id": "42",
        "title": "Nvidia beats",
        "ticker": "NVDA",
    }
    decoded = decode(json.dumps(v1).encode())
    (item,) = decoded.events
    assert isinstance(item, NewsItem)
    assert item.version == 2 and item.tickers == ["NVDA"]
    assert not hasattr(item, "ticker")


def test_unknown_future_version_is_skipped_not_fatal() -> None:
    payload = encode(_tick()).replace(b'"version":1', b'"version":7')
    decoded = decode(payload)
    assert decoded.events == [] and decoded.skipped == ["tick v7"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b'{"type":"tick"}', "missing required field"),
        (b'{"type":"nope"}', "unknown event"),
        (b"[1]", "must be a JSON object"),
        (
            b'{"type":"tick","event_id":"x","ts_event":"soon","ts_init":1,"source":"s","venue":"v","symbol":"S"}',
            "Expected `int`",
        ),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode(payload)


def test_subjects_are_reversible_single_tokens() -> None:
    for sym in ["BRK.B", "EUR/USD", "ES=F", "a b", "*", ">", "Ωmega", "RDS-A", "x_y"]:
        tok = encode_token(sym)
        assert "." not in tok and "*" not in tok and ">" not in tok and " " not in tok
        assert decode_token(tok) == sym
    assert _tick(symbol="BRK.B").subject("tape") == "tape.md.tick.sim.BRK=2EB"
    env = DecisionEnvelope(
        event_id="x",
        ts_event=1,
        ts_init=1,
        source="d",
        target=Target(ticker="BRK.B", trade_date="2026-01-01"),
        synthesis=Synthesis(verdict="HOLD", confidence=0.5, ensemble_score=0.0),
    )
    assert env.subject("tape") == "tape.decision.BRK=2EB"


def test_ids_are_time_sortable_and_derived_ids_deterministic() -> None:
    a, b = new_event_id(1_000_000_000), new_event_id(2_000_000_000)
    assert len(a) == 26 and a < b and id_time_ms(b) == 2000
    assert derive_event_id(5, "bars", 1, "cause", 0) == derive_event_id(5, "bars", 1, "cause", 0)
    assert derive_event_id(5, "bars", 1, "cause", 0) != derive_event_id(5, "bars", 2, "cause", 0)


def test_json_schema_export_validates_shape(tmp_path: Path) -> None:
    files = export_json_schemas(tmp_path)
    assert len([f for f in files if not f.name.startswith("stream.")]) == len(EVENT_TYPES)
    bar = json.loads((tmp_path / "bar.schema.json").read_text())
    assert bar["title"] == "Bar"
    props = bar["$defs"]["Bar"]["properties"]
    assert {"event_id", "ts_event", "close", "interval"} <= set(props)
    assert "close" in bar["$defs"]["Bar"]["required"]


def test_events_are_not_tracked_by_the_garbage_collector() -> None:
    """A projector holds thousands of decoded events until its commit; tracked, they lengthen every collection."""
    env = DecisionEnvelope(
        event_id="d",
        ts_event=1,
        ts_init=1,
        source="s",
        target=Target(ticker="NVDA", trade_date="2026-01-02", exchange="", asset_class="equity"),
        synthesis=Synthesis(verdict="HOLD", confidence=0.5, ensemble_score=0.0, reasoning=""),
    )
    decoded = decode(encode([_tick(), env])).events
    assert [gc.is_tracked(e) for e in decoded] == [False, False]
    assert not gc.is_tracked(decoded[1].target)
    assert [cls.__name__ for cls in EVENT_TYPES if cls.__struct_config__.gc] == []


def test_events_are_frozen() -> None:
    b = Bar(
        event_id="x",
        ts_event=1,
        ts_init=1,
        source="s",
        symbol="S",
        interval="1m",
        start_ns=0,
        open=1,
        high=1,
        low=1,
        close=1,
    )
    with pytest.raises(AttributeError):
        b.close = 2  # type: ignore[misc]
    assert msgspec.json.decode(encode(b))["type"] == "bar"
