"""Rebuild projections from the streams, and verify a rebuild against the live projection.

A rebuild reads each stream from sequence 1 with an ephemeral consumer (no acks, nothing
published) into a fresh DuckDB file. ``until_ns`` gives point-in-time state (stream time = when
the system knew it). Verification rebuilds up to the live checkpoints and compares per-table
content hashes of rows at or below them, so it works while the live projector keeps writing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from nats.aio.client import Client

from bus.jetstream import JetStreamApi
from bus.publisher import Publisher
from projections.duckdb import ProjectionDb, hash_sql
from projections.query import QueryError, query_file, query_remote
from tapeline.pipeline import projection_runtimes


class RebuildStats(msgspec.Struct):
    path: str
    events: int
    seconds: float
    checkpoints: dict[str, int]

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
    from schemas.subjects import FAMILIES

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
    until_ns: int | None = None,
    stop_at: dict[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RebuildStats:
    """Rebuild every DuckDB table into ``out_path`` (which must not exist yet)."""
    if out_path.exists():  # noqa: ASYNC240 - one stat before a long rebuild
        raise FileExistsError(f"{out_path} exists: a rebuild always starts from an empty file")
    started = time.perf_counter()
    db = ProjectionDb(out_path)
    families = {t.family.key for t in db.tables}
    targets = stop_at if stop_at is not None else await stream_last_seqs(nc, prefix, families)
    publisher = await Publisher(nc, prefix, role="replay").start()
    pairs = [
        (rt, sink)
        for rt, sink in projection_runtimes(
            nc, publisher, prefix, db, durable=False, until_ns=until_ns, stop_at=targets
        )
        if targets.get(sink.family.key, 0) > 0
    ]
    tasks = [asyncio.create_task(rt.run()) for rt, _ in pairs]
    try:
        while True:
            done = [s.done.is_set() or (rt.idle.is_set() and s.last_seq >= targets[s.family.key]) for rt, s in pairs]
            if progress:
                progress(sum(s.events for _, s in pairs))
            if all(done):
                break
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            await asyncio.sleep(0.05)
    finally:
        for rt, _ in pairs:
            rt.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.close()
    stats = RebuildStats(
        str(out_path), sum(s.events for _, s in pairs), time.perf_counter() - started, db.checkpoints()
    )
    db.close()
    return stats


async def live_state(nc: Client, prefix: str, live_path: Path) -> tuple[dict[str, int], dict[str, str], str]:
    """Checkpoints and hashes of the live projection: from the projector if it runs, else the file."""
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
    from schemas.subjects import FAMILIES

    by_stream = {str(s): int(str(n)) for s, n in rows}
    upto = {f.key: by_stream.get(f.stream(prefix), 0) for f in FAMILIES}
    db_tables = ProjectionDb.table_names()
    hashes = {}
    for name, fam in db_tables:
        ((n, h),) = await q(hash_sql(name, upto.get(fam)))
        hashes[name] = f"{n}:{int(str(h)):016x}"
    return upto, hashes, "projector" if remote else "file"


async def verify(
    nc: Client, prefix: str, live_path: Path, out_path: Path, progress: Callable[[int], None] | None = None
) -> tuple[list[TableCheck], RebuildStats]:
    upto, live_hashes, _ = await live_state(nc, prefix, live_path)
    stats = await rebuild(nc, prefix, out_path, stop_at=upto, progress=progress)
    db = ProjectionDb(out_path)
    try:
        rebuilt = db.content_hashes(upto)
    finally:
        db.close()
    return [TableCheck(t, live_hashes[t], rebuilt[t]) for t in live_hashes], stats
