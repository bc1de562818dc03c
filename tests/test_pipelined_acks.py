"""Pipelined acks (bus.components, ``ComponentRunner(pipeline=...)``) on a real nats-server: the same
outputs and acks as waiting for each batch, and a refused publish holds its input and is retried.

The kill -9 and server-restart stories run the deployed processes, with pipelining on by default:
tests/test_kill.py (handlers killed mid-stream) and tests/test_server_restart.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import ComponentRunner, HandlerSink, SnapshotStore
from tapeline.bus.consumer import Delivery
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, Failure
from tapeline.pipeline import provision_system
from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, Event, Tick
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import ack_floor, consumer_state, read_stream, stream_last_seq, wait_until

TICKS = 1200


class _Count(Handler):
    """Ordered and stateful: output ``n`` says it is the n-th tick seen, so a batch applied twice shows,
    and two outputs per tick make each batch a group of several publishes."""

    name = "pipelined_count"
    role = "test"
    state = Snapshot(every_s=0.3)
    consumes = (Consumes(Tick),)
    emits = (Alert,)

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def handle(self, event: AnyEvent) -> list[Event]:
        self.seen += 1
        return [
            draft(Alert, ts_event=event.ts_event, severity="warning", kind="count", key=k, message=f"seen {self.seen}")
            for k in ("a", "b")
        ]

    def snapshot(self) -> bytes:
        return str(self.seen).encode()

    def restore(self, data: bytes) -> None:
        self.seen = int(data)


BATCH = 50  # the handler's pull batch: many batches, taken back to back from what is stored


async def _feed(publisher: Publisher) -> None:
    """Every tick stored before the handler starts: its batches follow each other without a wait, so a
    pipelined run has earlier batches in flight whatever the machine's load."""
    ticks = list(SimFeed(["A", "B"], ticks=TICKS, seed=8).generate())
    for i in range(0, len(ticks), 100):
        await publisher.publish(ticks[i : i + 100])


def _runner(nc: Client, publisher: Publisher, handler: Handler, prefix: str, pipeline: int) -> ComponentRunner:
    runner = ComponentRunner(nc, publisher, handler, prefix, standby=False, pipeline=pipeline)
    runner.specs = [msgspec.structs.replace(spec, batch=BATCH) for spec in runner.specs]
    return runner


async def _run(nc: Client, prefix: str, pipeline: int) -> tuple[list[tuple[str, str, str]], int, HandlerSink, Any]:
    """Run the handler over the feed; return its outputs in stream order, its input's last sequence,
    its sink and its final snapshot."""
    publisher = await Publisher(nc, prefix, role=f"pipelined-{pipeline}").start()
    handler = _Count()
    await _feed(publisher)
    runner = _runner(nc, publisher, handler, prefix, pipeline)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(runner.settled.is_set, timeout=60)
        md = MD.stream(prefix)
        last = await stream_last_seq(nc, md)
        durable = runner.specs[0].durable

        async def acked() -> bool:
            info = await consumer_state(nc, md, durable)
            return bool(info) and info["ack_floor"]["stream_seq"] == last and not info["num_ack_pending"]  # type: ignore[index]

        await wait_until(acked, timeout=120)
        runner.stop()
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
    assert handler.seen == TICKS
    out = [(e.event_id, e.key, e.message) for _, e in await read_stream(nc, OPS.stream(prefix)) if isinstance(e, Alert)]
    saved = await SnapshotStore(nc, prefix).load(durable)
    sink = runner.sinks[0]
    assert isinstance(sink, HandlerSink)
    return out, last, sink, saved


async def test_pipelined_outputs_and_acks_are_those_of_waiting_for_each_batch(nc: Client, provisioned: str) -> None:
    other = f"{provisioned}w"
    await provision_system(nc, other)
    waited, last_w, sink_w, saved_w = await _run(nc, other, pipeline=0)
    piped, last_p, _, saved_p = await _run(nc, provisioned, pipeline=4)

    # (whether the pipelined run overlapped batches depends on when pulls and acks arrive; the test
    # below overlaps them for sure)
    assert sink_w.overlapped == 0
    assert len(piped) == 2 * TICKS and len({i for i, _, _ in piped}) == 2 * TICKS
    assert piped == waited, "same ids, same content, same stream order"
    assert [m for _, _, m in piped[::2]] == [f"seen {n}" for n in range(1, TICKS + 1)]
    assert last_p == last_w
    # the final snapshot: the whole state with the whole input, acked
    for saved, last in ((saved_w, last_w), (saved_p, last_p)):
        assert saved is not None and saved.seq == last and saved.state == str(TICKS).encode()


