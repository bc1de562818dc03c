"""The execution gateway: ``OrderApproved`` -> exactly one broker order, and halts -> cancels.

Exactly one broker order per client order id, across redeliveries, restarts and restarts after
JetStream's duplicate window:

1. Before the broker is called, an :class:`OrderReserved` is published on the id's own subject
   ``<prefix>.order.reserve.<client_order_id>`` with ``Nats-Expected-Last-Subject-Sequence: 0``.
   JetStream stores only the first; every later attempt gets "wrong last sequence" (10071). The
   ORDER stream is a record (no max age, discard new, deny delete/purge), so the reservation lives
   as long as the stream: the duplicate window plays no part in it.
2. The attempt that won submits. Any other attempt (a redelivery, a restart, an old approval
   replayed) never submits blindly: it asks the broker what it has for the client id and
   publishes that; only a broker that answers "no such order" (the process died between the
   reservation and the call) gets the order, and a broker that cannot answer
   (:class:`BrokerUnavailable`) makes the request retry later, never submit.
   When everything the broker says is already on the tape, nothing is published again.

Results get ids from (gateway, client order id, index) (``request_key``), so two approvals for one
client id have one set of results. A ``CircuitBreakerTripped`` for this account (or ``all``)
stops new orders in this process and cancels the working ones; ``CircuitBreakerResumed`` lifts it.

One execution process per account: the gateway scales out like any stateless component, but a
second process adds nothing and widens the one gap the broker check leaves (a process frozen, not
dead, for longer than ``ack_wait_s`` between reservation and call).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import msgspec
import structlog

from tapeline.adapters.brokers.base import Broker, ExecutionConfig, rejected, submitted
from tapeline.bus.components import result_ids
from tapeline.bus.reader import read
from tapeline.schemas.codec import encode
from tapeline.schemas.components import Consumes, Gateway
from tapeline.schemas.events import (
    AnyEvent,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    Event,
    OrderAccepted,
    OrderApproved,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderReserved,
    OrderSubmitted,
)
from tapeline.schemas.ids import derive_event_id
from tapeline.schemas.subjects import ORDER, encode_token

log = structlog.get_logger("tapeline.execution")
WRONG_LAST_SEQUENCE = 10071
_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")


class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


def make_broker(cfg: ExecutionConfig) -> Broker:
    """The configured broker (imports only what it needs)."""
    if cfg.broker == "paper":
        from tapeline.adapters.brokers.paper import PaperBroker

        return PaperBroker(cfg)
    if cfg.broker == "mt5":
        from tapeline.adapters.brokers.mt5 import Mt5Broker

        return Mt5Broker(cfg.mt5)
    if cfg.broker == "ibkr":
        from tapeline.adapters.brokers.ibkr import IbkrBroker

        return IbkrBroker(cfg.ibkr)
    from tapeline.adapters.brokers.dryrun import DryRunBroker

    return DryRunBroker()


class ExecutionGateway(Gateway):
    """Approved orders to the configured broker, once each; halts cancel working orders."""

    name: ClassVar[str] = "execution"
    role: ClassVar[str] = "execution"
    Config: ClassVar[type[msgspec.Struct]] = ExecutionConfig
    ack_wait_s: ClassVar[float] = 3.0  # a killed process's order is taken over (and reconciled) quickly
    batch: ClassVar[int] = 1  # a process that dies costs a delivery attempt of its one order in progress only
    max_deliver: ClassVar[int] = -1  # a broker whose answer is unknown is asked again until it answers, never dropped
    emits: ClassVar[tuple[type[Event], ...]] = (
        OrderSubmitted,
        OrderAccepted,
        OrderRejected,
        OrderFilled,
        OrderCancelled,
    )
    consumes = (Consumes(OrderApproved), Consumes(CircuitBreakerTripped), Consumes(CircuitBreakerResumed))

    def __init__(self, config: Any = None, *, broker: Broker | None = None) -> None:
        super().__init__(config)
        self.cfg: ExecutionConfig = self.config
        self.broker = broker or make_broker(self.cfg)
        self.nc: Any = None
        self.prefix = ""
        self.halted = ""  # the reason, while a breaker holds this account

    async def open(self, nc: Any, prefix: str) -> None:
        self.nc, self.prefix = nc, prefix
        await self.broker.start(nc, prefix)

    def reports(self) -> AsyncIterator[Sequence[Event]] | None:
        return self.broker.reports()

    async def aclose(self) -> None:
        await self.broker.close()

    def _mine(self, scope: str) -> bool:
        return scope in ("all", "", self.cfg.account) or not self.cfg.account

    def wants(self, event: AnyEvent) -> bool:
        if isinstance(event, OrderApproved):
            return not self.cfg.account or event.account == self.cfg.account
        return isinstance(event, CircuitBreakerTripped | CircuitBreakerResumed) and self._mine(event.scope)

    def request_key(self, event: AnyEvent) -> str:
        return f"order:{event.client_order_id}" if isinstance(event, OrderApproved) else event.event_id

    async def perform(self, event: AnyEvent) -> Sequence[Event]:
        if isinstance(event, CircuitBreakerTripped):
            self.halted = f"halted by {event.breaker}: {event.reason}"
            out = await self.broker.cancel_working(self.halted)
            log.warning("trading halted", breaker=event.breaker, cancelled=len(out))
            return out
        if isinstance(event, CircuitBreakerResumed):
            self.halted = ""
            log.info("trading resumed", breaker=event.breaker, operator=event.operator)
            return []
        assert isinstance(event, OrderApproved)
        return await self.execute(event)

    async def execute(self, o: OrderApproved) -> list[Event]:
        name = self.broker.name
        if self.halted:
            return [rejected(o, name, self.halted, ts=o.ts_event)]
        ref = o.client_order_id
        reservation = await self.reserve(o)
        if reservation == 0:
            return [submitted(o, name), *await self.broker.submit(o, ref)]
        known = await self.broker.lookup(o, ref)  # raises BrokerUnavailable: retried, never resubmitted
        if known is None:
            log.warning("reserved but never reached the broker: submitting", client_order_id=ref, broker=name)
            return [submitted(o, name), *await self.broker.submit(o, ref)]
        out = [submitted(o, name), *known]
        if await self._all_stored(o, out, reservation):
            log.info("order already executed and recorded: nothing sent", client_order_id=ref)
            return []
        return out

    async def reserve(self, o: OrderApproved) -> int:
        """0 when this attempt claimed the client id, else the reservation's stream sequence."""
        ev = OrderReserved(
            event_id=derive_event_id(o.ts_event, self.name, "reserve", o.client_order_id),
            ts_event=o.ts_event,
            ts_init=time.time_ns(),
            source=self.name,
            causation_id=o.event_id,
            correlation_id=o.correlation_id or o.event_id,
            account=o.account,
            symbol=o.symbol,
            client_order_id=o.client_order_id,
            broker=self.broker.name,
            approval_id=o.event_id,
        )
        headers = {
            "Content-Type": "application/json",
            "Tapeline-Type": ev.tag,
            "Causation-Id": ev.causation_id,
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        msg = await self.nc.request(ev.subject(self.prefix), encode(ev), timeout=10.0, headers=headers)
        ack = msgspec.json.decode(msg.data, type=_Ack)
        if ack.error is None:
            return 0
        m = _LAST_SEQ.search(str(ack.error.get("description", "")))
        if ack.error.get("err_code") != WRONG_LAST_SEQUENCE or m is None:
            raise RuntimeError(f"reservation of {o.client_order_id} refused: {ack.error}")
        return int(m.group(1))

    async def _all_stored(self, o: OrderApproved, out: list[Event], since_seq: int) -> bool:
        """Whether every result (by its id) is on the tape already, stored after the reservation."""
        wanted = set(result_ids(self, o, len(out)))
        subject = f"{self.prefix}.order.*.{encode_token(o.account)}.{encode_token(o.symbol)}"
        async for batch in read(self.nc, ORDER.stream(self.prefix), [subject], start_seq=since_seq):
            wanted -= {e.event_id for r in batch for e in r.events}
            if not wanted:
                return True
        return not wanted
