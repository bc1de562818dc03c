"""Pre-trade risk: the ``risk`` gate, OrderIntent -> one RiskCheck per check, then OrderApproved or
OrderRejected(broker="risk").

Every check is a pure function of the intent and the gate's :class:`Book` and returns a
:class:`Verdict` (value, limit, passed, detail); :func:`evaluate` runs them all (a failing check
never hides the others) and the reason of a rejection names every check that failed. Checks:

=================== ========================================================================
``fields``          side BUY/SELL, order type MARKET/LIMIT, account, symbol, client order id set
``quantity``        finite and > 0 (NaN, inf, zero, negative: rejected)
``symbol``          listed in ``symbols`` (when the list is set) and priced by a bar
``order_size``      quantity <= ``max_order_qty`` (fat finger)
``order_notional``  quantity x price <= ``max_order_notional`` (fat finger)
``collar``          a LIMIT within ``collar_pct`` of the last price; stop/take-profit levels finite
                    and on the right side of the price
``position``        |position after the order| <= ``max_position`` (units; working orders count)
``position_notional`` |position after| x price <= ``max_position_notional``
``es95``            Expected Shortfall 95 of the order over one bar, in $, <= ``es95_limit``: the mean of
                    the worst 5% of the symbol's last ``window`` one-bar returns x the order notional
``correlation``     correlation of the order's signed returns to the portfolio's (held positions
                    x their returns, the symbol itself excluded) <= ``max_correlation``; an empty
                    portfolio is 0
``gross_exposure``  sum |position x price| over the account after the order <= ``max_gross_exposure``
``net_exposure``    |sum position x price| after the order <= ``max_net_exposure``
``breakers``        no tripped breaker covers the order: scope ``all``, ``account:<a>``,
                    ``symbol:<s>`` or ``venue:<v>`` (the venue of the symbol's bars)
``duplicate``       the client order id was not approved before
=================== ========================================================================

State (:class:`Book`): bars of ``interval`` per symbol (prices, returns), positions per account and
symbol from fills, working orders (approved, not yet filled, cancelled or rejected by the broker) and
the last breaker event per (breaker, scope). It is read from three streams: orders (intents, fills,
cancels, broker rejects), market data (bars) and risk (breaker events). The gate relies on each
stream's own order only; across streams it decides with what it has seen when the intent arrives (a
halt is effective for intents handled after the gate reads it: see ``tapeline halt``). Positions,
working orders and breaker state have no time bound, so the gate has a Snapshot policy.
Values that are not finite are written as 0 in a RiskCheck (JSON has no NaN); its detail says what
the value was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, ClassVar, NamedTuple

import msgspec

from tapeline.handlers.market import BarBook
from tapeline.schemas.components import Consumes, Handler, Rejected, Snapshot, draft
from tapeline.schemas.events import (
    AnyEvent,
    Bar,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    Event,
    OrderApproved,
    OrderCancelled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    RiskCheck,
)
from tapeline.schemas.intervals import interval_ns

Pos = Annotated[float, msgspec.Meta(gt=0)]


class RiskConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    interval: str = "1m"  # bars that price orders and give returns
    symbols: list[str] = []  # tradable symbols; empty: any symbol with a price
    max_order_qty: Pos = 10_000.0
    max_order_notional: Pos = 50_000.0
    collar_pct: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    max_position: Pos = 20_000.0
    max_position_notional: Pos = 100_000.0
    es95_limit: Pos = 10.0  # $ per trade (the seeds' limit)
    max_correlation: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3
    max_gross_exposure: Pos = 250_000.0
    max_net_exposure: Pos = 150_000.0
    window: Annotated[int, msgspec.Meta(ge=20, le=1000)] = 60  # one-bar returns for ES95 and correlation
    min_history: Annotated[int, msgspec.Meta(ge=2)] = 20  # returns needed before a symbol can be traded

    def __post_init__(self) -> None:
        try:
            interval_ns(self.interval)
        except ValueError as e:
            raise ValueError(f"interval: {e}") from None
        if self.min_history > self.window:
            raise ValueError(f"min_history: {self.min_history} exceeds window {self.window}; lower it")


class Verdict(NamedTuple):
    check: str
    value: float
    limit: float
    passed: bool
    detail: str


class Working(msgspec.Struct):
    account: str
    symbol: str
    qty: float  # signed, still to fill


class Book(msgspec.Struct):
    """What the gate knows: bars, positions, working orders, breakers; all from events."""

    bars: BarBook
    positions: dict[str, dict[str, float]] = {}  # account -> symbol -> signed quantity
    working: dict[str, Working] = {}  # client order id -> what is still to fill
    approved: list[str] = []  # client order ids approved, newest last (bounded)
    breakers: dict[str, bool] = {}  # "<breaker>\x1f<scope>" -> tripped

    def position(self, account: str, symbol: str) -> float:
        pos = self.positions.get(account, {}).get(symbol, 0.0)
        return pos + sum(w.qty for w in self.working.values() if w.account == account and w.symbol == symbol)

    def exposures(self, account: str) -> dict[str, float]:
        """Signed quantity per symbol of an account, working orders included."""
        out = dict(self.positions.get(account, {}))
        for w in self.working.values():
            if w.account == account:
                out[w.symbol] = out.get(w.symbol, 0.0) + w.qty
        return out

    def tripped(self, scopes: list[str]) -> list[str]:
        out = []
        for key, on in sorted(self.breakers.items()):
            breaker, _, scope = key.partition("\x1f")
            if on and scope in scopes:
                out.append(f"{breaker}[{scope}]")
        return out


MAX_APPROVED = 10_000


def _f(x: float) -> str:
    return f"{x:.6g}"


def _signed(intent: OrderIntent) -> float:
    return intent.quantity if intent.side == "BUY" else -intent.quantity


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def check_fields(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    bad = []
    if i.side not in ("BUY", "SELL"):
        bad.append(f"side {i.side!r}")
    if i.order_type not in ("MARKET", "LIMIT"):
        bad.append(f"order type {i.order_type!r}")
    for name in ("account", "symbol", "client_order_id"):
        v = getattr(i, name)
        if not isinstance(v, str) or not v.strip() or len(v) > 64 or not v.isprintable():
            bad.append(f"{name} {v!r}")
    return Verdict("fields", len(bad), 0, not bad, "; ".join(bad) or "well formed")


def check_quantity(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    q = i.quantity
    ok = _finite(q) and q > 0
    return Verdict("quantity", q, 0, ok, f"quantity {q!r} must be a finite number > 0" if not ok else "positive")


def check_symbol(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    listed = not c.symbols or i.symbol in c.symbols
    n = len(b.bars.returns(i.symbol))
    priced = b.bars.price(i.symbol) > 0
    ok = listed and priced and n >= c.min_history
    if not listed:
        why = f"{i.symbol!r} is not in risk.symbols"
    elif not priced:
        why = f"{i.symbol!r} has no {c.interval} bar: unknown symbol"
    else:
        why = f"{n} returns of history, {c.min_history} needed" if not ok else "known, priced"
    return Verdict("symbol", n, c.min_history, ok, why)


def check_order_size(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    q = abs(i.quantity) if _finite(i.quantity) else math.inf
    ok = q <= c.max_order_qty
    return Verdict("order_size", q, c.max_order_qty, ok, "fat finger: too many units" if not ok else "within")


def check_order_notional(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    px = b.bars.price(i.symbol)
    n = abs(i.quantity) * px if _finite(i.quantity) else math.inf
    ok = n <= c.max_order_notional
    return Verdict("order_notional", n, c.max_order_notional, ok, f"at {_f(px)}" if ok else "fat finger: too large")


def check_collar(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    px = b.bars.price(i.symbol)
    if px <= 0:
        return Verdict("collar", 0, c.collar_pct, False, "no price to collar against")
    problems = []
    dev = 0.0
    if i.order_type == "LIMIT":
        lp = i.limit_price
        if not (_finite(lp) and lp > 0):
            problems.append(f"limit price {lp!r}")
            dev = math.inf
        else:
            dev = abs(lp - px) / px
            if dev > c.collar_pct:
                problems.append(f"limit {_f(lp)} is {dev:.1%} from {_f(px)}")
    for name, level, below in (
        ("stop_loss", i.stop_loss, i.side == "BUY"),
        ("take_profit", i.take_profit, i.side != "BUY"),
    ):
        if level == 0:
            continue
        if not (_finite(level) and level > 0) or (level >= px if below else level <= px):
            problems.append(f"{name} {level!r} on the wrong side of {_f(px)}")
    return Verdict("collar", dev, c.collar_pct, not problems, "; ".join(problems) or f"near {_f(px)}")


def check_position(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    after = abs(b.position(i.account, i.symbol) + _signed(i)) if _finite(i.quantity) else math.inf
    return Verdict("position", after, c.max_position, after <= c.max_position, "units after the order")


def check_position_notional(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    px = b.bars.price(i.symbol)
    after = abs(b.position(i.account, i.symbol) + _signed(i)) * px if _finite(i.quantity) else math.inf
    ok = after <= c.max_position_notional
    return Verdict("position_notional", after, c.max_position_notional, ok, "$ after the order")


def expected_shortfall(returns: list[float], level: float = 0.95) -> float:
    """Mean loss (a positive fraction) of the worst ``1 - level`` of the returns, at least one of them."""
    if not returns:
        return math.inf
    worst = sorted(returns)[: max(1, math.ceil(len(returns) * (1 - level) - 1e-9))]
    return max(0.0, -sum(worst) / len(worst))


def check_es95(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    r = list(b.bars.returns(i.symbol).values())[-c.window :]
    if len(r) < c.min_history or not _finite(i.quantity):
        return Verdict("es95", math.inf, c.es95_limit, False, f"{len(r)} returns: cannot estimate")
    side = 1.0 if i.side == "BUY" else -1.0
    es = expected_shortfall([side * x for x in r]) * abs(i.quantity) * b.bars.price(i.symbol)
    ok = es <= c.es95_limit
    return Verdict("es95", es, c.es95_limit, ok, f"$ over one {c.interval} bar, {len(r)} returns")


def correlation(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 3:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def check_correlation(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    held = {s: q for s, q in b.exposures(i.account).items() if s != i.symbol and q != 0}
    if not held:
        return Verdict("correlation", 0, c.max_correlation, True, "empty portfolio")
    mine = b.bars.returns(i.symbol)
    book = {s: b.bars.returns(s) for s in held}
    common = sorted(set(mine).intersection(*book.values()))[-c.window :]
    if len(common) < c.min_history:
        return Verdict("correlation", 0, c.max_correlation, False, f"{len(common)} common returns: cannot estimate")
    side = 1.0 if i.side == "BUY" else -1.0
    x = [side * mine[t] for t in common]
    y = [sum(q * b.bars.price(s) * book[s][t] for s, q in held.items()) for t in common]
    rho = correlation(x, y)
    ok = rho <= c.max_correlation
    return Verdict("correlation", rho, c.max_correlation, ok, f"to {len(held)} held symbols over {len(common)} bars")


def _exposure_after(i: OrderIntent, b: Book) -> list[float]:
    pos = b.exposures(i.account)
    pos[i.symbol] = pos.get(i.symbol, 0.0) + (_signed(i) if _finite(i.quantity) else math.inf)
    return [q * b.bars.price(s) for s, q in pos.items()]


def check_gross_exposure(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    g = sum(abs(v) for v in _exposure_after(i, b))
    return Verdict("gross_exposure", g, c.max_gross_exposure, g <= c.max_gross_exposure, "$ after the order")


def check_net_exposure(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    n = abs(sum(_exposure_after(i, b)))
    return Verdict("net_exposure", n, c.max_net_exposure, n <= c.max_net_exposure, "$ after the order")


def scopes_of(i: OrderIntent, b: Book) -> list[str]:
    scopes = ["all", f"account:{i.account}", f"symbol:{i.symbol}"]
    venue = b.bars.venue(i.symbol)
    return [*scopes, f"venue:{venue}"] if venue else scopes


def check_breakers(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    on = b.tripped(scopes_of(i, b))
    return Verdict("breakers", len(on), 0, not on, "tripped: " + ", ".join(on) if on else "none tripped")


def check_duplicate(i: OrderIntent, b: Book, c: RiskConfig) -> Verdict:
    dup = i.client_order_id in b.approved
    return Verdict("duplicate", float(dup), 0, not dup, "client order id approved before" if dup else "new")


CHECKS: tuple[Callable[[OrderIntent, Book, RiskConfig], Verdict], ...] = (
    check_fields,
    check_quantity,
    check_symbol,
    check_order_size,
    check_order_notional,
    check_collar,
    check_position,
    check_position_notional,
    check_es95,
    check_correlation,
    check_gross_exposure,
    check_net_exposure,
    check_breakers,
    check_duplicate,
)


def evaluate(intent: OrderIntent, book: Book, config: RiskConfig) -> list[Verdict]:
    """Every check of an intent; a check that fails on garbage input fails closed."""
    out = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            v = check(intent, book, config)
        except Exception as e:  # garbage in a field no check foresaw: that check fails, with why
            v = Verdict(name, math.inf, 0, False, f"cannot evaluate: {type(e).__name__}: {e}")
        out.append(v)
    return out


def _json_float(x: float) -> float:
    return float(x) if _finite(x) else 0.0


class RiskGate(Handler):
    name: ClassVar[str] = "risk"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "risk"
    Config: ClassVar[type[msgspec.Struct]] = RiskConfig
    emits: ClassVar[tuple[type[Event], ...]] = (RiskCheck, OrderApproved, OrderRejected)
    state = Snapshot(every_s=2.0)

    def __init__(self, config: RiskConfig | None = None) -> None:
        super().__init__(config)
        cfg: RiskConfig = self.config
        self.consumes = (
            Consumes(OrderIntent),
            Consumes(OrderFilled),
            Consumes(OrderCancelled),
            Consumes(OrderRejected),
            Consumes(Bar, {"interval": cfg.interval}),
            Consumes(CircuitBreakerTripped),
        )  # Resumed shares the breaker subject
        self.book = Book(bars=BarBook(keep=cfg.window + 1))

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.book)

    def restore(self, data: bytes) -> None:
        self.book = msgspec.msgpack.decode(data, type=Book)

    def handle(self, event: AnyEvent) -> list[Event]:
        b = self.book
        if isinstance(event, OrderIntent):
            return self.gate(event)
        if isinstance(event, Bar):
            if not b.bars.add(event):
                self.counters["bar_ignored"] = self.counters.get("bar_ignored", 0) + 1
        elif isinstance(event, OrderFilled):
            self._fill(event)
        elif isinstance(event, OrderCancelled) or (isinstance(event, OrderRejected) and event.broker != "risk"):
            b.working.pop(event.client_order_id, None)
        elif isinstance(event, CircuitBreakerTripped):
            b.breakers[f"{event.breaker}\x1f{event.scope}"] = True
        elif isinstance(event, CircuitBreakerResumed):
            b.breakers.pop(f"{event.breaker}\x1f{event.scope}", None)
        return []

    def _fill(self, f: OrderFilled) -> None:
        if not (_finite(f.quantity) and f.quantity > 0):
            raise Rejected(f"fill {f.fill_id}: quantity {f.quantity!r} is not a finite number > 0")
        signed = f.quantity if f.side == "BUY" else -f.quantity
        acct = self.book.positions.setdefault(f.account, {})
        acct[f.symbol] = acct.get(f.symbol, 0.0) + signed
        w = self.book.working.get(f.client_order_id)
        if w is not None:
            left = w.qty - signed
            if left * w.qty <= 0:  # filled (or over-filled): nothing left working
                del self.book.working[f.client_order_id]
            else:
                w.qty = left

    def gate(self, intent: OrderIntent) -> list[Event]:
        """RiskCheck per check, then the verdict; an approval books the order as working."""
        if not (
            isinstance(intent.account, str) and intent.account and isinstance(intent.symbol, str) and intent.symbol
        ):
            raise Rejected(f"intent {intent.client_order_id!r}: no account or symbol to answer on")
        verdicts = evaluate(intent, self.book, self.config)
        out: list[Event] = [
            draft(
                RiskCheck,
                ts_event=intent.ts_event,
                check=v.check,
                symbol=intent.symbol,
                account=intent.account,
                passed=v.passed,
                value=_json_float(v.value),
                limit=_json_float(v.limit),
                detail=v.detail if _finite(v.value) else f"{v.detail} (value {v.value!r})",
            )
            for v in verdicts
        ]
        failed = [v for v in verdicts if not v.passed]
        common = {"ts_event": intent.ts_event, "account": intent.account, "symbol": intent.symbol}
        if failed:
            self.counters["rejected"] = self.counters.get("rejected", 0) + 1
            reason = "; ".join(f"{v.check}: {v.detail}" for v in failed)
            return [
                *out,
                draft(OrderRejected, **common, client_order_id=intent.client_order_id, broker="risk", reason=reason),
            ]
        self.counters["approved"] = self.counters.get("approved", 0) + 1
        self.book.working[intent.client_order_id] = Working(intent.account, intent.symbol, _signed(intent))
        self.book.approved.append(intent.client_order_id)
        del self.book.approved[:-MAX_APPROVED]
        approved = draft(
            OrderApproved,
            **common,
            client_order_id=intent.client_order_id,
            side=intent.side,
            quantity=intent.quantity,
            order_type=intent.order_type,
            limit_price=intent.limit_price,
            stop_loss=intent.stop_loss,
            take_profit=intent.take_profit,
            intent_id=intent.event_id,
        )
        return [*out, approved]
