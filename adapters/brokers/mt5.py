"""MetaTrader 5 orders on the managed account: ``order_send``, reconciled by comment.

* Every call checks ``terminal_info().connected`` first: a terminal that lost its trade server
  (or died) answers :class:`BrokerUnavailable`, so nothing is sent while the outcome could not be
  read back.
* The client id is the order's ``comment`` (:func:`broker_ref`: itself when it fits MT5's 31
  characters, else a deterministic hash) and the configured ``magic`` marks our orders.
* Market orders are ``TRADE_ACTION_DEAL`` at the current ask/bid with ``deviation_points``;
  limit orders ``TRADE_ACTION_PENDING`` (good till cancelled). ``TRADE_RETCODE_DONE`` with a deal
  is a fill, ``PLACED`` a working order, anything else a rejection with MT5's retcode and comment.
  ``order_send`` answering None (IPC failure) means the outcome is unknown: it raises, and the
  gateway reconciles on the retry.
* Lookup: ``orders_get`` (working) and ``history_orders_get`` over ``lookback_days`` by comment,
  then the deals of that order ticket (``history_deals_get``) are its fills.
* Working orders are polled every ``poll_s`` for new deals (fills reported with the deal ticket as
  identity); a halt removes them (``TRADE_ACTION_REMOVE``).

The MetaTrader5 module is Windows-only and one terminal per process; tests inject a stand-in.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from tapeline.adapters.brokers.base import (
    Broker,
    BrokerUnavailable,
    Mt5BrokerConfig,
    accepted,
    broker_ref,
    cancelled,
    filled,
    rejected,
    reported,
)
from tapeline.adapters.mt5 import load_mt5_module
from tapeline.schemas.events import Event, OrderApproved

log = structlog.get_logger("tapeline.execution")
NAME = "mt5"
STATE_FILLED, STATE_CANCELED, STATE_REJECTED, STATE_EXPIRED = 4, 2, 6, 8


class Mt5Broker(Broker):
    name = NAME

    def __init__(self, cfg: Mt5BrokerConfig, *, mt5: Any = None) -> None:
        self.cfg = cfg
        self._mt5 = mt5
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5-orders")
        self.working: dict[int, OrderApproved] = {}  # order ticket -> the approval, while pending
        self._reported: set[int] = set()  # deal tickets already reported
        self._initialized = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))

    async def start(self, nc: Any, prefix: str) -> None:
        if self._mt5 is None:
            self._mt5 = load_mt5_module()
        try:
            await self._ensure()
        except BrokerUnavailable as e:  # orders wait (and retry) until it is back; nothing is sent blind
            log.warning("mt5 not available at start", error=str(e))

    async def _ensure(self) -> Any:
        """The module, initialised and connected to its trade server, or BrokerUnavailable."""
        m = self._mt5
        if not self._initialized:
            password = os.environ.get(self.cfg.password_env, "")
            kw: dict[str, Any] = {"login": self.cfg.login, "password": password, "server": self.cfg.server}
            if self.cfg.path:
                kw["path"] = self.cfg.path
            ok = await self._call(lambda: m.initialize(**kw) if self.cfg.login else m.initialize())
            if not ok:
                raise BrokerUnavailable(f"mt5 initialize failed: {m.last_error()}")
            self._initialized = True
        info = await self._call(m.terminal_info)
        if info is None:
            self._initialized = False
            raise BrokerUnavailable(f"mt5 terminal unreachable: {m.last_error()}")
        if not info.connected:
            raise BrokerUnavailable("mt5 terminal is not connected to its trade server")
        return m

    async def submit(self, order: OrderApproved, ref: str) -> list[Event]:
        m = await self._ensure()
        await self._call(m.symbol_select, order.symbol, True)
        buy = order.side == "BUY"
        req: dict[str, Any] = {
            "symbol": order.symbol,
            "volume": float(order.quantity),
            "deviation": self.cfg.deviation_points,
            "magic": self.cfg.magic,
            "comment": broker_ref(ref),
            "type_time": m.ORDER_TIME_GTC,
        }
        if order.order_type == "LIMIT":
            req |= {
                "action": m.TRADE_ACTION_PENDING,
                "type": m.ORDER_TYPE_BUY_LIMIT if buy else m.ORDER_TYPE_SELL_LIMIT,
                "price": order.limit_price,
                "type_filling": m.ORDER_FILLING_RETURN,
            }
        else:
            tick = await self._call(m.symbol_info_tick, order.symbol)
            if tick is None:
                return [rejected(order, NAME, f"no price for {order.symbol}: {m.last_error()}")]
            req |= {
                "action": m.TRADE_ACTION_DEAL,
                "type": m.ORDER_TYPE_BUY if buy else m.ORDER_TYPE_SELL,
                "price": tick.ask if buy else tick.bid,
                "type_filling": m.ORDER_FILLING_IOC,
            }
        if order.stop_loss:
            req["sl"] = order.stop_loss
        if order.take_profit:
            req["tp"] = order.take_profit
        result = await self._call(m.order_send, req)
        if result is None:  # IPC failure: whether the terminal took it is unknown
            raise BrokerUnavailable(f"mt5 order_send gave no answer: {m.last_error()}")
        if result.retcode not in (m.TRADE_RETCODE_DONE, m.TRADE_RETCODE_PLACED, m.TRADE_RETCODE_DONE_PARTIAL):
            return [rejected(order, NAME, f"retcode {result.retcode}: {result.comment}")]
        out: list[Event] = [accepted(order, NAME, str(result.order))]
        if result.deal:
            self._reported.add(int(result.deal))
            out.append(filled(order, NAME, str(result.deal), float(result.volume), float(result.price), ts=_now()))
        if result.retcode != m.TRADE_RETCODE_DONE or not result.deal:
            self.working[int(result.order)] = order
        return out

    async def lookup(self, order: OrderApproved, ref: str) -> list[Event] | None:
        m = await self._ensure()
        comment = broker_ref(ref)
        frm, to = _window(self.cfg.lookback_days)
        pending = [o for o in (await self._call(m.orders_get) or ()) if o.comment == comment]
        done = [o for o in (await self._call(m.history_orders_get, frm, to) or ()) if o.comment == comment]
        if not pending and not done:
            return None
        ticket = int((pending or done)[0].ticket)
        out: list[Event] = [accepted(order, NAME, str(ticket))]
        for d in await self._call(m.history_deals_get, frm, to) or ():
            if int(d.order) == ticket:
                self._reported.add(int(d.ticket))
                out.append(filled(order, NAME, str(d.ticket), float(d.volume), float(d.price), ts=d.time_msc * 10**6))
        if pending:
            self.working[ticket] = order
        elif done[0].state in (STATE_CANCELED, STATE_EXPIRED, STATE_REJECTED):
            out.append(cancelled(order, NAME, f"order state {done[0].state}"))
        return out

    async def cancel_working(self, reason: str) -> list[Event]:
        m = await self._ensure()
        out: list[Event] = []
        for o in await self._call(m.orders_get) or ():
            if o.magic != self.cfg.magic:
                continue
            res = await self._call(m.order_send, {"action": m.TRADE_ACTION_REMOVE, "order": o.ticket})
            approval = self.working.pop(int(o.ticket), None)
            if res is not None and res.retcode == m.TRADE_RETCODE_DONE and approval is not None:
                out.append(cancelled(approval, NAME, reason))
        return out

    def reports(self) -> AsyncIterator[Sequence[Event]]:
        return self._poll()

    async def _poll(self) -> AsyncIterator[Sequence[Event]]:
        """New deals of our working orders, every ``poll_s``; a terminal that is away is waited for."""
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            if not self.working:
                continue
            try:
                m = await self._ensure()
                frm, to = _window(self.cfg.lookback_days)
                deals = await self._call(m.history_deals_get, frm, to) or ()
                still = {int(o.ticket) for o in await self._call(m.orders_get) or ()}
            except BrokerUnavailable as e:
                log.warning("mt5 unavailable while polling fills", error=str(e))
                continue
            out: list[Event] = []
            for d in deals:
                o = self.working.get(int(d.order))
                if o is None or int(d.ticket) in self._reported:
                    continue
                self._reported.add(int(d.ticket))
                ev = filled(o, NAME, str(d.ticket), float(d.volume), float(d.price), ts=d.time_msc * 10**6)
                out.append(reported(ev, NAME, str(d.ticket), o))
            for ticket in [t for t in self.working if t not in still]:
                del self.working[ticket]
            if out:
                yield out

    async def close(self) -> None:
        if self._initialized and self._mt5 is not None:
            await self._call(self._mt5.shutdown)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _now() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


def _window(days: int) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(days=days), now + timedelta(days=1)
