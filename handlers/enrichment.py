"""Market features and phase per bar: the ``enrichment`` handler, Bar -> Enrichment.

For each bar of a (symbol, interval) with at least :data:`WINDOW` bars of history it emits an
:class:`~schemas.events.Enrichment` whose ``features`` are the
:data:`~schemas.features.ENRICHMENT_FEATURES` of the window ending at that bar: the 12 of
:func:`window_features` (the ``market_states`` similarity vector) plus :func:`extra_features`
(realised volatility, RSI, distance to VWAP, gap, the prior move). Its ``phase`` and ``confidence``
come from the rules of :mod:`handlers.phases`, its ``nudges`` from the versioned manifest
(``[enrichment] manifest``, default ``handlers/nudges.toml``, read once at start), whose version is
on the event as ``manifest_version``.

A bar with less history emits a *warm-up* row: ``warmup=True``, no features, no phase, the
manifest's ``warmup`` nudges. It is marked, never guessed; ``market_states`` and the model skip it.

Bars must arrive in time order per series; an older or repeated bar is skipped and counted
(``outcome="out_of_order"``). State (the last :data:`WINDOW` bars of every series) has no time
bound, so it is snapshotted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from tapeline.handlers.phases import WARMUP, ManifestError, classify, load_manifest
from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import AnyEvent, Bar, Enrichment, Event
from tapeline.schemas.features import ENRICHMENT_FEATURES
from tapeline.schemas.intervals import interval_ns

WINDOW = 61  # bars a feature vector needs: 60 one-bar returns for sigma60
FEATURE_CLIP = 4.0
_EPS = 1e-12


def window_features(
    h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float32]:
    """Feature vector (:data:`~schemas.features.MARKET_FEATURES`) of a window of bars, oldest first:
    highs, lows, closes and volumes of at least :data:`WINDOW` bars (the open carries nothing the
    previous close does not).

    Normalised per window, not against global statistics: returns and distances from moving averages
    are divided by the window's own 20-bar volatility (so they read as z-scores and compare across
    symbols, price levels and regimes), volatility and range enter as log ratios, and every feature is
    clipped to ±4. Nothing is fitted, so a vector never changes once emitted and a replay reproduces it.
    Uses the ``close`` field as published (split-adjusted or not is the feed's choice).
    """
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
    return np.clip(f, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


def extra_features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float32]:
    """:data:`~schemas.features.EXTRA_FEATURES` of a window of at least :data:`WINDOW` bars, oldest
    first, with the last bar's open (``o_last``) for the gap. Same normalisation and clipping as
    :func:`window_features`; nothing fitted."""
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
    return np.clip(f, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


def bar_features(bars: Sequence[Bar]) -> dict[str, float]:
    """Every :data:`~schemas.features.ENRICHMENT_FEATURES` of the last :data:`WINDOW` bars, oldest first."""
    if len(bars) < WINDOW:
        raise ValueError(f"bar_features needs {WINDOW} bars, got {len(bars)}")
    arr = np.array([(b.high, b.low, b.close, b.volume) for b in bars[-WINDOW:]], dtype=np.float64)
    return _features(bars[-1].open, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


def _features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> dict[str, float]:
    f = np.concatenate([window_features(h, lo, c, v), extra_features(o_last, h, lo, c, v)])
    return dict(zip(ENRICHMENT_FEATURES, f.tolist(), strict=True))


def market_features(bars: Sequence[Bar]) -> NDArray[np.float32]:
    """:func:`window_features` of the last :data:`WINDOW` bars, oldest first."""
    if len(bars) < WINDOW:
        raise ValueError(f"market_features needs {WINDOW} bars, got {len(bars)}")
    arr = np.array([(b.high, b.low, b.close, b.volume) for b in bars[-WINDOW:]], dtype=np.float64)
    return window_features(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


class EnrichmentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    intervals: list[str] = []  # bar intervals to enrich; empty: every interval
    manifest: str = ""  # nudge manifest (TOML, see handlers/nudges.toml); empty: the packaged one

    def __post_init__(self) -> None:  # messages name the key within [enrichment]
        for iv in self.intervals:
            try:
                interval_ns(iv)
            except ValueError as e:
                raise ValueError(f"intervals: {e}") from None
        try:
            load_manifest(self.manifest)
        except ManifestError as e:
            raise ValueError(str(e).removeprefix("enrichment.")) from None


class _Series(msgspec.Struct):
    ts_event: int  # of the last bar taken
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    open: float = 0.0  # of the last bar taken: the gap needs it (0 from a snapshot of version 1)


class MarketFeatures(Handler):
    name: ClassVar[str] = "enrichment"
    version: ClassVar[int] = 2  # 2: phase, confidence, nudges, extra features, warm-up rows
    Config: ClassVar[type[msgspec.Struct]] = EnrichmentConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Enrichment,)
    consumes: tuple[Consumes, ...] = (Consumes(Bar),)
    state = Snapshot()

    def __init__(self, config: EnrichmentConfig | None = None) -> None:
        super().__init__(config)
        cfg: EnrichmentConfig = self.config
        if cfg.intervals:
            self.consumes = tuple(Consumes(Bar, {"interval": iv}) for iv in dict.fromkeys(cfg.intervals))
        self.manifest = load_manifest(cfg.manifest)
        self._series: dict[str, _Series] = {}  # "<symbol>\x1f<interval>" -> its last WINDOW bars

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
        features = _features(s.open, *(np.array(col, dtype=np.float64) for col in (s.high, s.low, s.close, s.volume)))
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

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._series)

    def restore(self, data: bytes) -> None:
        self._series = msgspec.msgpack.decode(data, type=dict[str, _Series])
