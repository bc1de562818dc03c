"""Rebuild projections from the streams, and verify a rebuild against the live projections.

A rebuild reads each stream from sequence 1 with the stream reader (no acks, nothing
published) into a fresh DuckDB file and, optionally, a fresh LanceDB directory. ``until_ns``
gives point-in-time state (stream time = when the system knew it). Verification rebuilds each
stream up to the highest live checkpoint of its read models and compares each table's content
hash over the rows at or below that table's own live checkpoint (for vectors: row count and a
checksum of ids, rounded vectors and forward returns), so it works while the live DuckDB
projector keeps writing; the vector comparison is exact when the live vector projection is idle
(its forward-return updates land after their rows). A live read model whose schema differs from
its declaration (or that is missing) cannot match its rebuild: it is reported as changed, and a
swap puts the rebuilt one live.
Before a rebuild, :func:`check_space` refuses to start one that would fill the disk under it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client

from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.runtime import frozen_gc
from tapeline.projections.duckdb import ProjectionDb, columns_sql, hash_sql
from tapeline.projections.query import QueryError, query_file, query_remote
from tapeline.projections.runtimes import Binding, projection_bindings, replay_into, vector_bindings
from tapeline.projections.table import schema_hash
from tapeline.projections.tables import TABLES
from tapeline.schemas.subjects import FAMILIES

if TYPE_CHECKING:
    from tapeline.models.embedder import TextEmbedder

VECTOR_TABLES = (
    "market_states",
    "news_vectors",
    "decision_vectors",
    "market_returns",
)  # projections.vectors, imported lazily
INSERT_PARTS = max(1, min(4, os.cpu_count() or 1))
"""A rebuild's big native inserts are parsed on this many threads (projections.duckdb.PARALLEL_MIN_EVENTS)."""
SPACE_FACTOR = 1.5  # a rebuild writes files about the size of the live ones, plus DuckDB's WAL while it builds
SPACE_MARGIN = 256 * 1024**2  # and room for everything else on that disk (the live projector keeps writing)


class NotEnoughSpace(ValueError):
    """The target's filesystem has less free space than a rebuild is estimated to need."""


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.1f} {unit}"


def check_space(target: Path, live_db: Path, live_vectors: Path | None = None) -> int:
    """Refuse a rebuild into ``target`` unless its filesystem has room: 1.5x the live DuckDB file (with its
    WAL) and vector directory, plus 256 MiB. Returns the bytes estimated."""
    live = _bytes(live_db) + _bytes(live_db.with_name(live_db.name + ".wal"))
    live += _bytes(live_vectors) if live_vectors is not None else 0
    need = int(live * SPACE_FACTOR) + SPACE_MARGIN
    where = target.absolute().parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise NotEnoughSpace(
            f"not enough free space for the rebuild at {target.absolute().parent}: needs about {_human(need)} "
            f"(1.5x the live projections' {_human(live)} + {_human(SPACE_MARGIN)}), {_human(free)} free; "
            "free space or pass --out on another disk"
        )
    return need


class RebuildStats(msgspec.Struct):
    path: str
    events: int
    seconds: float
    checkpoints: dict[str, int]  # per read model
    vector_checkpoints: dict[str, int] = {}

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class TableCheck(msgspec.Struct):
    table: str
    live: str
    rebuilt: str
    changed: bool = False  # the live table's schema is not the declared one: only a rebuild can be right

    @property
    def ok(self) -> bool:
        return self.changed or self.live == self.rebuilt

    @property
    def verdict(self) -> str:
        if self.changed:
            return "new read model, rebuilt" if self.live == "missing" else "changed schema, rebuilt"
        return "ok" if self.ok else "MISMATCH"


class LiveTable(msgspec.Struct):
    """What verification needs of one live DuckDB table."""

    upto: int  # its own checkpoint
    content: str  # hash of its rows at or below ``upto`` ("missing": no such table)
    schema_hash: str  # as stored in its tracking record
    columns: list[tuple[str, str]]


