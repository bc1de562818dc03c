"""The bus across a nats-server restart: pull credit, publish acks in flight, ephemeral readers, lag metric.

Each test has its own server (it gets killed), restarted on the same store and port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, TapelineClient, close_connection, connect, redact_url
from tapeline.bus.consumer import ConsumerLost, Delivery, PullLoop
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import durable_config, provision
from tapeline.schemas.events import Tick
from tests.helpers import stored, stream_last_seq, wait_until

PREFIX = "rc"
MD = "RC_MD"
TICKS = f"{PREFIX}.md.tick.>"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    srv = EmbeddedNats(tmp_path / "nats")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def nc(server: EmbeddedNats) -> AsyncIterator[TapelineClient]:
    client = await connect(NatsSettings(url=server.url, name="reconnect-test"))
    await provision(client, PREFIX)
    yield client
    await close_connection(client, 2.0)


def ticks(n: int, seed: int = 1) -> list[Tick]:
    return list(SimFeed(["NVDA", "ORCL"], ticks=n, seed=seed).generate())


async def reconnected(nc: TapelineClient, before: int) -> bool:
    return bool(nc.stats["reconnects"] > before and nc.is_connected)


async def restart(server: EmbeddedNats, nc: TapelineClient) -> None:
    """kill -9 the server, start it again on the same store and port, wait until ``nc`` is back."""
    before = int(nc.stats["reconnects"])
    server.kill()
    server.start()
    await wait_until(lambda: reconnected(nc, before), timeout=60)


async def drain_into(loop: PullLoop, got: list[Delivery], n: int, within: float) -> None:
    async def enough() -> bool:
        for d in await loop.next_batch():
            got.append(d)
            await loop.ack(d)
        return len(got) >= n

    await wait_until(enough, timeout=within, every=0)


@pytest.mark.parametrize("told", [True, False], ids=["told-of-the-drop", "credit-lapses-on-its-own"])
async def test_pull_loop_pulls_again_after_the_server_forgot_its_request(
    server: EmbeddedNats, nc: TapelineClient, told: bool
) -> None:
    """Restart under an open request. Told of the drop, the loop voids its credit at once (its 30 s
    request would otherwise hold it); not told, the credit of its 1 s request lapses by itself."""
    api = JetStreamApi(nc)
    await api.ensure_consumer(MD, durable_config("d_pull", [TICKS]))
    loop = PullLoop(nc, MD, "d_pull", batch=100, expires_s=30.0 if told else 1.0)
    await loop.start()
    if not told:
        nc.unwatch(loop)
    pub = await Publisher(nc, PREFIX).start()
    got: list[Delivery] = []
    try:
        await pub.publish(ticks(10, seed=1))
        await drain_into(loop, got, 10, within=30)
        assert loop.credit > loop.batch // 2, "an open request the loop counts on"
        await restart(server, nc)
        await pub.publish(ticks(10, seed=2))
        await drain_into(loop, got, 20, within=20)  # a 30 s request's credit would still block at 20 s
    finally:
        await pub.close()
        await loop.stop()
    assert len({d.stream_seq for d in got}) == 20


async def test_publish_with_acks_in_flight_across_a_restart_stores_each_event_once(
    server: EmbeddedNats, nc: TapelineClient
) -> None:
    events = ticks(30_000, seed=4)
    pub = await Publisher(nc, PREFIX, ack_timeout=30.0).start()  # only the re-send on reconnect is in time
    try:
        publishing = asyncio.create_task(pub.publish(events))

        async def under_way() -> bool:
            return 0 < await stream_last_seq(nc, MD) < len(events) or publishing.done()

        await wait_until(under_way, timeout=60, every=0.005)
        assert not publishing.done(), "the publish finished before the kill: raise the count"
        await restart(server, nc)
        result = await asyncio.wait_for(publishing, 20)
    finally:
        await pub.close()
    ids = [e.event_id for e in await stored(nc, MD, TICKS)]
    assert len(ids) == len(set(ids)) == len(events)
    assert result.stored + result.duplicates == len(events)


async def test_a_reader_on_an_ephemeral_consumer_fails_clearly_after_a_restart(
    server: EmbeddedNats, nc: TapelineClient
) -> None:
    pub = await Publisher(nc, PREFIX).start()
    await pub.publish(ticks(10))
    await pub.close()
    api = JetStreamApi(nc)
    name = await api.create_ordered_consumer(
        MD, {"deliver_policy": "all", "ack_policy": "none", "mem_storage": True, "inactive_threshold": 30 * 10**9}
    )
    loop = PullLoop(nc, MD, name, batch=5)  # a reader: takes 5 of 10, then the server goes away
    await loop.start()
    try:
        await wait_until(loop.next_batch, timeout=30)
        await restart(server, nc)
        with pytest.raises(ConsumerLost, match=f"consumer {name} on {MD} is gone"):
            await asyncio.wait_for(_read_all(loop), 30)
    finally:
        await loop.stop()


async def _read_all(loop: PullLoop) -> None:
    while await loop.next_batch():
        pass
    raise AssertionError("the read ended quietly, short of the stream's end")


class _Held:
    """Holds its first batch until released: the server restarts while the consumer is mid-stream."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        if not self.seqs:
            self.holding.set()
            await self.release.wait()
        self.seqs += [r.delivery.stream_seq for r in batch]
        return {}


