"""DuckDB projections: rows and their checkpoint in one transaction (DESIGN §5).

One writer per file (DuckDB's rule): the projector process owns the connection; readers go
through its query service (see ``projections.query``) or open a read-only copy when it is down.
Commits run in a worker thread on a per-stream cursor, so the event loop keeps pulling and
decoding while DuckDB writes.

A full disk (see :class:`StorageFull`) stops only the commits: the sink keeps its rows, alerts
once, waits with backoff (``bus.stall``) and retries until space is free, reopening the database
if DuckDB invalidated it; nothing is acked meanwhile, so the process and other consumers go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb

from bus.metrics import DISK_FULL, PROJECTION_CHECKPOINT, PROJECTION_LAG
from bus.runtime import Failure, Received
from bus.stall import Publishes, Stall, Stalled
from projections.table import Row, Table, View
from projections.tables import TABLES, VIEWS
from schemas.subjects import StreamFamily

CHECKPOINTS = "_checkpoints"
_NO_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class StorageFull(Stalled):
    """A commit failed for lack of disk space; it was rolled back and can be retried as is.

    DuckDB reports ENOSPC two ways: a failed WAL write ("Failed to commit: Could not write file
    ...wal": No space left on device; the transaction is rolled back, the connection stays usable)
    and a failed checkpoint (a FatalException that invalidates the database until it is reopened).
    """

    kind = "disk_full"
    on_bus = False  # the bus still works: the alert is stored at once


def hash_sql(table: str, upto_seq: int | None = None) -> str:
    """Order-independent content hash: row count and the sum (mod 2^64) of DuckDB row hashes."""
    where = f"WHERE seq <= {int(upto_seq)}" if upto_seq is not None else ""
    return (
        "SELECT count(*), coalesce(sum(hash(r)::HUGEINT), 0) % 18446744073709551616 "
        f"FROM (SELECT * FROM {table} {where}) r"
    )


class ProjectionDb:
    """A DuckDB file holding a set of tables, views and their checkpoints."""

    def __init__(
        self, path: Path, tables: tuple[Table, ...] = TABLES, views: tuple[View, ...] = VIEWS, name: str = "main"
    ) -> None:
        self.path = path
        self.name = name
        self.tables = tables
        self.views = views
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path))
        self._create()

    def _create(self) -> None:
        c = self.con
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (projection VARCHAR, stream VARCHAR, last_seq BIGINT, "
            "events BIGINT, updated_ns BIGINT, PRIMARY KEY (projection, stream))"
        )
        for t in self.tables:
            empty = t.to_arrow([])
            c.register("_empty", empty)
            c.execute(f"CREATE TABLE IF NOT EXISTS {t.name} AS SELECT * FROM _empty LIMIT 0")
            c.unregister("_empty")
        for v in self.views:
            c.execute(f"CREATE OR REPLACE VIEW {v.name} AS {v.sql}")

    def checkpoint(self, stream: str) -> int:
        row = self.con.execute(
            f"SELECT last_seq FROM {CHECKPOINTS} WHERE projection = ? AND stream = ?", [self.name, stream]
        ).fetchone()
        return int(row[0]) if row else 0

    def checkpoints(self) -> dict[str, int]:
        rows = self.con.execute(f"SELECT stream, last_seq FROM {CHECKPOINTS} WHERE projection = ?", [self.name])
        return {str(s): int(q) for s, q in rows.fetchall()}

    def commit(self, stream: str, rows: dict[str, list[Row]], last_seq: int, events: int, cur: Any = None) -> None:
        """Insert every table's rows as Arrow and advance the checkpoint, atomically."""
        c = cur or self.con
        by_name = {t.name: t for t in self.tables}
        try:
            c.execute("BEGIN TRANSACTION")  # fails too once DuckDB has invalidated the database
            for name, table_rows in rows.items():
                if table_rows:
                    arrow = by_name[name].to_arrow(table_rows)
                    c.register("_batch", arrow)
                    c.execute(f"INSERT INTO {name} SELECT * FROM _batch")
                    c.unregister("_batch")
            c.execute(
                f"INSERT INTO {CHECKPOINTS} VALUES (?, ?, ?, ?, ?) ON CONFLICT (projection, stream) DO UPDATE SET "
                "last_seq = excluded.last_seq, events = _checkpoints.events + excluded.events, "
                "updated_ns = excluded.updated_ns",
                [self.name, stream, last_seq, events, time.time_ns()],
            )
            c.execute("COMMIT")
        except Exception as exc:
            try:
                c.execute("ROLLBACK")
            except duckdb.Error as rollback:  # a failed COMMIT already ended (or invalidated) it: keep the cause
                exc.add_note(f"ROLLBACK: {rollback}")
            if any(reason in str(exc) for reason in _NO_SPACE):
                raise StorageFull(f"DuckDB {self.path}: no space to commit {stream} to seq {last_seq}: {exc}") from exc
            raise

    def revive(self) -> bool:
        """Reopen the database if DuckDB invalidated it (a fatal I/O error); False while that still fails."""
        try:
            self.con.execute("SELECT 1")
            return True
        except duckdb.Error:
            pass
        with contextlib.suppress(duckdb.Error):
            self.con.close()  # closes every cursor of it; DuckDB must drop the invalid instance first
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.Error:  # replaying the WAL on open needs space too
            return False
        return True

    @staticmethod
    def table_names(tables: tuple[Table, ...] = TABLES) -> list[tuple[str, str]]:
        return [(t.name, t.family.key) for t in tables]

    def content_hashes(self, upto: dict[str, int] | None = None) -> dict[str, str]:
        """``count:sum-of-row-hashes`` per table, optionally only rows with seq <= the stream's bound."""
        out: dict[str, str] = {}
        for t in self.tables:
            bound = upto.get(t.family.key) if upto is not None else None
            n, h = self.con.execute(hash_sql(t.name, bound)).fetchone() or (0, 0)
            out[t.name] = f"{n}:{int(h):016x}"
        return out

    def close(self) -> None:
        self.con.close()


class ProjectionSink:
    """The consumer-runtime sink for one stream family into a :class:`ProjectionDb`."""

    def __init__(
        self,
        db: ProjectionDb,
        family: StreamFamily,
        stream: str,
        *,
        until_ns: int | None = None,
        stop_at_seq: int | None = None,
        alerts: Publishes | None = None,
    ) -> None:
        self.db = db
        self.family = family
        self.stream = stream
        self.until_ns = until_ns
        self.stop_at_seq = stop_at_seq
        self.tables = [t for t in db.tables if t.family == family]
        self.by_type: dict[type, list[Table]] = defaultdict(list)
        for t in self.tables:
            for et in t.events:
                self.by_type[et].append(t)
        self.last_seq = db.checkpoint(stream)
        self.cursor = db.con.cursor()
        self._cursor_of = db.con
        self.events = 0
        self.done = asyncio.Event()
        self.stopping = asyncio.Event()
        self.stall = Stall(f"projection:{db.name}:{family.key}", alerts, stop=self.stopping)

    def stop(self) -> None:
        """End a wait for disk space (shutdown): the batch stays unacked and is redone on restart."""
        self.stopping.set()

    async def _commit(self, rows: dict[str, list[Row]], last: int, n: int) -> None:
        """Commit; on a full disk keep the rows, wait for space (reopening an invalidated database), retry."""
        while True:
            if self._cursor_of is not self.db.con:  # reopened, by this sink or another on the same file
                self.cursor, self._cursor_of = self.db.con.cursor(), self.db.con
            try:
                await asyncio.to_thread(self.db.commit, self.stream, rows, last, n, self.cursor)
                break
            except StorageFull as e:
                DISK_FULL.labels(self.db.name).inc()
                await self.stall.wait(e)
                while not self.db.revive():
                    await self.stall.wait(e)
                if self.db.checkpoint(self.stream) >= last:
                    break  # the failed commit was durable after all
        await self.stall.resolved()

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        rows: dict[str, list[Row]] = {t.name: [] for t in self.tables}
        failures: dict[int, Failure] = {}
        last = self.last_seq
        n = 0
        for j, rec in enumerate(batch):
            d = rec.delivery
            if d.stream_seq <= self.last_seq:
                continue  # already committed (a redelivery after a crash between commit and ack)
            if (self.until_ns is not None and d.ts_ns > self.until_ns) or (
                self.stop_at_seq is not None and d.stream_seq > self.stop_at_seq
            ):
                self.done.set()
                break
            try:
                for e in rec.events:
                    for t in self.by_type.get(type(e), ()):
                        rows[t.name].extend(t.rows(e, d.stream_seq))
                    n += 1
            except Exception as exc:  # a row that cannot be built is poison: dead-letter it, keep going
                failures[j] = Failure(f"projection row failed: {type(exc).__name__}: {exc}", retry=False)
            last = d.stream_seq
        if last > self.last_seq:
            await self._commit(rows, last, n)
            self.last_seq = last
            self.events += n
        if batch:
            PROJECTION_CHECKPOINT.labels(self.db.name, self.stream).set(self.last_seq)
            PROJECTION_LAG.labels(self.db.name, self.stream).set(batch[-1].delivery.pending)
            if self.stop_at_seq is not None and self.last_seq >= self.stop_at_seq:
                self.done.set()
        return failures
