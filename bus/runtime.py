"""The one way to consume: a durable pull consumer, batched, acked only after the work is done.

A *sink* does the work for a batch (a handler publishes its outputs, a read model commits its
rows). The runtime owns everything around it: decoding, unknown versions, retries with a
growing delay, dead letters with stream sequence and reason, acks, metrics, and a graceful drain.
What a consumer is (stream, durable, filters, ordering) comes from a typed :class:`ConsumerSpec`
that ``bus.components`` derives from a component's declaration; reading history is
``bus.reader``'s job, not this loop's.

Ack policies: ``explicit`` for stateless consumers, which may share a durable across processes
(each message acked, nak'd or terminated on its own), and ``all`` for ordered consumers (stateful
components: acking the last message of a batch acks it all; a failed batch is retried in place,
never nak'd, so sequences are applied strictly in order; a message that fails on its own is
dead-lettered at once, since a pure function fails the same way every time). Read models are
ordered too, with ``none``: their position is their own checkpoint, where their durable is
re-created on every start and reconnect, so an ack would tell the server nothing they need; the
runtime handles them exactly as ``all`` but sends no ack frames (nats-server then keeps no pending
map for them either: ~1.5 µs less per message, benchmarks/bench_acks.py).

Order after a crash: JetStream redelivers a dead process's unacked messages only after
``ack_wait``, *after* newer ones. Ordered consumers therefore re-create their durable on start at
the position their owner trusts (a read model's checkpoint + 1, a snapshot's position + 1, the
ack floor + 1 after a warm-up); re-done work republishes the same deterministic ids.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple, Protocol, TypeVar

import msgspec
import structlog
from nats.aio.client import Client

from tapeline.bus.consumer import Delivery, PullLoop
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.metrics import (
    BATCH_SECONDS,
    CONSUMER_PENDING,
    EVENT_LATENCY,
    EVENTS_CONSUMED,
    EVENTS_FAILED,
    EVENTS_SKIPPED,
    zero_consumer_counters,
)
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received, new_received
from tapeline.bus.stall import Stalled
from tapeline.bus.topology import AckPolicy, durable_config
from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.events import DeadLetter, Event
from tapeline.schemas.ids import derive_event_id

log = structlog.get_logger("tapeline.bus")
T = TypeVar("T")


_gc_frozen = False


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Freeze what exists now for the length of a long job (a rebuild), unless something froze already
    (:func:`settle_gc`): then its freeze stays as it is. No ``gc.collect()`` first: a full collection
    costs 65-90 ms in a process that has imported DuckDB and Arrow (0.7-0.9 µs per event of a 100k-event
    rebuild), and whatever garbage gets frozen is unfrozen, and so collected, after."""
    if _gc_frozen or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def settle_gc() -> None:
    """Once the first consumer runs, what start-up built (modules, models, configuration) lives as long as
    the process: ``gc.freeze`` moves it out of the collector's sight, so a full collection scans only what
    came after. Without it a full collection in the handlers or projector process took 0.3-1 s of wall time
    on a loaded machine, in steady state (a 1 s tick->decision p99); with it 2-16 ms. Once per process:
    anything frozen that later becomes cyclic garbage is never freed."""
    global _gc_frozen
    if not _gc_frozen:
        _gc_frozen = True
        gc.freeze()
        atexit.register(gc.unfreeze)  # at exit the frozen objects must be finalised (DuckDB's bindings count them)


class Failure(NamedTuple):
    reason: str
    retry: bool  # False: poison, dead-letter at once


class Sink(Protocol):
    """Does the work for one batch. Returns failures by batch index; raising retries all.

    A sink may also have ``async idle()`` (called when a pull comes back empty) and
    ``async close()`` (called once after the last batch), e.g. to commit what it buffers.
    A sink that waits out a full disk or store (``bus.stall``) has ``stop()``, which ends the
    wait by raising :class:`Stalled`; the runtime then gives the batch up unacked.
    A sink that buffers has ``committed_seq: int``: with ack policy ``all`` (or ``none``) the runtime
    then acks (or counts as acked) only deliveries at or below it, so nothing is acked before it is
    committed. Such a sink may have ``async flush()``, which commits all it processed: the runtime calls
    it (retried like a batch) when a pull comes back empty and before it repositions after a reconnect.
    A sink with ``raw_filter(body) -> bool`` is handed the bodies it accepts undecoded (``Received.raw``,
    e.g. ticks DuckDB parses itself); it decodes any it then cannot take, and fails the undecodable ones
    (``retry=False``: dead-lettered). The runtime sets its ``on_skipped(seq, events)``, to count the
    events of unknown versions the sink's decoding skips as its own.
    """

    async def process(self, batch: list[Received]) -> dict[int, Failure]: ...


