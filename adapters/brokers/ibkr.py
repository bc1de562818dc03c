"""Interactive Brokers orders through ib_async: ``placeOrder`` with ``orderRef`` = the client order id.

* Connect to TWS / IB Gateway (``[execution.ibkr]`` host, port, client id) and synchronise: open
  orders, completed orders and executions. Until that sync is done, and whenever the socket is
  down or TWS has lost the IB servers (error 1100), every call raises :class:`BrokerUnavailable`:
  the gateway retries later and never submits while an order's state is unknown. A dropped socket
  reconnects with backoff (``reconnect_initial_s`` doubling to ``reconnect_max_s``).
* The client id of the order is its ``orderRef`` (and ``account`` is set when configured). After
  ``placeOrder`` the trade's first answer is awaited (``timeout_s``): Submitted / PreSubmitted /
  Filled is an ``OrderAccepted`` (broker order id = TWS's permId), Cancelled / Inactive (an order
  error such as 200 "no security definition") an ``OrderRejected`` with TWS's message. No answer
  in time raises: the outcome is unknown, and the retry looks the order up.
* Lookup asks TWS afresh (``reqAllOpenOrders``, ``reqCompletedOrders``, ``reqExecutions``) and
  matches ``orderRef``.
* Fills: an order filled at once is answered with its executions (each once its commission report
  is in, within ``timeout_s``); later fills are reported when their commission report arrives
  (``commissionReportEvent``) with the execution id as identity. ``fill_id`` is TWS's execId,
  and a fill id on the tape is never reported again. Cancellations TWS makes on its own (DAY expiry,
  an operator in TWS) are reported with the permId as identity. On every (re)connect the
  executions and cancellations of our orders that are not on the tape yet are reported: the
  broker reads the ORDER stream at start (our client ids, recorded fill ids, closed orders).
* A halt cancels our working orders (``cancelOrder``) and waits for TWS to confirm each.

Stop-loss / take-profit of an approval are not attached (that would be a bracket of three orders).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import structlog

from tapeline.adapters.brokers.base import (
    Broker,
    BrokerUnavailable,
    IbkrBrokerConfig,
    accepted,
    cancelled,
    filled,
    rejected,
    reported,
)
from tapeline.bus.reader import read
from tapeline.schemas.events import (
    Event,
    OrderApproved,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderReserved,
    OrderSubmitted,
)
from tapeline.schemas.subjects import ORDER

log = structlog.get_logger("tapeline.execution")
NAME = "ibkr"
LIVE = {"Submitted", "PreSubmitted", "Filled"}
DEAD = {"Cancelled", "ApiCancelled", "Inactive"}
CONNECTIVITY_LOST, RESTORED_DATA_LOST, RESTORED_DATA_KEPT = 1100, 1101, 1102
T = TypeVar("T")


class IbkrBroker(Broker):
    name = NAME

    def __init__(self, cfg: IbkrBrokerConfig, *, ib: Any = None) -> None:
        self.cfg = cfg
        self.ib = ib
        self.synced = False  # connected, and TWS's orders and executions read since
        self.linked = True  # TWS <-> IB servers (error 1100 .. 1101/1102)
        self.approvals: dict[str, OrderApproved] = {}  # our client ids
        self.recorded: set[str] = set()  # fill ids on the tape or reported
        self.closed: set[str] = set()  # client ids with a cancellation or rejection recorded
        self.busy: set[str] = set()  # client ids in a submit, lookup or cancel: their results come from there
        self._held: dict[str, list[OrderFilled]] = defaultdict(list)  # fills that came while their order was busy
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._query = asyncio.Lock()  # ib_async keys open/completed order requests by name: one at a time
        self._lost = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._relinker: asyncio.Task[None] | None = None
        self._losses = 0  # 1100s seen: a relink whose read overlapped a new one does not trust it
        self._restored = False  # the latest of 1100 / 1101-1102 was a restore

    # --- connection
    async def start(self, nc: Any, prefix: str) -> None:
        await self._read_tape(nc, prefix)
        if self.ib is None:
            from ib_async import IB

            self.ib = IB()
        self.ib.disconnectedEvent += self._on_disconnected
        self.ib.errorEvent += self._on_error
        self.ib.commissionReportEvent += self._on_commission
        self.ib.orderStatusEvent += self._on_status
        try:
            await self._connect()
        except Exception as e:  # orders wait (and retry) until TWS is there; nothing is sent blind
            log.warning("ibkr not available at start", error=repr(e), host=self.cfg.host, port=self.cfg.port)
            self._lost.set()
        self._connector = asyncio.create_task(self._keep_connected(), name="ibkr-orders:connect")

    async def _read_tape(self, nc: Any, prefix: str) -> None:
        """Our client ids, the fills and closings already recorded: what a reconnect must not report again."""
        approvals: dict[str, OrderApproved] = {}
        ours: set[str] = set()
        async for batch in read(nc, ORDER.stream(prefix), [f"{prefix}.order.>"]):
            for e in (e for r in batch for e in r.events):
                if isinstance(e, OrderApproved):
                    approvals.setdefault(e.client_order_id, e)
                elif isinstance(e, OrderReserved | OrderSubmitted) and e.broker == NAME:
                    ours.add(e.client_order_id)
                elif isinstance(e, OrderFilled) and e.broker == NAME:
                    self.recorded.add(e.fill_id)
                elif isinstance(e, OrderCancelled | OrderRejected) and e.broker == NAME:
                    self.closed.add(e.client_order_id)
        self.approvals = {ref: approvals[ref] for ref in ours if ref in approvals}

    async def _connect(self) -> None:
        from ib_async import StartupFetch

        fetch = StartupFetch.ORDERS_OPEN | StartupFetch.ORDERS_COMPLETE | StartupFetch.EXECUTIONS
        self.synced = False
        await self.ib.connectAsync(
            self.cfg.host, self.cfg.port, clientId=self.cfg.client_id, timeout=self.cfg.timeout_s,
            account=self.cfg.account, raiseSyncErrors=True, fetchFields=fetch,
        )  # fmt: skip
        self.linked = True
        self._reconcile()
        self.synced = True
        self._lost.clear()
        log.info("ibkr orders connected", host=self.cfg.host, port=self.cfg.port, client_id=self.cfg.client_id)

    async def _keep_connected(self) -> None:
        delay = self.cfg.reconnect_initial_s
        while True:
            await self._lost.wait()
            try:
                await self._connect()
                delay = self.cfg.reconnect_initial_s
            except Exception as e:
                log.warning("ibkr reconnect failed", error=repr(e), retry_in_s=delay)
                self.ib.disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)

    def _on_disconnected(self) -> None:
        if self.synced:
            log.warning("ibkr orders disconnected: order state unknown until reconnected")
        self.synced = False
        self._lost.set()

    def _on_error(self, req_id: int, code: int, message: str, contract: Any) -> None:
        if code == CONNECTIVITY_LOST:
            self.linked, self._restored = False, False
            self._losses += 1
        elif code in (RESTORED_DATA_LOST, RESTORED_DATA_KEPT):
            self._restored = True
            if self._relinker is None or self._relinker.done():
                self._relinker = asyncio.get_running_loop().create_task(self._relink())

    async def _relink(self) -> None:
        """TWS is back with the IB servers: read orders and executions afresh before trusting the book.
        A failed read is tried again with backoff; if the socket goes meanwhile, the reconnect reads it all."""
        delay = self.cfg.reconnect_initial_s
        while self._restored and not self.linked and self.synced:
            losses = self._losses
            try:
                await self._refresh(relinking=True)
            except BrokerUnavailable as e:
                log.warning("ibkr refresh after 1101/1102 failed", error=str(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            if self._losses == losses:
                self.linked = True
                self._reconcile()
            # else 1100 came again while reading: read again if a 1101/1102 followed it, else wait for one

    def _ready(self, *, relinking: bool = False) -> Any:
        if not (self.synced and (self.linked or relinking) and self.ib is not None and self.ib.isConnected()):
            where = f"{self.cfg.host}:{self.cfg.port} client id {self.cfg.client_id}"
            raise BrokerUnavailable(f"ibkr: TWS at {where} not connected or not synchronised: order state unknown")
        return self.ib

    async def _ask(self, request: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(request, self.cfg.timeout_s)
        except (TimeoutError, ConnectionError) as e:
            raise BrokerUnavailable(f"ibkr: {what} got no answer: {e!r}") from e

    async def _refresh(self, *, relinking: bool = False) -> tuple[list[Any], list[Any]]:
        """Every open and completed order, and every execution, as TWS has them now (``relinking``: after
        1101/1102, before ``linked`` is set again: the refresh is what makes the book trustworthy)."""
        ib = self._ready(relinking=relinking)
        async with self._query:
            trades = list(await self._ask(ib.reqAllOpenOrdersAsync(), "reqAllOpenOrders"))
            trades += await self._ask(ib.reqCompletedOrdersAsync(False), "reqCompletedOrders")
            fills = list(await self._ask(ib.reqExecutionsAsync(), "reqExecutions"))
        return trades, fills

    # --- orders
    async def submit(self, order: OrderApproved, ref: str) -> list[Event]:
        from ib_async import LimitOrder, MarketOrder

        ib = self._ready()
        self.approvals[ref] = order
        kw: dict[str, Any] = {"orderRef": ref, "tif": self.cfg.tif}
        if self.cfg.account:
            kw["account"] = self.cfg.account
        ib_order: Any
        if order.order_type == "LIMIT":
            ib_order = LimitOrder(order.side, order.quantity, order.limit_price, **kw)
        else:
            ib_order = MarketOrder(order.side, order.quantity, **kw)
        self.busy.add(ref)
        try:
            try:
                trade = ib.placeOrder(self._contract(order.symbol), ib_order)
            except ConnectionError as e:  # the socket went as we wrote: whether TWS took it is unknown
                raise BrokerUnavailable(f"ibkr placeOrder {ref}: {e!r}") from e
            await self._answered(trade, ref)
            status = trade.orderStatus.status
            if status in DEAD:
                self.closed.add(ref)
                why = next((e.message for e in reversed(trade.log) if e.message), status)
                return [rejected(order, NAME, why)]
            if status == "Filled":
                await self._fills_in(trade, ref, order.quantity)
            return [accepted(order, NAME, _perm_id(trade)), *self._held.pop(ref, [])]
        finally:
            self._release(ref)

    async def _answered(self, trade: Any, ref: str) -> None:
        """Until TWS has answered the order (accepted or refused); no answer in time: unknown."""
        deadline = time.monotonic() + self.cfg.timeout_s
        while trade.orderStatus.status not in LIVE | DEAD:
            left = deadline - time.monotonic()
            if left <= 0 or not self.synced:
                raise BrokerUnavailable(f"ibkr: no answer for order {ref} (status {trade.orderStatus.status})")
            try:
                await asyncio.wait_for(trade.statusEvent, min(left, 0.5))  # re-checks the link twice a second
            except TimeoutError:
                continue

    async def _fills_in(self, trade: Any, ref: str, quantity: float) -> None:
        """A filled order's executions with their commission reports (TWS sends them right after the
        status); whatever is still missing at the deadline is reported when it comes."""
        deadline = time.monotonic() + self.cfg.timeout_s
        while sum(f.quantity for f in self._held.get(ref, [])) < quantity and self.synced:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(trade.commissionReportEvent, min(left, 0.5))
            except TimeoutError:
                continue

    async def lookup(self, order: OrderApproved, ref: str) -> list[Event] | None:
        self.approvals[ref] = order
        self.busy.add(ref)
        try:
            trades, fills = await self._refresh()
            mine = [t for t in trades if t.order.orderRef == ref]
            mine.sort(key=lambda t: t.orderStatus.status in DEAD | {"Filled"})  # a working one first
            if not mine and not any(f.execution.orderRef == ref for f in fills):
                return None
            out: list[Event] = [accepted(order, NAME, _perm_id(mine[0]) if mine else "")]
            if mine and mine[0].orderStatus.status in DEAD and ref not in self.closed:
                self.closed.add(ref)
                out.append(cancelled(order, NAME, f"order status {mine[0].orderStatus.status}"))
            for f in fills:
                if f.execution.orderRef == ref:
                    self._fill(ref, f)
            return [*out, *self._held.pop(ref, [])]
        finally:
            self._release(ref)

    async def cancel_working(self, reason: str) -> list[Event]:
        ib = self._ready()
        working = [t for t in ib.openTrades() if t.order.orderRef in self.approvals]
        for t in working:
            self.busy.add(t.order.orderRef)
            ib.cancelOrder(t.order)
        out: list[Event] = []
        try:
            deadline = time.monotonic() + self.cfg.timeout_s
            for t in working:
                while not t.isDone() and time.monotonic() < deadline and self.synced:
                    try:
                        await asyncio.wait_for(t.statusEvent, min(0.5, max(deadline - time.monotonic(), 0.01)))
                    except TimeoutError:
                        continue
                ref = t.order.orderRef
                if t.orderStatus.status in DEAD and ref not in self.closed:
                    self.closed.add(ref)
                    out.append(cancelled(self.approvals[ref], NAME, reason))
        finally:
            for t in working:
                self._release(t.order.orderRef)
        return out

    def reports(self) -> AsyncIterator[Sequence[Event]]:
        return self._reports()

    async def _reports(self) -> AsyncIterator[Sequence[Event]]:
        while True:
            yield await self._queue.get()

    # --- what TWS reports on its own
    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        ref = fill.execution.orderRef or trade.order.orderRef
        if ref in self.approvals:
            self._fill(ref, fill)

    def _on_status(self, trade: Any) -> None:
        ref = trade.order.orderRef
        if trade.orderStatus.status in DEAD and ref in self.approvals and ref not in self.busy | self.closed:
            self._cancelled_by_broker(ref, trade)

    def _reconcile(self) -> None:
        """After a sync: our executions and cancellations that are not on the tape yet."""
        for f in self.ib.fills():
            if f.execution.orderRef in self.approvals:
                self._fill(f.execution.orderRef, f)
        for t in self.ib.trades():
            ref = t.order.orderRef
            if ref in self.approvals and t.orderStatus.status in DEAD and ref not in self.busy | self.closed:
                self._cancelled_by_broker(ref, t)

    def _fill(self, ref: str, f: Any) -> None:
        ex = f.execution
        if ex.execId in self.recorded:
            return
        self.recorded.add(ex.execId)
        o = self.approvals[ref]
        when = ex.time if isinstance(ex.time, datetime) else f.time
        ev = filled(o, NAME, ex.execId, float(ex.shares), float(ex.price), ts=int(when.timestamp() * 1e6) * 1000,
                    commission=float(f.commissionReport.commission or 0.0))  # fmt: skip
        if ref in self.busy:
            self._held[ref].append(ev)  # a result of the submit or lookup in progress, after its acceptance
        else:
            self._queue.put_nowait([reported(ev, NAME, ex.execId, o)])

    def _cancelled_by_broker(self, ref: str, t: Any) -> None:
        self.closed.add(ref)
        o = self.approvals[ref]
        why = next((e.message for e in reversed(t.log) if e.message), t.orderStatus.status)
        ev = cancelled(o, NAME, f"by the broker: {why}")
        self._queue.put_nowait([reported(ev, NAME, f"cancel:{_perm_id(t)}", o)])

    def _release(self, ref: str) -> None:
        self.busy.discard(ref)
        held = self._held.pop(ref, [])
        if held:
            self._queue.put_nowait([reported(e, NAME, e.fill_id, self.approvals[ref]) for e in held])

    def _contract(self, symbol: str) -> Any:
        from ib_async import Contract

        c = self.cfg
        if c.sec_type == "CASH" and len(symbol) == 6:
            return Contract(secType="CASH", symbol=symbol[:3], currency=symbol[3:], exchange=c.exchange)
        return Contract(secType=c.sec_type, symbol=symbol, exchange=c.exchange, currency=c.currency)

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        if self.ib is not None:
            self.ib.disconnect()


def _perm_id(trade: Any) -> str:
    return str(trade.orderStatus.permId or trade.order.permId or trade.order.orderId)
