"""Momentum signal: the N-bar return measured in units of its own volatility.

z = r_N / (sigma * sqrt(N)) with sigma the stdev of one-bar log returns over the window;
strength = tanh(z / 2) in [-1, 1]; confidence grows with |z| and saturates at |z| = 3.
State is the last N+1 closes per symbol whatever their age (daily bars have weekends, quiet
symbols have gaps), so no time window can rebuild it: it is snapshotted.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, ClassVar, cast

import msgspec

from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import AnyEvent, Bar, Event, Signal
from tapeline.schemas.intervals import interval_ns

AUTO = "auto"


class MomentumConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window: Annotated[int, msgspec.Meta(ge=2)] = 20
    # "auto": the bars the market source delivers; tapeline.config.load_settings resolves it.
    interval: str = AUTO
    neutral_band: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15

    def __post_init__(self) -> None:
        if self.interval != AUTO:
            try:
                interval_ns(self.interval)
            except ValueError as e:
                raise ValueError(f"interval: {e}") from None


class MomentumSignal(Handler):
    name: ClassVar[str] = "momentum"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = MomentumConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Signal,)
    state = Snapshot()
    urgent = True  # on the tick -> decision path: served first in its process

    def __init__(self, config: MomentumConfig | None = None) -> None:
        super().__init__(config)
        cfg: MomentumConfig = self.config
        if cfg.interval == AUTO:  # unresolved, it would match no bar and the handler would stay silent
            raise ValueError('momentum.interval "auto" is resolved by load_settings; give a bar interval, e.g. "1m"')
        self.window = cfg.window
        self.interval = cfg.interval
        self.neutral_band = cfg.neutral_band
        self.consumes = (Consumes(Bar, {"interval": cfg.interval}),)
        self._closes: dict[str, list[float]] = {}
        self._rets: dict[str, list[float | None]] = {}  # log returns of the closes (derived, not snapshotted)

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Bar) or event.interval != self.interval or event.close <= 0:
            return []
        closes = self._closes.setdefault(event.symbol, [])
        rets = self._rets.setdefault(event.symbol, [])
        closes.append(event.close)
        if len(closes) > 1:
            rets.append(_log_return(closes[-2], event.close))
        if len(closes) > self.window + 1:
            del closes[0]
            del rets[0]
        if len(closes) <= self.window:
            return []
        if None in rets:  # a ratio math.log refuses (0 by underflow): raise what it raises, as before
            rets = [math.log(b / a) for a, b in itertools.pairwise(closes)]
        return self._signal(event, closes, cast(list[float], rets))

    def _signal(self, event: Bar, closes: list[float], rets: list[float]) -> list[Event]:
        mean = sum(rets) / len(rets)
        sigma = math.sqrt(sum([(r - mean) ** 2 for r in rets]) / max(1, len(rets) - 1))
        total = math.log(closes[-1] / closes[0])
        z = total / (sigma * math.sqrt(self.window)) if sigma > 0 else 0.0
        strength = math.tanh(z / 2)
        direction = "NEUTRAL" if abs(strength) < self.neutral_band else ("BULLISH" if strength > 0 else "BEARISH")
        ret = math.expm1(total)
        return [
            draft(
                Signal,
                ts_event=event.ts_event,
                symbol=event.symbol,
                agent="momentum",
                domain="technical",
                direction=direction,
                strength=round(strength, 6),
                confidence=round(min(1.0, abs(z) / 3), 6),
                summary=f"{self.window}-bar return {ret:+.2%}, z={z:+.2f}",
                key_factors=[f"return_{self.window}={ret:+.4f}", f"volatility={sigma:.5f}"],
                metrics={"z": round(z, 6), "return": round(ret, 8), "volatility": round(sigma, 8)},
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self._closes)

    def restore(self, data: bytes) -> None:
        self._closes = msgspec.msgpack.decode(data, type=dict[str, list[float]])
        self._rets = {
            symbol: [_log_return(a, b) for a, b in itertools.pairwise(closes)]
            for symbol, closes in self._closes.items()
        }


def _log_return(a: float, b: float) -> float | None:
    """``math.log(b / a)``, kept per bar so each close's return is computed once, not once per window;
    None where math.log raises (the window's computation then raises it)."""
    try:
        return math.log(b / a)
    except ValueError:
        return None
