"""The price-move monitor finds the window's low and high with a C key instead of two generators (issue 14,
session 8): with the old ``handle`` verbatim as the reference, every Alert and Signal (as bytes), the
counters and the state are the same on random walks with jumps big enough to trigger, gaps longer than
the window, repeated and older bars, inf and NaN closes, symbols that are not stocks and other intervals."""

from __future__ import annotations

import math
import random

import msgspec

from tapeline.handlers.monitor import MonitorConfig, PriceMoveMonitor
from tapeline.schemas.components import draft
from tapeline.schemas.events import Alert, AnyEvent, Bar, Event, Signal

T0 = 1_767_225_600_000_000_000
MIN_NS = 60_000_000_000
_enc = msgspec.json.Encoder()


class Reference(PriceMoveMonitor):
    """``handle`` as it was before session 8 (handlers/monitor.py), verbatim."""

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
        low, high = min(c for _, c in closes), max(c for _, c in closes)
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


def _outcome(h: PriceMoveMonitor, b: Bar) -> bytes | tuple[type, str]:
    try:
        return _enc.encode(h.handle(b))
    except Exception as e:  # compared: both must raise the same
        return type(e), str(e)


def test_same_alerts_and_signals_as_before() -> None:
    rng = random.Random(8)
    price = {"NVDA": 100.0, "BRK.B": 400.0, "EURUSD": 1.1}
    for cfg in (MonitorConfig(), MonitorConfig(threshold=0.01, cooldown_s=0.0, window_s=300.0)):
        new, ref = PriceMoveMonitor(cfg), Reference(cfg)
        t, triggered = T0, 0
        for _ in range(6000):
            t += rng.choice([MIN_NS] * 20 + [0, -3 * MIN_NS, 40 * MIN_NS])
            sym = rng.choice(list(price))
            r = rng.random()
            price[sym] *= math.exp(rng.gauss(0, 0.004) + (rng.choice([-0.08, 0.08]) if r < 0.01 else 0.0))
            close = rng.choice([math.inf, math.nan, 0.0]) if r > 0.995 else price[sym]
            interval = "5m" if rng.random() < 0.05 else "1m"
            b = Bar(
                event_id="b",
                ts_event=t,
                ts_init=0,
                source="test",
                symbol=sym,
                interval=interval,
                start_ns=t - MIN_NS,
                open=close,
                high=close,
                low=close,
                close=close,
            )
            got, want = _outcome(new, b), _outcome(ref, b)
            assert got == want, b
            triggered += isinstance(got, bytes) and got != b"[]"
        assert new.counters == ref.counters and triggered > 20
        assert (new._closes, new._fired) == (ref._closes, ref._fired)
