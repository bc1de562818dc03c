"""Price-move monitor: a move of ``threshold`` or more within ``window_s`` raises an alert and a decision.

On each bar of ``interval`` (event time) the move is the close against the lowest (a rise) or
highest (a fall) close of the symbol within the last ``window_s``. At ``threshold`` or beyond it
emits, once per ``cooldown_s`` per symbol:

* an :class:`Alert` (``price_move``, warning) for the notifier, and
* a :class:`Signal` from agent ``price_move`` (domain ``event``) carrying the move. The decision
  handler re-synthesises a symbol on every signal, so this is the trigger of a fresh decision from
  the latest signals of every agent; how much the move itself votes is ``[decision] weights.price_move``.

Stocks only by default: a symbol counts as a stock when it matches ``stock_pattern`` (1-5 capital
letters, optionally a class suffix such as ``BRK.B``), which leaves out FX pairs (``EURUSD``),
crypto pairs and option symbols. State is the window and the cooldown, both in event time: the
runner rebuilds it by replaying ``max(window_s, cooldown_s)`` of bars.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Window, draft
from tapeline.schemas.events import Alert, AnyEvent, Bar, Event, Signal
from tapeline.schemas.intervals import interval_ns

_close = itemgetter(1)  # of a (time, close) pair


class MonitorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05  # 5%
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0  # 15 minutes
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 900.0  # per symbol
    interval: str = "1m"  # bars watched
    stocks_only: bool = True
    stock_pattern: str = r"[A-Z]{1,5}([.\-][A-Z]{1,2})?"
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5  # of the move's signal

    def __post_init__(self) -> None:
        try:
            interval_ns(self.interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from None
        try:
            re.compile(self.stock_pattern)
        except re.error as e:
            raise ValueError(f"stock_pattern: {e}; give a regular expression, e.g. [A-Z]{{1,5}}") from None


class PriceMoveMonitor(Handler):
    name: ClassVar[str] = "monitor"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = MonitorConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Alert, Signal)

    def __init__(self, config: MonitorConfig | None = None) -> None:
        super().__init__(config)
        cfg: MonitorConfig = self.config
        self.consumes = (Consumes(Bar, {"interval": cfg.interval}),)
        self.state = Window(max(cfg.window_s, cfg.cooldown_s))
        self.window_ns = int(cfg.window_s * 1e9)
        self.cooldown_ns = int(cfg.cooldown_s * 1e9)
        self.stock = re.compile(cfg.stock_pattern)
        self._closes: dict[str, list[tuple[int, float]]] = {}
        self._fired: dict[str, int] = {}  # symbol -> event time of its last trigger

    def handle(self, event: AnyEvent) -> list[Event]:
        cfg: MonitorConfig = self.config
        if not isinstance(event, Bar) or event.interval != cfg.interval or not event.close > 0:
            return []
        if cfg.stocks_only and not self.stock.fullmatch(event.symbol):
            return []
        t = event.ts_event
        closes = self._closes.setdefault(event.symbol, [])
        closes.append((t, event.close))
        while closes and closes[0][0] < t - self.window_ns:
            del closes[0]
        low, high = min(closes, key=_close)[1], max(closes, key=_close)[1]  # a C key, not a generator each
        up, down = event.close / low - 1, event.close / high - 1
        move = up if up >= -down else down
        if abs(move) < cfg.threshold:
            return []
        last = self._fired.get(event.symbol)
        if last is not None and t - last < self.cooldown_ns:
            return []
        self._fired[event.symbol] = t
        self.counters["triggered"] = self.counters.get("triggered", 0) + 1
        minutes = cfg.window_s / 60
        text = f"{event.symbol} moved {move:+.2%} within {minutes:g} min (close {event.close:,.4g})"
        return [
            draft(
                Alert,
                ts_event=t,
                severity="warning",
                kind="price_move",
                key=f"monitor:price_move:{event.symbol}",
                message=text,
                symbol=event.symbol,
            ),
            draft(
                Signal,
                ts_event=t,
                symbol=event.symbol,
                agent="price_move",
                domain="event",
                direction="BULLISH" if move > 0 else "BEARISH",
                strength=round(max(-1.0, min(1.0, move / (2 * cfg.threshold))), 6),
                confidence=cfg.confidence,
                summary=text,
                key_factors=[f"move={move:+.4f}", f"window_s={cfg.window_s:g}"],
                metrics={"move": round(move, 8), "window_s": cfg.window_s},
            ),
        ]
