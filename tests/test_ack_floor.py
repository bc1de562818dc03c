"""The ack floor of an ordered consumer whose sink commits behind what it processed (a read model that
buffers, ``committed_seq``), and the publisher's window, on a real nats-server.

(Pipelined acks for handlers, which these tests came with, were removed in session 7: see
docs/performance.md.)
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.schemas.components import Consumes
from tapeline.schemas.events import Tick
from tapeline.schemas.subjects import MD
from tests.helpers import read_stream, stream_last_seq, wait_until


async def test_a_full_window_makes_senders_wait_and_stores_everything(nc: Client, provisioned: str) -> None:
    """Window of 2 and three senders at once: each waits for a free slot; every message is stored once."""
    publisher = await Publisher(nc, provisioned, role="small-window", window=2).start()
    ticks = list(SimFeed(["A", "B"], ticks=300, seed=4).generate())
    try:
        await asyncio.gather(*(publisher.publish(ticks[i::3]) for i in range(3)))
    finally:
        await publisher.close()
    assert publisher._free == 2 and not publisher._waiting
    stored_ids = [e.event_id for _, e in await read_stream(nc, MD.stream(provisioned))]
    assert sorted(stored_ids) == sorted(t.event_id for t in ticks)


class _OneBehind:
    """Commits each batch when the next one comes (a buffering read model, batch by batch behind the newest),
    and notes, as each batch starts, whether the runtime has acked all the batches committed before it."""

    def __init__(self) -> None:
        self.runtime: ConsumerRuntime | None = None
        self.ends: list[int] = []
        self.committed_seq = 0
        self.lagged: list[tuple[int, int]] = []

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        assert self.runtime is not None
        if self.runtime.last_acked < self.committed_seq:
            self.lagged.append((self.runtime.last_acked, self.committed_seq))
        self.committed_seq = self.ends[-1] if self.ends else 0  # the previous batch is committed now
        self.ends.append(batch[-1].delivery.stream_seq)
        return {}

    async def flush(self) -> None:
        self.committed_seq = self.ends[-1] if self.ends else 0


async def test_the_ack_floor_follows_committed_batches_during_a_catch_up(nc: Client, provisioned: str) -> None:
    """What is committed is a batch behind the newest: the runtime must ack the last delivery of the
    newest committed batch then, not wait until the sink catches up (an ack floor once stood still for
    ~20k ticks that way)."""
    publisher = await Publisher(nc, provisioned, role="floor").start()
    ticks = list(SimFeed(["A", "B"], ticks=20_000, seed=8).generate())
    for i in range(0, len(ticks), 5000):
        await publisher.publish(ticks[i : i + 5000])
    spec = ConsumerSpec(
        stream=MD.stream(provisioned),
        durable="one_behind",
        filter_subjects=(Consumes(Tick).pattern(provisioned),),
        ordered=True,
        batch=1000,
    )
    sink = _OneBehind()
    rt = sink.runtime = ConsumerRuntime(nc, publisher, spec, sink, start_seq=1)
    task = asyncio.create_task(rt.run())
    try:
        last = await stream_last_seq(nc, MD.stream(provisioned))
        await wait_until(lambda: rt.last_acked == last, timeout=120)
        rt.stop()
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
    assert len(sink.ends) >= 20 and not sink.lagged, f"acked behind what was committed: {sink.lagged}"
