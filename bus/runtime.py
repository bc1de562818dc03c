"""The one way to consume: a durable pull consumer, batched, acked only after the work is done.

A *sink* does the work for a batch (a handler publishes its outputs, a projection commits its
rows). The runtime owns everything around it: decoding, unknown versions, retries with a
growing delay, dead letters with stream sequence and reason, acks, metrics, and a graceful drain.

Ack policies: ``explicit`` (stateless handlers, which may share a durable across processes; each
message acked, nak'd or terminated on its own) and ``all`` for ordered consumers (projections and
stateful handlers: acking the last message of a batch acks it all; a failed batch is retried in
place, never nak'd, so sequences are applied strictly in order; a message that fails on its own
is dead-lettered at once, since a pure function fails the same way every time).

Order after a crash: JetStream redelivers a dead process's unacked messages only after
``ack_wait``, *after* newer ones. Consumers that need stream order (projections, stateful
handlers) therefore re-create their durable on start at the position they trust: the
projection's committed checkpoint + 1, or the handler's ack floor + 1 (after warm-up). Re-done
work republishes the same deterministic ids, which JetStream de-duplicates.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

import msgspec
import structlog
from nats.aio.client import Client

from bus.consumer import Delivery, PullLoop
from bus.jetstream import JetStreamApi, JetStreamError
from bus.metrics import (
    BATCH_SECONDS,
    CONSUMER_PENDING,
    EVENT_LATENCY,
    EVENTS_CONSUMED,
    EVENTS_FAILED,
    EVENTS_SKIPPED,
)
from bus.publisher import Publisher
from bus.reader import read_stream
from bus.topology import AckPolicy, durable_config
from schemas.codec import MalformedEvent, decode
from schemas.events import AnyEvent, DeadLetter, Event
from schemas.ids import derive_event_id
from schemas.subjects import family_of

log = structlog.get_logger("tapeline.bus")


def _parse_time(s: str) -> datetime:
    """RFC 3339 from the server (nanosecond fractions) to an aware datetime."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", s)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    return datetime.strptime(f"{m.group(1)}.{frac}", "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


class Received(NamedTuple):
    delivery: Delivery
    events: list[AnyEvent]


class Failure(NamedTuple):
    reason: str
    retry: bool  # False: poison, dead-letter at once


class Sink(Protocol):
    """Does the work for one batch. Returns failures by batch index; raising retries all.

    A sink may also have ``async idle()`` (called when a pull comes back empty) and
    ``async close()`` (called once after the last batch), e.g. to commit what it buffers.
    A sink that buffers has ``committed_seq: int``: with ack policy ``all`` the runtime then
    acks only deliveries at or below it, so nothing is acked before it is committed.
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


class ConsumerRuntime:
    def __init__(
        self,
        nc: Client,
        publisher: Publisher,
        *,
        stream: str,
        durable: str | None,
        filter_subjects: Sequence[str],
        sink: Sink,
        ack_policy: AckPolicy = "explicit",
        batch: int = 1000,
        max_deliver: int = 5,
        backoff_s: float = 0.5,
        ack_wait_s: float = 30.0,
        expires_s: float = 1.0,
        start_seq: int | None = None,
        publish_dead_letters: bool = True,
        warmup: Reaction | None = None,
        warmup_s: float = 0.0,
        ordered: bool = False,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.nc = nc
        self.publisher = publisher
        self.stream = stream
        self.durable = durable or f"replay_{stream.lower()}"
        self.ephemeral = durable is None
        self.start_seq = start_seq  # ordered/ephemeral consumers: where to (re)start; None: the ack floor + 1
        self.publish_dead_letters = publish_dead_letters
        self.warmup = warmup
        self.warmup_s = warmup_s
        self.ordered = ordered or ack_policy == "all"
        self.warmed = 0
        self.filter_subjects = list(filter_subjects)
        self.sink = sink
        self.ack_policy = ack_policy
        self.max_deliver = max_deliver
        self.backoff_s = backoff_s
        self.ack_wait_s = ack_wait_s
        self.loop = PullLoop(nc, stream, self.durable, batch=batch, expires_s=expires_s, max_bytes=max_bytes)
        self.processed = 0
        self.dead = 0
        self.skipped = 0
        self.idle = asyncio.Event()  # set whenever a pull comes back empty
        self.pending: int | None = None  # stream messages not yet delivered, as of the last batch
        self._held: Delivery | None = None  # newest processed delivery the sink has not committed yet

    async def ensure_consumer(self) -> None:
        api = JetStreamApi(self.nc)
        if self.ephemeral:  # replay: from start_seq, no acks, removed by the server when idle
            self.loop.consumer = await api.create_ordered_consumer(
                self.stream,
                {
                    "deliver_policy": "by_start_sequence",
                    "opt_start_seq": self.start_seq or 1,
                    "ack_policy": "none",
                    "filter_subjects": self.filter_subjects,
                    "inactive_threshold": 30 * 1_000_000_000,
                    "mem_storage": True,
                    "replay_policy": "instant",
                },
            )
            return
        start: int | None = None
        if self.ordered:
            if self.start_seq is not None:
                start = self.start_seq  # a position the sink owns, e.g. a projection's checkpoint + 1
            else:  # a handler: after what it acknowledged
                info = await api.consumer_info(self.stream, self.durable)
                floor = int(((info or {}).get("ack_floor") or {}).get("stream_seq", 0))
                start = floor + 1 if info else None
            await api.delete_consumer(self.stream, self.durable)
        cfg = durable_config(
            self.durable,
            self.filter_subjects,
            ack_policy=self.ack_policy,
            max_deliver=self.max_deliver,
            ack_wait_s=self.ack_wait_s,
            start_seq=start,
        )
        await api.ensure_consumer(self.stream, cfg)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand (and any already requested), then return."""
        self.loop.stopping = True

    async def run(self) -> None:
        api = JetStreamApi(self.nc)
        resuming = self.ordered and self.start_seq is None and not self.ephemeral  # a restarted stateful handler
        before = await api.consumer_info(self.stream, self.durable) if resuming else None
        if before:
            floor = int((before.get("ack_floor") or {}).get("stream_seq", 0))
            since = await self._stored_time(api, floor) if floor else None
            if self.warmup is not None and self.warmup_s > 0 and since is not None:
                await self._warm_up(self.warmup, floor, since - timedelta(seconds=self.warmup_s))
            await self._collect_published(since)
        await self.ensure_consumer()
        await self.loop.start()
        try:
            while True:
                batch = await self.loop.next_batch()
                if batch:
                    self.idle.clear()
                    await self._handle(batch)
                else:
                    on_idle = getattr(self.sink, "idle", None)
                    if on_idle is not None:
                        await on_idle()
                    if self._held is not None:
                        await self._ack_committed([])
                    self.idle.set()
                if self.loop.drained():
                    break
        finally:
            on_close = getattr(self.sink, "close", None)
            if on_close is not None:
                await on_close()
            if self._held is not None and self.nc.is_connected:
                await self._ack_committed([])
            await self.loop.stop()
            if self.ephemeral:
                await JetStreamApi(self.nc).delete_consumer(self.stream, self.loop.consumer)

    async def _handle(self, batch: list[Delivery]) -> None:
        started = time.perf_counter()
        received: list[Received] = []
        where: list[int] = []  # index in batch of each received entry
        outcome: dict[int, Failure] = {}
        for i, d in enumerate(batch):
            try:
                decoded = decode(d.data)
            except MalformedEvent as exc:
                outcome[i] = Failure(f"undecodable: {exc}", retry=False)
                continue
            if decoded.skipped:
                self.skipped += len(decoded.skipped)
                EVENTS_SKIPPED.labels(self.durable).inc(len(decoded.skipped))
                log.warning(
                    "skipped unknown schema version", consumer=self.durable, seq=d.stream_seq, events=decoded.skipped
                )
            received.append(Received(d, decoded.events))
            where.append(i)
        attempt = 0
        while True:
            try:
                failures = await self.sink.process(received)
                break
            except Exception as exc:
                log.warning("batch failed", consumer=self.durable, error=repr(exc), size=len(batch), attempt=attempt)
                if self.ack_policy != "all":  # each message is nak'd and comes back on its own
                    failures = {j: Failure(f"{type(exc).__name__}: {exc}", retry=True) for j in range(len(received))}
                    break
                attempt += 1  # in order or not at all: retry in place, give up by crashing
                if attempt >= self.max_deliver:
                    raise
                await asyncio.sleep(self.backoff_s * 2**attempt)
        for j, f in failures.items():
            outcome[where[j]] = f if self.ack_policy != "all" else Failure(f.reason, retry=False)

        letters: list[Event] = []
        for i, f in outcome.items():
            d = batch[i]
            if not f.retry or d.deliveries >= self.max_deliver:
                reason = f.reason if not f.retry else f"failed {d.deliveries} times; last error: {f.reason}"
                letters.append(dead_letter(d, self.stream, self.durable, reason))
        if letters and self.publish_dead_letters:
            await self.publisher.publish(letters)  # before any ack, so a crash loses no dead letter
            self.dead += len(letters)
            EVENTS_FAILED.labels(self.durable, "dead").inc(len(letters))
            for ev in letters:
                log.error("dead letter", consumer=self.durable, seq=ev.stream_seq, reason=ev.reason)  # type: ignore[attr-defined]

        if self.ack_policy == "none":
            pass
        elif self.ack_policy == "all":
            await self._ack_committed(batch)
        else:
            for i, d in enumerate(batch):
                fail = outcome.get(i)
                if fail is None:
                    await self.loop.ack(d)
                elif not fail.retry or d.deliveries >= self.max_deliver:
                    await self.loop.term(d, fail.reason)
                else:
                    EVENTS_FAILED.labels(self.durable, "retry").inc()
                    await self.loop.nak(d, self._delay(d))
        n_ok = len(batch) - len(outcome)
        self.processed += n_ok
        EVENTS_CONSUMED.labels(self.durable).inc(n_ok)
        self.pending = batch[-1].pending
        CONSUMER_PENDING.labels(self.durable).set(batch[-1].pending)
        BATCH_SECONDS.labels(self.durable).observe(time.perf_counter() - started)
        if received and received[-1].events:
            EVENT_LATENCY.labels(self.durable).observe(
                max(0.0, (time.time_ns() - received[-1].events[-1].ts_init) / 1e9)
            )

    async def _ack_committed(self, batch: list[Delivery]) -> None:
        """Ack policy ``all``: ack the batch's last delivery, or, if the sink buffers, the newest it committed.

        The newest processed delivery past ``committed_seq`` is held and acked once a later commit
        covers it (on the next batch, on idle, on close).
        """
        committed: int | None = getattr(self.sink, "committed_seq", None)
        if committed is None:
            await self.loop.ack(batch[-1])
            return
        seen = [d for d in (self._held, *batch) if d is not None]
        done = [d for d in seen if d.stream_seq <= committed]
        if done:
            await self.loop.ack(done[-1])
        self._held = seen[-1] if seen and seen[-1].stream_seq > committed else None

    async def _stored_time(self, api: JetStreamApi, seq: int) -> datetime | None:
        """When message ``seq`` was stored (None if it aged out of the stream)."""
        try:
            stored = await api.call(f"STREAM.MSG.GET.{self.stream}", {"seq": seq})
        except JetStreamError:
            return None
        return _parse_time(str(stored["message"]["time"]))

    async def _collect_published(self, since: datetime | None) -> None:
        """Ids the handler already published for input it never acknowledged (it died in between).

        Re-processing that input yields the same ids; within JetStream's duplicate window they are
        dropped anyway, but a restart after the window would store them twice. So the sink skips
        ids found on the handler's output subjects since the ack floor's input was stored.
        """
        outputs = getattr(getattr(self.sink, "reaction", None), "outputs", ())
        skip: set[str] | None = getattr(self.sink, "skip_ids", None)
        if not outputs or skip is None:
            return
        prefix = self.publisher.prefix
        stamp = since.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if since else None
        for pattern in outputs:
            subject = f"{prefix}.{pattern}"
            stream = family_of(subject, prefix).stream(prefix)
            skip.update(e.event_id for _, e in await read_stream(self.nc, stream, subject, since=stamp))
        log.info("resuming handler", consumer=self.durable, already_published=len(skip))

    async def _warm_up(self, reaction: Reaction, floor: int, start: datetime) -> None:
        """Rebuild a stateful handler after a restart: replay the input it already acked, discard outputs.

        The window is in stream time, anchored on when the ack floor's message was stored.
        """
        api = JetStreamApi(self.nc)
        name = await api.create_ordered_consumer(
            self.stream,
            {
                "deliver_policy": "by_start_time",
                "opt_start_time": start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "ack_policy": "none",
                "filter_subjects": self.filter_subjects,
                "inactive_threshold": 30 * 1_000_000_000,
                "mem_storage": True,
            },
        )
        loop = PullLoop(self.nc, self.stream, name, batch=2000, expires_s=1.0, idle_s=0.5)
        await loop.start()
        try:
            while True:
                batch = await loop.next_batch()
                for d in batch:
                    if d.stream_seq > floor:
                        return
                    try:
                        for ev in decode(d.data).events:
                            reaction.handle(ev)
                            self.warmed += 1
                    except Exception as exc:  # already dead-lettered when first seen
                        log.debug("warm-up skipped a message", seq=d.stream_seq, error=repr(exc))
                    if d.stream_seq == floor:
                        return
                if not batch:
                    return
        finally:
            await loop.stop()
            await api.delete_consumer(self.stream, name)
            log.info("handler warmed up", consumer=self.durable, events=self.warmed, upto=floor)

    def _delay(self, d: Delivery) -> float:
        return float(min(self.backoff_s * 2 ** (d.deliveries - 1), 60.0))


class Reaction(Protocol):
    """What bus needs of a handler (see ``handlers.base.Handler``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    def handle(self, event: AnyEvent) -> Sequence[Event]: ...


def react(reaction: Reaction, event: AnyEvent) -> list[Event]:
    """Run a handler on one event and stamp identity on its outputs.

    ``event_id`` = hash(handler name, handler version, cause id, output index): a re-run
    (redelivery, restart, replay) produces the same ids, so JetStream drops the copies.
    """
    now = time.time_ns()
    return [
        msgspec.structs.replace(
            ev,
            event_id=derive_event_id(ev.ts_event, reaction.name, reaction.version, event.event_id, i),
            ts_init=now,
            source=ev.source or reaction.name,
            causation_id=event.event_id,
            correlation_id=event.correlation_id or event.event_id,
        )
        for i, ev in enumerate(reaction.handle(event))
    ]


class ReactionSink:
    """Runs a handler over a batch; outputs get deterministic ids and are published before acks."""

    def __init__(self, reaction: Reaction, publisher: Publisher) -> None:
        self.reaction = reaction
        self.publisher = publisher
        self.emitted = 0
        self.skip_ids: set[str] = set()  # outputs already stored before a restart (see ConsumerRuntime)

    def outputs(self, event: AnyEvent) -> list[Event]:
        return react(self.reaction, event)

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        failures: dict[int, Failure] = {}
        pending: list[Event] = []
        for j, rec in enumerate(batch):
            try:
                for ev in rec.events:
                    pending.extend(o for o in self.outputs(ev) if o.event_id not in self.skip_ids)
            except Exception as exc:  # a handler bug or bad data: retry, then dead-letter
                log.warning("handler failed", handler=self.reaction.name, seq=rec.delivery.stream_seq, error=repr(exc))
                failures[j] = Failure(f"{type(exc).__name__}: {exc}", retry=True)
        if pending:
            await self.publisher.publish(pending)
            self.emitted += len(pending)
        return failures
