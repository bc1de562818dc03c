"""A TWS / IB Gateway stand-in that speaks the TWS API socket protocol, for orders.

The real ``ib_async.IB`` client connects to it over TCP: the ``API\\0`` handshake (server version
:data:`SERVER_VERSION`), ``startApi`` -> ``nextValidId`` + ``managedAccounts``, then the order
messages with the field orders ib_async's ``client.py`` writes and ``decoder.py`` reads at that
version: PLACE_ORDER (3), CANCEL_ORDER (4), REQ_OPEN_ORDERS (5) / REQ_ALL_OPEN_ORDERS (16),
REQ_EXECUTIONS (7), REQ_IDS (8), REQ_POSITIONS (61), REQ_COMPLETED_ORDERS (99) answered with
OPEN_ORDER (5), ORDER_STATUS (3), EXECUTION_DATA (11), COMMISSION_REPORT (59), OPEN_ORDER_END (53),
EXECUTION_DATA_END (55), COMPLETED_ORDER (101), COMPLETED_ORDERS_END (102), POSITION_END (62),
ERR_MSG (4).

The book lives in the server (a thread of the test process), so a client process that is killed
leaves its orders and executions where they are, as with a real TWS. Market orders fill at once at
the ask (buy) or bid (sell); limit orders work until ``quote`` makes them marketable or they are
cancelled. Test controls: ``hold`` ("before": a PLACE_ORDER is taken in but not applied, and is
lost if its client goes away first; "after": the order is booked but no answer is sent; each
order at most once), ``release``, ``quote``, ``drop`` (close every client socket), ``refuse`` (closes new sockets).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SERVER_VERSION = 176  # within ib_async's 157..178; < 177 keeps faProfile, < 178 no pendingPriceRevision
ACCOUNT = "DU1234567"
COMMISSION_PER_SHARE = 0.005
COMMISSION_MIN = 1.0


@dataclass
class BookOrder:
    """One order as TWS keeps it."""

    order_id: int
    client_id: int
    perm_id: int
    symbol: str
    sec_type: str
    exchange: str
    currency: str
    action: str
    quantity: float
    order_type: str
    limit_price: float
    tif: str
    account: str
    order_ref: str
    status: str = "Submitted"
    filled: float = 0.0
    avg_price: float = 0.0
    completed_time: str = ""


@dataclass
class Execution:
    exec_id: str
    order: BookOrder
    shares: float
    price: float
    time: datetime
    commission: float


@dataclass
class _Conn:
    sock: socket.socket
    client_id: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: bool = True

    def send(self, *fields: Any) -> None:
        payload = "".join(f"{_fmt(f)}\0" for f in fields).encode()
        with self.lock:
            if self.alive:
                try:
                    self.sock.sendall(struct.pack(">I", len(payload)) + payload)
                except OSError:
                    self.alive = False


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if v is None:
        return ""
    return str(v)


class TwsStandIn:
    """The TWS side: accounts, prices, the order book and executions, served on 127.0.0.1."""

    def __init__(self, quotes: dict[str, tuple[float, float]]) -> None:
        self.quotes = dict(quotes)
        self.lock = threading.RLock()
        self.orders: dict[int, BookOrder] = {}  # perm id -> order
        self.executions: list[Execution] = []
        self.places: list[str] = []  # orderRef of every PLACE_ORDER taken in
        self.cancels: list[int] = []
        self.hold = ""  # "", "before" or "after"
        self.held: list[tuple[_Conn | None, list[str]]] = []  # (client still to answer, PLACE_ORDER fields)
        self.refuse = False
        self.connects = 0
        self._next_perm = 9_000_000
        self._next_exec = 1
        self._max_order_id: dict[int, int] = {}  # client id -> highest order id used
        self._conns: list[_Conn] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="tws-standin").start()

    # --- test controls and queries
    def orders_with(self, ref: str) -> int:
        with self.lock:
            return sum(o.order_ref == ref for o in self.orders.values())

    def working(self) -> list[BookOrder]:
        with self.lock:
            return [o for o in self.orders.values() if o.status in ("Submitted", "PreSubmitted")]

    def quote(self, symbol: str, bid: float, ask: float) -> None:
        """A new quote: working limit orders it makes marketable fill at their limit."""
        with self.lock:
            self.quotes[symbol] = (bid, ask)
            for o in self.working():
                if o.symbol == symbol and self._marketable(o):
                    self._fill(o, o.limit_price)

    def release(self) -> None:
        """Held calls go on: "before" ones whose client is still there are applied, answers are sent."""
        with self.lock:
            for conn, fields in self.held:
                if conn is not None and conn.alive:
                    self._place(conn, fields, hold="")
            self.held = [(None, fields) for _, fields in self.held]

    def drop(self) -> None:
        """TWS restarts: every client socket closes (the book stays)."""
        with self.lock:
            for c in self._conns:
                c.alive = False
                with contextlib.suppress(OSError):
                    c.sock.shutdown(socket.SHUT_RDWR)

    def lose(self) -> None:
        """TWS loses the IB servers (error 1100); the sockets stay up."""
        self._tell(1100, "Connectivity between IB and Trader Workstation has been lost.")

    def restore(self, *, data_lost: bool) -> None:
        """TWS has the IB servers again: 1101 (data lost: subscriptions must be re-made) or 1102 (data kept)."""
        kept = "data lost." if data_lost else "data maintained."
        self._tell(
            1101 if data_lost else 1102, f"Connectivity between IB and Trader Workstation has been restored - {kept}"
        )

    def _tell(self, code: int, message: str) -> None:
        with self.lock:
            for c in self._conns:
                if c.alive:
                    c.send(4, 2, -1, code, message, "")

    def close(self) -> None:
        self.drop()
        self._server.shutdown()
        self._server.server_close()

    # --- the protocol
    def _serve(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        try:
            if self.refuse or sock.recv(4, socket.MSG_WAITALL) != b"API\0":
                return
            _read(sock)  # "v157..178": the client's version range
            conn.send(SERVER_VERSION, datetime.now(UTC).strftime("%Y%m%d %H:%M:%S UTC"))
            with self.lock:
                self._conns.append(conn)
                self.connects += 1
            while conn.alive:
                msg = _read(sock)
                if msg is None:
                    return
                with self.lock:
                    self._dispatch(conn, msg)
        except OSError:
            return
        finally:
            with self.lock:
                conn.alive = False
                if conn in self._conns:
                    self._conns.remove(conn)
            sock.close()

    def _dispatch(self, conn: _Conn, f: list[str]) -> None:
        mid = int(f[0])
        if mid == 71:  # startApi: version, clientId, optCapab
            cid = int(f[2])
            if any(c.client_id == cid and c.alive for c in self._conns if c is not conn):
                conn.send(4, 2, -1, 326, "Unable to connect as the client id is already in use.", "")
                conn.alive = False
                conn.sock.shutdown(socket.SHUT_RDWR)
                return
            conn.client_id = cid
            conn.send(9, 1, self._max_order_id.get(cid, 0) + 1)
            conn.send(15, 1, ACCOUNT)
        elif mid == 8:
            conn.send(9, 1, self._max_order_id.get(conn.client_id, 0) + 1)
        elif mid == 61:
            conn.send(62, 1)
        elif mid in (5, 16):  # this client's open orders / everybody's
            for o in self.working():
                if mid == 16 or o.client_id == conn.client_id:
                    self._open_order(conn, o)
                    self._status(conn, o)
            conn.send(53, 1)
        elif mid == 99:
            for o in self.orders.values():
                if o.status in ("Filled", "Cancelled", "Inactive"):
                    conn.send(*_completed_order(o))
            conn.send(102)
        elif mid == 7:
            req_id, client_id = int(f[2]), int(f[3] or 0)
            for x in self.executions:
                if not client_id or x.order.client_id == client_id:
                    conn.send(*_execution(req_id, x))
                    conn.send(*_commission(x))
            conn.send(55, 1, req_id)
        elif mid == 3:
            self.places.append(f[26])
            hold = self.hold if f[26] not in {h[1][26] for h in self.held} else ""  # each order held once
            if hold == "before":
                self.held.append((conn, f))
            else:
                self._place(conn, f, hold=hold)
        elif mid == 4:
            self._cancel(conn, int(f[2]))

    def _place(self, conn: _Conn, f: list[str], hold: str) -> None:
        order_id = int(f[1])
        if order_id <= self._max_order_id.get(conn.client_id, 0):
            conn.send(4, 2, order_id, 103, "Duplicate order id", "")
            return
        self._max_order_id[conn.client_id] = order_id
        sym, sec, exch, cur = f[3], f[4], f[9] or "SMART", f[11] or "USD"
        o = BookOrder(
            order_id=order_id, client_id=conn.client_id, perm_id=self._next_perm, symbol=sym, sec_type=sec,
            exchange=exch, currency=cur, action=f[16], quantity=float(f[17]), order_type=f[18],
            limit_price=float(f[19] or 0), tif=f[21], account=f[23] or ACCOUNT, order_ref=f[26],
        )  # fmt: skip
        quote_key = sym + cur if sec == "CASH" else sym
        if quote_key not in self.quotes:
            conn.send(4, 2, order_id, 200, "No security definition has been found for the request", "")
            return
        self._next_perm += 1
        self.orders[o.perm_id] = o
        if hold == "after":  # booked (and filled), the answers never sent
            self.held.append((None, f))
            conn = _Conn(conn.sock, conn.client_id, alive=False)
        self._open_order(conn, o)
        self._status(conn, o)
        if o.order_type == "MKT":
            bid, ask = self.quotes[quote_key]
            self._fill(o, ask if o.action == "BUY" else bid, conn)
        elif self._marketable(o):
            self._fill(o, o.limit_price, conn)

    def _marketable(self, o: BookOrder) -> bool:
        bid, ask = self.quotes.get(o.symbol + o.currency if o.sec_type == "CASH" else o.symbol, (0.0, 0.0))
        return ask <= o.limit_price if o.action == "BUY" else bid >= o.limit_price

    def _fill(self, o: BookOrder, price: float, conn: _Conn | None = None) -> None:
        x = Execution(
            exec_id=f"0000e0d5.{self._next_exec:08x}.01.01",
            order=o,
            shares=o.quantity - o.filled,
            price=price,
            time=datetime.now(UTC).replace(microsecond=0),
            commission=max(COMMISSION_MIN, (o.quantity - o.filled) * COMMISSION_PER_SHARE),
        )
        self._next_exec += 1
        self.executions.append(x)
        o.avg_price, o.filled, o.status = price, o.quantity, "Filled"
        o.completed_time = x.time.strftime("%Y%m%d %H:%M:%S UTC")
        for c in self._owners(o, conn):
            c.send(*_execution(-1, x))
            self._open_order(c, o)
            self._status(c, o)
            c.send(*_commission(x))

    def _cancel(self, conn: _Conn, order_id: int) -> None:
        self.cancels.append(order_id)
        o = next((o for o in self.working() if o.client_id == conn.client_id and o.order_id == order_id), None)
        if o is None:
            conn.send(4, 2, order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.", "")
            return
        o.status = "Cancelled"
        o.completed_time = datetime.now(UTC).strftime("%Y%m%d %H:%M:%S UTC")
        for c in self._owners(o, conn):
            self._status(c, o)
            c.send(4, 2, order_id, 202, "Order Canceled - reason:", "")

    def _owners(self, o: BookOrder, conn: _Conn | None) -> list[_Conn]:
        """Where TWS sends an order's updates: the connections of the client id that placed it."""
        if conn is not None and not conn.alive:
            return []  # answers held
        return [c for c in self._conns if c.alive and c.client_id == o.client_id]

    def _open_order(self, conn: _Conn, o: BookOrder) -> None:
        conn.send(*_open_order(o))

    def _status(self, conn: _Conn, o: BookOrder) -> None:
        conn.send(3, o.order_id, o.status, o.filled, o.quantity - o.filled, o.avg_price, o.perm_id, 0,
                  o.avg_price, o.client_id, "", 0.0)  # fmt: skip


