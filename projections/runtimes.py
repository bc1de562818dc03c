"""Read models bound to streams: one ordered consumer per stream family (DuckDB: all its tables commit
together) or vector table, resuming at the lowest checkpoint of the read models it feeds + 1 (each
read model skips what it already has, so one added to a stream with history backfills itself), or
the same sinks fed by the stream reader (rebuild).

Consumer names come from :func:`schemas.components.durable_name`: ``projector_<family>`` for the
DuckDB tables, ``<table>_<family>`` for each LanceDB table. They consume with ack policy ``none``: the
checkpoint (in the read model's own store, committed with its rows) is the only position that counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, NamedTuple

from nats.aio.client import Client

from tapeline.bus.reader import Received, read
from tapeline.bus.runtime import ConsumerSpec
from tapeline.bus.stall import Publishes
from tapeline.projections.duckdb import ProjectionDb, ProjectionSink
from tapeline.schemas.components import durable_name, family_named
from tapeline.schemas.events import Bar, DecisionEnvelope, Enrichment, Event, NewsItem
from tapeline.schemas.subjects import DECISION, INTEL, MD, NEWS

if TYPE_CHECKING:  # LanceDB and the model runtime take a second to import: only the vectors role pays it
    from tapeline.models.embedder import TextEmbedder
    from tapeline.projections.vectors import VectorStore

PROJECTOR = "projector"
LINGER_S = 0.1
"""A read model's short batch waits up to this long for more: at most ~10 DuckDB commits a second per
stream family instead of one per trickle of messages (a commit costs DuckDB 2-4 ms of CPU and was most of
a projector's CPU per event; see docs/performance.md). Read models are at most this much staler.
The vector tables use it; the DuckDB families use :data:`PROJECTOR_LINGER_S`."""
PROJECTOR_LINGER_S: dict[str, float] = {"md": 0.25}
"""Per stream family of the DuckDB projector (the others: :data:`QUIET_LINGER_S`). A commit costs DuckDB
~5 ms of CPU however few its rows, and the projector commits each family apart: with every family at
100 ms, the families with a few events per commit (intel, decision, ops...) made three quarters of its
commits and most of its CPU at a steady tick rate (docs/performance.md, session 6). Market data fills
its batches fastest and is what queries look at most, so it waits least."""
QUIET_LINGER_S = 0.5
"""How long the other families' read models may lag: a few commits a second each instead of ten."""


REBUILD_COMMIT_EVENTS = 50_000
"""A rebuild commits a DuckDB stream family at most once per this many events (bounded memory, big commits)."""
REBUILD_COMMIT_BYTES = 16 * 1024 * 1024
"""... or of this many bytes of bodies handed over undecoded (``projections.native``: ~50k ticks)."""
REBUILD_GATHER_MAX = 4
"""While the sink still works on the previous commit, the reader gathers undecoded bodies on, up to this many
times :data:`REBUILD_COMMIT_BYTES`: when reading outruns DuckDB (batched ticks), commits grow past a DuckDB
row group (122,880 rows), which DuckDB writes straight to the file rather than through its WAL and a
checkpoint (~70 ms less per 50k ticks); when reading is the slower side (one event per message), the sink
is idle by then and commits stay small, and so does the last one, which nothing overlaps (bench_rebuild,
300k ticks: batched 201-253k -> 310-345k events/s)."""


class Binding(NamedTuple):
    spec: ConsumerSpec
    sink: Any  # ProjectionSink | VectorSink: process(batch), optional idle()/close()
    start_seq: int


def _spec(name: str, stream: str, subjects: list[str], linger_s: float = LINGER_S) -> ConsumerSpec:
    return ConsumerSpec(
        stream=stream,
        durable=name,
        filter_subjects=tuple(subjects),
        ordered=True,
        acks="none",  # the position is the checkpoint: the durable starts there on every start and reconnect
        batch=5000,
        max_bytes=16 * 1024 * 1024,  # bigger commits: ~20% faster on batched ticks (bench_rebuild)
        linger_s=linger_s,
    )


def projection_bindings(
    prefix: str,
    db: ProjectionDb,
    *,
    until_ns: int | None = None,
    stop_at: dict[str, int] | None = None,
    alerts: Publishes | None = None,
    native: bool = False,
    native_min_bytes: int = 0,
) -> list[Binding]:
    """The DuckDB tables: one consumer per stream family they read.

    ``native``: the sinks make the tables of ``projections.native`` from raw bodies, both when fed by the
    stream reader (:func:`replay_into`) and live (the consumer runtime hands them undecoded), for
    batches of at least ``native_min_bytes`` of bodies (live: :data:`LIVE_NATIVE_MIN_BYTES`).
    """
    out = []
    sinks = []
    db.con.execute("BEGIN TRANSACTION")  # each sink records its stream (an UPDATE): one commit for all of them
    try:
        for fam in sorted({t.family for t in db.tables}, key=lambda f: f.key):
            sinks.append(
                ProjectionSink(
                    db,
                    fam,
                    fam.stream(prefix),
                    until_ns=until_ns,
                    stop_at_seq=(stop_at or {}).get(fam.key),
                    alerts=alerts,  # live: a full disk is reported on the bus
                    native=native,
                    native_min_bytes=native_min_bytes,
                )
            )
        db.con.execute("COMMIT")
    except BaseException:
        db.con.execute("ROLLBACK")
        raise
    for sink in sinks:
        fam, stream = sink.family, sink.stream
        out.append(
            Binding(
                _spec(
                    durable_name(PROJECTOR, fam),
                    stream,
                    [fam.subjects(prefix)],
                    PROJECTOR_LINGER_S.get(fam.key, QUIET_LINGER_S),
                ),
                sink,
                sink.last_seq + 1,
            )
        )
    return out


def vector_bindings(
    prefix: str,
    store: VectorStore,
    embedder: TextEmbedder,
    *,
    stop_at: dict[str, int] | None = None,
    until_ns: int | None = None,
) -> list[Binding]:
    """The LanceDB read models, one stream each: market states from enrichments, news and
    decision-reasoning embeddings, and bars with their forward returns."""
    from tapeline.projections.vectors import DecisionVectors, MarketReturns, MarketStates, NewsVectors, VectorSink

    out = []
    source: tuple[tuple[type[Event], Any], ...] = (
        (Enrichment, MarketStates(store, stream=INTEL.stream(prefix))),
        (NewsItem, NewsVectors(store, embedder, stream=NEWS.stream(prefix))),
        (DecisionEnvelope, DecisionVectors(store, embedder, stream=DECISION.stream(prefix))),
        (Bar, MarketReturns(store, stream=MD.stream(prefix))),
    )
    for event, projection in source:
        fam = family_named(event.family)
        sink = VectorSink(projection, stop_at_seq=(stop_at or {}).get(projection.table), until_ns=until_ns)
        spec = _spec(durable_name(projection.table, fam), fam.stream(prefix), [event.subject_pattern(prefix)])
        out.append(Binding(spec, sink, sink.last_seq + 1))
    return out


def gathered(events: int, size: int, gather: int, *, idle: bool) -> bool:
    """Enough is gathered to hand to the sink: ``gather`` decoded events, or :data:`REBUILD_COMMIT_BYTES` of
    undecoded bodies when the sink is idle and :data:`REBUILD_GATHER_MAX` times that while it works on the
    previous ones. Decoded events do not grow: as Python objects they take several times their bytes."""
    return events >= gather or size >= REBUILD_COMMIT_BYTES * (1 if idle else REBUILD_GATHER_MAX)


async def replay_into(nc: Client, binding: Binding, *, stop_seq: int | None, until_ns: int | None = None) -> None:
    """Feed a read model from the stream reader (rebuilds): no consumer state, no acks.

    History needs no freshness: DuckDB read models get the reader's batches gathered to
    :data:`REBUILD_COMMIT_EVENTS` events (or :data:`REBUILD_COMMIT_BYTES` of undecoded bodies) per commit,
    bodies up to :data:`REBUILD_GATHER_MAX` times more while the sink is busy (:func:`gathered`); a commit
    has a fixed cost of a few ms. A sink with native tables takes their bodies undecoded. The reader goes
    on while the sink works on the previous gathering (one at a time, in order): DuckDB releases the GIL
    while it inserts, so reading the next one costs the rebuild no time.
    """
    spec, sink, start = binding
    projection = isinstance(sink, ProjectionSink)
    gather = REBUILD_COMMIT_EVENTS if projection else 0
    raw = sink.raw_filter if projection else None
    pending: list[Received] = []
    events = size = 0
    working: asyncio.Task[object] | None = None
    try:
        async for batch in read(
            nc,
            spec.stream,
            spec.filter_subjects,
            start_seq=start,
            stop_seq=stop_seq,
            until_ns=until_ns,
            raw=raw,
            batch=spec.batch,
            max_bytes=spec.max_bytes,
        ):
            pending.extend(batch)
            events += sum(len(r.events) for r in batch)
            size += sum(len(r.delivery.data) for r in batch if r.raw)
            if gathered(events, size, gather, idle=working is None or working.done()):
                if working is not None:
                    await working
                working = asyncio.create_task(sink.process(pending))
                pending, events, size = [], 0, 0
        if working is not None:
            await working
    finally:
        if working is not None:  # done unless the read failed or was cancelled: then so is the rebuild
            working.cancel()
            with contextlib.suppress(BaseException):
                await working
    if pending:
        await sink.process(pending)
    close = getattr(sink, "close", None)
    if close is not None:
        await close()
