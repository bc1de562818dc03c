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
from array import array
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
_ROW = WINDOW + 1  # a row of MarketFeatures._rows: 62 floats, so each row starts 16-byte aligned as its array
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
    return np.array(_clip32(_values(h, lo, c, v, None)), dtype=np.float32)


def extra_features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> NDArray[np.float32]:
    """:data:`~schemas.features.EXTRA_FEATURES` of a window of at least :data:`WINDOW` bars, oldest
    first, with the last bar's open (``o_last``) for the gap. Same normalisation and clipping as
    :func:`window_features`; nothing fitted."""
    return np.array(_clip32(_values(h, lo, c, v, o_last, window=False)), dtype=np.float32)


_add = np.add.reduce  # np.sum and np.mean of a 1-d float array are this reduction, then a division
_maximum = np.maximum
_ZERO = np.float64(0.0)  # np.maximum(x, 0.0) converts its 0.0 to this on every call
_SQRT5, _SQRT10, _SQRT20, _SQRT40, _SQRT50 = (math.sqrt(n) for n in (5, 10, 20, 40, 50))


def _std(x: NDArray[np.float64]) -> float:
    """``np.std(x)`` exactly: numpy's own steps (sum, divide, subtract, square, sum, divide, square
    root) with the same ufuncs on the same array, so the same bits, without its ~10 µs of Python."""
    n = x.shape[0]
    d = x - float(_add(x)) / n
    return math.sqrt(float(_add(d * d)) / n)


def _values(
    h: NDArray[np.float64],
    lo: NDArray[np.float64],
    c: NDArray[np.float64],
    v: NDArray[np.float64],
    o_last: float | None,
    *,
    window: bool = True,
) -> list[float]:
    """Before clipping: the :data:`MARKET_FEATURES` of a window (unless ``window`` is false), then the
    :data:`EXTRA_FEATURES` if ``o_last`` is given. One pass that shares what both sets need (log closes,
    returns, sigma20, the clipped volumes). numpy does every step over an array as the features were
    defined (its pairwise sums, vector logs: ``_std`` is ``np.std``'s own steps), Python floats the
    scalar arithmetic (the same IEEE operations); a denominator that can be zero stays a numpy scalar
    (inf or nan, not an exception). Bit-identical to the formulas as first written, which
    tests/test_enrichment_exact.py keeps as its reference.
    """
    f: list[float] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        logc_a = np.log(c)
        r = logc_a[1:] - logc_a[:-1]  # np.diff
        logc = logc_a.tolist()
        s20 = _std(r[-20:])
        sig = max(s20, _EPS)
        h20, lo20, c20 = h[-20:], lo[-20:], c[-20:]
        w = _maximum(v[-20:], _ZERO)
        c_last = float(c[-1])
        if window:
            s5, s60 = _std(r[-5:]), _std(r[-60:])
            rng_rel = (h20 - lo20) / c20
            mean_rng = float(_add(rng_rel) / 20)
            lv = np.log1p(w)
            lv_sd = _std(lv)
            h_last, lo_last = float(h[-1]), float(lo[-1])
            bar_rng = h_last - lo_last
            hi20, low20 = float(_maximum.reduce(h20)), float(np.minimum.reduce(lo20))
            f += [
                float(r[-1]) / sig,
                (logc[-1] - logc[-6]) / (sig * _SQRT5),
                (logc[-1] - logc[-21]) / (sig * _SQRT20),
                math.log(max(s5, _EPS) / sig) if s20 > 0 else 0.0,
                math.log(sig / max(s60, _EPS)) if s60 > 0 else 0.0,
                math.log(max(float(rng_rel[-1]), _EPS) / mean_rng) if mean_rng > 0 else 0.0,
                2 * (c_last - lo_last) / bar_rng - 1 if bar_rng > 0 else 0.0,
                (float(lv[-1]) - float(_add(lv) / 20)) / lv_sd if lv_sd > 0 else 0.0,
                (logc[-1] - math.log(float(_add(c[-10:]) / 10))) / (sig * _SQRT10),
                (logc[-1] - math.log(float(_add(c20) / 20))) / (sig * _SQRT20),
                (logc[-1] - math.log(float(_add(c[-50:]) / 50))) / (sig * _SQRT50),
                2 * (c_last - low20) / (hi20 - low20) - 1 if hi20 > low20 else 0.0,
            ]
        if o_last is None:
            return f
        d = r[-14:]
        up, down = float(_add(_maximum(d, _ZERO)) / 14), float(_add(_maximum(-d, _ZERO)) / 14)
        typical = (h20 + lo20 + c20) / 3
        w_sum = _add(w)
        vwap = float(_add(typical * w) / w_sum) if w_sum > 0 else float(_add(typical) / 20)
        f += [
            s20,
            (up - down) / (up + down) if up + down > 0 else 0.0,
            math.log(c_last / vwap) / (sig * _SQRT20) if vwap > 0 else 0.0,
            math.log(o_last / c[-2]) / sig if o_last > 0 else 0.0,  # c[-2] a numpy scalar: 0 gives inf
            (logc[-21] - logc[-61]) / (sig * _SQRT40),
        ]
    return f


