"""The enrichment handler: market features of hand-made bar series, and the handler through the in-process
runner giving exactly the vectors the feature function gives on each window."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from tapeline.adapters.files import read_bars
from tapeline.bus.inprocess import InProcessRunner
from tapeline.handlers.enrichment import WINDOW, EnrichmentConfig, MarketFeatures, market_features, window_features
from tapeline.schemas.events import Bar, Enrichment
from tapeline.schemas.features import MARKET_DIM, MARKET_FEATURES
from tapeline.schemas.ids import derive_event_id
from tapeline.system import build

T0 = 1_767_225_600_000_000_000
MIN_NS = 60_000_000_000


def _series(closes: list[float], *, symbol: str = "SYN", interval: str = "1m") -> list[Bar]:
    """Bars at the given closes, high/low 1% around the close, one interval apart, volume alternating
    1000 and 3000 (ending on 3000: a volume z-score of 1)."""
    return [
        Bar(
            event_id=derive_event_id(T0 + (i + 1) * MIN_NS, "test-bar", symbol, interval, i),
            ts_event=T0 + (i + 1) * MIN_NS,
            ts_init=T0 + (i + 1) * MIN_NS,
            source="test",
            symbol=symbol,
            interval=interval,
            start_ns=T0 + i * MIN_NS,
            open=c,
            high=c * 1.01,
            low=c * 0.99,
            close=c,
            volume=3000.0 if (len(closes) - 1 - i) % 2 == 0 else 1000.0,
        )
        for i, c in enumerate(closes)
    ]


def _named(vec: NDArray[np.float32]) -> dict[str, float]:
    return dict(zip(MARKET_FEATURES, vec.tolist(), strict=True))


def _zigzag(n: int = WINDOW, step: float = 0.01) -> list[float]:
    """Log returns alternating -step, +step, ..., ending on +step."""
    return [100.0 * math.exp(step * ((n - 1 - i) % 2 == 0)) for i in range(n)]


def test_a_flat_series_has_all_price_features_zero() -> None:
    f = market_features(_series([50.0] * WINDOW))
    assert f.dtype == np.float32 and f.shape == (MARKET_DIM,)
    assert {n: v for n, v in _named(f).items() if abs(v) > 1e-6} == {"volume_z": pytest.approx(1.0, rel=1e-5)}


def test_zigzag_features_by_hand() -> None:
    """Returns alternating ±1%: sigma20 = sigma60 = 0.01, the last return +1%, the 20-bar return zero."""
    f = _named(market_features(_series(_zigzag())))
    assert f["ret_1"] == pytest.approx(1.0, rel=1e-5)
    assert f["ret_5"] == pytest.approx(1 / math.sqrt(5), rel=1e-5)  # 3 up, 2 down
    assert f["ret_20"] == pytest.approx(0.0, abs=1e-5)
    assert f["vol_20_60"] == pytest.approx(0.0, abs=1e-5)
    assert f["vol_5_20"] == pytest.approx(math.log(math.sqrt(1e-4 - 0.002**2) / 0.01), rel=1e-4)
    assert f["range"] == pytest.approx(0.0, abs=1e-5)  # every bar spans 2% of its close
    assert f["close_loc"] == pytest.approx(0.0, abs=1e-5)  # the close in the middle of its bar
    assert f["volume_z"] == pytest.approx(1.0, rel=1e-5)  # log volumes alternate: the high one is +1 sd
    half_up = math.log(2 * math.exp(0.01) / (1 + math.exp(0.01)))  # the close against a mean of both levels
    assert f["dist_sma_10"] == pytest.approx(half_up / (0.01 * math.sqrt(10)), rel=1e-4)
    assert f["dist_sma_20"] == pytest.approx(half_up / (0.01 * math.sqrt(20)), rel=1e-4)


def test_a_crash_and_a_volume_spike_are_clipped_and_scored() -> None:
    closes = _zigzag()
    closes[-1] = closes[-2] * 0.5  # a 50% fall: 69 sigmas
    bars = _series(closes)
    bars[-1] = msgspec.structs.replace(bars[-1], volume=1e6)
    f = _named(market_features(bars))
    assert f["ret_1"] == -4.0 and -1.0 <= f["pos_20"] < -0.95  # the close at the bottom of the 20-bar range
    assert 0 < f["volume_z"] <= 4.0
    with pytest.raises(ValueError, match="needs 61 bars"):
        market_features(bars[1:])


async def test_the_handler_gives_the_window_function_of_each_window(shared_data: Path) -> None:
    """Through the in-process runner, as replay and what-if run it: one Enrichment per bar with a full
    window, its vector exactly :func:`window_features` of the last 61 bars (what ``market_states``
    computed itself before), per series, interleaved series kept apart."""
    read = read_bars(shared_data / "bars" / "nvda-daily-1999-2014.csv", "NVDA", interval="1d").events
    nvda = [b for b in read if isinstance(b, Bar)][:400]
    syn = _series([100 * math.exp(0.01 * math.sin(i)) for i in range(150)], symbol="SYN", interval="1m")
    bars = [b for pair in zip(nvda, syn, strict=False) for b in pair] + nvda[len(syn) :]
    out = await InProcessRunner(build({}, ["enrichment"]), "tape").run(bars)
    got = [e for e in out if isinstance(e, Enrichment) and not e.warmup]
    assert len(out) == len(bars)  # one Enrichment per bar, warm-up rows included
    assert len(got) == (len(nvda) - WINDOW + 1) + (len(syn) - WINDOW + 1)
    by_bar = {e.causation_id: e for e in got}
    for series in (nvda, syn):
        for i in range(WINDOW - 1, len(series)):
            e = by_bar[series[i].event_id]
            w = series[i - WINDOW + 1 : i + 1]
            arr = np.array([(b.high, b.low, b.close, b.volume) for b in w], dtype=np.float64)
            want = window_features(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
            vec = np.array([e.features[n] for n in MARKET_FEATURES], dtype=np.float32)
            assert np.array_equal(vec, want), (series[i].symbol, i)
            assert (e.symbol, e.interval, e.ts_event) == (series[i].symbol, series[i].interval, series[i].ts_event)
            assert e.phase and 0 <= e.confidence <= 1 and e.nudges and e.manifest_version
        assert series[WINDOW - 2].event_id not in by_bar  # too little history: a warm-up row only


async def test_configured_intervals_narrow_the_subscription() -> None:
    bars = _series(_zigzag(70), interval="1m") + _series(_zigzag(70), interval="5m")
    handler = MarketFeatures(EnrichmentConfig(intervals=["5m"]))
    assert [c.pattern("tape") for c in handler.consumes] == ["tape.md.bar.5m.*"]
    out = await InProcessRunner([handler], "tape").run(bars)
    assert len(out) == 70 and all(isinstance(e, Enrichment) and e.interval == "5m" for e in out)
    assert sum(not e.warmup for e in out) == 10  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="intervals"):
        EnrichmentConfig(intervals=["7 parsecs"])


async def test_snapshot_restore_resumes_the_windows_and_skips_old_bars() -> None:
    bars = _series([100 * math.exp(0.02 * math.cos(i / 3)) for i in range(130)])
    whole = await InProcessRunner([MarketFeatures()], "tape").run(bars)
    first = MarketFeatures()
    head = await InProcessRunner([first], "tape").run(bars[:90])
    second = MarketFeatures()
    second.restore(first.snapshot())
    tail = await InProcessRunner([second], "tape").run([bars[50], *bars[90:]])  # bar 50 again: out of order
    assert len(whole) == 130
    assert [(e.event_id, e.features) for e in head + tail] == [(e.event_id, e.features) for e in whole]  # type: ignore[attr-defined]
    assert second.counters == {"out_of_order": 1}