async def stream_last_seqs(nc: Client, prefix: str, keys: set[str]) -> dict[str, int]:
    api = JetStreamApi(nc)
    out: dict[str, int] = {}
    for fam in FAMILIES:
        if fam.key in keys:
            info = await api.stream_info(fam.stream(prefix))
            out[fam.key] = int(info["state"]["last_seq"]) if info else 0
    return out


async def rebuild(
    nc: Client,
    prefix: str,
    out_path: Path,
    *,
    vectors_dir: Path | None = None,
    embedder: TextEmbedder | None = None,
    until_ns: int | None = None,
    stop_at: dict[str, int] | None = None,
    vector_stop_at: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
    native: bool = True,
) -> RebuildStats:
    """Rebuild every DuckDB table into ``out_path`` (and the vectors into ``vectors_dir``), both new.

    ``native``: DuckDB makes the hot tables' rows from the raw bodies (``projections.native``); False
    decodes every event in Python (the reference the fast path is tested against, and the A/B bench).
    """
    for p in (out_path, vectors_dir):
        if p is not None and p.exists():
            raise FileExistsError(f"{p} exists: a rebuild always starts from scratch")
    started = time.perf_counter()
    with frozen_gc():  # what exists now lives on: the collector stops rescanning it (see _rebuild)
        return await _rebuild(
            nc, prefix, out_path, started, vectors_dir, embedder, until_ns, stop_at, vector_stop_at, progress, native
        )


async def _rebuild(
    nc: Client,
    prefix: str,
    out_path: Path,
    started: float,
    vectors_dir: Path | None,
    embedder: TextEmbedder | None,
    until_ns: int | None,
    stop_at: dict[str, int] | None,
    vector_stop_at: dict[str, int] | None,
    progress: Callable[[int], None] | None,
    native: bool,
) -> RebuildStats:
    """The rebuild proper. It decodes and drops millions of short-lived objects; each full collection
    would rescan every long-lived object of the process (modules, DuckDB, Arrow): frozen, they are skipped."""
    db = ProjectionDb(out_path, insert_parts=INSERT_PARTS)
    families = {t.family.key for t in db.tables}
    targets = stop_at if stop_at is not None else await stream_last_seqs(nc, prefix, families)
    work: list[tuple[Binding, int | None]] = [
        (b, targets.get(b.sink.family.key, 0))
        for b in projection_bindings(prefix, db, until_ns=until_ns, stop_at=targets, native=native)
    ]
    store = None
    if vectors_dir is not None:
        from tapeline.models.embedder import TextEmbedder
        from tapeline.projections.vectors import VectorStore

        store = VectorStore(vectors_dir)
        for b in vector_bindings(prefix, store, embedder or TextEmbedder(), stop_at=vector_stop_at, until_ns=until_ns):
            work.append((b, None if vector_stop_at is None else vector_stop_at.get(b.sink.projection.table, 0)))
    work = [(b, stop) for b, stop in work if stop != 0]  # 0: nothing to rebuild up to
    bindings = [b for b, _ in work]
    tasks = [asyncio.create_task(replay_into(nc, b, stop_seq=stop, until_ns=until_ns)) for b, stop in work]
    try:
        running = set(tasks)
        while running:  # ends as the last one does (a fixed sleep cost a 100k-event rebuild ~25 ms on average)
            if progress:
                progress(sum(getattr(b.sink, "events", 0) for b in bindings))
            done, running = await asyncio.wait(running, timeout=0.05, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t.exception() for t in done if t.exception()]
            if failed:
                raise failed[0]  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    events = sum(getattr(b.sink, "events", 0) for b in bindings)
    stats = RebuildStats(str(out_path), events, time.perf_counter() - started, db.checkpoints())
    if store is not None:
        stats.vector_checkpoints = {t: store.checkpoint(t).last_seq for t in VECTOR_TABLES}
    db.close()
    return stats