async def test_the_next_batch_is_handled_before_the_last_ones_acks_and_committed_only_after(
    nc: Client, provisioned: str
) -> None:
    """Four batches back to back: none waits for the acks of the one before (nothing reads them in
    between), and ``committed_seq`` (what the runtime acks up to) moves only once they are stored."""
    publisher = await Publisher(nc, provisioned, role="pipelined-sink").start()
    ticks = list(SimFeed(["A"], ticks=20, seed=3).generate())
    received = [
        Received(Delivery(t.subject(provisioned), b"", b"", "", i + 1, 1, 0, 0), [t]) for i, t in enumerate(ticks)
    ]
    handler = _Count()
    sink = HandlerSink(handler, publisher, pipeline=4)
    try:
        for k in range(0, 20, 5):
            await sink.process(received[k : k + 5])
        assert handler.seen == 20 and sink.position == 20 and sink.overlapped == 3
        assert sink.committed_seq == 0 and sink.unfinished, "committed before the outputs were stored"
        await sink.flush()
        assert sink.committed_seq == 20 and not sink.unfinished
    finally:
        await publisher.close()
    out = [e for _, e in await read_stream(nc, OPS.stream(provisioned)) if isinstance(e, Alert)]
    assert [e.message for e in out[::2]] == [f"seen {n}" for n in range(1, 21)]


async def test_a_refused_publish_holds_its_input_unacked_and_is_retried(nc: Client, provisioned: str) -> None:
    """The outputs' stream refuses new messages past a limit (discard new): the input of the first
    refused output and everything after stays unacked, nothing new is handled past the failure, and
    once the limit is raised the refused outputs are re-sent: every output exactly once, in order."""
    api = JetStreamApi(nc)
    ops = OPS.stream(provisioned)
    cfg = (await api.stream_info(ops) or {})["config"]
    limit = 2 * 300 + 1  # the 301st tick's second output is the first refused
    await api.call(f"STREAM.UPDATE.{ops}", {**cfg, "max_msgs": limit, "discard": "new"})

    publisher = await Publisher(nc, provisioned, role="pipelined-refused").start()
    handler = _Count()
    await _feed(publisher)
    runner = _runner(nc, publisher, handler, provisioned, 4)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(runner.settled.is_set, timeout=60)
        md = MD.stream(provisioned)
        durable = runner.specs[0].durable
        rt = runner.runtimes[0]
        sink = runner.sinks[0]
        assert isinstance(sink, HandlerSink)

        async def refused() -> bool:  # the failure is known to the sink: it re-sends before anything new
            return await stream_last_seq(nc, ops) == limit and any(f.sent is None for f in sink._inflight)

        await wait_until(refused, timeout=120)
        floor = await ack_floor(nc, md, durable)
        assert floor < rt.handled_seq, "acked past a refused output"
        # the refused batch and at most the three after it, sent before its refusal was known
        assert handler.seen <= 300 + 4 * BATCH, "handled on while an earlier output was refused"
        held = handler.seen
        await api.call(f"STREAM.UPDATE.{ops}", {**cfg, "max_msgs": -1, "discard": "old"})
        last = await stream_last_seq(nc, md)

        async def done() -> bool:
            return await ack_floor(nc, md, durable) == last

        await wait_until(done, timeout=120)
        runner.stop()
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
    assert held < TICKS and handler.seen == TICKS
    out = [e for _, e in await read_stream(nc, ops) if isinstance(e, Alert)]
    assert len(out) == len({e.event_id for e in out}) == 2 * TICKS
    assert [e.message for e in out[::2]] == [f"seen {n}" for n in range(1, TICKS + 1)]


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


class _Watched(HandlerSink):
    """Notes, as each batch starts, whether the runtime has acked all the batches committed before it."""

    def __init__(self, handler: Handler, publisher: Publisher) -> None:
        super().__init__(handler, publisher, pipeline=4)
        self.runtime: ConsumerRuntime | None = None
        self.ends: list[int] = []
        self.committed = 0
        self.lagged: list[tuple[int, int]] = []

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        assert self.runtime is not None
        covered = max((e for e in self.ends if e <= self.committed), default=0)
        if self.runtime.last_acked < covered:
            self.lagged.append((self.runtime.last_acked, covered))
        failures = await super().process(batch)
        self.ends.append(self.position)
        self.committed = self.committed_seq  # what the runtime acks up to right after this returns
        return failures


async def test_the_ack_floor_follows_committed_batches_during_a_catch_up(nc: Client, provisioned: str) -> None:
    """With batches in flight, what is committed is a batch or more behind the newest: the runtime must
    ack the last delivery of the newest committed batch then, not wait until the handler catches up (a
    bars ack floor once stood still for ~20k ticks that way)."""
    publisher = await Publisher(nc, provisioned, role="pipelined-floor").start()
    ticks = list(SimFeed(["A", "B"], ticks=20_000, seed=8).generate())
    for i in range(0, len(ticks), 5000):
        await publisher.publish(ticks[i : i + 5000])
    spec = msgspec.structs.replace(_runner(nc, publisher, _Count(), provisioned, 4).specs[0], batch=1000)
    sink = _Watched(_Count(), publisher)
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
