"""Self-healing for bars the pipeline builds: every ``Bar`` on the bus is appended to the history store.

The bars handler turns live ticks into ``Bar`` events on ``md.bar.>``; the feed process never sees
them. The process that owns the history store (the market feed with ``[feeds.history] enabled``,
which also warms up from it) therefore runs one durable consumer, ``history_md``, on the bar
subjects and appends what arrives. One writer per store: the feed's own appends (its warm-up and
the bars it publishes) and these go through the same :class:`HistoryStore` object, so its index
stays right and compaction never races another process.

At least once is enough: ``append`` is idempotent (a redelivered or already stored bar writes
nothing; a bar with other values replaces the stored one), and the durable keeps its position, so a
feed restarted after a while first appends the bars built while it was down. Bars that came from
the store or a vendor are skipped by the same idempotence.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client

from tapeline.adapters.history import HistoryStore
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.schemas.components import Consumes, durable_name
from tapeline.schemas.events import Bar

log = structlog.get_logger("tapeline.feed")
NAME = "history"


class AppendSink:
    """The consumer's work: append a batch's bars, then they may be acked."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.seen = 0
        self.appended = 0

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        bars = [e for rec in batch for e in rec.events if isinstance(e, Bar)]
        self.seen += len(bars)
        if bars:
            self.appended += self.store.append(bars)
        return {}


class HistoryAppender:
    """Runs the ``history_md`` durable consumer into a store until stopped."""

    def __init__(self, nc: Client, publisher: Publisher, prefix: str, store: HistoryStore) -> None:
        want = Consumes(Bar)
        self.sink = AppendSink(store)
        spec = ConsumerSpec(
            stream=want.family.stream(prefix),
            durable=durable_name(NAME, want.family),
            filter_subjects=(want.pattern(prefix),),
            batch=500,
        )
        self.runtime = ConsumerRuntime(nc, publisher, spec, self.sink)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.runtime.run(), name=self.runtime.durable)
        started = asyncio.create_task(self.runtime.started.wait())
        await asyncio.wait([started, self._task], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()  # it failed to start: say why
        log.info("history appender started", durable=self.runtime.durable, store=str(self.sink.store.root))

    async def stop(self) -> None:
        self.runtime.stop()
        if self._task is not None:
            await self._task
        log.info("history appender stopped", seen=self.sink.seen, appended=self.sink.appended)
