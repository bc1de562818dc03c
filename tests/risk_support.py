"""Events for the risk tests: bars of seeded random walks, decisions, intents, fills."""

from __future__ import annotations

import math
import random
from typing import Any

from tapeline.schemas.events import (
    AgentSignal,
    Bar,
    DecisionEnvelope,
    OrderFilled,
    OrderIntent,
    Synthesis,
    Target,
)
from tapeline.schemas.ids import new_event_id

T0 = 1_700_000_040 * 10**9  # a minute boundary
MIN = 60 * 10**9


def walk(
    symbol: str,
    n: int,
    *,
    start: float = 100.0,
    vol: float = 0.001,
    seed: int = 1,
    venue: str = "sim",
    interval: str = "1m",
    t0: int = T0,
    volume: float = 50_000.0,
    common: list[float] | None = None,
) -> list[Bar]:
    """``n`` one-minute bars of a seeded log random walk (``common``: a shared factor mixed in)."""
    rng = random.Random(seed)
    out, px = [], start
    for k in range(n):
        r = rng.gauss(0, vol) + (common[k] if common else 0.0)
        o, px = px, px * math.exp(r)
        hi, lo = max(o, px) * (1 + vol / 4), min(o, px) * (1 - vol / 4)
        start_ns = t0 + k * MIN
        out.append(
            Bar(
                event_id=new_event_id(start_ns + MIN),
                ts_event=start_ns + MIN,
                ts_init=start_ns + MIN,
                source="test",
                symbol=symbol,
                interval=interval,
                start_ns=start_ns,
                open=o,
                high=hi,
                low=lo,
                close=px,
                volume=volume,
                venue=venue,
            )
        )
    return out


def intent(symbol: str = "AAA", qty: float = 5.0, **kw: Any) -> OrderIntent:
    fields: dict[str, Any] = {"account": "paper", "client_order_id": f"c-{new_event_id()}", "side": "BUY"}
    fields.update(kw)
    ts = fields.pop("ts_event", T0 + 200 * MIN)
    return OrderIntent(
        event_id=new_event_id(ts), ts_event=ts, ts_init=ts, source="test", symbol=symbol, quantity=qty, **fields
    )


def decision(
    symbol: str,
    verdict: str = "BUY",
    confidence: float = 0.9,
    *,
    ts: int = T0 + 200 * MIN,
    agree: int = 2,
    disagree: int = 0,
) -> DecisionEnvelope:
    up = "BULLISH" if verdict == "BUY" else "BEARISH"
    down = "BEARISH" if verdict == "BUY" else "BULLISH"
    sigs = [AgentSignal(agent=f"a{i}", domain="t", signal=up, confidence=0.8) for i in range(agree)]  # type: ignore[arg-type]
    sigs += [AgentSignal(agent=f"d{i}", domain="t", signal=down, confidence=0.8) for i in range(disagree)]  # type: ignore[arg-type]
    return DecisionEnvelope(
        event_id=new_event_id(ts),
        ts_event=ts,
        ts_init=ts,
        source="test",
        target=Target(ticker=symbol, trade_date="2023-11-14"),
        synthesis=Synthesis(verdict=verdict, confidence=confidence, ensemble_score=0.5),  # type: ignore[arg-type]
        agent_signals=sigs,
    )


def fill(
    symbol: str,
    side: str,
    qty: float,
    price: float,
    *,
    ts: int,
    account: str = "paper",
    coid: str = "x",
    commission: float = 0.0,
) -> OrderFilled:
    return OrderFilled(
        event_id=new_event_id(ts),
        ts_event=ts,
        ts_init=ts,
        source="paper",
        account=account,
        symbol=symbol,
        client_order_id=coid,
        broker="paper",
        fill_id=new_event_id(ts),
        side=side,
        quantity=qty,
        price=price,
        commission=commission,
    )  # type: ignore[arg-type]
