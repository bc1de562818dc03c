"""Urgent consumers (``ConsumerSpec.urgent``: bars, momentum, decision) are served first in their process.

A bar close wakes several consumers of the handlers process with one socket read; the urgent one (on
the tick -> decision path) must handle its batch before the others woken with it, whatever order
the deliveries came in. Real nats-server; the event loop is held while both deliveries arrive, so
one read hands over both, the non-urgent one first.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios
import time

from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import ComponentRunner
from tapeline.bus.connection import NatsSettings, TapelineClient, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.decision import DecisionSynthesis
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.handlers.momentum import MomentumConfig, MomentumSignal
from tapeline.schemas.codec import encode
from tapeline.schemas.components import Consumes
from tapeline.schemas.events import Tick
from tapeline.schemas.subjects import MD
from tests.helpers import wait_until


class _Order:
    """Notes which consumer handled a batch, in order."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.order = order

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        self.order.append(self.name)
        return {}


def _unread(nc: Client) -> int:
    """Bytes the server sent that this client's reader has not taken yet."""
    sock = nc._transport._io_writer.get_extra_info("socket")  # type: ignore[union-attr]
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


def _hold_until_unread(nc: Client, size: int, timeout_s: float = 60.0) -> None:
    """Block the event loop (nothing is read meanwhile) until ``size`` bytes wait in the socket."""
    deadline = time.monotonic() + timeout_s
    while _unread(nc) < size and time.monotonic() < deadline:
        time.sleep(0.002)
    assert _unread(nc) >= size, f"the deliveries did not arrive within {timeout_s} s"


async def test_the_tick_to_decision_path_is_declared_urgent(nc: Client, provisioned: str) -> None:
    publisher = Publisher(nc, provisioned)
    for handler, urgent in (
        (BarAggregator(), True),
        (MomentumSignal(MomentumConfig(interval="1m")), True),
        (DecisionSynthesis(), True),
        (MarketFeatures(), False),
    ):
        runner = ComponentRunner(nc, publisher, handler, provisioned)
        assert [spec.urgent for spec in runner.specs] == [urgent] * len(runner.specs), handler.name


async def test_an_urgent_consumer_handles_first_when_woken_with_others(
    nc: Client, provisioned: str, nats_url: str
) -> None:
    order: list[str] = []
    ticks = {t.symbol: t for t in SimFeed(["URG", "LOW"], ticks=40, seed=3).generate()}
    runtimes = []
    for name, symbol, urgent in (("low", "LOW", False), ("urgent", "URG", True)):
        spec = ConsumerSpec(
            stream=MD.stream(provisioned),
            durable=f"order_{name}",
            filter_subjects=(Consumes(Tick, {"symbol": symbol}).pattern(provisioned),),
            ordered=True,
            urgent=urgent,
            expires_s=60.0,  # no request-expired status on the socket during the test
        )
        runtimes.append(ConsumerRuntime(nc, Publisher(nc, provisioned), spec, _Order(name, order), start_seq=1))
    tasks = [asyncio.create_task(rt.run()) for rt in runtimes]
    feed = await connect(NatsSettings(url=nats_url, name="urgent-test-feed"))
    assert isinstance(feed, TapelineClient)
    try:
        for rt in runtimes:
            await wait_until(rt.started.is_set, timeout=60)
        low, urg = ticks["LOW"], ticks["URG"]
        payloads = [(low.subject(provisioned), encode(low)), (urg.subject(provisioned), encode(urg))]
        for rnd in range(3):
            order.clear()
            # the loop is held from here: "low"'s delivery is in the socket before "urgent"'s tick is sent
            unread = _unread(nc)
            for subject, payload in payloads:
                await feed.publish_raw(subject, payload)  # queued: nothing here yields to the loop
                feed.write_pending()  # on the socket now
                # a delivery is its payload plus a MSG line of well over 60 bytes (subject, sid, $JS.ACK reply)
                unread += len(payload) + 60
                _hold_until_unread(nc, unread)
            await wait_until(lambda: len(order) == 2, timeout=60)
            assert order == ["urgent", "low"], f"round {rnd}: {order}"
    finally:
        for rt in runtimes:
            rt.stop()
        for t in tasks:  # not waiting out the open pull requests
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await feed.drain()
