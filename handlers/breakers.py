"""Circuit breakers: the ``breakers`` handler trips and auto-resumes breakers, as events.

=================== ======================= ====== =================================================
breaker             scope                   kind   trips when / resumes when
=================== ======================= ====== =================================================
``daily_loss``      ``account:<a>``         soft   equity fell more than ``max_daily_loss`` $ below
                                                   its value at the start of the UTC day / a new
                                                   UTC day begins (event time)
``drawdown``        ``account:<a>``         soft   equity is ``max_drawdown`` (fraction) below its
                                                   peak / the drawdown is back under ``resume_drawdown``
``consecutive_losses`` ``account:<a>``      hard   ``max_consecutive_losses`` closed trades in a row
                                                   lost money / a human resumes it
``stale_feed``      ``venue:<feed>``        soft   a heartbeat says ``stale`` or none came for
                                                   ``missed_intervals`` of its interval / a fresh
                                                   heartbeat
``halt``            ``all`` (or any)        hard   ``tapeline halt`` / ``tapeline resume``
=================== ======================= ====== =================================================

Equity per account = ``equity`` + realised P&L (average-cost, commissions included) + unrealised
P&L at the last close of each held symbol. A trade is closed when a fill brings a position back to
zero or flips it; it is a loss when its realised P&L (commissions included) is negative. A manual
resume (``tapeline resume``) of a hard breaker clears it and resets its cause (the loss count; for
drawdown, the peak becomes the current equity). Soft resumes carry operator ``auto`` and the
cleared condition in the note. The risk gate blocks orders while a covering breaker is tripped.

Time is event time only: fills, bars, heartbeats and clock ticks advance "now", so a replay trips
the same breakers. It reads four streams (orders: fills; market data: bars; ops: heartbeats, clock;
risk: breaker events from ``tapeline halt``/``resume``, its own are ignored), each in its own order.
Trips and resumes are events, so breaker state survives restarts; its own bookkeeping is snapshotted.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import (
    AnyEvent,
    Bar,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    ClockTick,
    Event,
    Heartbeat,
    OrderFilled,
)

DAY_NS = 86_400 * 10**9
HARD = {"consecutive_losses", "halt"}
BREAKERS = {"daily_loss", "drawdown", "consecutive_losses", "stale_feed", "halt"}


class BreakersConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    equity: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0  # $ per account before any trade
    max_daily_loss: Annotated[float, msgspec.Meta(gt=0)] = 2_000.0  # $
    max_drawdown: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.20
    resume_drawdown: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15  # the seeds' "recovery < 15%"
    max_consecutive_losses: Annotated[int, msgspec.Meta(ge=1)] = 5
    missed_intervals: Annotated[int, msgspec.Meta(ge=1)] = 3  # silent heartbeat intervals -> stale_feed
    interval: str = ""  # bars used as marks; empty: any interval

    def __post_init__(self) -> None:
        if self.resume_drawdown >= self.max_drawdown:
            raise ValueError(
                f"resume_drawdown: {self.resume_drawdown} must be below max_drawdown {self.max_drawdown}, e.g. 0.15"
            )


class Lot(msgspec.Struct):
    qty: float = 0.0  # signed
    cost: float = 0.0  # average price of the open quantity
    trade_pnl: float = 0.0  # realised since the position was last flat


class Account(msgspec.Struct):
    lots: dict[str, Lot] = {}
    realised: float = 0.0
    peak: float = 0.0
    day: int = -1  # UTC day number the day's start equity belongs to
    day_start: float = 0.0
    losses: int = 0  # closed losing trades in a row


class State(msgspec.Struct):
    accounts: dict[str, Account] = {}
    marks: dict[str, float] = {}
    feeds: dict[str, tuple[int, float]] = {}  # feed -> (last heartbeat ns, interval s)
    tripped: dict[str, bool] = {}  # "<breaker>\x1f<scope>" -> hard
    now: int = 0


class Breakers(Handler):
    name: ClassVar[str] = "breakers"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "risk"
    Config: ClassVar[type[msgspec.Struct]] = BreakersConfig
    emits: ClassVar[tuple[type[Event], ...]] = (CircuitBreakerTripped, CircuitBreakerResumed)
    state = Snapshot(every_s=2.0)

    def __init__(self, config: BreakersConfig | None = None) -> None:
        super().__init__(config)
        cfg: BreakersConfig = self.config
        bars = Consumes(Bar, {"interval": cfg.interval}) if cfg.interval else Consumes(Bar)
        self.consumes = (Consumes(OrderFilled), bars, Consumes(Heartbeat), Consumes(ClockTick),
                         Consumes(CircuitBreakerTripped))  # fmt: skip
        self.s = State()

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.s)

    def restore(self, data: bytes) -> None:
        self.s = msgspec.msgpack.decode(data, type=State)

    # ------------------------------------------------------------ transitions

    def _trip(self, breaker: str, scope: str, reason: str, value: float, limit: float) -> list[Event]:
        key = f"{breaker}\x1f{scope}"
        if key in self.s.tripped:
            return []
        hard = breaker in HARD
        self.s.tripped[key] = hard
        self.counters["tripped"] = self.counters.get("tripped", 0) + 1
        v = value if math.isfinite(value) else 0.0
        return [draft(CircuitBreakerTripped, ts_event=self.s.now, breaker=breaker, scope=scope, reason=reason,
                      hard=hard, value=round(v, 6), limit=limit)]  # fmt: skip

    def _resume(self, breaker: str, scope: str, note: str) -> list[Event]:
        key = f"{breaker}\x1f{scope}"
        if key not in self.s.tripped or self.s.tripped[key]:  # hard ones wait for a human
            return []
        del self.s.tripped[key]
        self.counters["resumed"] = self.counters.get("resumed", 0) + 1
        return [draft(CircuitBreakerResumed, ts_event=self.s.now, breaker=breaker, scope=scope, operator="auto",
                      note=note)]  # fmt: skip

    def handle(self, event: AnyEvent) -> list[Event]:
        out = self._handle(event)
        # tapeline_breakers_tripped{key=<breaker>}: 1 while any scope of that breaker is tripped
        tripped = {key.split("\x1f", 1)[0] for key in self.s.tripped}
        self.gauges["tripped"] = {b: float(b in tripped) for b in BREAKERS | tripped}
        return out

    def _handle(self, event: AnyEvent) -> list[Event]:
        if isinstance(event, CircuitBreakerTripped | CircuitBreakerResumed):
            return self._external(event)
        self.s.now = max(self.s.now, event.ts_event)
        out: list[Event] = []
        if isinstance(event, OrderFilled):
            out += self._fill(event)
        elif isinstance(event, Bar):
            if math.isfinite(event.close) and event.close > 0:
                self.s.marks[event.symbol] = event.close
        elif isinstance(event, Heartbeat):
            self.s.feeds[event.feed] = (event.ts_event, event.interval_s)
            if event.stale:
                out += self._trip("stale_feed", f"venue:{event.feed}", f"{event.feed}: its source is disconnected",
                                  1, 0)  # fmt: skip
            else:
                out += self._resume("stale_feed", f"venue:{event.feed}", f"{event.feed}: fresh heartbeat")
        out += self._silent_feeds()
        for name in sorted(self.s.accounts):
            out += self._account(name)
        return out

    def _external(self, event: CircuitBreakerTripped | CircuitBreakerResumed) -> list[Event]:
        """A human's halt or resume (our own trips and resumes come back too: already applied)."""
        if event.source == self.name:
            return []
        key = f"{event.breaker}\x1f{event.scope}"
        if isinstance(event, CircuitBreakerTripped):
            self.s.tripped[key] = event.hard
            return []
        self.s.tripped.pop(key, None)
        acct = self.s.accounts.get(event.scope.removeprefix("account:"))
        if acct is not None and event.breaker == "consecutive_losses":
            acct.losses = 0
        elif acct is not None and event.breaker == "drawdown":
            acct.peak = self.equity(acct)
        return []

    def _silent_feeds(self) -> list[Event]:
        cfg: BreakersConfig = self.config
        out: list[Event] = []
        for feed, (seen, iv) in sorted(self.s.feeds.items()):
            silent = (self.s.now - seen) / 1e9
            if iv > 0 and silent > cfg.missed_intervals * iv:
                out += self._trip("stale_feed", f"venue:{feed}", f"{feed}: no heartbeat for {silent:.1f}s",
                                  silent, cfg.missed_intervals * iv)  # fmt: skip
        return out

    # ------------------------------------------------------------ P&L

    def _fill(self, f: OrderFilled) -> list[Event]:
        if not (math.isfinite(f.quantity) and f.quantity > 0 and math.isfinite(f.price) and f.price > 0):
            self.counters["bad_fill"] = self.counters.get("bad_fill", 0) + 1
            return []
        cfg: BreakersConfig = self.config
        acct = self._account_of(f.account)
        lot = acct.lots.setdefault(f.symbol, Lot())
        signed = f.quantity if f.side == "BUY" else -f.quantity
        commission = f.commission if math.isfinite(f.commission) else 0.0
        acct.realised -= commission
        lot.trade_pnl -= commission
        closed = False
        if lot.qty == 0 or (lot.qty > 0) == (signed > 0):  # opening or adding: new average cost
            lot.cost = (lot.cost * abs(lot.qty) + f.price * abs(signed)) / (abs(lot.qty) + abs(signed))
            lot.qty += signed
        else:  # reducing, closing or flipping
            closing = min(abs(signed), abs(lot.qty))
            pnl = closing * (f.price - lot.cost) * (1 if lot.qty > 0 else -1)
            acct.realised += pnl
            lot.trade_pnl += pnl
            rest = lot.qty + signed
            if abs(rest) < 1e-9 or (rest > 0) != (lot.qty > 0):
                closed = True
                acct.losses = acct.losses + 1 if lot.trade_pnl < 0 else 0
                lot.trade_pnl = 0.0
                lot.cost = f.price if abs(rest) >= 1e-9 else 0.0
            lot.qty = 0.0 if abs(rest) < 1e-9 else rest
        self.s.marks.setdefault(f.symbol, f.price)
        if closed and acct.losses >= cfg.max_consecutive_losses:
            why = f"{acct.losses} losing trades in a row"
            limit = cfg.max_consecutive_losses
            return self._trip("consecutive_losses", f"account:{f.account}", why, acct.losses, limit)
        return []

    def _account_of(self, name: str) -> Account:
        acct = self.s.accounts.get(name)
        if acct is None:
            cfg: BreakersConfig = self.config
            acct = self.s.accounts[name] = Account(peak=cfg.equity, day=self.s.now // DAY_NS, day_start=cfg.equity)
        return acct

    def equity(self, acct: Account) -> float:
        cfg: BreakersConfig = self.config
        unreal = sum(lot.qty * (self.s.marks.get(sym, lot.cost) - lot.cost) for sym, lot in acct.lots.items())
        return cfg.equity + acct.realised + unreal

    def _account(self, name: str) -> list[Event]:
        cfg: BreakersConfig = self.config
        acct = self.s.accounts[name]
        scope = f"account:{name}"
        eq = self.equity(acct)
        out: list[Event] = []
        day = self.s.now // DAY_NS
        if day != acct.day:
            if acct.day >= 0:
                out += self._resume("daily_loss", scope, "a new UTC day began")
            acct.day, acct.day_start = day, eq
        loss = acct.day_start - eq
        if loss > cfg.max_daily_loss:
            out += self._trip("daily_loss", scope, f"lost ${loss:,.2f} today", loss, cfg.max_daily_loss)
        acct.peak = max(acct.peak, eq)
        dd = (acct.peak - eq) / acct.peak if acct.peak > 0 else 0.0
        if dd >= cfg.max_drawdown:
            out += self._trip("drawdown", scope, f"equity {dd:.1%} below its peak", dd, cfg.max_drawdown)
        elif dd < cfg.resume_drawdown:
            out += self._resume("drawdown", scope, f"drawdown back to {dd:.1%}")
        return out