async def test_an_ordered_consumer_goes_on_after_its_last_message_across_a_restart(
    server: EmbeddedNats, nc: TapelineClient
) -> None:
    """Messages in flight at the restart would otherwise come back only after ack_wait, behind newer ones.
    (Ephemeral readers fail clearly instead: see the test above.)"""
    pub = await Publisher(nc, PREFIX).start()
    await pub.publish(ticks(3000))
    sink = _Held()
    spec = ConsumerSpec(stream=MD, durable="d_ordered", filter_subjects=(TICKS,), ordered=True, batch=200)
    rt = ConsumerRuntime(nc, pub, spec, sink, start_seq=1)
    task = asyncio.create_task(rt.run())
    try:
        await asyncio.wait_for(sink.holding.wait(), 30)
        before = int(nc.stats["reconnects"])
        server.stop()  # graceful: the server remembers what it delivered, we lose what was in flight
        server.start()
        await wait_until(lambda: reconnected(nc, before), timeout=60)
        sink.release.set()
        await wait_until(lambda: len(sink.seqs) >= 3000 or task.done(), timeout=60)
    finally:
        rt.stop()
        await asyncio.wait_for(task, 30)
        await pub.close()
    assert sink.seqs == list(range(1, 3001)), "every message once, in stream order"


class _Counting:
    def __init__(self) -> None:
        self.n = 0

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        self.n += len(batch)
        return {}


async def test_lag_metric_shows_the_backlog_of_an_idle_consumer(server: EmbeddedNats, nc: TapelineClient) -> None:
    """A consumer that receives nothing (here: paused on the server) must not report a lag of 0."""
    pub = await Publisher(nc, PREFIX).start()
    sink = _Counting()
    rt = ConsumerRuntime(nc, pub, ConsumerSpec(stream=MD, durable="d_lag", filter_subjects=(TICKS,)), sink)
    rt.loop.refresh_s = 0.2
    task = asyncio.create_task(rt.run())
    try:
        await pub.publish(ticks(5, seed=1))
        await wait_until(lambda: sink.n == 5 and rt.idle.is_set(), timeout=30)
        until = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await JetStreamApi(nc).call(f"CONSUMER.PAUSE.{MD}.d_lag", {"pause_until": until})
        await pub.publish(ticks(40, seed=2))

        def lag() -> float | None:
            return REGISTRY.get_sample_value("tapeline_consumer_pending_messages", {"consumer": "d_lag"})

        await wait_until(lambda: lag() == 40, timeout=30)
        assert sink.n == 5 and rt.pending == 40
    finally:
        rt.stop()
        await asyncio.wait_for(task, 30)
        await pub.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@h:4222", "nats://alice:***@h:4222"),
        ("nats://t0ken@h:4222", "nats://***@h:4222"),
        ("tls://a:b@h1:4222,nats://h2:4222", "tls://a:***@h1:4222,nats://h2:4222"),
        ("alice:pw@h:4222", "alice:***@h:4222"),
        ("nats://h:4222", "nats://h:4222"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_no_responders_is_retried_until_a_stream_takes_the_subject(nc: TapelineClient) -> None:
    """What a server that is stopping answers, too; the message goes in once the stream is there."""
    pub = await Publisher(nc, "late", role="late-test", ack_timeout=0.2, max_attempts=1000).start()
    publishing = asyncio.create_task(pub.publish(ticks(3)))

    def retried() -> float:
        labels = {"role": "late-test", "reason": "no_responders"}
        return REGISTRY.get_sample_value("tapeline_publish_retries_total", labels) or 0.0

    try:
        await wait_until(lambda: retried() >= 3, timeout=30)
        assert not publishing.done()
        await provision(nc, "late")
        result = await asyncio.wait_for(publishing, 30)
    finally:
        await pub.close()
    assert result.stored == 3
