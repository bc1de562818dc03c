"""The live portfolio: cash, positions and equity per account from fills, marked to the latest price.

Equity = ``initial_cash`` + the cash flow of the account's fills (sells minus buys minus commissions)
+ its positions at the latest marks (bar closes; a fill's price until the symbol has a bar). The
component mirrors it into the gauges ``tapeline_portfolio_equity{key=<account>}`` and
``tapeline_portfolio_daily_pnl{key=<account>}`` (P&L since the UTC day began, in event time) and
raises two kinds of :class:`Alert` for the notifier:

* ``position_change`` (warning): a fill that moved a position by at least ``large_change_usd``;
* ``daily_pnl`` (``summary_severity``): when the first event of a new UTC day arrives, each account's
  equity and P&L of the day that ended.

The same figures per day, with the history, are the ``equity_curve`` read model
(``projections/portfolio.py``). State is unbounded (positions since the first fill): snapshotted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import msgspec

from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, Bar, Event, OrderFilled

DAY_NS = 86_400 * 10**9


class PortfolioConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    initial_cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0  # $ per account before any fill
    interval: str = ""  # bars used as marks; empty: any interval
    large_change_usd: Annotated[float, msgspec.Meta(gt=0)] = 10_000.0  # a fill this big (notional) alerts
    daily_summary: bool = True
    # the notifier sends warning and above by default: a summary at "info" would only be recorded
    summary_severity: Literal["info", "warning", "critical"] = "warning"


class Account(msgspec.Struct):
    cash: float
    positions: dict[str, float] = {}
    day_start: float = 0.0  # equity when the current UTC day began


class Book(msgspec.Struct):
    accounts: dict[str, Account] = {}
    marks: dict[str, float] = {}
    barred: list[str] = []  # symbols marked by a bar (a fill price no longer marks them)
    day: int = -1  # UTC day number of the newest event


class Portfolio(Handler):
    name: ClassVar[str] = "portfolio"
    version: ClassVar[int] = 1
    role: ClassVar[str] = "portfolio"
    Config: ClassVar[type[msgspec.Struct]] = PortfolioConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Alert,)
    state = Snapshot(every_s=2.0)

    def __init__(self, config: PortfolioConfig | None = None) -> None:
        super().__init__(config)
        cfg: PortfolioConfig = self.config
        bars = Consumes(Bar, {"interval": cfg.interval}) if cfg.interval else Consumes(Bar)
        self.consumes = (Consumes(OrderFilled), bars)
        self.book = Book()
        self.gauges = {"equity": {}, "daily_pnl": {}}

    def equity(self, acct: Account) -> float:
        return acct.cash + sum(q * self.book.marks.get(s, 0.0) for s, q in acct.positions.items())

    def handle(self, event: AnyEvent) -> list[Event]:
        if isinstance(event, Bar):
            if event.close <= 0:
                return []
            out = self._roll(event.ts_event)
            self.book.marks[event.symbol] = event.close
            if event.symbol not in self.book.barred:
                self.book.barred.append(event.symbol)
        elif isinstance(event, OrderFilled):
            out = self._roll(event.ts_event)
            out += self._fill(event)
        else:
            return []
        self._export()
        return out

    def _account(self, name: str) -> Account:
        acct = self.book.accounts.get(name)
        if acct is None:
            cash = self.config.initial_cash
            acct = self.book.accounts[name] = Account(cash=cash, day_start=cash)
        return acct

    def _fill(self, f: OrderFilled) -> list[Event]:
        acct = self._account(f.account)
        signed = f.quantity if f.side == "BUY" else -f.quantity
        before = acct.positions.get(f.symbol, 0.0)
        after = before + signed
        acct.cash -= signed * f.price + f.commission
        if abs(after) < 1e-12:
            acct.positions.pop(f.symbol, None)
        else:
            acct.positions[f.symbol] = after
        if f.symbol not in self.book.barred:
            self.book.marks[f.symbol] = f.price
        notional = f.quantity * f.price
        if notional < self.config.large_change_usd:
            return []
        return [
            draft(
                Alert,
                ts_event=f.ts_event,
                severity="warning",
                kind="position_change",
                key=f"portfolio:position:{f.account}:{f.symbol}",
                message=f"{f.account}: {f.side} {f.quantity:g} {f.symbol} @ {f.price:,.2f} (${notional:,.0f}); "
                f"position {before:g} -> {after:g}",
                symbol=f.symbol,
            )
        ]

    def _roll(self, ts: int) -> list[Event]:
        """At the first event of a new UTC day: the summary of the day that ended, and a new day start."""
        day = ts // DAY_NS
        b = self.book
        if day <= b.day:
            return []
        ended, b.day = b.day, day
        out: list[Event] = []
        for name, acct in sorted(b.accounts.items()):
            eq = self.equity(acct)
            pnl = eq - acct.day_start
            if ended >= 0 and self.config.daily_summary:
                when = datetime.fromtimestamp(ended * 86_400, UTC).date().isoformat()
                pct = pnl / acct.day_start if acct.day_start else 0.0
                out.append(
                    draft(
                        Alert,
                        ts_event=ts,
                        severity=self.config.summary_severity,
                        kind="daily_pnl",
                        key=f"portfolio:daily_pnl:{name}",
                        message=f"{name} {when}: equity ${eq:,.2f}, day P&L {pnl:+,.2f} ({pct:+.2%}), "
                        f"{len(acct.positions)} positions",
                    )
                )
            acct.day_start = eq
        return out

    def _export(self) -> None:
        for name, acct in self.book.accounts.items():
            eq = self.equity(acct)
            self.gauges["equity"][name] = eq
            self.gauges["daily_pnl"][name] = eq - acct.day_start

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.book)

    def restore(self, data: bytes) -> None:
        self.book = msgspec.msgpack.decode(data, type=Book)
        self._export()