def _clip32(values: list[float]) -> list[float]:
    """nan -> 0, clipped to ±:data:`FEATURE_CLIP` (±inf included), rounded to float32 (a C cast, as
    numpy's ``astype`` does), back as Python floats."""
    return array(
        "f",
        [
            0.0 if x != x else FEATURE_CLIP if x > FEATURE_CLIP else -FEATURE_CLIP if x < -FEATURE_CLIP else x
            for x in values
        ],
    ).tolist()


def _columns(bars: Sequence[Bar]) -> list[NDArray[np.float64]]:
    """Highs, lows, closes and volumes of the last :data:`WINDOW` bars, a contiguous array each (as in the handler)."""
    tail = bars[-WINDOW:]
    return _stack([b.high for b in tail], [b.low for b in tail], [b.close for b in tail], [b.volume for b in tail])


def _stack(*cols: list[float]) -> list[NDArray[np.float64]]:
    """Columns as float64 arrays, through ``array`` (about twice as fast as ``np.array`` of a list)."""
    return [np.frombuffer(array("d", col)) for col in cols]


def bar_features(bars: Sequence[Bar]) -> dict[str, float]:
    """Every :data:`~schemas.features.ENRICHMENT_FEATURES` of the last :data:`WINDOW` bars, oldest first."""
    if len(bars) < WINDOW:
        raise ValueError(f"bar_features needs {WINDOW} bars, got {len(bars)}")
    h, lo, c, v = _columns(bars)
    return _features(bars[-1].open, h, lo, c, v)


def _features(
    o_last: float, h: NDArray[np.float64], lo: NDArray[np.float64], c: NDArray[np.float64], v: NDArray[np.float64]
) -> dict[str, float]:
    return dict(zip(ENRICHMENT_FEATURES, _clip32(_values(h, lo, c, v, o_last)), strict=True))


def market_features(bars: Sequence[Bar]) -> NDArray[np.float32]:
    """:func:`window_features` of the last :data:`WINDOW` bars, oldest first."""
    if len(bars) < WINDOW:
        raise ValueError(f"market_features needs {WINDOW} bars, got {len(bars)}")
    h, lo, c, v = _columns(bars)
    return window_features(h, lo, c, v)


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
        # The same WINDOW bars as rows of one array (high, low, close, volume), shifted by one per bar: two
        # numpy calls instead of four columns built from lists (derived from _series, never snapshotted).
        self._rows: dict[str, NDArray[np.float64]] = {}

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
        h, lo, c, v = self._window(key, s, event)
        features = _features(s.open, h, lo, c, v)
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

    def _window(self, key: str, s: _Series, bar: Bar) -> list[NDArray[np.float64]]:
        """The series' columns as float64 arrays, equal to ``_stack`` of its lists: kept in ``_rows`` and
        shifted by the new bar once the series has exactly WINDOW bars (a restored one may have more)."""
        if len(s.close) != WINDOW:
            return _stack(s.high, s.low, s.close, s.volume)
        rows = self._rows.get(key)
        if rows is None:  # first full window (or first bar after a restore): from the lists
            rows = self._rows[key] = np.empty((4, _ROW), dtype=np.float64)
            rows[:, :WINDOW] = (s.high, s.low, s.close, s.volume)
        else:
            try:
                rows[:, : WINDOW - 1] = rows[:, 1:WINDOW]  # numpy copies overlapping slices correctly
                rows[:, WINDOW - 1] = (bar.high, bar.low, bar.close, bar.volume)
            except Exception:  # not a float: the rows no longer match the lists; rebuilt next time
                del self._rows[key]
                raise
        return [rows[0, :WINDOW], rows[1, :WINDOW], rows[2, :WINDOW], rows[3, :WINDOW]]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._series)

    def restore(self, data: bytes) -> None:
        self._series = msgspec.msgpack.decode(data, type=dict[str, _Series])
        self._rows = {}  # rebuilt from the restored lists
