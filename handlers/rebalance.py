"""Scheduled rebalance (seed S2): composite score -> rank -> equal weight top N -> delta trades.

Composite score per symbol = momentum (the return over the last ``lookback`` bars of ``interval``)
+ ``sentiment_weight`` x the mean of ``score x relevance`` of its sentiment scores over the last
``sentiment_days`` + ``model_weight`` x the strength of the model agent's latest signal (when a
model agent is running). The universe (``symbols``, or every symbol with enough bars) is ranked;
the top ``top_n`` with a positive score get equal weights (at most ``max_weight`` each), the rest
0. Delta = target quantity (weight x equity / price, whole ``lot``s) - held quantity; a delta is
traded only if its weight moves by at least ``threshold`` and its notional is at least
``min_trade`` — otherwise HOLD.

The schedule (``every`` week on ``weekday`` at ``at`` in ``timezone``, exchange time; or every
day at ``at``) is driven by event time: the first :class:`ClockTick` or bar at or after a scheduled
instant runs it, once per instant. The first event the handler ever sees only sets the clock (no
catch-up run for an instant before it). Each run publishes a :class:`RebalancePlan`; with
``dry_run = false`` also one :class:`OrderIntent` per BUY/SELL item (``client_order_id`` from
a hash of account, instant and symbol), which the risk gate checks like any other intent.

:func:`plan` is pure: ``tapeline rebalance --now`` calls it on the same inputs read from DuckDB.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, time, timedelta
from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import (
    AnyEvent,
    Bar,
    ClockTick,
    Event,
    OrderFilled,
    OrderIntent,
    PlanItem,
    RebalancePlan,
    SentimentScore,
    Signal,
    Verdict,
)
from tapeline.schemas.intervals import interval_ns

DAY_NS = 86_400 * 10**9
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
Pos = Annotated[float, msgspec.Meta(ge=0)]


class RebalanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account: str = "paper"
    every: Literal["week", "day"] = "week"
    weekday: Literal["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"] = "MON"
    at: str = "09:35"  # exchange time, HH:MM
    timezone: str = "America/New_York"
    interval: str = "1d"  # bars for prices and momentum
    lookback: Annotated[int, msgspec.Meta(ge=1)] = 20  # bars of momentum
    sentiment_weight: Pos = 0.5
    sentiment_days: Annotated[float, msgspec.Meta(gt=0)] = 7.0
    model_weight: Pos = 0.0  # the model agent's latest signal strength (agent "model")
    symbols: list[str] = []  # the universe; empty: every symbol with enough bars
    top_n: Annotated[int, msgspec.Meta(ge=1)] = 5
    max_weight: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.25
    min_trade: Pos = 500.0  # $: smaller deltas are not traded
    threshold: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.02  # weight change below which nothing is traded
    lot: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    initial_cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0  # $ of the account before any fill
    dry_run: bool = True  # plans only; false: also order intents

    def __post_init__(self) -> None:
        try:
            interval_ns(self.interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from None
        try:
            time.fromisoformat(self.at)
        except ValueError:
            raise ValueError(f"at: {self.at!r} is not a time of day; write HH:MM, e.g. 09:35") from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown zone {self.timezone!r}; e.g. America/New_York") from None


class Inputs(msgspec.Struct):
    """What a plan is computed from (the handler's state; the CLI reads the same from DuckDB)."""

    closes: dict[str, list[float]] = {}  # last lookback+1 closes per symbol, oldest first
    sentiment: dict[str, list[tuple[int, float]]] = {}  # (ts, score x relevance) per ticker
    model: dict[str, float] = {}  # latest model signal strength per symbol
    positions: dict[str, float] = {}
    cash: float = 0.0  # cash flow of fills since inception (the config's initial cash comes on top)


def slot_at(cfg: RebalanceConfig, ts_ns: int) -> int:
    """The latest scheduled instant at or before ``ts_ns`` (UNIX ns)."""
    tz = ZoneInfo(cfg.timezone)
    local = datetime.fromtimestamp(ts_ns / 1e9, tz)
    at = time.fromisoformat(cfg.at)
    day = local.date()
    if cfg.every == "week":
        day -= timedelta(days=(day.weekday() - WEEKDAYS.index(cfg.weekday)) % 7)
    while True:
        instant = datetime.combine(day, at, tz)
        if instant <= local:
            return int(instant.timestamp()) * 10**9
        day -= timedelta(days=7 if cfg.every == "week" else 1)


def composite(cfg: RebalanceConfig, inp: Inputs, symbol: str, now_ns: int) -> tuple[float, float, float]:
    """(score, momentum, sentiment) of one symbol."""
    c = inp.closes[symbol]
    momentum = c[-1] / c[0] - 1
    since = now_ns - int(cfg.sentiment_days * DAY_NS)
    recent = [v for t, v in inp.sentiment.get(symbol, []) if t >= since]
    sentiment = sum(recent) / len(recent) if recent else 0.0
    score = momentum + cfg.sentiment_weight * sentiment + cfg.model_weight * inp.model.get(symbol, 0.0)
    return score, momentum, sentiment


def plan(cfg: RebalanceConfig, inp: Inputs, now_ns: int) -> list[PlanItem]:
    """The rebalance items, best score first, then the held symbols outside the universe."""
    ready = {s for s, c in inp.closes.items() if len(c) > cfg.lookback and c[0] > 0 and c[-1] > 0}
    universe = [s for s in (cfg.symbols or sorted(ready)) if s in ready]
    scored = sorted(((composite(cfg, inp, s, now_ns), s) for s in universe), key=lambda x: (-x[0][0], x[1]))
    price = {s: inp.closes[s][-1] for s in ready}
    equity = cfg.initial_cash + inp.cash + sum(q * price.get(s, 0.0) for s, q in inp.positions.items())
    chosen = [s for (score, _, _), s in scored[: cfg.top_n] if score > 0]
    weight = min(1 / len(chosen), cfg.max_weight) if chosen else 0.0
    items: list[PlanItem] = []
    rows = [(s, sc) for sc, s in scored] + [
        (s, (0.0, 0.0, 0.0)) for s in sorted(inp.positions) if s not in universe and s in price
    ]
    for s, (_, mom, sent) in rows:
        px = price[s]
        held = inp.positions.get(s, 0.0)
        current = held * px / equity if equity > 0 else 0.0
        target = weight if s in chosen else 0.0
        delta = math.trunc((target * equity / px - held) / cfg.lot) * cfg.lot if equity > 0 else 0.0
        if abs(target - current) < cfg.threshold or abs(delta) * px < cfg.min_trade:
            delta = 0.0
        action: Verdict = "BUY" if delta > 0 else "SELL" if delta < 0 else "HOLD"
        items.append(
            PlanItem(
                symbol=s,
                action=action,
                target_weight=round(target, 6),
                current_weight=round(current, 6),
                delta_quantity=delta,
                momentum=round(mom, 6),
                sentiment=round(sent, 6),
            )
        )
    return items


def client_order_id(account: str, slot_ns: int, symbol: str) -> str:
    """``rb-`` + 16 hex digits of blake2b(account|instant|symbol): one order per symbol and rebalance."""
    return "rb-" + hashlib.blake2b(f"{account}|{slot_ns}|{symbol}".encode(), digest_size=8).hexdigest()


class Rebalancer(Handler):
    name: ClassVar[str] = "rebalance"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "portfolio"
    Config: ClassVar[type[msgspec.Struct]] = RebalanceConfig
    emits: ClassVar[tuple[type[Event], ...]] = (RebalancePlan, OrderIntent)
    state = Snapshot(every_s=5.0)

    def __init__(self, config: RebalanceConfig | None = None) -> None:
        super().__init__(config)
        cfg: RebalanceConfig = self.config
        self.consumes = (
            Consumes(ClockTick),
            Consumes(Bar, {"interval": cfg.interval}),
            Consumes(SentimentScore),
            Consumes(Signal),
            Consumes(OrderFilled, {"account": cfg.account}),
        )
        self.inputs = Inputs()
        self.last_slot = 0  # the scheduled instant last run (or the clock set by the first event)

    def handle(self, event: AnyEvent) -> list[Event]:
        cfg: RebalanceConfig = self.config
        inp = self.inputs
        if isinstance(event, Bar):
            if event.interval != cfg.interval or not event.close > 0:
                return []
            c = inp.closes.setdefault(event.symbol, [])
            c.append(event.close)
            del c[: max(0, len(c) - cfg.lookback - 1)]
        elif isinstance(event, SentimentScore):
            keep = event.ts_event - int(cfg.sentiment_days * DAY_NS)
            s = inp.sentiment.setdefault(event.ticker, [])
            s.append((event.ts_event, event.score * event.relevance))
            inp.sentiment[event.ticker] = [x for x in s if x[0] >= keep]
            return []
        elif isinstance(event, Signal):
            if event.agent == "model":
                inp.model[event.symbol] = event.strength
            return []
        elif isinstance(event, OrderFilled):
            if event.account != cfg.account:
                return []
            signed = event.quantity if event.side == "BUY" else -event.quantity
            inp.positions[event.symbol] = inp.positions.get(event.symbol, 0.0) + signed
            if abs(inp.positions[event.symbol]) < 1e-12:
                del inp.positions[event.symbol]
            inp.cash -= signed * event.price + event.commission
            return []
        elif not isinstance(event, ClockTick):
            return []
        return self._maybe_run(event.ts_event)

    def _maybe_run(self, ts: int) -> list[Event]:
        cfg: RebalanceConfig = self.config
        slot = slot_at(cfg, ts)
        if self.last_slot == 0 or slot <= self.last_slot:
            self.last_slot = max(self.last_slot, slot)
            return []
        self.last_slot = slot
        items = plan(cfg, self.inputs, ts)
        out: list[Event] = [draft(RebalancePlan, ts_event=ts, account=cfg.account, items=items)]
        if not cfg.dry_run:
            out += [
                draft(
                    OrderIntent,
                    ts_event=ts,
                    account=cfg.account,
                    symbol=i.symbol,
                    client_order_id=client_order_id(cfg.account, slot, i.symbol),
                    side="BUY" if i.delta_quantity > 0 else "SELL",
                    quantity=abs(i.delta_quantity),
                    reason=f"rebalance to {i.target_weight:.1%} (from {i.current_weight:.1%})",
                )
                for i in items
                if i.action != "HOLD"
            ]
        return out

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode((self.last_slot, self.inputs))

    def restore(self, data: bytes) -> None:
        self.last_slot, self.inputs = msgspec.msgpack.decode(data, type=tuple[int, Inputs])
