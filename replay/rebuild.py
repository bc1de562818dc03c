"""Rebuild projections from the streams, and verify a rebuild against the live projections.

A rebuild reads each stream from sequence 1 with ephemeral consumers (no acks, nothing
published) into a fresh DuckDB file and, optionally, a fresh LanceDB directory. ``until_ns``
gives point-in-time state (stream time = when the system knew it). Verification rebuilds up
to the live checkpoints and compares per-table content hashes of rows at or below them (for
vectors: row count and a checksum of ids, rounded vectors and forward returns), so it works
while the live DuckDB projector keeps writing; the vector comparison is exact when the live
vector projection is idle (its forward-return updates land after their rows).
Before a rebuild, :func:`check_space` refuses to start one that would fill the disk under it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client

from bus.jetstream import JetStreamApi
from bus.publisher import Publisher
from bus.runtime import ConsumerRuntime
from projections.duckdb import ProjectionDb, hash_sql
from projections.query import QueryError, query_file, query_remote
from projections.runtimes import projection_runtimes, vector_runtimes
from schemas.subjects import FAMILIES

if TYPE_CHECKING:
    from projections.embedder import TextEmbedder

VECTOR_TABLES = ("market_states", "news_vectors", "decision_vectors")  # projections.vectors, imported lazily
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
    checkpoints: dict[str, int]
    vector_checkpoints: dict[str, int] = {}

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class TableCheck(msgspec.Struct):
    table: str
    live: str
    rebuilt: str

    @property
    def ok(self) -> bool:
        return self.live == self.rebuilt


async def stream_last_seqs(nc: Client, prefix: str, keys: set[str]) -> dict[str, int]:
    api = JetStreamApi(nc)
    out: dict[str, int] = {}
    for fam in FAMILIES:
        if fam.key in keys:
            info = await api.stream_info(fam.stream(prefix))
            out[fam.key] = int(info["state"]["last_seq"]) if info else 0
    return out


def _finished(rt: ConsumerRuntime, sink: Any) -> bool:
    return bool(sink.done.is_set() or (rt.idle.is_set() and not rt.pending))


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
) -> RebuildStats:
    """Rebuild every DuckDB table into ``out_path`` (and the vectors into ``vectors_dir``), both new."""
    for p in (out_path, vectors_dir):
        if p is not None and p.exists():
            raise FileExistsError(f"{p} exists: a rebuild always starts from scratch")
    started = time.perf_counter()
    db = ProjectionDb(out_path)
    families = {t.family.key for t in db.tables}
    targets = stop_at if stop_at is not None else await stream_last_seqs(nc, prefix, families)
    publisher = await Publisher(nc, prefix, role="replay").start()
    pairs: list[tuple[ConsumerRuntime, Any]] = [
        (rt, sink)
        for rt, sink in projection_runtimes(
            nc, publisher, prefix, db, durable=False, until_ns=until_ns, stop_at=targets
        )
        if targets.get(sink.family.key, 0) > 0
    ]
    store = None
    if vectors_dir is not None:
        from projections.embedder import TextEmbedder
        from projections.vectors import VectorStore

        store = VectorStore(vectors_dir)
        pairs += [
            (rt, sink)
            for rt, sink in vector_runtimes(
                nc,
                publisher,
                prefix,
                store,
                embedder or TextEmbedder(),
                durable=False,
                stop_at=vector_stop_at,
                until_ns=until_ns,
            )
            if vector_stop_at is None or vector_stop_at.get(sink.projection.table, 0) > 0
        ]
    tasks = [asyncio.create_task(rt.run()) for rt, _ in pairs]
    try:
        while not all(_finished(rt, s) for rt, s in pairs):
            if progress:
                progress(sum(getattr(s, "events", 0) for _, s in pairs))
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            await asyncio.sleep(0.05)
    finally:
        for rt, _ in pairs:
            rt.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.close()
    events = sum(getattr(s, "events", 0) for _, s in pairs)
    stats = RebuildStats(str(out_path), events, time.perf_counter() - started, db.checkpoints())
    if store is not None:
        stats.vector_checkpoints = {t: store.checkpoint(t).last_seq for t in VECTOR_TABLES}
    db.close()
    return stats


async def live_state(nc: Client, prefix: str, live_path: Path) -> tuple[dict[str, int], dict[str, str], str]:
    """Checkpoints and hashes of the live DuckDB projection: from the projector if it runs, else the file."""
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

    rows = await q("SELECT stream, last_seq FROM _checkpoints WHERE projection = 'main'")
    by_stream = {str(s): int(str(n)) for s, n in rows}
    upto = {f.key: by_stream.get(f.stream(prefix), 0) for f in FAMILIES}
    hashes = {}
    for name, fam in ProjectionDb.table_names():
        ((n, h),) = await q(hash_sql(name, upto.get(fam)))
        hashes[name] = f"{n}:{int(str(h)):016x}"
    return upto, hashes, "projector" if remote else "file"


def live_vectors(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Checkpoint and checksum of each live vector table (LanceDB allows readers beside the writer)."""
    from projections.vectors import VectorStore

    store = VectorStore(path)
    cps = {t: store.checkpoint(t).last_seq for t in VECTOR_TABLES}
    return cps, {t: store.checksum(t, upto_seq=cps[t]) for t in VECTOR_TABLES}


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
    upto, live_hashes, _ = await live_state(nc, prefix, live_path)
    vec_cps: dict[str, int] | None = None
    vec_live: dict[str, str] = {}
    if live_vectors_dir is not None and live_vectors_dir.exists():  # noqa: ASYNC240
        vec_cps, vec_live = await asyncio.to_thread(live_vectors, live_vectors_dir)
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
        rebuilt = db.content_hashes(upto)
    finally:
        db.close()
    checks = [TableCheck(t, live_hashes[t], rebuilt[t]) for t in live_hashes]
    if vectors_dir is not None and vec_cps is not None:
        from projections.vectors import VectorStore

        store = VectorStore(vectors_dir)
        for t in VECTOR_TABLES:
            checks.append(TableCheck(f"lancedb:{t}", vec_live[t], store.checksum(t, upto_seq=vec_cps[t])))
    return checks, stats
