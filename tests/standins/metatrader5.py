"""A stand-in for the ``MetaTrader5`` module: the real function names, constants, return shapes,
``last_error()`` codes and the numpy structured dtype of ticks, serving real recorded ticks.

It mimics the behaviours the feed must cope with: ``date_from`` must be a timezone-aware UTC
``datetime`` (naive ones are rejected, as MT5 would misread local time) and is resolved to whole
seconds; ticks become visible over time (``release``); the terminal can lose its trade-server
connection (``terminal_info().connected`` false) or die (IPC errors); logins can be refused.
"""

from __future__ import annotations

import csv
import threading
from collections import namedtuple
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

# --- constants with MetaTrader5's names and values
COPY_TICKS_ALL = -1
COPY_TICKS_INFO = 1
COPY_TICKS_TRADE = 2
TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4
TICK_FLAG_LAST = 8
TICK_FLAG_VOLUME = 16
TICK_FLAG_BUY = 32
TICK_FLAG_SELL = 64
SYMBOL_TRADE_MODE_DISABLED = 0
SYMBOL_TRADE_MODE_FULL = 4
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4
RES_E_AUTH_FAILED = -6
RES_E_INTERNAL_FAIL_CONNECT = -10004
RES_E_INTERNAL_FAIL_INIT = -10003

TICK_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("bid", "<f8"),
        ("ask", "<f8"),
        ("last", "<f8"),
        ("volume", "<u8"),
        ("time_msc", "<i8"),
        ("flags", "<u4"),
        ("volume_real", "<f8"),
    ]
)

RATE_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)
TIMEFRAME_M1 = 1
TIMEFRAME_H1 = 16385
TIMEFRAME_D1 = 16408
_TIMEFRAME_S = {**{m: m * 60 for m in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)},
                **{16384 + h: h * 3600 for h in (1, 2, 3, 4, 6, 8, 12)}, TIMEFRAME_D1: 86_400}  # fmt: skip

TerminalInfo = namedtuple("TerminalInfo", "connected trade_allowed name company path build ping_last")
AccountInfo = namedtuple("AccountInfo", "login server name currency balance trade_mode")
SymbolInfo = namedtuple("SymbolInfo", "name visible select trade_mode time bid ask last")


def _msc(text: str) -> int:
    d = datetime.fromisoformat(text) - datetime(1970, 1, 1)
    return d.days * 86_400_000 + d.seconds * 1000 + d.microseconds // 1000