async def live_state(nc: Client, prefix: str, live_path: Path) -> tuple[dict[str, LiveTable], str]:
    """Tracking and hashes of the live DuckDB tables: from the projector if it runs, else the file.

    A file the projector has not opened since tracking became per table (``_checkpoints`` keyed by
    projection and stream) is read as the projector would upgrade it.
    """
    try:
        await query_remote(nc, prefix, "SELECT 1", timeout=1.0)
        remote = True
    except Exception:
        remote = False

    async def q(sql: str) -> list[list[object]]:
        res = await query_remote(nc, prefix, sql) if remote else await asyncio.to_thread(query_file, live_path, sql)
        if res.error:
            raise QueryError(res.error)
        return res.rows

    shape = {str(c) for c, _ in await q(columns_sql("_checkpoints"))}
    tracked: dict[str, tuple[int, str]] = {}
    if "read_model" in shape:
        for m, n, h in await q("SELECT read_model, last_seq, schema_hash FROM _checkpoints"):
            tracked[str(m)] = (int(str(n)), str(h))
    elif shape:
        by_stream = {str(s): int(str(n)) for s, n in await q("SELECT stream, last_seq FROM _checkpoints")}
        for t in TABLES:
            tracked[t.name] = (by_stream.get(t.family.stream(prefix), 0), schema_hash(1, t.columns))
    out: dict[str, LiveTable] = {}
    for t in TABLES:
        upto, stored = tracked.get(t.name, (0, ""))
        columns = [(str(c), str(d)) for c, d in await q(columns_sql(t.name))]
        content = "missing"
        if columns:
            ((n, h),) = await q(hash_sql(t.name, upto))
            content = f"{n}:{int(str(h)):016x}"
        out[t.name] = LiveTable(upto, content, stored, columns)
    return out, "projector" if remote else "file"


def live_vectors(path: Path) -> tuple[dict[str, int], dict[str, str], set[str]]:
    """Checkpoint and checksum of each live vector table, and which are changed (LanceDB allows readers)."""
    from tapeline.projections.vectors import VectorStore

    store = VectorStore(path)
    cps = {t: store.checkpoint(t) for t in VECTOR_TABLES}
    changed = {t for t, cp in cps.items() if store.exists(t) and store.shape_hash(cp) != store.specs[t].schema_hash}
    return (
        {t: cp.last_seq for t, cp in cps.items()},
        {t: store.checksum(t, upto_seq=cp.last_seq) for t, cp in cps.items()},
        changed,
    )


async def verify(
    nc: Client,
    prefix: str,
    live_path: Path,
    out_path: Path,
    *,
    live_vectors_dir: Path | None = None,
    embedder: TextEmbedder | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[TableCheck], RebuildStats]:
    live, _ = await live_state(nc, prefix, live_path)
    upto: dict[str, int] = {}  # per stream family: the furthest of its tables
    for t in TABLES:
        upto[t.family.key] = max(upto.get(t.family.key, 0), live[t.name].upto)
    vec_cps: dict[str, int] | None = None
    vec_live: dict[str, str] = {}
    vec_changed: set[str] = set()
    if live_vectors_dir is not None and live_vectors_dir.exists():  # noqa: ASYNC240
        vec_cps, vec_live, vec_changed = await asyncio.to_thread(live_vectors, live_vectors_dir)
    vectors_dir = out_path.with_suffix(".vectors") if vec_cps is not None else None
    stats = await rebuild(
        nc,
        prefix,
        out_path,
        stop_at=upto,
        vectors_dir=vectors_dir,
        embedder=embedder,
        vector_stop_at=vec_cps,
        progress=progress,
    )
    db = ProjectionDb(out_path)
    try:
        rebuilt = db.content_hashes({name: lt.upto for name, lt in live.items()})
        checks = []
        for t in db.tables:
            lt = live[t.name]
            declared = [(str(c), str(d)) for c, d in db.con.execute(columns_sql(t.name)).fetchall()]
            changed = lt.schema_hash != t.schema_hash or lt.columns != declared
            checks.append(TableCheck(t.name, lt.content, rebuilt[t.name], changed=changed))
    finally:
        db.close()
    if vectors_dir is not None and vec_cps is not None:
        from tapeline.projections.vectors import VectorStore

        store = VectorStore(vectors_dir)
        for vt in VECTOR_TABLES:
            rebuilt_sum = store.checksum(vt, upto_seq=vec_cps[vt])
            checks.append(TableCheck(f"lancedb:{vt}", vec_live[vt], rebuilt_sum, changed=vt in vec_changed))
    return checks, stats
