"""What every broker does for the execution gateway, and the order events it reports.

A broker places one order per client order id (the gateway guarantees it is asked once, see
``adapters.brokers.gateway``), says what it knows about a client id (``lookup``: None when it has
no such order, raises :class:`BrokerUnavailable` when it cannot tell), cancels working orders on
a halt, and may report fills later on its own (``reports``). Results before the gateway stamps
them are drafts (``schemas.components.draft``); reported events carry ids from the broker's own
identity (fill id, order id), so a reconnect that reports them again is de-duplicated.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import msgspec

from tapeline.schemas.components import draft
from tapeline.schemas.events import (
    Event,
    OrderAccepted,
    OrderApproved,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
    Side,
)
from tapeline.schemas.ids import derive_event_id

_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Pos = Annotated[float, msgspec.Meta(gt=0)]


class BrokerUnavailable(RuntimeError):
    """The broker cannot say what happened (disconnected, terminal down): never submit now, retry later."""


class Mt5BrokerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The managed MetaTrader 5 account (``[execution.mt5]``); the password only from ``password_env``."""

    login: Annotated[int, msgspec.Meta(ge=0)] = 0
    server: str = ""
    password_env: str = "TAPELINE_MT5_EXECUTION_PASSWORD"
    path: str = ""
    deviation_points: Annotated[int, msgspec.Meta(ge=0)] = 10
    magic: Annotated[int, msgspec.Meta(ge=0)] = 20_260_000  # marks our orders in the terminal
    poll_s: _Pos = 0.5  # how often working orders are checked for deals
    lookback_days: Annotated[int, msgspec.Meta(ge=1)] = 7  # history searched when reconciling


class IbkrBrokerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TWS / IB Gateway for orders (``[execution.ibkr]``); a client id of its own, never rotated, so
    TWS reports this process's earlier orders to its next run."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 7497  # 7497 TWS paper, 7496 live, 4002/4001 IB Gateway
    client_id: Annotated[int, msgspec.Meta(ge=0)] = 2  # the feed's default is 1
    account: str = ""  # the IB account code set on every order; empty: TWS's default account
    sec_type: str = "STK"  # CASH: "EURUSD" is sent as EUR.USD
    exchange: str = "SMART"
    currency: str = "USD"
    tif: str = "DAY"
    timeout_s: _Pos = 10.0  # connect + sync, a query, or an order's first answer; longer: state unknown
    reconnect_initial_s: _Pos = 1.0
    reconnect_max_s: _Pos = 30.0


class ExecutionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[execution]``: which broker gets the approved orders; ``dry-run`` (the default) sends nothing."""

    broker: Literal["dry-run", "paper", "mt5", "ibkr"] = "dry-run"
    account: str = ""  # only approvals for this account; empty: every account
    slippage_bps: _NonNeg = 0.0  # paper: fills this much worse than the next tick or bar
    commission_per_share: _NonNeg = 0.0  # paper
    commission_min: _NonNeg = 0.0  # paper: per fill
    mt5: Mt5BrokerConfig = Mt5BrokerConfig()
    ibkr: IbkrBrokerConfig = IbkrBrokerConfig()


class Broker:
    """The broker interface the execution gateway drives (one instance per process)."""

    name: str = ""

    async def start(self, nc: Any, prefix: str) -> None:
        """Connect (and, for the paper broker, rebuild its book from the tape)."""

    async def submit(self, order: OrderApproved, ref: str) -> list[Event]:
        """Place the order; drafts of what the broker answered (accepted or rejected, fills if immediate)."""
        raise NotImplementedError

    async def lookup(self, order: OrderApproved, ref: str) -> list[Event] | None:
        """What the broker knows of ``ref`` as drafts; None: no such order. Raises BrokerUnavailable."""
        raise NotImplementedError

    async def cancel_working(self, reason: str) -> list[Event]:
        """Cancel every working order of ours; drafts of the cancellations."""
        return []

    def reports(self) -> AsyncIterator[Sequence[Event]] | None:
        """Fills and cancellations the broker reports later, as complete events (ids from the broker)."""
        return None

    async def close(self) -> None:
        pass


def broker_ref(client_order_id: str, limit: int = 31) -> str:
    """The client id as the broker keeps it: itself when it fits (MT5 comments hold 31 characters),
    else a deterministic hash of it, so a lookup finds what a submit wrote."""
    if len(client_order_id) <= limit:
        return client_order_id
    return "tl" + derive_event_id(0, "ref", client_order_id)[-(limit - 2) :]


def submitted(o: OrderApproved, broker: str) -> OrderSubmitted:
    """Recorded before the broker is called, at the approval's event time."""
    return draft(
        OrderSubmitted,
        ts_event=o.ts_event,
        account=o.account,
        symbol=o.symbol,
        client_order_id=o.client_order_id,
        broker=broker,
    )


def accepted(o: OrderApproved, broker: str, broker_order_id: str, ts: int = 0) -> OrderAccepted:
    return draft(
        OrderAccepted,
        ts_event=ts or time.time_ns(),
        account=o.account,
        symbol=o.symbol,
        client_order_id=o.client_order_id,
        broker=broker,
        broker_order_id=broker_order_id,
    )


def rejected(o: OrderApproved, broker: str, reason: str, ts: int = 0) -> OrderRejected:
    return draft(
        OrderRejected,
        ts_event=ts or time.time_ns(),
        account=o.account,
        symbol=o.symbol,
        client_order_id=o.client_order_id,
        broker=broker,
        reason=reason,
    )


def filled(
    o: OrderApproved | None,
    broker: str,
    fill_id: str,
    quantity: float,
    price: float,
    *,
    ts: int,
    commission: float = 0.0,
    account: str = "",
    symbol: str = "",
    client_order_id: str = "",
    side: Side = "BUY",
) -> OrderFilled:
    return draft(
        OrderFilled,
        ts_event=ts,
        account=o.account if o else account,
        symbol=o.symbol if o else symbol,
        client_order_id=o.client_order_id if o else client_order_id,
        broker=broker,
        fill_id=fill_id,
        side=o.side if o else side,
        quantity=quantity,
        price=price,
        commission=commission,
    )


def cancelled(o: OrderApproved, broker: str, reason: str, ts: int = 0) -> OrderCancelled:
    return draft(
        OrderCancelled,
        ts_event=ts or time.time_ns(),
        account=o.account,
        symbol=o.symbol,
        client_order_id=o.client_order_id,
        broker=broker,
        reason=reason,
    )


def reported(ev: Event, broker: str, identity: str, cause: OrderApproved | None = None) -> Event:
    """Identity for an event the broker reports on its own: from the broker's id for it (a fill id),
    so the same report after a reconnect is the same event."""
    return msgspec.structs.replace(
        ev,
        event_id=derive_event_id(ev.ts_event, broker, ev.tag, identity),
        ts_init=time.time_ns(),
        source=broker,
        causation_id=cause.event_id if cause else "",
        correlation_id=(cause.correlation_id or cause.event_id) if cause else "",
    )