def trade_ticks_from_csv(path: Path) -> np.ndarray:
    """``Datetime,Open,High,Low,Close,Volume,...`` trades -> MT5 ticks (last, volume, flags)."""
    rows = []
    with path.open() as fh:
        for r in csv.DictReader(fh):
            msc = _msc(r["Datetime"])
            vol = int(float(r["Volume"]))
            rows.append(
                (msc // 1000, 0.0, 0.0, float(r["Close"]), vol, msc, TICK_FLAG_LAST | TICK_FLAG_VOLUME, float(vol))
            )
    return np.array(rows, dtype=TICK_DTYPE)


def quote_ticks_from_csv(path: Path) -> np.ndarray:
    """``TIMESTAMP (dd/mm/yyyy HH:MM:SS),BID,ASK`` quotes -> MT5 ticks (bid, ask, flags)."""
    rows = []
    with path.open() as fh:
        for r in csv.DictReader(fh):
            d, rest = r["TIMESTAMP"].split(" ")
            dd, mm, yy = d.split("/")
            msc = _msc(f"{yy}-{mm}-{dd}T{rest}")
            rows.append(
                (msc // 1000, float(r["BID"]), float(r["ASK"]), 0.0, 0, msc, TICK_FLAG_BID | TICK_FLAG_ASK, 0.0)
            )
    return np.array(rows, dtype=TICK_DTYPE)


class MetaTrader5StandIn:
    """One terminal. Module-level functions of MetaTrader5 are methods here; constants are attributes."""

    COPY_TICKS_ALL = COPY_TICKS_ALL
    COPY_TICKS_INFO = COPY_TICKS_INFO
    COPY_TICKS_TRADE = COPY_TICKS_TRADE
    TICK_FLAG_BID = TICK_FLAG_BID
    TICK_FLAG_ASK = TICK_FLAG_ASK
    TICK_FLAG_LAST = TICK_FLAG_LAST
    TICK_FLAG_VOLUME = TICK_FLAG_VOLUME
    TICK_FLAG_BUY = TICK_FLAG_BUY
    TICK_FLAG_SELL = TICK_FLAG_SELL
    SYMBOL_TRADE_MODE_DISABLED = SYMBOL_TRADE_MODE_DISABLED
    SYMBOL_TRADE_MODE_FULL = SYMBOL_TRADE_MODE_FULL

    def __init__(self, ticks: dict[str, np.ndarray], *, login: int = 0, password: str = "", server: str = "") -> None:
        self._lock = threading.Lock()
        self.ticks = {s: np.sort(a, order="time_msc", kind="stable") for s, a in ticks.items()}
        self.visible = {s: 0 for s in ticks}
        self.account = (login, password, server)
        self.initialized = False
        self.logged_in = 0
        self.connected = True  # terminal <-> trade server
        self.alive = True  # the terminal process (IPC)
        self.trade_mode = {s: SYMBOL_TRADE_MODE_FULL for s in ticks}
        self.selected: set[str] = set()
        self._error = (RES_S_OK, "Success")
        self.calls: dict[str, int] = {}
        self.date_froms: list[datetime] = []

    # --- test controls
    def release(self, symbol: str, n: int) -> None:
        with self._lock:
            self.visible[symbol] = min(len(self.ticks[symbol]), self.visible[symbol] + n)

    def release_all(self) -> None:
        with self._lock:
            for s, a in self.ticks.items():
                self.visible[s] = len(a)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _ipc_ok(self) -> bool:
        if not self.alive or not self.initialized:
            self._error = (RES_E_INTERNAL_FAIL_CONNECT, "IPC send failed")
            return False
        return True

    # --- the MetaTrader5 API
    def last_error(self) -> tuple[int, str]:
        return self._error

    def initialize(
        self,
        path: str | None = None,
        *,
        login: int = 0,
        password: str = "",
        server: str = "",
        timeout: int = 60000,
        portable: bool = False,
    ) -> bool:
        self._count("initialize")
        if not self.alive:
            self._error = (RES_E_INTERNAL_FAIL_INIT, "IPC initialize failed, MetaTrader 5 x64 not found")
            return False
        if login and (login, password, server) != self.account:
            self._error = (RES_E_AUTH_FAILED, "Terminal: Authorization failed")
            return False
        self.initialized = True
        self.logged_in = login or self.account[0]
        self._error = (RES_S_OK, "Success")
        return True

    def login(self, login: int, password: str = "", server: str = "", timeout: int = 60000) -> bool:
        self._count("login")
        if not self._ipc_ok():
            return False
        if (login, password, server) != self.account:
            self._error = (RES_E_AUTH_FAILED, "Terminal: Authorization failed")
            return False
        self.logged_in = login
        return True

    def shutdown(self) -> None:
        self._count("shutdown")
        self.initialized = False
        self.selected.clear()

    def terminal_info(self) -> Any:
        self._count("terminal_info")
        if not self._ipc_ok():
            return None
        return TerminalInfo(self.connected, True, "MetaTrader 5", "Stand-in", "C:\\MT5", 4000, 20000)

    def account_info(self) -> Any:
        if not self._ipc_ok():
            return None
        return AccountInfo(self.logged_in, self.account[2], "stand-in", "USD", 10000.0, 0)

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        self._count("symbol_select")
        if not self._ipc_ok():
            return False
        if symbol not in self.ticks:
            self._error = (RES_E_NOT_FOUND, f"symbol {symbol} not found")
            return False
        self.selected.add(symbol)
        return True

    def symbol_info(self, symbol: str) -> Any:
        if not self._ipc_ok() or symbol not in self.ticks:
            return None
        return SymbolInfo(symbol, True, symbol in self.selected, self.trade_mode[symbol], 0, 0.0, 0.0, 0.0)

    def _check_date(self, d: Any) -> int | None:
        if not isinstance(d, datetime) or d.tzinfo is None or d.utcoffset() != timedelta(0):
            self._error = (RES_E_INVALID_PARAMS, "Invalid arguments: date must be a timezone-aware UTC datetime")
            return None
        self.date_froms.append(d)
        return int(d.timestamp())  # whole seconds, as the terminal resolves it

    def _visible(self, symbol: str) -> np.ndarray | None:
        if not self._ipc_ok():
            return None
        if symbol not in self.selected:
            self._error = (RES_E_NOT_FOUND, f"symbol {symbol} not selected")
            return None
        if not self.connected:
            return np.array([], dtype=TICK_DTYPE)
        with self._lock:
            return self.ticks[symbol][: self.visible[symbol]].copy()

    def copy_ticks_from(self, symbol: str, date_from: Any, count: int, flags: int) -> np.ndarray | None:
        self._count("copy_ticks_from")
        sec = self._check_date(date_from)
        if sec is None or flags not in (COPY_TICKS_ALL, COPY_TICKS_INFO, COPY_TICKS_TRADE):
            return None
        a = self._visible(symbol)
        if a is None:
            return None
        return a[a["time_msc"] >= sec * 1000][:count]

    def copy_rates_range(self, symbol: str, timeframe: int, date_from: Any, date_to: Any) -> np.ndarray | None:
        """Bars the terminal built from its whole tick history (bid, or last where there is no bid)
        whose open time lies in [date_from, date_to], as MetaTrader5 answers it."""
        self._count("copy_rates_range")
        s1, s2 = self._check_date(date_from), self._check_date(date_to)
        if s1 is None or s2 is None or timeframe not in _TIMEFRAME_S:
            if timeframe not in _TIMEFRAME_S:
                self._error = (RES_E_INVALID_PARAMS, "Invalid arguments: timeframe")
            return None
        if not self._ipc_ok():
            return None
        if symbol not in self.selected:
            self._error = (RES_E_NOT_FOUND, f"symbol {symbol} not selected")
            return None
        step = _TIMEFRAME_S[timeframe]
        bars: dict[int, list[Any]] = {}
        for t in self.ticks[symbol]:
            price = float(t["bid"]) or float(t["last"])
            start = int(t["time"]) - int(t["time"]) % step
            if price <= 0 or not s1 <= start <= s2:
                continue
            b = bars.get(start)
            if b is None:
                bars[start] = [start, price, price, price, price, 1, 0, int(t["volume"])]
            else:
                b[2], b[3], b[4] = max(b[2], price), min(b[3], price), price
                b[5] += 1
                b[7] += int(t["volume"])
        return np.array([tuple(bars[k]) for k in sorted(bars)], dtype=RATE_DTYPE)

    def copy_ticks_range(self, symbol: str, date_from: Any, date_to: Any, flags: int) -> np.ndarray | None:
        self._count("copy_ticks_range")
        s1, s2 = self._check_date(date_from), self._check_date(date_to)
        if s1 is None or s2 is None:
            return None
        a = self._visible(symbol)
        if a is None:
            return None
        return a[(a["time_msc"] >= s1 * 1000) & (a["time_msc"] < s2 * 1000)]


# --- trading: constants, result shapes and an order book with MetaTrader5's names and values
TRADE_ACTION_DEAL = 1
TRADE_ACTION_PENDING = 5
TRADE_ACTION_REMOVE = 8
ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
ORDER_TYPE_BUY_LIMIT = 2
ORDER_TYPE_SELL_LIMIT = 3
ORDER_TIME_GTC = 0
ORDER_FILLING_FOK = 0
ORDER_FILLING_IOC = 1
ORDER_FILLING_RETURN = 2
ORDER_STATE_PLACED = 1
ORDER_STATE_CANCELED = 2
ORDER_STATE_FILLED = 4
TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_NO_CONNECTION = 10031

TickInfo = namedtuple("TickInfo", "time bid ask last volume time_msc flags volume_real")
TradeOrder = namedtuple("TradeOrder", "ticket time_setup_msc type state magic volume_initial price_open symbol comment")
TradeDeal = namedtuple("TradeDeal", "ticket order time time_msc type magic volume price commission symbol comment")
OrderSendResult = namedtuple("OrderSendResult", "retcode deal order volume price bid ask comment request_id")


class TradingTerminal(MetaTrader5StandIn):
    """The stand-in with an order book: ``order_send``, ``orders_get``, ``history_orders_get``,
    ``history_deals_get``, ``symbol_info_tick``. Market orders fill at once at the quote.

    Test controls: ``quotes[symbol] = (bid, ask)``; ``hold`` makes the first ``order_send`` of each
    comment block (before the order exists when ``hold == "before"``, after it exists and before the
    answer when ``hold == "after"``) until ``release()``: a process killed meanwhile never sees the answer.
    ``sends`` lists every ``order_send`` comment as it arrives; ``fill_pending(ticket)`` fills a working order.
    """

    TRADE_ACTION_DEAL = TRADE_ACTION_DEAL
    TRADE_ACTION_PENDING = TRADE_ACTION_PENDING
    TRADE_ACTION_REMOVE = TRADE_ACTION_REMOVE
    ORDER_TYPE_BUY = ORDER_TYPE_BUY
    ORDER_TYPE_SELL = ORDER_TYPE_SELL
    ORDER_TYPE_BUY_LIMIT = ORDER_TYPE_BUY_LIMIT
    ORDER_TYPE_SELL_LIMIT = ORDER_TYPE_SELL_LIMIT
    ORDER_TIME_GTC = ORDER_TIME_GTC
    ORDER_FILLING_FOK = ORDER_FILLING_FOK
    ORDER_FILLING_IOC = ORDER_FILLING_IOC
    ORDER_FILLING_RETURN = ORDER_FILLING_RETURN
    TRADE_RETCODE_PLACED = TRADE_RETCODE_PLACED
    TRADE_RETCODE_DONE = TRADE_RETCODE_DONE
    TRADE_RETCODE_DONE_PARTIAL = TRADE_RETCODE_DONE_PARTIAL

    def __init__(self, quotes: dict[str, tuple[float, float]], **kw: Any) -> None:
        super().__init__({s: np.array([], dtype=TICK_DTYPE) for s in quotes}, **kw)
        self.quotes = dict(quotes)
        self.orders: dict[int, TradeOrder] = {}
        self.deals: list[TradeDeal] = []
        self.sends: list[str] = []
        self.hold = ""  # "", "before" or "after"
        self.held: set[str] = set()
        self._release = threading.Event()
        self._next = 1000

    # --- test controls
    def release(self) -> None:
        self._release.set()

    def orders_with(self, comment: str) -> int:
        with self._lock:
            return sum(1 for o in self.orders.values() if o.comment == comment)

    def sent(self) -> list[str]:
        with self._lock:
            return list(self.sends)

    def fill_pending(self, ticket: int, price: float) -> None:
        with self._lock:
            o = self.orders[ticket]
            self.orders[ticket] = o._replace(state=ORDER_STATE_FILLED)
            self._deal(o, o.volume_initial, price)

    def _deal(self, o: TradeOrder, volume: float, price: float) -> TradeDeal:
        self._next += 1
        now = int(datetime.now().timestamp() * 1000)
        d = TradeDeal(self._next, o.ticket, now // 1000, now, o.type % 2, o.magic, volume, price, 0.0, o.symbol,
                      o.comment)  # fmt: skip
        self.deals.append(d)
        return d

    def _gate(self, comment: str, when: str) -> bool:
        """Block a held call; True when it was held (its caller is gone by the time it returns)."""
        if self.hold == when and comment not in self.held:
            self.held.add(comment)
            self._release.wait(120)
            return True
        return False

    # --- the MetaTrader5 trading API
    def symbol_info_tick(self, symbol: str) -> Any:
        if not self._ipc_ok() or symbol not in self.quotes:
            return None
        bid, ask = self.quotes[symbol]
        return TickInfo(0, bid, ask, 0.0, 0, 0, TICK_FLAG_BID | TICK_FLAG_ASK, 0.0)

    def order_send(self, request: dict[str, Any]) -> Any:
        self._count("order_send")
        if not self._ipc_ok():
            return None
        comment = str(request.get("comment", ""))
        with self._lock:
            self.sends.append(comment)
        if not self.connected:
            return OrderSendResult(TRADE_RETCODE_NO_CONNECTION, 0, 0, 0.0, 0.0, 0.0, 0.0, "No connection", 0)
        action = request.get("action")
        if action == TRADE_ACTION_REMOVE:
            with self._lock:
                o = self.orders.get(int(request["order"]))
                if o is None or o.state != ORDER_STATE_PLACED:
                    return OrderSendResult(TRADE_RETCODE_INVALID, 0, 0, 0.0, 0.0, 0.0, 0.0, "Invalid request", 0)
                self.orders[o.ticket] = o._replace(state=ORDER_STATE_CANCELED)
                return OrderSendResult(TRADE_RETCODE_DONE, 0, o.ticket, 0.0, 0.0, 0.0, 0.0, "Request executed", 0)
        if self._gate(comment, "before"):
            return None  # the request never reached the terminal
        symbol = request["symbol"]
        with self._lock:
            self._next += 1
            pending = action == TRADE_ACTION_PENDING
            o = TradeOrder(self._next, int(datetime.now().timestamp() * 1000), request["type"],
                           ORDER_STATE_PLACED if pending else ORDER_STATE_FILLED, request.get("magic", 0),
                           float(request["volume"]), float(request["price"]), symbol, comment)  # fmt: skip
            self.orders[o.ticket] = o
            bid, ask = self.quotes[symbol]
            if pending:
                result = OrderSendResult(TRADE_RETCODE_PLACED, 0, o.ticket, o.volume_initial, o.price_open, bid, ask,
                                         "Request executed", 1)  # fmt: skip
            else:
                price = ask if o.type == ORDER_TYPE_BUY else bid
                d = self._deal(o, o.volume_initial, price)
                result = OrderSendResult(TRADE_RETCODE_DONE, d.ticket, o.ticket, d.volume, price, bid, ask,
                                         "Request executed", 1)  # fmt: skip
        self._gate(comment, "after")
        return result

    def orders_get(self, symbol: str | None = None, group: str | None = None, ticket: int | None = None) -> Any:
        if not self._ipc_ok():
            return None
        with self._lock:
            return tuple(o for o in self.orders.values() if o.state == ORDER_STATE_PLACED)

    def history_orders_get(self, date_from: Any, date_to: Any) -> Any:
        if not self._ipc_ok() or self._check_date(date_from) is None or self._check_date(date_to) is None:
            return None
        with self._lock:
            return tuple(o for o in self.orders.values() if o.state != ORDER_STATE_PLACED)

    def history_deals_get(self, date_from: Any, date_to: Any) -> Any:
        if not self._ipc_ok() or self._check_date(date_from) is None or self._check_date(date_to) is None:
            return None
        with self._lock:
            return tuple(self.deals)
