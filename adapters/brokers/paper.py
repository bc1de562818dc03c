"""The paper broker: fills at the next tick or bar of the symbol, with slippage and commission.

Deterministic, so a replay of the same tape gives the same fills: an order fills at the first
market-data event of its symbol (in stream order, read from the approval's recording time) whose
event time is after the approval's: a tick at the ask (buy) or bid (sell), else its last price; a
bar that starts after the approval at its open. Slippage makes the price ``slippage_bps`` worse;
commission is ``max(quantity * commission_per_share, commission_min)``. A limit order fills at
the first such price at or better than its limit. Fill ids come from (client id, market event id).

The book is the tape: at start the broker reads the ORDER stream and resumes every paper order
accepted but neither filled nor cancelled; ``lookup`` answers from that book.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from tapeline.adapters.brokers.base import Broker, ExecutionConfig, accepted, cancelled, filled, reported
from tapeline.bus.reader import read
from tapeline.schemas.events import Bar, Event, OrderAccepted, OrderApproved, OrderCancelled, OrderFilled, Tick
from tapeline.schemas.subjects import MD, ORDER, encode_token

NAME = "paper"


class PaperBroker(Broker):
    name = NAME

    def __init__(self, cfg: ExecutionConfig, poll_s: float = 0.05) -> None:
        self.cfg = cfg
        self.poll_s = poll_s
        self.nc: Any = None
        self.prefix = ""
        self.working: dict[str, tuple[OrderApproved, int]] = {}  # ref -> (approval, next MD sequence to read)
        self.known: set[str] = set()

    async def start(self, nc: Any, prefix: str) -> None:
        self.nc, self.prefix = nc, prefix
        approvals: dict[str, OrderApproved] = {}
        open_refs: set[str] = set()
        async for batch in read(nc, ORDER.stream(prefix), [f"{prefix}.order.>"]):
            for e in (e for r in batch for e in r.events):
                if isinstance(e, OrderApproved):
                    approvals.setdefault(e.client_order_id, e)
                elif isinstance(e, OrderAccepted) and e.broker == NAME:
                    self.known.add(e.client_order_id)
                    open_refs.add(e.client_order_id)
                elif isinstance(e, OrderFilled | OrderCancelled) and e.broker == NAME:
                    open_refs.discard(e.client_order_id)
        for ref in open_refs & approvals.keys():
            self.working[ref] = (approvals[ref], 0)

    async def submit(self, order: OrderApproved, ref: str) -> list[Event]:
        self.known.add(ref)
        self.working[ref] = (order, 0)
        return [accepted(order, NAME, ref, ts=order.ts_event)]

    async def lookup(self, order: OrderApproved, ref: str) -> list[Event] | None:
        if ref not in self.known:
            return None
        return [accepted(order, NAME, ref, ts=order.ts_event)]

    async def cancel_working(self, reason: str) -> list[Event]:
        out: list[Event] = [cancelled(o, NAME, reason) for o, _ in self.working.values()]
        self.working.clear()
        return out

    def reports(self) -> AsyncIterator[Sequence[Event]]:
        return self._fills()

    async def _fills(self) -> AsyncIterator[Sequence[Event]]:
        while True:
            out: list[Event] = []
            for ref, (o, seq) in list(self.working.items()):
                fill, seq = await self._match(o, seq)
                if ref not in self.working:
                    continue  # cancelled meanwhile
                if fill is None:
                    self.working[ref] = (o, seq)
                    continue
                del self.working[ref]
                out.append(fill)
            if out:
                yield out
            await asyncio.sleep(self.poll_s)

    async def _match(self, o: OrderApproved, seq: int) -> tuple[Event | None, int]:
        """The fill from the first qualifying market event after ``seq``, and where to read on from."""
        sym = encode_token(o.symbol)
        subjects = [f"{self.prefix}.md.tick.*.{sym}", f"{self.prefix}.md.bar.*.{sym}"]
        start = datetime.fromtimestamp((o.ts_init - 1_000_000_000) / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        kw: dict[str, Any] = {"start_seq": seq} if seq else {"start_time": start}
        async for batch in read(self.nc, MD.stream(self.prefix), subjects, **kw):
            for r in batch:
                seq = r.delivery.stream_seq + 1
                for e in r.events:
                    fill = self._fill_at(o, e)
                    if fill is not None:
                        return fill, seq
        return None, seq

    def _fill_at(self, o: OrderApproved, e: Event) -> Event | None:
        buy = o.side == "BUY"
        if isinstance(e, Tick) and e.ts_event > o.ts_event:
            quote = e.ask if buy else e.bid
            raw = quote if quote > 0 else e.last
        elif isinstance(e, Bar) and e.start_ns >= o.ts_event:
            raw = e.open
        else:
            return None
        if raw <= 0:
            return None
        bps = self.cfg.slippage_bps / 1e4
        price = raw * (1 + bps) if buy else raw * (1 - bps)
        if o.order_type == "LIMIT" and (price > o.limit_price if buy else price < o.limit_price):
            return None
        commission = max(o.quantity * self.cfg.commission_per_share, self.cfg.commission_min)
        ev = filled(
            o, NAME, f"{o.client_order_id}@{e.event_id}", o.quantity, price, ts=e.ts_event, commission=commission
        )
        return reported(ev, NAME, f"{o.client_order_id}@{e.event_id}", o)