def _read(sock: socket.socket) -> list[str] | None:
    head = sock.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    body = sock.recv(n, socket.MSG_WAITALL) if n else b""
    if len(body) < n:
        return None
    return body.decode().split("\0")[:-1]


def _contract(o: BookOrder) -> list[Any]:
    """conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange, currency, localSymbol,
    tradingClass: the decoder's order in OPEN_ORDER, COMPLETED_ORDER and EXECUTION_DATA."""
    con_id = zlib.crc32(o.symbol.encode()) % 10**8
    return [con_id, o.symbol, o.sec_type, "", 0.0, "", "", o.exchange, o.currency, o.symbol, o.symbol]


def _order_head(o: BookOrder) -> list[Any]:
    """action, totalQuantity, orderType, lmtPrice, auxPrice, tif, ocaGroup, account, openClose, origin, orderRef."""
    limit = o.limit_price if o.order_type == "LMT" else ""
    return [o.action, o.quantity, o.order_type, limit, "", o.tif, "", o.account, "O", 0, o.order_ref]


def _open_order(o: BookOrder) -> list[Any]:
    """OPEN_ORDER (5) at SERVER_VERSION, field for field as ``Decoder.openOrder`` reads it (empty: unset)."""
    return [
        5, o.order_id, *_contract(o), *_order_head(o), o.client_id, o.perm_id,
        *[""] * 5,  # outsideRth, hidden, discretionaryAmt, goodAfterTime, sharesAllocation
        *[""] * 4,  # faGroup, faMethod, faPercentage, faProfile (< 177)
        *[""] * 29,  # modelCode .. deltaNeutralAuxPrice (deltaNeutralOrderType empty: no delta-neutral block)
        *[""] * 7,  # continuousUpdate .. comboLegsDescrip
        0, 0, 0,  # combo legs, order combo legs, smart combo routing params
        *[""] * 3,  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
        "",  # hedgeType
        *[""] * 4, 0,  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld; no delta-neutral contract
        "",  # algoStrategy
        "", "", o.status,  # solicited, whatIf, order state
        *[""] * 9,  # margins before / change / after
        *[""] * 5,  # commission, min, max, commissionCurrency, warningText
        "", "",  # randomizeSize, randomizePrice
        0,  # conditions
        *[""] * 16,  # adjustedOrderType .. usePriceMgmtAlgo
        *[""] * 3,  # duration (>= 159), postToAts (>= 160), autoCancelParent (>= 162)
        *[""] * 5,  # minTradeQty .. midOffsetAtHalf (>= 170)
    ]  # fmt: skip