def dead_letter(d: Delivery, stream: str, consumer: str, reason: str) -> DeadLetter:
    now = time.time_ns()
    return DeadLetter(
        event_id=derive_event_id(d.ts_ns, "dead_letter", stream, d.stream_seq, consumer),
        ts_event=d.ts_ns,
        ts_init=now,
        source=consumer,
        stream=stream,
        stream_seq=d.stream_seq,
        subject_of_message=d.subject,
        consumer=consumer,
        reason=reason[:2000],
        deliveries=d.deliveries,
        payload=d.data[:4096].decode("utf-8", errors="replace"),
    )


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about one durable consumer; built from a component's declaration (``bus.components``).

    ``ordered``: one active instance (a lease), and the durable re-created at ``start_seq`` (the
    position its owner trusts) on every start and after a reconnect.
    ``acks``: ``all`` if ordered, ``explicit`` otherwise, unless given; ``none`` only for an
    ordered consumer whose owner keeps its position (a read model's checkpoint): nothing is
    redelivered, so only re-creating the durable where the owner stands makes up for what is lost.
    ``ack_policy`` is what applies.
    """

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ordered: bool = False
    batch: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    max_deliver: int = 5
    backoff_s: float = 0.5
    ack_wait_s: float = 30.0
    expires_s: float = 1.0
    linger_s: float = 0.0  # read models: wait this long to fill a short batch (fewer commits, see PullLoop)
    urgent: bool = False  # on the tick -> decision path: see ConsumerRuntime.run (the others let it go first)
    acks: AckPolicy | None = None  # None: by ``ordered`` (see the docstring)

    def __post_init__(self) -> None:
        if self.acks == "none" and not self.ordered:
            raise ValueError(
                f"consumer {self.durable}: ack policy none needs an ordered consumer (one that keeps its position)"
            )

    @property
    def ack_policy(self) -> AckPolicy:
        """The policy that applies: ``acks`` if given, else ``all`` for an ordered consumer, ``explicit`` otherwise."""
        return self.acks or ("all" if self.ordered else "explicit")


class ConsumerRuntime:
    def __init__(
        self,
        nc: Client,
        publisher: Publisher,
        spec: ConsumerSpec,
        sink: Sink,
        *,
        start_seq: int | None = None,
        publish_dead_letters: bool = True,
    ) -> None:
        self.nc = nc
        self.publisher = publisher
        self.spec = spec
        self.stream = spec.stream
        self.durable = spec.durable
        zero_consumer_counters(self.durable)
        # labelled children looked up once: a batch is often one message at a steady rate
        self._consumed = EVENTS_CONSUMED.labels(self.durable)
        self._pending_gauge = CONSUMER_PENDING.labels(self.durable)
        self._batch_seconds = BATCH_SECONDS.labels(self.durable)
        self._latency = EVENT_LATENCY.labels(self.durable)
        self.start_seq = start_seq  # ordered consumers: where to (re)start
        self.publish_dead_letters = publish_dead_letters
        self.ordered = spec.ordered
        self.filter_subjects = list(spec.filter_subjects)
        self.sink = sink
        self._raw: Callable[[bytes], bool] | None = getattr(sink, "raw_filter", None)
        """Bodies the sink takes undecoded (``Received.raw``); it decodes, or fails as undecodable, the rest."""
        if self._raw is not None:
            sink.on_skipped = self._skipped_events  # type: ignore[attr-defined]
        self.ack_policy = spec.ack_policy
        self.in_order = spec.ack_policy != "explicit"  # all, none: retried in place, never nak'd, acked up to a point
        self.max_deliver = spec.max_deliver
        self.backoff_s = spec.backoff_s
        self.ack_wait_s = spec.ack_wait_s
        self.loop = PullLoop(
            nc,
            spec.stream,
            spec.durable,
            batch=spec.batch,
            expires_s=spec.expires_s,
            max_bytes=spec.max_bytes,
            on_reconnect=self._reposition if self.ordered else None,
            linger_s=spec.linger_s,
        )
        self.handled_seq = 0  # stream sequence of the last message handled
        self.processed = 0
        self.dead = 0
        self.skipped = 0
        # stream sequence of the last message acked (ordered consumers: all before it too); ack policy none:
        # the last one committed (what ``all`` would have acked)
        self.last_acked = 0
        self.idle = asyncio.Event()  # set whenever a pull comes back empty
        self.started = asyncio.Event()  # the durable exists and the loop pulls
        self.pending: int | None = None  # stream messages not yet delivered, as of the last batch
        self.after_ack: Callable[[int], Awaitable[None]] | None = None  # e.g. write a snapshot
        self.on_stop: Callable[[], Awaitable[None]] | None = None  # after the last batch, e.g. a final snapshot
        self.abandoned = False  # stopped while the sink waited for space: the rest is redone on restart
        # the last delivery of each processed batch the sink has not committed yet, oldest first: a
        # buffering sink (a read model) may commit batch by batch, behind the newest
        self._held: deque[Delivery] = deque()

    async def ensure_consumer(self) -> None:
        api = JetStreamApi(self.nc)
        if self.ordered:  # at the position the owner trusts, not where the server's ack floor says
            await api.delete_consumer(self.stream, self.durable)
        cfg = durable_config(
            self.durable,
            self.filter_subjects,
            ack_policy=self.ack_policy,
            max_deliver=self.max_deliver,
            ack_wait_s=self.ack_wait_s,
            start_seq=self.start_seq if self.ordered else None,
        )
        await api.ensure_consumer(self.stream, cfg)

    async def _reposition(self) -> None:
        """After a dropped connection: go on right after the last message handled, none lost or seen twice.

        Messages in flight when it dropped would otherwise come back only after ``ack_wait``, behind newer ones.
        """
        if self.handled_seq:
            flush = getattr(self.sink, "flush", None)
            if flush is not None and self._held:  # re-created past it = acked: store it all first
                await flush()
            self.start_seq = self.handled_seq + 1
        await self.ensure_consumer()

    @property
    def committed(self) -> bool:
        """Everything handled so far is committed (acked, with an acking policy): no delivery is held.

        With ack policy ``none`` the server's ``num_ack_pending`` is always 0, so this is how to tell
        that a read model has stored what it was delivered."""
        return not self._held

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand (and any already requested), then return."""
        self.loop.stopping = True
        stop_sink = getattr(self.sink, "stop", None)
        if stop_sink is not None:  # a sink waiting for space gives up its batch
            stop_sink()

    async def run(self) -> None:
        await self.ensure_consumer()
        await self.loop.start()
        self.started.set()
        settle_gc()
        try:
            while True:
                batch = await self.loop.next_batch()
                if batch:
                    if not self.spec.urgent:
                        # One socket read often wakes several consumers of this process (a bar close: momentum,
                        # enrichment, monitor, ...): yielding once puts this one behind every consumer woken with
                        # it, so the urgent ones (bars, momentum, decision) handle and publish first.
                        await asyncio.sleep(0)
                    self.idle.clear()
                    await self._handle(batch)
                else:
                    on_idle = getattr(self.sink, "idle", None)
                    if on_idle is not None:
                        await on_idle()
                    pending = await self.loop.pending_on_server()
                    if pending is not None:
                        self.pending = pending
                        self._pending_gauge.set(pending)
                    if self._held:
                        flush = getattr(self.sink, "flush", None)
                        if flush is not None:
                            await self._retrying(flush, 0)
                        if self.abandoned:  # stopped while waiting for space
                            break
                        await self._ack_committed([])
                    self.idle.set()
                if self.loop.drained() or self.abandoned:
                    break
        finally:
            on_close = getattr(self.sink, "close", None)
            if on_close is not None:
                await on_close()
            if self._held and self.nc.is_connected:
                await self._ack_committed([])
            if self.on_stop is not None:
                await self.on_stop()
            await self.loop.stop()

    def _skipped_events(self, seq: int, skipped: list[str]) -> None:
        self.skipped += len(skipped)
        EVENTS_SKIPPED.labels(self.durable).inc(len(skipped))
        log.warning("skipped unknown schema version", consumer=self.durable, seq=seq, events=skipped)

    async def _handle(self, batch: list[Delivery]) -> None:
        started = time.perf_counter()
        received: list[Received] = []
        where: list[int] = []  # index in batch of each received entry
        outcome: dict[int, Failure] = {}
        raw = self._raw
        for i, d in enumerate(batch):
            if raw is not None and raw(d.data):  # the sink makes these rows itself (a projection's native tables)
                received.append(new_received(Received, (d, (), True)))
                where.append(i)
                continue
            try:
                decoded = decode(d.data)
            except MalformedEvent as exc:
                outcome[i] = Failure(f"undecodable: {exc}", retry=False)
                continue
            if decoded.skipped:
                self._skipped_events(d.stream_seq, decoded.skipped)
            received.append(new_received(Received, (d, decoded.events, False)))  # no NamedTuple __new__ call
            where.append(i)
        try:
            failures = await self._retrying(lambda: self.sink.process(received), len(batch))
        except Exception as exc:
            if self.in_order:
                raise
            # each message is nak'd and comes back on its own
            failures = {j: Failure(f"{type(exc).__name__}: {exc}", retry=True) for j in range(len(received))}
        if failures is None:  # stopped while waiting for space: unacked, redone after a restart
            return
        for j, f in failures.items():
            outcome[where[j]] = f if not self.in_order else Failure(f.reason, retry=False)

        letters: list[Event] = []
        for i, f in outcome.items():
            d = batch[i]
            if not f.retry or self._exhausted(d):
                reason = f.reason if not f.retry else f"failed {d.deliveries} times; last error: {f.reason}"
                letters.append(dead_letter(d, self.stream, self.durable, reason))
        if letters and self.publish_dead_letters:
            await self.publisher.publish(letters)  # before any ack, so a crash loses no dead letter
            self.dead += len(letters)
            EVENTS_FAILED.labels(self.durable, "dead").inc(len(letters))
            for ev in letters:
                log.error("dead letter", consumer=self.durable, seq=ev.stream_seq, reason=ev.reason)  # type: ignore[attr-defined]

        if self.in_order:
            await self._ack_committed(batch)
        elif not outcome:  # all handled: one call queues the acks
            await self.loop.ack_all(batch)
        else:
            for i, d in enumerate(batch):
                fail = outcome.get(i)
                if fail is None:
                    await self.loop.ack(d)
                elif not fail.retry or self._exhausted(d):
                    await self.loop.term(d, fail.reason)
                else:
                    EVENTS_FAILED.labels(self.durable, "retry").inc()
                    await self.loop.nak(d, self._delay(d))
        n_ok = len(batch) - len(outcome)
        self.processed += n_ok
        self._consumed.inc(n_ok)
        self.pending = batch[-1].pending
        self.handled_seq = batch[-1].stream_seq
        self._pending_gauge.set(batch[-1].pending)
        self._batch_seconds.observe(time.perf_counter() - started)
        if received and received[-1].events:
            self._latency.observe(max(0.0, (time.time_ns() - received[-1].events[-1].ts_init) / 1e9))

    async def _retrying(self, work: Callable[[], Awaitable[T]], size: int) -> T | None:
        """Ack policies ``all`` and ``none``: in order or not at all, so a failure is retried in place with a growing
        delay and given up by raising after ``max_deliver`` attempts (other policies: raised at once).
        None: stopped while the sink waited for space; the work is left unacked."""
        attempt = 0
        while True:
            try:
                return await work()
            except Exception as exc:
                if isinstance(exc, Stalled) and self.loop.stopping:  # unacked: redone after a restart
                    log.warning("stopped while waiting for space", consumer=self.durable, error=str(exc))
                    self.abandoned = True
                    return None
                log.warning("batch failed", consumer=self.durable, error=repr(exc), size=size, attempt=attempt)
                if not self.in_order:
                    raise
                attempt += 1
                if 0 < self.max_deliver <= attempt:
                    raise
                await asyncio.sleep(self.backoff_s * 2**attempt)

    async def _ack_committed(self, batch: list[Delivery], *, notify: bool = True) -> None:
        """Ack policy ``all``: ack the newest processed delivery the sink has committed.

        A sink that buffers tells how far that is with ``committed_seq`` (others: all it processed).
        The last delivery of each batch past it is held and acked once a later commit covers it (on
        the next batch, on idle, on close). Ack policy ``none``: the same, without the ack frame, so
        :attr:`last_acked` and ``after_ack`` still follow what is committed.
        """
        held = self._held
        newest = batch[-1] if batch else (held[-1] if held else None)
        if newest is None:
            return
        committed: int | None = getattr(self.sink, "committed_seq", None)
        limit = newest.stream_seq if committed is None else committed
        ack: Delivery | None = None
        while held and held[0].stream_seq <= limit:
            ack = held.popleft()
        if batch and batch[-1].stream_seq <= limit:
            ack = batch[-1]
        else:
            for d in batch:
                if d.stream_seq > limit:
                    break
                ack = d
            if batch:
                held.append(batch[-1])
        if ack is not None:
            if self.ack_policy != "none":
                await self.loop.ack(ack)
            self.last_acked = ack.stream_seq
            if notify and self.after_ack is not None:
                await self.after_ack(self.last_acked)

    def _exhausted(self, d: Delivery) -> bool:
        """Delivered as often as allowed (``max_deliver`` -1: never)."""
        return 0 < self.max_deliver <= d.deliveries

    def _delay(self, d: Delivery) -> float:
        return float(min(self.backoff_s * 2 ** (d.deliveries - 1), 60.0))
