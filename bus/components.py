"""The JetStream runner of one component: its consumers, lease, state policy and effects.

From a component's declaration (``schemas.components``) this derives one :class:`ConsumerSpec`
per stream it reads (durable names from :func:`durable_name`, filters from event types) and the
sink that does its work:

* a handler's outputs get deterministic ids (:func:`react`) and are published before the ack;
* a gateway's request is performed only if no result for it is stored, its results get ids from
  (gateway, request key) (:func:`stamp_results`), and a long effect keeps its message in progress;
* an ordered component first takes its lease (hot standby otherwise), then rebuilds its state by
  its policy: :class:`Window` replays the event-time window before its ack floor, :class:`Replay`
  everything, :class:`Snapshot` restores the state saved with its position (and saves it again
  after acked batches). It then skips outputs it already stored after that position (a restart
  beyond JetStream's duplicate window must not publish twice) and resumes right after it.

An ordered component may read several streams (the risk gate: intents and fills, bars, breakers)
if its state policy is :class:`Snapshot`. Then one lease covers all its consumers (keyed by the
component name, so two processes never split its input), its consumers process one batch at a
time (a shared lock: a batch is handled *and its outputs published* before another stream's
batch starts), and its snapshot, keyed by the component name, holds the position of every
stream, taken under that lock, so the state always belongs exactly to those positions. Across
streams there is no order: the component sees each stream in order and the streams interleaved
batch by batch as they arrive; it must not rely on more.

A handler's outputs are stored (their publish acks in) before its input is acked and its next batch
taken: one round trip per batch. Pipelined acks (the next batch handled while earlier outputs await
their acks) were built, measured and removed: on a quiet machine they did not lower tick->decision,
and the CPU they cost is what the p99 waits for on a loaded one (docs/performance.md, session 7).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client

from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.lease import Lease
from tapeline.bus.metrics import COMPONENT_EVENTS, component_gauge
from tapeline.bus.publisher import Publisher, PublishTimeout, StoreFull
from tapeline.bus.reader import Received, read
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.bus.stall import Stall
from tapeline.bus.topology import latest_kv_config
from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.components import (
    Component,
    Consumes,
    Gateway,
    Handler,
    Rejected,
    Replay,
    Snapshot,
    Window,
    durable_name,
    filters_by_family,
)
from tapeline.schemas.events import AnyEvent, Event
from tapeline.schemas.ids import derive_event_id, derive_event_id_joined

log = structlog.get_logger("tapeline.bus")
NO_MESSAGE = 10037


def _stamped(component: Component, cause: AnyEvent, drafts: Sequence[Event], key: str, ts: int) -> list[Event]:
    if not drafts:
        return []
    now = time.time_ns()
    name = component.name
    joined = f"{name}\x1f{component.version}\x1f{key}\x1f"  # derive_event_id(ts, name, version, key, i)
    causation = cause.event_id
    correlation = cause.correlation_id or causation
    replace = msgspec.structs.replace
    return [
        replace(
            ev,
            event_id=derive_event_id_joined(ts or ev.ts_event, f"{joined}{i}"),
            ts_init=now,
            source=ev.source or name,
            causation_id=causation,
            correlation_id=correlation,
        )
        for i, ev in enumerate(drafts)
    ]


def react(handler: Handler, event: AnyEvent) -> list[Event]:
    """Run a handler on one event and stamp identity on its outputs.

    ``event_id`` = hash(handler name, version, cause id, output index), time part from the output's
    ``ts_event``: a re-run (redelivery, restart, replay, either runner) produces the same ids.
    """
    return _stamped(handler, event, handler.handle(event), event.event_id, 0)


def result_ids(gateway: Gateway, request: AnyEvent, n: int) -> list[str]:
    """The ids the first ``n`` results of ``request`` have (or would have)."""
    key = gateway.request_key(request)
    return [derive_event_id(request.ts_event, gateway.name, gateway.version, key, i) for i in range(n)]


def stamp_results(gateway: Gateway, request: AnyEvent, results: Sequence[Event]) -> list[Event]:
    """Result ids from (gateway, version, request key, index), time part from the request: computable
    before the effect, so a stored result can be looked up and replay can find recorded ones."""
    return _stamped(gateway, request, results, gateway.request_key(request), request.ts_event)


class HandlerSink:
    """Runs a handler over a batch; outputs get deterministic ids and are stored before their input is acked."""

    def __init__(self, handler: Handler, publisher: Publisher, lock: asyncio.Lock | None = None) -> None:
        self.component = handler
        self.publisher = publisher
        self.lock = lock  # shared by the consumers of a component reading several streams
        self.position = 0  # stream sequence of the last message handled with its outputs stored
        self.emitted = 0
        self.skip_ids: set[str] = set()  # outputs stored before a restart
        self._exported: dict[str, int] = {}
        # A batch whose outputs could not all be published is retried in place by the runtime: its
        # outputs are kept here, keyed by the batch's first and last sequence, so a stateful handler
        # never applies the same events twice.
        self._unpublished: tuple[tuple[int, int], list[Event], dict[int, Failure]] | None = None
        COMPONENT_EVENTS.labels(handler.name, "rejected")  # at 0 from the start
        self.stopping = asyncio.Event()
        self.stall = Stall(f"handler:{handler.name}", publisher, stop=self.stopping)

    def stop(self) -> None:
        self.stopping.set()

    @property
    def unfinished(self) -> bool:
        """A batch was handled (the state moved past the ack) but its outputs are not all stored."""
        return self._unpublished is not None

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        if self.lock is None:
            return await self._process(batch)
        async with self.lock:
            return await self._process(batch)

    async def _process(self, batch: list[Received]) -> dict[int, Failure]:
        span = (batch[0].delivery.stream_seq, batch[-1].delivery.stream_seq) if batch else (0, 0)
        if self._unpublished is not None and self._unpublished[0] == span:
            _, pending, failures = self._unpublished  # the same batch again: publish what it produced
        else:
            pending, failures = self._react(batch)
            self._unpublished = (span, pending, failures)
        self.emitted += await publish_waiting_for_space(self.publisher, pending, self.stall)
        self._unpublished = None
        self._export_counters()
        if batch:
            self.position = batch[-1].delivery.stream_seq
        return failures

    def _react(self, batch: list[Received]) -> tuple[list[Event], dict[int, Failure]]:
        failures: dict[int, Failure] = {}
        pending: list[Event] = []
        skip = self.skip_ids  # empty but right after a restart: no filter then
        for j, rec in enumerate(batch):
            for ev in rec.events:
                try:
                    outs = react(self.component, ev)
                    pending.extend([o for o in outs if o.event_id not in skip] if skip else outs)
                except Rejected as exc:  # bad data: dead-letter the message, keep its other events
                    COMPONENT_EVENTS.labels(self.component.name, "rejected").inc()
                    failures[j] = Failure(f"{ev.tag} {ev.event_id}: {exc}", retry=False)
                except Exception as exc:  # a handler bug: retry, then dead-letter
                    log.warning(
                        "handler failed", handler=self.component.name, seq=rec.delivery.stream_seq, error=repr(exc)
                    )
                    failures[j] = Failure(f"{type(exc).__name__}: {exc}", retry=True)
                    break
        return pending, failures

    def _export_counters(self) -> None:
        export_component_metrics(self.component, self._exported)


def export_component_metrics(component: Component, exported: dict[str, int]) -> None:
    """Mirror a component's own counts and current values (a pure handler cannot touch metrics);
    ``exported`` remembers what was already counted."""
    for outcome, n in component.counters.items():
        seen = exported.get(outcome, 0)
        if n > seen:
            COMPONENT_EVENTS.labels(component.name, outcome).inc(n - seen)
            exported[outcome] = n
    for name, values in component.gauges.items():
        gauge = component_gauge(component.name, name)
        for key, value in values.items():
            gauge.labels(key).set(value)


async def publish_waiting_for_space(publisher: Publisher, events: list[Event], stall: Stall) -> int:
    """Publish; on a full store keep the computed outputs and re-send only what was not stored."""
    n = len(events)
    while events:
        try:
            await publisher.publish(events)
            events = []
        except (StoreFull, PublishTimeout) as e:
            events = list(e.unstored)
            await stall.wait(e)
    await stall.resolved()
    return n


class GatewaySink:
    """Performs each request's effect once: skipped when its result is already stored.

    While an effect runs the message is kept in progress (``+WPI``) so it is not redelivered to
    another process mid-call. Results are published before the request is acked.
    """

    def __init__(self, gateway: Gateway, publisher: Publisher, runtime: ConsumerRuntime | None = None) -> None:
        self.component = gateway
        self.publisher = publisher
        self.runtime = runtime
        self.skip_ids: set[str] = set()  # results stored (before a restart, or by this process)
        self.performed = 0
        self._exported: dict[str, int] = {}
        self.stopping = asyncio.Event()
        self.stall = Stall(f"gateway:{gateway.name}", publisher, stop=self.stopping)

    def stop(self) -> None:
        self.stopping.set()

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        failures: dict[int, Failure] = {}
        gw = self.component
        for j, rec in enumerate(batch):
            for ev in rec.events:
                if not gw.wants(ev) or result_ids(gw, ev, 1)[0] in self.skip_ids:
                    continue
                try:
                    results = await self._perform(rec, ev)
                except Rejected as exc:
                    failures[j] = Failure(f"{ev.tag} {ev.event_id}: {exc}", retry=False)
                    continue
                except Exception as exc:  # the outside world failed: nak with backoff, then dead-letter
                    log.warning("gateway call failed", gateway=gw.name, request=ev.event_id, error=repr(exc))
                    failures[j] = Failure(f"{type(exc).__name__}: {exc}", retry=True)
                    break
                out = stamp_results(gw, ev, results)
                await publish_waiting_for_space(self.publisher, out, self.stall)
                self.skip_ids.update(o.event_id for o in out)
                for o in out:  # results by type, e.g. execution: order_submitted, order_filled
                    gw.counters[o.tag] = gw.counters.get(o.tag, 0) + 1
        export_component_metrics(gw, self._exported)
        return failures

    async def _perform(self, rec: Received, ev: AnyEvent) -> Sequence[Event]:
        self.performed += 1
        if self.runtime is None:
            return await self.component.perform(ev)
        keep = asyncio.create_task(self._in_progress(rec))
        try:
            return await self.component.perform(ev)
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep

    async def _in_progress(self, rec: Received) -> None:
        assert self.runtime is not None
        while True:
            await asyncio.sleep(self.runtime.ack_wait_s / 3)
            await self.runtime.nc.publish(rec.delivery.reply, b"+WPI")


# ---------------------------------------------------------------- state


def snapshots_bucket(prefix: str) -> str:
    return f"{prefix}_snapshots".replace(".", "_").replace("-", "_")


def snapshots_stream_config(prefix: str, replicas: int = 1) -> dict[str, Any]:
    return latest_kv_config(snapshots_bucket(prefix), replicas=replicas)


class SavedState(msgspec.Struct, frozen=True):
    seq: int  # the stream position the state includes (all input up to and including it)
    state: bytes
    ts_ns: int
    positions: dict[str, int] = {}  # a component reading several streams: the position in each


_state_enc = msgspec.msgpack.Encoder()
_state_dec = msgspec.msgpack.Decoder(SavedState)


class SnapshotStore:
    """Latest state per durable in the KV bucket ``<prefix>_snapshots``, with its position."""

    def __init__(self, nc: Client, prefix: str) -> None:
        self.nc = nc
        self.bucket = snapshots_bucket(prefix)

    async def load(self, key: str) -> SavedState | None:
        try:
            reply = await JetStreamApi(self.nc).call(
                f"STREAM.MSG.GET.KV_{self.bucket}", {"last_by_subj": f"$KV.{self.bucket}.{key}"}
            )
        except JetStreamError as e:
            if e.err_code == NO_MESSAGE:
                return None
            raise
        return _state_dec.decode(base64.b64decode(reply["message"]["data"]))

    async def save(self, key: str, seq: int, state: bytes, positions: dict[str, int] | None = None) -> None:
        data = _state_enc.encode(SavedState(seq, state, time.time_ns(), positions or {}))
        await self.nc.request(f"$KV.{self.bucket}.{key}", data, timeout=5.0)


async def _stored(api: JetStreamApi, stream: str, seq: int) -> tuple[str, int] | None:
    """(stored time as RFC 3339, newest ts_event in it) of message ``seq``; None if gone."""
    try:
        msg = (await api.call(f"STREAM.MSG.GET.{stream}", {"seq": seq}))["message"]
    except JetStreamError:
        return None
    try:
        events = decode(base64.b64decode(msg.get("data") or b"")).events
    except MalformedEvent:
        events = []
    return str(msg["time"]), max((e.ts_event for e in events), default=0)


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(max(ns, 0) / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- the runner of one component


class ComponentRunner:
    """Runs one handler or gateway on JetStream: one consumer per stream it reads."""

    def __init__(
        self,
        nc: Client,
        publisher: Publisher,
        component: Component,
        prefix: str,
        *,
        standby: bool = True,
        lease_ttl_s: float = 15.0,
    ) -> None:
        self.nc = nc
        self.publisher = publisher
        self.component = component
        self.prefix = prefix
        self.standby = standby
        self.lease_ttl_s = lease_ttl_s
        self.api = JetStreamApi(nc)
        self.runtimes: list[ConsumerRuntime] = []
        self.sinks: list[HandlerSink | GatewaySink] = []
        self.warmed = 0
        self._leases: list[Lease] = []
        self._stopping = False
        self.settled = asyncio.Event()  # consumers running, or waiting as a standby
        self.standing_by = False
        families = filters_by_family(component.consumes, prefix)
        self.multi = component.ordered and len(families) > 1
        if self.multi and not isinstance(component.state, Snapshot):
            raise ValueError(f"{component.name}: an ordered component reading several streams needs a Snapshot policy")
        self._lock = asyncio.Lock() if self.multi else None
        self._saved: SavedState | None = None  # the snapshot restored (several streams: read once)
        self.specs = [
            ConsumerSpec(
                stream=fam.stream(prefix),
                durable=durable_name(component.name, fam),
                filter_subjects=tuple(subjects),
                ordered=component.ordered,
                batch=component.batch if isinstance(component, Gateway) else 1000,
                ack_wait_s=component.ack_wait_s if isinstance(component, Gateway) else 30.0,
                max_deliver=component.max_deliver if isinstance(component, Gateway) else 5,
                urgent=isinstance(component, Handler) and component.urgent,
            )
            for fam, subjects in families.items()
        ]

    def stop(self) -> None:
        self._stopping = True
        for rt in self.runtimes:
            rt.stop()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        reporter: asyncio.Task[None] | None = None  # a gateway's unsolicited results, while it runs
        try:
            if isinstance(self.component, Gateway):
                await self.component.open(self.nc, self.prefix)
                reports = self.component.reports()
                if reports is not None:
                    reporter = asyncio.create_task(
                        self._publish_reports(reports), name=f"{self.component.name}:reports"
                    )
            for spec in self.specs:
                rt = await self._prepare(spec)
                if rt is None:  # stopped while waiting as a standby
                    return
                self.runtimes.append(rt)
                tasks.append(asyncio.create_task(rt.run(), name=spec.durable))
                await rt.started.wait()
            self.settled.set()
            if self._stopping:
                for rt in self.runtimes:
                    rt.stop()
            keepers = [asyncio.create_task(lease.keep()) for lease in self._leases]
            try:
                waiting: set[asyncio.Task[None]] = {*tasks, *keepers, *([reporter] if reporter else [])}
                while not all(t.done() for t in tasks):
                    done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        if t.exception():  # a consumer failed, or the lease slipped away: stop all
                            for rt in self.runtimes:
                                rt.stop()
                            await asyncio.gather(*tasks, return_exceptions=True)
                            raise t.exception()  # type: ignore[misc]
            finally:
                for k in keepers:
                    k.cancel()
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            for t in tasks:  # cancelled from outside: the consumers go with the runner
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for lease in self._leases:
                await lease.release()

    async def _publish_reports(self, reports: AsyncIterator[Sequence[Event]]) -> None:
        """A gateway's unsolicited results (broker fills), published as they come, until stopped."""
        stall = Stall(f"gateway:{self.component.name}:reports", self.publisher)
        async for events in reports:
            if events:
                await publish_waiting_for_space(self.publisher, list(events), stall)
            if self._stopping:
                return

    async def _prepare(self, spec: ConsumerSpec) -> ConsumerRuntime | None:
        c = self.component
        if isinstance(c, Handler):
            sink: HandlerSink | GatewaySink = HandlerSink(c, self.publisher, self._lock)
        elif isinstance(c, Gateway):
            sink = GatewaySink(c, self.publisher)
        else:
            raise TypeError(f"{c.name}: a {c.kind} has no consumer runner")
        start: int | None = None
        if spec.ordered and not (self.multi and self._leases):  # several streams: one lease, the component's
            lease = Lease(self.nc, self.prefix, c.name if self.multi else spec.durable, ttl_s=self.lease_ttl_s)
            if await lease.try_acquire():  # held elsewhere: a standby
                self.standing_by = True
                self.settled.set()
                if not await lease.acquire(wait=self.standby, stopping=lambda: self._stopping):
                    return None
                self.standing_by = False
            self._leases.append(lease)
        if spec.ordered:
            start = await self._restore_state(spec)
            if isinstance(sink, HandlerSink):
                sink.position = start - 1
        rt = ConsumerRuntime(self.nc, self.publisher, spec, sink, start_seq=start)
        if isinstance(sink, GatewaySink):
            sink.runtime = rt
        await self._skip_published(spec, sink, start)
        if isinstance(c.state, Snapshot):
            key = c.name if self.multi else spec.durable
            rt.after_ack = self._snapshotter(key, c.state.every_s)
            rt.on_stop = self._final_snapshot(key, rt)
        self.sinks.append(sink)
        return rt

    async def _floor(self, spec: ConsumerSpec) -> int:
        info = await self.api.consumer_info(spec.stream, spec.durable)
        return int(((info or {}).get("ack_floor") or {}).get("stream_seq", 0))

    async def _restore_state(self, spec: ConsumerSpec) -> int:
        """Rebuild state by the declared policy; returns the sequence to resume at."""
        c = self.component
        policy = c.state
        if isinstance(policy, Snapshot) and self.multi:
            return await self._restore_multi(spec)
        if isinstance(policy, Snapshot):
            saved = await SnapshotStore(self.nc, self.prefix).load(spec.durable)
            if saved is not None:
                c.restore(saved.state)
                log.info("state restored from snapshot", consumer=spec.durable, position=saved.seq)
                return saved.seq + 1
            floor = await self._floor(spec)  # no snapshot yet: rebuild from everything before the floor
            await self._warm_up(spec, start_seq=1, floor=floor)
            return floor + 1
        floor = await self._floor(spec)
        if floor == 0:
            return 1
        if isinstance(policy, Replay):
            await self._warm_up(spec, start_seq=policy.from_seq, floor=floor)
        elif isinstance(policy, Window):
            stored = await _stored(self.api, spec.stream, floor)
            if stored is not None:
                since = stored[1] - int(policy.seconds * 1e9)
                await self._warm_up(spec, start_time=_rfc3339(since), floor=floor, min_ts=since)
        return floor + 1

    async def _restore_multi(self, spec: ConsumerSpec) -> int:
        """Several streams: the state (restored once) with the position of each; a stream it does not
        cover yet (or no snapshot at all) is rebuilt from its start up to its ack floor."""
        if not self.sinks:  # the first stream: restore the state once
            self._saved = await SnapshotStore(self.nc, self.prefix).load(self.component.name)
            if self._saved is not None:
                self.component.restore(self._saved.state)
                log.info("state restored from snapshot", component=self.component.name, positions=self._saved.positions)
        if self._saved is not None and spec.stream in self._saved.positions:
            return self._saved.positions[spec.stream] + 1
        floor = await self._floor(spec)
        await self._warm_up(spec, start_seq=1, floor=floor)
        return floor + 1

    async def _warm_up(
        self,
        spec: ConsumerSpec,
        *,
        floor: int,
        start_seq: int | None = None,
        start_time: str | None = None,
        min_ts: int = 0,
    ) -> None:
        """Feed stored input up to ``floor`` through the component, outputs discarded."""
        c = self.component
        assert isinstance(c, Handler)
        if floor <= 0:
            return
        async for batch in read(
            self.nc, spec.stream, spec.filter_subjects, start_seq=start_seq, start_time=start_time, stop_seq=floor
        ):
            for rec in batch:
                for ev in rec.events:
                    if ev.ts_event < min_ts:
                        continue
                    with contextlib.suppress(Exception):  # it failed (and was dead-lettered) the first time too
                        c.handle(ev)
                        self.warmed += 1
        log.info("state rebuilt", consumer=spec.durable, policy=type(c.state).__name__, events=self.warmed, upto=floor)

    async def _skip_published(self, spec: ConsumerSpec, sink: HandlerSink | GatewaySink, start: int | None) -> None:
        """Ids already stored for input at or after the resume point (the process died before acking).

        Within JetStream's duplicate window they would be dropped anyway; a restart after it would
        store them twice, and a gateway would repeat its effect. Reads only what was stored since
        the resume point's input.
        """
        if start is None:
            start = await self._floor(spec) + 1
        stored = await _stored(self.api, spec.stream, start)
        if stored is None:
            return  # nothing at or after the resume point yet
        emitted = [Consumes(t) for t in self.component.emits]
        for fam, subjects in filters_by_family(emitted, self.prefix).items():
            async for batch in read(self.nc, fam.stream(self.prefix), subjects, start_time=stored[0]):
                sink.skip_ids.update(e.event_id for r in batch for e in r.events)
        if sink.skip_ids:
            log.info("resuming", consumer=spec.durable, already_published=len(sink.skip_ids))

    def _positions(self) -> dict[str, int]:
        return {
            spec.stream: sink.position
            for spec, sink in zip(self.specs, self.sinks, strict=False)
            if isinstance(sink, HandlerSink)
        }

    def _snapshotter(self, key: str, every_s: float) -> Any:
        last = [0.0]

        async def after_ack(seq: int) -> None:
            if self._stopping or time.monotonic() - last[0] >= every_s:
                await self._save_snapshot(key, seq)
                last[0] = time.monotonic()

        return after_ack

    async def _save_snapshot(self, key: str, seq: int) -> None:
        """Best effort: a snapshot that cannot be saved (the server is away) leaves the previous one,
        older and still right — a restart resumes from it and skips the outputs already stored."""
        if not self.nc.is_connected:
            return
        if any(isinstance(s, HandlerSink) and s.unfinished for s in self.sinks):
            # the state holds a batch whose outputs are not published (being retried, given up while
            # stopping, failed for good): saved with the older position, a restart would apply it twice
            log.warning("snapshot not saved: a batch is unfinished; the previous one stays", consumer=key)
            return
        try:
            if self._lock is not None:  # no batch half done: the state belongs to these positions
                async with self._lock:
                    positions, state = self._positions(), self.component.snapshot()
                await SnapshotStore(self.nc, self.prefix).save(key, seq, state, positions)
                return
            await SnapshotStore(self.nc, self.prefix).save(key, seq, self.component.snapshot())
        except (nats.errors.Error, JetStreamError, TimeoutError) as exc:
            log.warning("snapshot not saved; the previous one stays", consumer=key, position=seq, error=repr(exc))

    def _final_snapshot(self, key: str, rt: ConsumerRuntime) -> Any:
        async def on_stop() -> None:
            if rt.last_acked:
                await self._save_snapshot(key, rt.last_acked)

        return on_stop
