"""The similarity agent as a pure handler: no look-ahead, a periodic market it must read, snapshots."""

from __future__ import annotations

import math

import msgspec
import pytest

from tapeline.bus.components import react
from tapeline.handlers.enrichment import WINDOW
from tapeline.handlers.similarity import SimilarityAgent, SimilarityConfig
from tapeline.schemas.events import Bar, Signal

T0 = 1_767_222_000_000_000_000
MIN = 60 * 10**9
PERIOD = 20


def close_at(i: int) -> float:
    return 100 * math.exp(0.03 * math.sin(2 * math.pi * i / PERIOD) + 0.01 * math.sin(2 * math.pi * i / 7))


def bar(i: int, close: float, symbol: str = "ACME") -> Bar:
    return Bar(
        event_id=f"b{symbol}{i}",
        ts_event=T0 + (i + 1) * MIN,
        ts_init=0,
        source="test",
        symbol=symbol,
        interval="1m",
        start_ns=T0 + i * MIN,
        open=close,
        high=close * 1.001,
        low=close * 0.999,
        close=close,
        volume=100.0,
    )


def run(agent: SimilarityAgent, bars: list[Bar]) -> dict[int, Signal]:
    """Signals by the index of the bar that made them."""
    out: dict[int, Signal] = {}
    for i, b in enumerate(bars):
        for e in react(agent, b):
            assert isinstance(e, Signal)
            out[i] = msgspec.structs.replace(e, ts_init=0)  # the one field stamped from the clock
    return out


def test_only_states_with_a_known_forward_return_are_candidates() -> None:
    h, m = 5, 3
    bars = [bar(i, close_at(i)) for i in range(WINDOW + 40)]
    sigs = run(SimilarityAgent(SimilarityConfig(enabled=True, horizon=h, k=3, min_neighbors=m)), bars)
    # a state exists from bar WINDOW-1 on; at bar j those of bars <= j-h have their return
    first = WINDOW - 1 + h + m - 1
    assert min(sigs) == first
    for j, s in sigs.items():
        assert s.metrics["candidates"] == j - h - (WINDOW - 1) + 1
        assert s.agent == "similarity" and s.ts_event == bars[j].ts_event


def test_a_repeating_market_is_read_from_its_past() -> None:
    """With period 140 (lcm of 20 and 7) the state at bar j equals the one at j-140: its neighbours'
    forward returns are exactly what happens next, so direction and agreement must be right."""
    h = 3
    closes = [close_at(i) for i in range(WINDOW + 140 * 4)]
    bars = [bar(i, c) for i, c in enumerate(closes)]
    sigs = run(SimilarityAgent(SimilarityConfig(enabled=True, horizon=h, k=2, min_neighbors=2, max_states=1000)), bars)
    checked = 0
    for j, s in sigs.items():
        if j < WINDOW + 140 * 2 + h or j + h >= len(closes):
            continue
        actual = math.log(closes[j + h] / closes[j])
        if abs(actual) < 1e-4:
            continue
        assert s.metrics["mean_forward_return"] == pytest.approx(actual, abs=1e-7)
        assert (s.strength > 0) == (actual > 0) and s.confidence == pytest.approx(1.0)
        assert s.metrics["mean_similarity"] == pytest.approx(1.0, abs=1e-6)
        checked += 1
    assert checked > 150


def test_memory_is_capped_per_series() -> None:
    bars = [bar(i, close_at(i)) for i in range(WINDOW + 60)]
    sigs = run(SimilarityAgent(SimilarityConfig(enabled=True, k=5, min_neighbors=5, max_states=12)), bars)
    assert max(s.metrics["candidates"] for s in sigs.values()) == 12


def test_snapshot_restore_equals_an_uninterrupted_run() -> None:
    cfg = SimilarityConfig(enabled=True, horizon=4, k=4, min_neighbors=2)
    bars = [bar(i, close_at(i) * (1 + 0.001 * ((i * 7919) % 13 - 6)), sym) for i in range(150) for sym in ("A", "B")]
    whole = run(SimilarityAgent(cfg), bars)
    first = SimilarityAgent(cfg)
    part1 = run(first, bars[:200])
    second = SimilarityAgent(cfg)
    second.restore(first.snapshot())
    part2 = {i + 200: s for i, s in run(second, bars[200:]).items()}
    assert {**part1, **part2} == whole and len(part2) > 20


def test_config_refuses_min_neighbors_above_k() -> None:
    with pytest.raises(ValueError, match="min_neighbors"):
        SimilarityConfig(k=3, min_neighbors=4)


def test_off_unless_enabled() -> None:
    agent = SimilarityAgent()
    assert not agent.active() and run(agent, [bar(i, close_at(i)) for i in range(WINDOW + 20)]) == {}
