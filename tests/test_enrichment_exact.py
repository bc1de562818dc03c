"""The enrichment features, computed in one pass since issue 14 (session 6), are bit-identical to the
formulas as first written: a verbatim copy of those is kept here as the reference, and every emitted
Enrichment (features, phase, confidence, nudges, counters) and every helper result must be equal byte
for byte, on simulated bars and on series made to hit the edge cases (flat prices, zero, negative and
missing volume, gaps, non-finite and zero prices, extreme magnitudes, repeated and older bars)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from tapeline.adapters.sim import SimFeed
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.enrichment import (
    FEATURE_CLIP,
    WINDOW,
    MarketFeatures,
    _Series,
    _values,
    bar_features,
    extra_features,
    market_features,
    window_features,
)
from tapeline.handlers.phases import WARMUP, classify
from tapeline.schemas.components import draft
from tapeline.schemas.events import AnyEvent, Bar, Enrichment, Event
from tapeline.schemas.features import ENRICHMENT_FEATURES

_EPS = 1e-12
F64 = NDArray[np.float64]
T0 = 1_767_225_600_000_000_000
MIN_NS = 60_000_000_000


# ---- the reference: the formulas as first written (handlers/enrichment.py before session 6), verbatim ----


def ref_window_features(
    h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float32]:
    return ref_window_f64(h, lo, c, v).astype(np.float32)


def ref_window_f64(
    h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``window_features`` as first written, but for the final cast to float32 (split out so the test
    can also compare the float64 values, where a last-bit difference cannot hide in the rounding)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(c)
        r = np.diff(logc)
        s20 = float(np.std(r[-20:]))
        s5 = float(np.std(r[-5:]))
        s60 = float(np.std(r[-60:]))
        sig = max(s20, _EPS)
        rng_rel = (h - lo) / c
        mean_rng = float(np.mean(rng_rel[-20:]))
        lv = np.log1p(np.maximum(v[-20:], 0.0))
        lv_sd = float(np.std(lv))
        bar_rng = h[-1] - lo[-1]
        hi20, lo20 = float(np.max(h[-20:])), float(np.min(lo[-20:]))
        f = np.array(
            [
                r[-1] / sig,
                (logc[-1] - logc[-6]) / (sig * math.sqrt(5)),
                (logc[-1] - logc[-21]) / (sig * math.sqrt(20)),
                math.log(max(s5, _EPS) / sig) if s20 > 0 else 0.0,
                math.log(sig / max(s60, _EPS)) if s60 > 0 else 0.0,
                math.log(max(rng_rel[-1], _EPS) / mean_rng) if mean_rng > 0 else 0.0,
                2 * (c[-1] - lo[-1]) / bar_rng - 1 if bar_rng > 0 else 0.0,
                (lv[-1] - float(np.mean(lv))) / lv_sd if lv_sd > 0 else 0.0,
                (logc[-1] - math.log(float(np.mean(c[-10:])))) / (sig * math.sqrt(10)),
                (logc[-1] - math.log(float(np.mean(c[-20:])))) / (sig * math.sqrt(20)),
                (logc[-1] - math.log(float(np.mean(c[-50:])))) / (sig * math.sqrt(50)),
                2 * (c[-1] - lo20) / (hi20 - lo20) - 1 if hi20 > lo20 else 0.0,
            ],
            dtype=np.float64,
        )
    f = np.nan_to_num(f, nan=0.0, posinf=FEATURE_CLIP, neginf=-FEATURE_CLIP)
    return np.clip(f, -FEATURE_CLIP, FEATURE_CLIP)


def ref_extra_features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float32]:
    return ref_extra_f64(o_last, h, lo, c, v).astype(np.float32)


def ref_extra_f64(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``extra_features`` as first written, but for the final cast to float32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(c)
        r = np.diff(logc)
        s20 = float(np.std(r[-20:]))
        sig = max(s20, _EPS)
        d = r[-14:]
        up, down = float(np.mean(np.maximum(d, 0.0))), float(np.mean(np.maximum(-d, 0.0)))
        typical = (h[-20:] + lo[-20:] + c[-20:]) / 3
        w = np.maximum(v[-20:], 0.0)
        vwap = float(np.sum(typical * w) / np.sum(w)) if np.sum(w) > 0 else float(np.mean(typical))
        f = np.array(
            [
                s20,
                (up - down) / (up + down) if up + down > 0 else 0.0,
                math.log(c[-1] / vwap) / (sig * math.sqrt(20)) if vwap > 0 else 0.0,
                math.log(o_last / c[-2]) / sig if o_last > 0 else 0.0,
                (logc[-21] - logc[-61]) / (sig * math.sqrt(40)),
            ],
            dtype=np.float64,
        )
    f = np.nan_to_num(f, nan=0.0, posinf=FEATURE_CLIP, neginf=-FEATURE_CLIP)
    return np.clip(f, -FEATURE_CLIP, FEATURE_CLIP)


def ref_features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> dict[str, float]:
    f = np.concatenate([ref_window_features(h, lo, c, v), ref_extra_features(o_last, h, lo, c, v)])
    return dict(zip(ENRICHMENT_FEATURES, f.tolist(), strict=True))


class RefMarketFeatures(MarketFeatures):
    """The handler as first written: the same state, the reference formulas."""

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Bar):
            return []
        key = f"{event.symbol}\x1f{event.interval}"
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(event.ts_event, [], [], [], [])
        elif event.ts_event <= s.ts_event:
            self.counters["out_of_order"] = self.counters.get("out_of_order", 0) + 1
            return []
        s.ts_event = event.ts_event
        s.open = event.open
        for col, x in ((s.high, event.high), (s.low, event.low), (s.close, event.close), (s.volume, event.volume)):
            col.append(x)
            if len(col) > WINDOW:
                del col[0]
        common = {"ts_event": event.ts_event, "symbol": event.symbol, "interval": event.interval}
        if len(s.close) < WINDOW:
            nudges = self.manifest.nudges[WARMUP]
            return [draft(Enrichment, **common, warmup=True, nudges=nudges, manifest_version=self.manifest.version)]
        features = ref_features(
            s.open, *(np.array(col, dtype=np.float64) for col in (s.high, s.low, s.close, s.volume))
        )
        phase, confidence = classify(features)
        return [
            draft(
                Enrichment,
                **common,
                features=features,
                phase=phase,
                confidence=confidence,
                nudges=self.manifest.nudges[phase],
                manifest_version=self.manifest.version,
            )
        ]


# ---- the series ----


def _bar(i: int, o: float, h: float, lo: float, c: float, v: float, *, symbol: str, ts: int | None = None) -> Bar:
    t = T0 + (i + 1) * MIN_NS if ts is None else ts
    return Bar(
        event_id=f"b{symbol}{i}",
        ts_event=t,
        ts_init=t,
        source="test",
        symbol=symbol,
        interval="1m",
        start_ns=t - MIN_NS,
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=v,
    )


def _walk(symbol: str, n: int, rng: random.Random, tweak: Callable[[int, list[float]], list[float]]) -> list[Bar]:
    """A random walk with changing volatility; ``tweak(i, [o, h, lo, c, v])`` bends bar i into an edge case."""
    out, c = [], 100.0
    for i in range(n):
        vol = rng.choice((0.0005, 0.002, 0.01, 0.05))
        o = c * math.exp(rng.gauss(0, vol / 4))
        c = max(1e-6, c * math.exp(rng.gauss(0, vol)))
        h, lo = max(o, c) * (1 + rng.random() * vol), min(o, c) * (1 - rng.random() * vol)
        v = float(int(rng.paretovariate(1.5) * 100))
        out.append(_bar(i, *tweak(i, [o, h, lo, c, v]), symbol=symbol))
    return out


def _flat(i: int, x: list[float]) -> list[float]:
    return [50.0] * 4 + [x[4]] if 30 <= i % 150 < 130 else x  # flat for 100 bars: sigma 0, range 0


def _volumes(i: int, x: list[float]) -> list[float]:
    v = (0.0, -5.0, math.nan, math.inf, x[4], x[4])[i % 6] if i % 200 < 120 else 0.0
    return [*x[:4], v]


def _gaps(i: int, x: list[float]) -> list[float]:
    o = (x[3] * 1.5, x[3] / 3, 0.0, -1.0, x[0])[i % 5]
    return [o, max(x[1], o), min(x[2], o) if o > 0 else x[2], x[3], x[4]]


def _bad_prices(i: int, x: list[float]) -> list[float]:
    """Non-finite highs and lows now and then; a zero close once in a long while (the handler does not filter)."""
    o, h, lo, c, v = x
    if i % 97 == 50:
        h = math.inf
    if i % 89 == 40:
        lo = math.nan
    if i % 211 == 100:
        c = 0.0
    return [o, h, lo, c, v]


def _extremes(i: int, x: list[float]) -> list[float]:
    scale = (1e-300, 1e300, 1e-8, 1e12)[(i // 80) % 4]
    return [x[0] * scale, x[1] * scale, x[2] * scale, x[3] * scale, x[4] * scale]


def _ticks_near(i: int, x: list[float]) -> list[float]:
    """Prices moving by one ulp or not at all: returns that are exactly 0 or ±tiny (signed zeros)."""
    c = 100.0 + (math.ulp(100.0) * ((i // 3) % 3 - 1) if i % 7 else 0.0)
    return [c, c, c, c, x[4]]


def _series() -> Iterator[list[Bar]]:
    rng = random.Random(14)
    for name, tweak in [
        ("PLAIN", lambda i, x: x),
        ("FLAT", _flat),
        ("VOL", _volumes),
        ("GAP", _gaps),
        ("BAD", _bad_prices),
        ("EXT", _extremes),
        ("ULP", _ticks_near),
    ]:
        yield _walk(name, 420, rng, tweak)
    agg = BarAggregator()
    ticks = SimFeed(("NVDA", "ORCL", "AAPL"), ticks=60_000, seed=3).generate()
    yield [b for t in ticks for b in agg.handle(t) if isinstance(b, Bar)]


def _outcome(fn: Callable[..., Any], *args: Any) -> bytes:
    """What a call gives, exceptions included, as bytes (msgpack keeps every float bit, -0.0 too)."""
    try:
        out = fn(*args)
    except Exception as e:  # an exception is an outcome to compare, not a failure here
        return f"{type(e).__name__}: {e}".encode()
    if isinstance(out, np.ndarray):
        out = [out.dtype.str, out.tobytes()]
    encoded: bytes = msgspec.msgpack.encode(out)
    return encoded


def test_every_emitted_enrichment_is_bit_identical_to_the_reference_formulas() -> None:
    new, ref = MarketFeatures(), RefMarketFeatures()
    emitted = raised = 0
    for bars in _series():
        shuffled = [*bars[:200], bars[150], bars[199], *bars[200:]]  # an older and a repeated bar
        for bar in shuffled:
            got, want = _outcome(new.handle, bar), _outcome(ref.handle, bar)
            assert got == want, (bar, got, want)
            emitted += got.startswith(b"\x91")
            raised += got.startswith(b"ValueError")
    assert new.counters == ref.counters and new.counters["out_of_order"] == 16
    assert emitted > 3000 and raised > 0  # the exception paths were reached too, and agree
    assert msgspec.msgpack.encode(new._series) == msgspec.msgpack.encode(ref._series)


def _f64(
    o_last: float | None,
    h: NDArray[np.float64],
    lo: NDArray[np.float64],
    c: NDArray[np.float64],
    v: NDArray[np.float64],
) -> NDArray[np.float64]:
    """The new features in float64, clipped as the reference clips them, before the cast to float32."""
    f = np.array(_values(h, lo, c, v, o_last), dtype=np.float64)
    return np.clip(np.nan_to_num(f, nan=0.0, posinf=FEATURE_CLIP, neginf=-FEATURE_CLIP), -FEATURE_CLIP, FEATURE_CLIP)


def test_the_feature_helpers_are_bit_identical_to_the_reference() -> None:
    """``window_features``/``extra_features`` on each window, and ``bar_features``/``market_features`` (which the
    vector store and the offline scorer use) against the reference on the bars' strided columns, as they were."""
    checked = 0
    for bars in _series():
        for i in range(WINDOW, len(bars) + 1, 3):
            window = bars[i - WINDOW : i]
            arr = np.array([(b.high, b.low, b.close, b.volume) for b in window], dtype=np.float64)
            cols = [np.ascontiguousarray(arr[:, k]) for k in range(4)]
            o = window[-1].open
            strided = (arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
            assert _outcome(_f64, None, *cols) == _outcome(ref_window_f64, *cols)
            assert _outcome(_f64, o, *cols) == _outcome(
                lambda *a: np.concatenate([ref_window_f64(*a[1:]), ref_extra_f64(*a)]), o, *cols
            )
            assert _outcome(window_features, *cols) == _outcome(ref_window_features, *cols)
            assert _outcome(extra_features, o, *cols) == _outcome(ref_extra_features, o, *cols)
            assert _outcome(bar_features, window) == _outcome(ref_features, o, *strided)
            assert _outcome(market_features, window) == _outcome(ref_window_features, *strided)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("n", [WINDOW, WINDOW + 9])
def test_windows_longer_than_needed_use_their_tail(n: int) -> None:
    rng = np.random.default_rng(n)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    h, lo, v = c * 1.01, c * 0.99, rng.uniform(0, 1000, n)
    assert window_features(h, lo, c, v).tobytes() == ref_window_features(h, lo, c, v).tobytes()
    assert extra_features(c[-2], h, lo, c, v).tobytes() == ref_extra_features(c[-2], h, lo, c, v).tobytes()
