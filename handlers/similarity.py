"""Similarity agent: what happened after the past market states most like this one -> ``Signal(agent="similarity")``.

For every bar of a series (symbol, interval) with enough history, the market state is the same
feature vector the ``enrichment`` handler emits (:func:`handlers.enrichment.window_features` of the
last ``WINDOW`` bars). Each state learns its forward return ``log(close[t+h] / close[t])`` when the
bar ``h`` (``horizon``) bars later arrives. A new state is compared (cosine, brute force in numpy)
with the past states whose forward return was already known at its bar, never later ones, so no
look-ahead; the ``k`` most similar give

    strength   = tanh(mean forward return / stdev of all known forward returns of the series)
    confidence = (2 * share of neighbours on the side of the mean - 1) * neighbours / k

(agreement times how many of the ``k`` were available); a signal needs ``min_neighbors``.

Why bars, not ``Enrichment`` events: forward returns need closes (bars, the MD stream) and the
runner gives a stateful component exactly one ordered stream. Reading both streams would make the
set of labelled states depend on how the two consumers interleave, so a replay could differ.
Computing the vector from the bar with the enrichment's own function gives the identical vector from
one ordered input: deterministic, replayable. The LanceDB ``market_states`` read model is not
queried: a handler does no I/O, and a read model lags, which would make outputs timing-dependent.

State per series: the last ``WINDOW`` bars, the ``horizon`` states waiting for their forward return,
and at most ``max_states`` labelled states (oldest dropped first): about 60 bytes per state, so
snapshots stay well under the server's 1 MB message limit for tens of series at the default.

Off by default (``[similarity] enabled = true``): the decision handler takes each agent's latest
signal as it arrives, and signals of two agents computed from the same bars by two consumers arrive
interleaved differently from run to run, so with a second bar-driven agent voting, a replay or
what-if would not reproduce the recorded decisions exactly.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec
import numpy as np
from numpy.typing import NDArray

from tapeline.handlers.enrichment import WINDOW, window_features
from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import AnyEvent, Bar, Event, Signal
from tapeline.schemas.features import MARKET_DIM
from tapeline.schemas.intervals import interval_ns

_EPS = 1e-12


class SimilarityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False  # opt in: see "Off by default" above
    intervals: list[str] = []  # bar intervals to read; empty: every interval
    k: Annotated[int, msgspec.Meta(ge=1)] = 10
    horizon: Annotated[int, msgspec.Meta(ge=1)] = 5  # bars ahead of a state's forward return
    min_neighbors: Annotated[int, msgspec.Meta(ge=1)] = 5
    max_states: Annotated[int, msgspec.Meta(ge=1)] = 500  # labelled states kept per series
    neutral_band: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1

    def __post_init__(self) -> None:
        for iv in self.intervals:
            try:
                interval_ns(iv)
            except ValueError as e:
                raise ValueError(f"intervals: {e}") from None
        if self.min_neighbors > self.k:
            raise ValueError(f"min_neighbors ({self.min_neighbors}) is more than k ({self.k}); lower it")


class _Series(msgspec.Struct):
    ts_event: int  # of the last bar taken
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    pending: list[tuple[int, float, bytes]] = []  # (ts, close, float32 vector) awaiting its forward return
    times: list[int] = []  # labelled states, oldest first
    vectors: bytes = b""  # float32, len(times) x MARKET_DIM
    returns: list[float] = []


class SimilarityAgent(Handler):
    name: ClassVar[str] = "similarity"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = SimilarityConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Signal,)
    consumes: tuple[Consumes, ...] = (Consumes(Bar),)
    state = Snapshot()

    def __init__(self, config: SimilarityConfig | None = None) -> None:
        super().__init__(config)
        cfg: SimilarityConfig = self.config
        self.cfg = cfg
        if cfg.intervals:
            self.consumes = tuple(Consumes(Bar, {"interval": iv}) for iv in dict.fromkeys(cfg.intervals))
        self._series: dict[str, _Series] = {}  # "<symbol>\x1f<interval>"

    def active(self) -> bool:
        return bool(self.cfg.enabled)

    def handle(self, event: AnyEvent) -> list[Event]:
        if not self.cfg.enabled or not isinstance(event, Bar) or event.close <= 0:  # disabled: as if absent
            return []
        key = f"{event.symbol}\x1f{event.interval}"
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(event.ts_event, [], [], [], [])
        elif event.ts_event <= s.ts_event:
            self.counters["out_of_order"] = self.counters.get("out_of_order", 0) + 1
            return []
        s.ts_event = event.ts_event
        for col, x in ((s.high, event.high), (s.low, event.low), (s.close, event.close), (s.volume, event.volume)):
            col.append(x)
            if len(col) > WINDOW:
                del col[0]
        self._label(s, event.close)
        if len(s.close) < WINDOW:
            return []
        vec = window_features(*(np.array(c, dtype=np.float64) for c in (s.high, s.low, s.close, s.volume)))
        out = self._signal(event, s, vec)
        s.pending.append((event.ts_event, event.close, vec.tobytes()))
        return out

    def _label(self, s: _Series, close: float) -> None:
        """States ``horizon`` bars old learn their forward return at this bar (and only from now on count)."""
        if len(s.pending) < self.cfg.horizon:
            return
        ts, base, vec = s.pending.pop(0)
        s.times.append(ts)
        s.vectors += vec
        s.returns.append(math.log(close / base))
        if len(s.times) > self.cfg.max_states:
            del s.times[0], s.returns[0]
            s.vectors = s.vectors[4 * MARKET_DIM :]

    def _signal(self, event: Bar, s: _Series, vec: NDArray[np.float32]) -> list[Event]:
        n_known = len(s.times)
        if n_known < self.cfg.min_neighbors:
            return []
        past = np.frombuffer(s.vectors, dtype=np.float32).reshape(n_known, MARKET_DIM).astype(np.float64)
        q = vec.astype(np.float64)
        sims = past @ q / (np.linalg.norm(past, axis=1) * float(np.linalg.norm(q)) + _EPS)
        k = min(self.cfg.k, n_known)
        order = np.lexsort((-np.arange(n_known), -sims))[:k]  # most similar first; ties: the newer state
        returns = np.array(s.returns, dtype=np.float64)
        fwd = returns[order]
        mean = float(np.mean(fwd))
        scale = float(np.std(returns)) if n_known > 1 else 0.0
        strength = math.tanh(mean / scale) if scale > _EPS else 0.0
        side = np.sign(mean)
        share = float(np.mean(np.sign(fwd) == side)) if side != 0 else 0.0
        confidence = max(0.0, 2 * share - 1) * k / self.cfg.k
        band = self.cfg.neutral_band
        direction = "NEUTRAL" if abs(strength) < band else ("BULLISH" if strength > 0 else "BEARISH")
        ups = int(np.sum(fwd > 0))
        h = self.cfg.horizon
        key_factors = [
            f"{_when(s.times[i])}: cosine {sims[i]:.3f}, {h}-bar return {math.expm1(s.returns[i]):+.2%}"
            for i in order[:5].tolist()
        ]
        return [
            draft(
                Signal,
                ts_event=event.ts_event,
                symbol=event.symbol,
                agent="similarity",
                domain="pattern",
                direction=direction,
                strength=round(strength, 6),
                confidence=round(confidence, 6),
                summary=(
                    f"{k} most similar of {n_known} past {event.interval} states: mean {h}-bar return "
                    f"{math.expm1(mean):+.2%}, {ups} of {k} up"
                ),
                key_factors=key_factors,
                metrics={
                    "neighbors": float(k),
                    "candidates": float(n_known),
                    "mean_forward_return": round(mean, 8),
                    "agreement": round(share, 6),
                    "mean_similarity": round(float(np.mean(sims[order])), 6),
                },
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._series)

    def restore(self, data: bytes) -> None:
        self._series = msgspec.msgpack.decode(data, type=dict[str, _Series])


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")
