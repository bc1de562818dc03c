"""The sizer: a scanned candidate (a :class:`Scan` that passed) -> an :class:`OrderIntent`.

Sizing, with P the last close of the symbol, sigma the standard deviation of its last 20 one-bar log
returns, ATR its 14-bar average true range and c the decision's confidence:

* win probability p = 0.5 + c / 4 (a certain call is right 3 times in 4, a coin flip half the time);
  payoff b = ``take_profit_atr`` / ``stop_atr``; Kelly f* = p - (1 - p) / b;
  f = min(``kelly_cap``, ``kelly_fraction`` x f*); no order when f <= 0;
* volatility target: scale = min(``max_vol_scale``, ``target_vol`` / (sigma x sqrt(bars per year)));
* quantity = the smallest of equity x f x scale / P, ``max_loss_usd`` / (``stop_atr`` x ATR) (the loss if
  the stop is hit) and ``max_es95_usd`` / (ES95 of the one-bar returns x P) (so the risk gate's ES95
  check holds), rounded down to ``lot``; no order below one lot;
* stop-loss = P -/+ ``stop_atr`` x ATR, take-profit = P +/- ``take_profit_atr`` x ATR (BUY/SELL).

``client_order_id`` = ``"tl-"`` + the first 16 hex digits of blake2b(account + "|" + decision event id):
one order per decision and account, whatever reruns, restarts or replays happen, and short enough for
every broker's order-reference field.

Only passed scans of BUY/SELL decisions with confidence >= ``min_confidence`` are sized; what was not
is counted by outcome. It reads scans (risk stream) and bars (market data), each in its own order: a
scan is sized with the bars seen when it arrives. Bars have no time bound here, so: Snapshot.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, ClassVar

import msgspec

from tapeline.handlers.market import BarBook, bars_per_year
from tapeline.handlers.risk import expected_shortfall
from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import AnyEvent, Bar, Event, OrderIntent, Scan
from tapeline.schemas.intervals import interval_ns

Pos = Annotated[float, msgspec.Meta(gt=0)]
MIN_BARS = 15


def client_order_id(account: str, decision_id: str) -> str:
    """The one client order id of a decision for an account (see the module docstring)."""
    return "tl-" + hashlib.blake2b(f"{account}|{decision_id}".encode(), digest_size=8).hexdigest()


def kelly(confidence: float, payoff: float) -> float:
    """Full Kelly fraction for a win probability of 0.5 + confidence / 4 and a payoff ratio."""
    p = 0.5 + max(0.0, min(1.0, confidence)) / 4
    return p - (1 - p) / payoff


class SizingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: str = "paper"
    interval: str = "1m"  # bars for price, volatility and ATR
    min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    equity: Pos = 100_000.0  # $ the Kelly fraction applies to
    kelly_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5  # half Kelly
    kelly_cap: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    target_vol: Pos = 0.15  # annualised
    max_vol_scale: Pos = 1.0
    stop_atr: Pos = 1.5
    take_profit_atr: Pos = 3.0
    max_loss_usd: Pos = 10.0  # $ lost if the stop is hit
    max_es95_usd: Pos = 10.0  # keep at or below risk.es95_limit
    lot: Pos = 1.0

    def __post_init__(self) -> None:
        try:
            interval_ns(self.interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from None


class Sizer(Handler):
    name: ClassVar[str] = "sizing"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "risk"
    Config: ClassVar[type[msgspec.Struct]] = SizingConfig
    emits: ClassVar[tuple[type[Event], ...]] = (OrderIntent,)
    state = Snapshot()

    def __init__(self, config: SizingConfig | None = None) -> None:
        super().__init__(config)
        cfg: SizingConfig = self.config
        self.consumes = (Consumes(Scan), Consumes(Bar, {"interval": cfg.interval}))
        self.per_year = bars_per_year(cfg.interval)
        self.bars = BarBook(keep=61)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.bars)

    def restore(self, data: bytes) -> None:
        self.bars = msgspec.msgpack.decode(data, type=BarBook)

    def _skip(self, outcome: str) -> list[Event]:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1
        return []

    def handle(self, event: AnyEvent) -> list[Event]:
        if isinstance(event, Bar):
            self.bars.add(event)
            return []
        if not isinstance(event, Scan) or not event.passed or event.verdict == "HOLD":
            return []
        cfg: SizingConfig = self.config
        if not event.confidence >= cfg.min_confidence:
            return self._skip("low_confidence")
        sym = event.symbol
        s = self.bars.series.get(sym)
        if s is None or len(s.close) < MIN_BARS:
            return self._skip("no_history")
        px, atr = self.bars.price(sym), self.bars.atr(sym)
        sigma = self.bars.sigma(sym)
        if not (atr > 0 and sigma > 0):
            return self._skip("no_volatility")
        f = min(cfg.kelly_cap, cfg.kelly_fraction * kelly(event.confidence, cfg.take_profit_atr / cfg.stop_atr))
        if f <= 0:
            return self._skip("no_edge")
        buy = event.verdict == "BUY"
        scale = min(cfg.max_vol_scale, cfg.target_vol / (sigma * math.sqrt(self.per_year)))
        es = expected_shortfall([(1 if buy else -1) * r for r in self.bars.returns(sym).values()])
        qty = min(
            cfg.equity * f * scale / px,
            cfg.max_loss_usd / (cfg.stop_atr * atr),
            cfg.max_es95_usd / (es * px) if es > 0 else math.inf,
        )
        qty = math.floor(qty / cfg.lot + 1e-9) * cfg.lot
        if qty < cfg.lot:
            return self._skip("too_small")
        sign = 1 if buy else -1
        self.counters["sized"] = self.counters.get("sized", 0) + 1
        return [
            draft(
                OrderIntent,
                ts_event=event.ts_event,
                account=cfg.account,
                symbol=sym,
                client_order_id=client_order_id(cfg.account, event.decision_id),
                side="BUY" if buy else "SELL",
                quantity=qty,
                decision_id=event.decision_id,
                stop_loss=round(px - sign * cfg.stop_atr * atr, 6),
                take_profit=round(px + sign * cfg.take_profit_atr * atr, 6),
                reason=(
                    f"{event.grade} Q* {event.score:.2f}, confidence {event.confidence:.2f}: Kelly {f:.3f} x vol scale "
                    f"{scale:.2f} at {px:g}, ATR {atr:.4g}; {event.reasoning}"
                ),
            )
        ]
