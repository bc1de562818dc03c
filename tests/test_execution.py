"""The execution gateway on a real JetStream: reservation, dry-run, reconcile after the duplicate window, halt."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client

from tapeline.adapters.brokers.base import ExecutionConfig, Mt5BrokerConfig
from tapeline.adapters.brokers.gateway import ExecutionGateway
from tapeline.adapters.brokers.mt5 import Mt5Broker
from tapeline.bus.components import ComponentRunner
from tapeline.bus.publisher import Publisher
from tapeline.bus.topology import Retention
from tapeline.pipeline import provision_system
from tapeline.schemas.events import (
    AnyEvent,
    CircuitBreakerTripped,
    OrderApproved,
    OrderCancelled,
    OrderRejected,
    OrderReserved,
    OrderSubmitted,
)
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import ORDER
from tests.helpers import consumer_state, stored, wait_stored, wait_until
from tests.standins.metatrader5 import ORDER_STATE_CANCELED, TradingTerminal

ACCOUNT = "ACC1"


def approval(cid: str, symbol: str = "EURUSD", **kw: object) -> OrderApproved:
    fields: dict[str, object] = {"side": "BUY", "quantity": 1.0}
    fields.update(kw)
    return OrderApproved(
        event_id=new_event_id(), ts_event=time.time_ns(), ts_init=time.time_ns(), source="risk",
        account=ACCOUNT, symbol=symbol, client_order_id=cid, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def tags(events: list[AnyEvent], cid: str) -> list[str]:
    return [e.tag for e in events if getattr(e, "client_order_id", None) == cid]


async def drained(nc: Client, prefix: str) -> bool:
    info = await consumer_state(nc, ORDER.stream(prefix), "execution_order")
    return bool(info) and not info["num_pending"] and not info["num_ack_pending"]  # type: ignore[index]


class Running:
    """One execution gateway run by the real JetStream component runner."""

    def __init__(self, nc: Client, publisher: Publisher, gateway: ExecutionGateway) -> None:
        self.gateway = gateway
        self.runner = ComponentRunner(nc, publisher, gateway, publisher.prefix)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.runner.run())
        settled = asyncio.create_task(self.runner.settled.wait())
        await asyncio.wait([settled, self.task], return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
        if self.task.done():
            self.task.result()  # the runner failed to start: say why
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
        await self.gateway.aclose()


@pytest.fixture
def terminal() -> TradingTerminal:
    return TradingTerminal({"EURUSD": (1.0840, 1.0842), "US500": (4990.0, 4990.5)})


def mt5_gateway(terminal: TradingTerminal) -> ExecutionGateway:
    cfg = ExecutionConfig(broker="mt5", account=ACCOUNT, mt5=Mt5BrokerConfig(poll_s=0.05))
    return ExecutionGateway(cfg, broker=Mt5Broker(cfg.mt5, mt5=terminal))


async def test_dry_run_records_the_order_and_sends_nothing(nc: Client, publisher: Publisher, provisioned: str) -> None:
    a = approval("dec-1:0")
    async with Running(nc, publisher, ExecutionGateway()):
        await publisher.publish([a])
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_submitted" in tags(e, "dec-1:0"))
    sub = next(e for e in evs if isinstance(e, OrderSubmitted))
    assert (sub.broker, sub.causation_id, sub.account, sub.symbol) == ("dry-run", a.event_id, ACCOUNT, "EURUSD")
    res = next(e for e in evs if isinstance(e, OrderReserved))
    assert res.subject(provisioned) == f"{provisioned}.order.reserve.dec-1:0".replace(":", "=3A")
    assert tags(evs, "dec-1:0") == ["order_approved", "order_reserved", "order_submitted"]


async def test_market_order_once_and_an_old_approval_after_the_duplicate_window_sends_nothing(
    nc: Client, prefix: str, terminal: TradingTerminal
) -> None:
    await provision_system(nc, prefix, Retention(md_max_bytes=-1, record_duplicate_window_s=1))
    pub = await Publisher(nc, prefix, role="test").start()
    a = approval("dec-2:0")
    stream = ORDER.stream(prefix)
    async with Running(nc, pub, mt5_gateway(terminal)):
        await pub.publish([a])
        first = await wait_stored(nc, stream, "", lambda e: "order_filled" in tags(e, "dec-2:0"))
    assert tags(first, "dec-2:0") == ["order_approved", "order_reserved", "order_submitted", "order_accepted",
                                      "order_filled"]  # fmt: skip
    assert terminal.orders_with("dec-2:0") == 1

    async with Running(nc, pub, mt5_gateway(terminal)):  # a fresh process: nothing in memory
        replayed = 0
        while not replayed:  # the same approval again, until JetStream no longer drops it as a duplicate
            replayed = (await pub.publish([a])).stored
            await asyncio.sleep(0.1)
        await wait_until(lambda: drained(nc, prefix))
    assert terminal.orders_with("dec-2:0") == 1 and terminal.sent() == ["dec-2:0"]
    after = await stored(nc, stream)
    assert tags(after, "dec-2:0") == [*tags(first, "dec-2:0"), "order_approved"]  # nothing re-published
    await pub.close()


async def test_reconciles_an_order_the_broker_has_without_resubmitting(
    nc: Client, publisher: Publisher, provisioned: str, terminal: TradingTerminal
) -> None:
    """A reservation exists and the broker has the order (the process died before the answer)."""
    a = approval("dec-3:0", order_type="LIMIT", limit_price=1.05)
    gw = mt5_gateway(terminal)
    gw.nc, gw.prefix = nc, provisioned
    assert await gw.reserve(a) == 0
    assert await gw.reserve(a) > 0  # the second attempt loses, whoever makes it
    terminal.order_send({"action": 5, "symbol": "EURUSD", "volume": 1.0, "type": 2, "price": 1.05,
                         "magic": gw.cfg.mt5.magic, "comment": "dec-3:0"})  # fmt: skip
    async with Running(nc, publisher, gw):
        await publisher.publish([a])
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_accepted" in tags(e, "dec-3:0"))
    assert terminal.orders_with("dec-3:0") == 1 and terminal.sent() == ["dec-3:0"]
    assert tags(evs, "dec-3:0") == ["order_reserved", "order_approved", "order_submitted", "order_accepted"]


async def test_unknown_broker_state_is_retried_never_submitted(
    nc: Client, publisher: Publisher, provisioned: str, terminal: TradingTerminal
) -> None:
    a = approval("dec-4:0")
    gw = mt5_gateway(terminal)
    gw.nc, gw.prefix = nc, provisioned
    await gw.reserve(a)  # an earlier attempt claimed it, then the terminal lost its server
    terminal.connected = False
    async with Running(nc, publisher, gw):
        await publisher.publish([a])
        # asked again and again, past the 5 deliveries after which other requests are dead-lettered
        await wait_until(lambda: terminal.calls.get("terminal_info", 0) >= 6, timeout=120)
        assert terminal.sent() == []
        terminal.connected = True  # back: the broker says it has no such order -> the one submit
        await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_filled" in tags(e, "dec-4:0"))
    assert terminal.sent() == ["dec-4:0"]


async def test_halt_cancels_working_orders_and_refuses_new_ones(
    nc: Client, publisher: Publisher, provisioned: str, terminal: TradingTerminal
) -> None:
    limits = [approval(f"dec-5:{i}", order_type="LIMIT", limit_price=1.0 + i / 100) for i in range(3)]
    stream = ORDER.stream(provisioned)
    async with Running(nc, publisher, mt5_gateway(terminal)):
        await publisher.publish(limits)
        await wait_stored(nc, stream, "", lambda e: sum(x.tag == "order_accepted" for x in e) == 3)
        halt = CircuitBreakerTripped(event_id=new_event_id(), ts_event=time.time_ns(), ts_init=time.time_ns(),
                                     source="operator", breaker="halt", reason="tapeline halt")  # fmt: skip
        t0 = time.perf_counter()
        await publisher.publish([halt])
        evs = await wait_stored(nc, stream, "", lambda e: sum(isinstance(x, OrderCancelled) for x in e) == 3)
        ms = (time.perf_counter() - t0) * 1000
        print(f"halt -> 3 working orders cancelled at the broker and recorded: {ms:.1f} ms")
        assert ms < 2000  # generous on a busy machine; the figure is what the README reports
        late = approval("dec-5:9")
        await publisher.publish([late])
        evs = await wait_stored(nc, stream, "", lambda e: "order_rejected" in tags(e, "dec-5:9"))
    assert all(o.state == ORDER_STATE_CANCELED for o in terminal.orders.values())
    assert "dec-5:9" not in terminal.sent()
    rej = next(e for e in evs if isinstance(e, OrderRejected))
    assert "halted by halt" in rej.reason


async def test_paper_fills_at_the_next_tick_with_slippage_and_commission(
    nc: Client, publisher: Publisher, provisioned: str
) -> None:
    from tapeline.schemas.events import OrderFilled, Tick

    cfg = ExecutionConfig(broker="paper", slippage_bps=10.0, commission_per_share=0.01, commission_min=1.0)
    a = approval("dec-6:0", symbol="NVDA", quantity=200.0)
    stream = ORDER.stream(provisioned)

    def tick(dt_ns: int, bid: float, ask: float) -> Tick:
        ts = a.ts_event + dt_ns
        return Tick(event_id=new_event_id(ts), ts_event=ts, ts_init=time.time_ns(), source="sim", venue="sim",
                    symbol="NVDA", bid=bid, ask=ask, last=bid)  # fmt: skip

    async with Running(nc, publisher, ExecutionGateway(cfg)):
        await publisher.publish([tick(-1_000, 99.0, 99.5), a])  # a tick before the order does not fill it
        await wait_stored(nc, stream, "", lambda e: "order_accepted" in tags(e, "dec-6:0"))
        await publisher.publish([tick(5_000, 100.0, 100.2), tick(9_000, 101.0, 101.2)])
        evs = await wait_stored(nc, stream, "", lambda e: "order_filled" in tags(e, "dec-6:0"))
    f = next(e for e in evs if isinstance(e, OrderFilled))
    assert f.price == pytest.approx(100.2 * 1.001) and f.commission == 2.0 and f.quantity == 200.0
    assert f.ts_event == a.ts_event + 5_000 and f.broker == "paper"
