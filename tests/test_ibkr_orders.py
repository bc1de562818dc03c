"""The IBKR broker: the real ib_async client against a TWS stand-in speaking the TWS API socket protocol,
driven by the execution gateway on a real JetStream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from tapeline.adapters.brokers.base import ExecutionConfig, IbkrBrokerConfig
from tapeline.adapters.brokers.gateway import ExecutionGateway
from tapeline.bus.publisher import Publisher
from tapeline.bus.topology import Retention
from tapeline.pipeline import provision_system
from tapeline.schemas.events import AnyEvent, CircuitBreakerTripped, OrderAccepted, OrderCancelled, OrderFilled
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import ORDER
from tests.helpers import stored, wait_stored, wait_until
from tests.standins.tws import ACCOUNT, TwsStandIn
from tests.test_execution import Running, approval, drained, tags


@pytest.fixture
def tws() -> Iterator[TwsStandIn]:
    t = TwsStandIn({"NVDA": (100.0, 100.1), "AAPL": (190.0, 190.05)})
    yield t
    t.close()


def ibkr_gateway(tws: TwsStandIn, **kw: object) -> ExecutionGateway:
    ib = IbkrBrokerConfig(port=tws.port, account=ACCOUNT, timeout_s=2.0, reconnect_initial_s=0.05,
                          reconnect_max_s=0.2, **kw)  # type: ignore[arg-type]  # fmt: skip
    return ExecutionGateway(ExecutionConfig(broker="ibkr", account="ACC1", ibkr=ib))


def of(evs: list[AnyEvent], cid: str, kind: type[AnyEvent]) -> list[AnyEvent]:
    return [e for e in evs if isinstance(e, kind) and getattr(e, "client_order_id", None) == cid]


async def test_market_order_accepted_then_filled_with_commission(
    nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn
) -> None:
    a = approval("dec-1:0", symbol="NVDA", quantity=300.0)
    async with Running(nc, publisher, ibkr_gateway(tws)):
        await publisher.publish([a])
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_filled" in tags(e, "dec-1:0"))
    assert tags(evs, "dec-1:0") == ["order_approved", "order_reserved", "order_submitted", "order_accepted",
                                    "order_filled"]  # fmt: skip
    [order] = tws.orders.values()
    assert (order.order_ref, order.account, order.action, order.quantity) == ("dec-1:0", ACCOUNT, "BUY", 300.0)
    acc = of(evs, "dec-1:0", OrderAccepted)[0]
    assert isinstance(acc, OrderAccepted) and acc.broker_order_id == str(order.perm_id)
    fill = of(evs, "dec-1:0", OrderFilled)[0]
    assert isinstance(fill, OrderFilled)
    [x] = tws.executions
    assert (fill.fill_id, fill.price, fill.quantity, fill.commission) == (x.exec_id, 100.1, 300.0, 1.5)
    assert fill.causation_id == a.event_id and fill.broker == "ibkr"


async def test_unknown_contract_is_rejected_with_tws_message(
    nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn
) -> None:
    async with Running(nc, publisher, ibkr_gateway(tws)):
        await publisher.publish([approval("dec-2:0", symbol="NOPE")])
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_rejected" in tags(e, "dec-2:0"))
    rej = evs[-1]
    assert rej.tag == "order_rejected" and "200" in rej.reason and "security definition" in rej.reason  # type: ignore[union-attr]
    assert tws.orders == {}


async def test_unanswered_order_is_looked_up_by_order_ref_not_resubmitted(
    nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn
) -> None:
    """TWS books the order but its answer never comes: the retry finds it by orderRef, with its fill."""
    tws.hold = "after"
    async with Running(nc, publisher, ibkr_gateway(tws)):
        await publisher.publish([approval("dec-3:0", symbol="NVDA")])
        await wait_until(lambda: tws.held)
        tws.hold = ""
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_filled" in tags(e, "dec-3:0"))
        await wait_until(lambda: drained(nc, provisioned))
    assert tws.places == ["dec-3:0"] and tws.orders_with("dec-3:0") == 1
    assert sorted(tags(evs, "dec-3:0")) == sorted(["order_approved", "order_reserved", "order_submitted",
                                                   "order_accepted", "order_filled"])  # fmt: skip


async def test_reconnect_reports_what_happened_meanwhile_and_an_old_approval_sends_nothing(
    nc: Client, prefix: str, tws: TwsStandIn
) -> None:
    await provision_system(nc, prefix, Retention(md_max_bytes=-1, record_duplicate_window_s=1))
    pub = await Publisher(nc, prefix, role="test").start()
    a = approval("dec-4:0", symbol="AAPL", order_type="LIMIT", limit_price=185.0)
    stream = ORDER.stream(prefix)
    async with Running(nc, pub, ibkr_gateway(tws)):
        await pub.publish([a])
        await wait_stored(nc, stream, "", lambda e: "order_accepted" in tags(e, "dec-4:0"))
        tws.drop()  # TWS restarts; the limit order fills while nobody is connected
        tws.quote("AAPL", 184.9, 184.95)
        evs = await wait_stored(nc, stream, "", lambda e: "order_filled" in tags(e, "dec-4:0"))
    assert tws.connects == 2
    fill = of(evs, "dec-4:0", OrderFilled)[0]
    assert isinstance(fill, OrderFilled) and (fill.price, fill.fill_id) == (185.0, tws.executions[0].exec_id)

    async with Running(nc, pub, ibkr_gateway(tws)):  # a fresh process; the approval again, after the window
        replayed = 0
        while not replayed:
            replayed = (await pub.publish([a])).stored
            await asyncio.sleep(0.1)
        await wait_until(lambda: drained(nc, prefix))
    assert tws.places == ["dec-4:0"] and tws.orders_with("dec-4:0") == 1
    after = await stored(nc, stream)
    assert tags(after, "dec-4:0") == [*tags(evs, "dec-4:0"), "order_approved"]  # nothing re-published
    await pub.close()


async def test_unreachable_tws_is_retried_never_submitted(
    nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn
) -> None:
    tws.refuse = True
    async with Running(nc, publisher, ibkr_gateway(tws)):
        await publisher.publish([approval("dec-5:0", symbol="NVDA")])
        await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_reserved" in tags(e, "dec-5:0"))
        assert tws.places == []
        tws.refuse = False  # back, nothing of ours there: the one submit
        await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_filled" in tags(e, "dec-5:0"))
    assert tws.places == ["dec-5:0"]


def retries() -> float:
    """Deliveries the runtime gave back to be retried (a handler raised), over every consumer of this process."""
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "tapeline_events_failed"
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("outcome") == "retry"
    )


@pytest.mark.parametrize("restores", [[True], [False], [False, None, True]], ids=["1101", "1102", "flapping"])
async def test_orders_wait_while_tws_has_lost_the_ib_servers_and_go_once_after(
    nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn, restores: list[bool | None]
) -> None:
    """Error 1100: approvals are retried, never sent; 1101/1102: TWS's book is read afresh, then one submit.
    Flapping (1102, 1100, 1101 back to back, a relink's read overlapping the second loss) ends linked too."""
    gateway = ibkr_gateway(tws)
    async with Running(nc, publisher, gateway):
        tws.lose()
        await wait_until(lambda: not gateway.broker.linked)  # type: ignore[attr-defined]
        before = retries()
        await publisher.publish([approval("dec-7:0", symbol="NVDA")])
        await wait_until(lambda: retries() > before)  # the request was tried while lost, and given back
        assert tws.places == []
        for data_lost in restores:
            tws.lose() if data_lost is None else tws.restore(data_lost=data_lost)
        evs = await wait_stored(nc, ORDER.stream(provisioned), "", lambda e: "order_filled" in tags(e, "dec-7:0"))
        await wait_until(lambda: drained(nc, provisioned))
    assert tws.places == ["dec-7:0"] and tws.orders_with("dec-7:0") == 1
    assert tags(evs, "dec-7:0").count("order_submitted") == 1 and len(of(evs, "dec-7:0", OrderFilled)) == 1


async def test_halt_cancels_working_orders(nc: Client, publisher: Publisher, provisioned: str, tws: TwsStandIn) -> None:
    limits = [approval(f"dec-6:{i}", symbol="NVDA", order_type="LIMIT", limit_price=90.0 + i) for i in range(3)]
    stream = ORDER.stream(provisioned)
    async with Running(nc, publisher, ibkr_gateway(tws)):
        await publisher.publish(limits)
        await wait_stored(nc, stream, "", lambda e: sum(x.tag == "order_accepted" for x in e) == 3)
        assert len(tws.working()) == 3
        halt = CircuitBreakerTripped(event_id=new_event_id(), ts_event=time.time_ns(), ts_init=time.time_ns(),
                                     source="operator", breaker="halt", reason="tapeline halt")  # fmt: skip
        t0 = time.perf_counter()
        await publisher.publish([halt])
        evs = await wait_stored(nc, stream, "", lambda e: sum(isinstance(x, OrderCancelled) for x in e) == 3)
        print(f"halt -> 3 working IBKR orders cancelled and recorded: {(time.perf_counter() - t0) * 1000:.1f} ms")
        await wait_until(lambda: drained(nc, provisioned))
    assert tws.working() == [] and len(tws.cancels) == 3
    assert all("halted by halt" in e.reason for e in evs if isinstance(e, OrderCancelled))
    assert len([e for e in evs if isinstance(e, OrderCancelled)]) == 3  # TWS's own Cancelled status not doubled