def _completed_order(o: BookOrder) -> list[Any]:
    """COMPLETED_ORDER (101) at SERVER_VERSION, as ``Decoder.completedOrder`` reads it."""
    return [
        101, *_contract(o), *_order_head(o), o.perm_id,
        *[""] * 4,  # outsideRth, hidden, discretionaryAmt, goodAfterTime
        *[""] * 4,  # faGroup, faMethod, faPercentage, faProfile (< 177)
        *[""] * 23,  # modelCode .. deltaNeutralAuxPrice
        *[""] * 5,  # continuousUpdate .. comboLegsDescrip
        0, 0, 0,  # combo legs, order combo legs, smart combo routing params
        *[""] * 3,  # scale sizes and increment
        "",  # hedgeType
        *[""] * 3, 0,  # clearingAccount, clearingIntent, notHeld; no delta-neutral contract
        "",  # algoStrategy
        "", o.status, "", "",  # solicited, status, randomizeSize, randomizePrice
        0,  # conditions
        *[""] * 6, o.filled, *[""] * 6,  # trailStopPrice .. autoCancelDate, filledQuantity, .. parentPermId
        o.completed_time, o.status,  # completedTime, completedStatus
        *[""] * 5,  # minTradeQty .. midOffsetAtHalf (>= 170)
    ]  # fmt: skip


def _execution(req_id: int, x: Execution) -> list[Any]:
    """EXECUTION_DATA (11), as ``Decoder.execDetails`` reads it (< 178: no pendingPriceRevision)."""
    o = x.order
    side = "BOT" if o.action == "BUY" else "SLD"
    when = x.time.strftime("%Y%m%d %H:%M:%S UTC")
    return [11, req_id, o.order_id, *_contract(o), x.exec_id, when, o.account, o.exchange, side, x.shares,
            x.price, o.perm_id, o.client_id, 0, o.filled, o.avg_price, o.order_ref, "", "", "", 1]  # fmt: skip


def _commission(x: Execution) -> list[Any]:
    return [59, 1, x.exec_id, x.commission, x.order.currency, "", "", ""]
