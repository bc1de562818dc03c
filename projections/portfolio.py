"""Portfolio read models: the equity curve per account and the forward returns of every decision.

Both are DuckDB views over the ``fills``, ``bars``, ``decisions`` and ``decision_signals`` tables, so
they are rebuilt with those tables by any replay and can never disagree with the events.

* ``portfolio_marks``: the last price of each symbol per UTC day (bar closes, else fill prices).
* ``equity_curve``: per account and UTC day from the account's first fill on: the cash flow of its
  fills (sells minus buys minus commissions), the market value of its positions at that day's
  marks, and their sum ``pnl`` (P&L since inception). Equity is the account's starting capital
  (``[portfolio] initial_cash``; not an event, so not in the view) plus ``pnl``.
* ``portfolio_accounts``: the latest row of ``equity_curve`` per account.
* ``decision_returns``: each decision, the close of the last bar of each interval at or before it
  (the entry) and the close 1, 5 and 20 bars later (NULL until those bars exist). Analysis only: the
  returns use bars after the decision on purpose.

:func:`performance` turns a curve into the figures ``tapeline perf`` and ``tapeline backtest``
print: per day / week / month / all, P&L, return, max drawdown, Sharpe, Sortino, Calmar, win rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Literal

import msgspec

from tapeline.projections.table import View

HORIZONS = (1, 5, 20)
PERIODS_PER_YEAR = 252  # daily returns: trading days

MARKS = View(
    "portfolio_marks",
    """
    WITH bar_marks AS (
        SELECT symbol, date_trunc('day', ts_event) AS day, arg_max(close, ts_event) AS mark FROM bars GROUP BY ALL),
    fill_marks AS (
        SELECT symbol, date_trunc('day', ts_event) AS day, arg_max(price, ts_event) AS mark FROM fills GROUP BY ALL)
    SELECT * FROM bar_marks
    UNION ALL SELECT f.* FROM fill_marks f ANTI JOIN bar_marks b USING (symbol, day)
    """,
    "The last price of each symbol per UTC day: the last bar close, else (no bar that day) the last fill price.",
)

EQUITY_CURVE = View(
    "equity_curve",
    """
    WITH held AS (SELECT DISTINCT account, symbol FROM fills),
    first_fill AS (SELECT account, min(date_trunc('day', ts_event)) AS since FROM fills GROUP BY account),
    days AS (SELECT DISTINCT day FROM portfolio_marks),
    grid AS (
        SELECT h.account, h.symbol, d.day FROM held h JOIN first_fill f USING (account)
        JOIN days d ON d.day >= f.since),
    pos AS (
        SELECT g.account, g.symbol, g.day,
               coalesce(sum(CASE f.side WHEN 'BUY' THEN f.quantity ELSE -f.quantity END), 0) AS quantity,
               coalesce(sum(CASE f.side WHEN 'BUY' THEN -f.quantity * f.price ELSE f.quantity * f.price END
                            - f.commission), 0) AS cash_flow
        FROM grid g LEFT JOIN fills f
          ON f.account = g.account AND f.symbol = g.symbol AND date_trunc('day', f.ts_event) <= g.day
        GROUP BY g.account, g.symbol, g.day),
    priced AS (
        SELECT p.*, m.mark FROM pos p ASOF LEFT JOIN portfolio_marks m ON p.symbol = m.symbol AND p.day >= m.day)
    SELECT account, day,
           sum(cash_flow) AS cash_flow,
           sum(quantity * coalesce(mark, 0)) AS market_value,
           sum(cash_flow + quantity * coalesce(mark, 0)) AS pnl,
           count(*) FILTER (WHERE quantity != 0) AS positions
    FROM priced GROUP BY account, day ORDER BY account, day
    """,
    "Per account and UTC day: cash flow of fills, market value at the day's marks, P&L since inception.",
)

ACCOUNTS = View(
    "portfolio_accounts",
    "SELECT * FROM equity_curve QUALIFY row_number() OVER (PARTITION BY account ORDER BY day DESC) = 1",
    "The latest cash flow, market value and P&L per account.",
)

DECISION_RETURNS = View(
    "decision_returns",
    """
    WITH b AS (
        SELECT symbol, interval, ts_event, close,
               lead(close, 1) OVER w AS close_1, lead(close, 5) OVER w AS close_5, lead(close, 20) OVER w AS close_20
        FROM bars WINDOW w AS (PARTITION BY symbol, interval ORDER BY ts_event)),
    d AS (SELECT d.event_id AS decision_id, d.ticker, d.ts_event, d.verdict, d.confidence, i.interval
          FROM decisions d JOIN (SELECT DISTINCT symbol, interval FROM bars) i ON i.symbol = d.ticker)
    SELECT d.decision_id, d.ticker, d.ts_event, d.verdict, d.confidence, d.interval, b.close AS entry,
           b.close_1 / b.close - 1 AS ret_1, b.close_5 / b.close - 1 AS ret_5, b.close_20 / b.close - 1 AS ret_20
    FROM d ASOF JOIN b ON d.ticker = b.symbol AND d.interval = b.interval AND d.ts_event >= b.ts_event
    """,
    "Each decision's realised forward returns 1, 5 and 20 bars later, per bar interval of its symbol.",
)

VIEWS: tuple[View, ...] = (MARKS, EQUITY_CURVE, ACCOUNTS, DECISION_RETURNS)


# ---------------------------------------------------------------- performance figures

Period = Literal["day", "week", "month", "all"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "all")


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """Performance over one period (a day, an ISO week, a month, or all time)."""

    period: str  # "2024-03-05", "2024-W10", "2024-03", "all"
    start: str  # first and last day (ISO)
    end: str
    days: int
    start_equity: float
    end_equity: float
    pnl: float
    ret: float  # end / start - 1
    max_drawdown: float  # largest fall from a running peak within the period, as a fraction (>= 0)
    sharpe: float  # annualised, daily returns, risk-free 0; 0 with fewer than two returns
    sortino: float
    calmar: float  # annualised return / max drawdown; 0 without a drawdown
    win_rate: float  # days with a gain / days with a gain or a loss


class CurvePoint(msgspec.Struct, frozen=True):
    day: date
    equity: float


def drawdowns(equity: Sequence[float]) -> list[float]:
    """Fall from the running peak at each point, as a fraction of the peak (0 at a new high)."""
    out: list[float] = []
    peak = -math.inf
    for e in equity:
        peak = max(peak, e)
        out.append(0.0 if peak <= 0 else (peak - e) / peak)
    return out


def _label(day: date, period: Period) -> str:
    if period == "day":
        return day.isoformat()
    if period == "week":
        y, w, _ = day.isocalendar()
        return f"{y}-W{w:02d}"
    if period == "month":
        return f"{day.year}-{day.month:02d}"
    return "all"


def figures(label: str, start_equity: float, points: Sequence[CurvePoint]) -> Figures:
    """The figures of one period: ``points`` are its days, ``start_equity`` the equity before the first."""
    eq = [p.equity for p in points]
    prev = [start_equity, *eq[:-1]]
    rets = [e / p - 1 if p > 0 else 0.0 for e, p in zip(eq, prev, strict=True)]
    n = len(rets)
    mean = sum(rets) / n if n else 0.0
    sd = math.sqrt(sum((r - mean) ** 2 for r in rets) / (n - 1)) if n > 1 else 0.0
    down = math.sqrt(sum(min(r, 0.0) ** 2 for r in rets) / n) if n else 0.0
    ann = math.sqrt(PERIODS_PER_YEAR)
    max_dd = max(drawdowns([start_equity, *eq]), default=0.0)
    end = eq[-1] if eq else start_equity
    ret = end / start_equity - 1 if start_equity > 0 else 0.0
    years = n / PERIODS_PER_YEAR
    annual = (1 + ret) ** (1 / years) - 1 if years > 0 and ret > -1 else ret
    gains = sum(1 for r in rets if r > 0)
    moved = sum(1 for r in rets if r != 0)
    return Figures(
        period=label,
        start=points[0].day.isoformat() if points else "",
        end=points[-1].day.isoformat() if points else "",
        days=n,
        start_equity=start_equity,
        end_equity=end,
        pnl=end - start_equity,
        ret=ret,
        max_drawdown=max_dd,
        sharpe=mean / sd * ann if n > 1 and sd > 0 else 0.0,
        sortino=mean / down * ann if n > 1 and down > 0 else 0.0,
        calmar=annual / max_dd if max_dd > 0 else 0.0,
        win_rate=gains / moved if moved else 0.0,
    )


def performance(initial: float, points: Sequence[CurvePoint], period: Period = "all") -> list[Figures]:
    """Figures per ``period`` over a daily equity curve that starts from ``initial``, oldest first."""
    pts = sorted(points, key=lambda p: p.day)
    groups: dict[str, list[CurvePoint]] = {}
    for p in pts:
        groups.setdefault(_label(p.day, period), []).append(p)
    out: list[Figures] = []
    before = initial
    for label, members in groups.items():
        out.append(figures(label, before, members))
        before = members[-1].equity
    return out or [figures("all", initial, [])]


class TradeStats(msgspec.Struct, frozen=True):
    closed: int  # fills that reduced or closed a position (each a trade)
    won: int  # ... with a realised gain after commission
    realised: float  # realised P&L of those fills

    @property
    def win_rate(self) -> float:
        return self.won / self.closed if self.closed else 0.0


def trade_stats(fills: Sequence[tuple[str, str, float, float, float]]) -> TradeStats:
    """Average-cost round trips over ``(symbol, side, quantity, price, commission)`` fills in time order.

    A fill that reduces a position realises (price - average cost) x the closed quantity (sign by
    side) minus its commission: that is a trade, won if positive. The rest of a fill that flips
    the position opens the new side at the fill price.
    """
    qty: dict[str, float] = {}
    avg: dict[str, float] = {}
    closed = won = 0
    realised = 0.0
    for sym, side, q, price, fee in fills:
        signed = q if side == "BUY" else -q
        held = qty.get(sym, 0.0)
        if held and (held > 0) != (signed > 0):
            shut = min(abs(held), abs(signed))
            pnl = shut * (price - avg[sym]) * (1 if held > 0 else -1) - fee
            closed, won, realised = closed + 1, won + (pnl > 0), realised + pnl
            rest = signed + (shut if signed < 0 else -shut)
            held += signed
            if abs(held) < 1e-12:
                held = 0.0
            elif rest:  # flipped: the remainder opens at this price
                avg[sym] = price
        else:
            avg[sym] = (avg.get(sym, 0.0) * abs(held) + price * abs(signed)) / (abs(held) + abs(signed))
            held += signed
        qty[sym] = held
    return TradeStats(closed, won, realised)


def buy_and_hold(initial: float, closes: Mapping[str, Sequence[tuple[date, float]]]) -> list[CurvePoint]:
    """The equity curve of ``initial`` split equally over the symbols at their first close, then held."""
    live = {s: sorted(c) for s, c in closes.items() if c and c[0][1] > 0}
    if not live:
        return []
    share = initial / len(live)
    qty = {s: share / c[0][1] for s, c in live.items()}
    days = sorted({d for c in live.values() for d, _ in c})
    last = {s: c[0][1] for s, c in live.items()}
    at = {s: dict(c) for s, c in live.items()}
    out: list[CurvePoint] = []
    for d in days:
        for s in live:
            last[s] = at[s].get(d, last[s])
        out.append(CurvePoint(d, sum(qty[s] * last[s] for s in live)))
    return out
