"""DuckDB projections: rows and their tracking record in one transaction (DESIGN §5).

One writer per file (DuckDB's rule): the projector process owns the connection; readers go
through its query service (see ``projections.query``) or open a read-only copy when it is down.
Commits run in a worker thread on a per-stream cursor, so the event loop keeps pulling and
decoding while DuckDB writes.

Tracking is per read model: ``_checkpoints`` holds one row per table (read_model, stream,
last_seq, schema_hash, events, updated_ns), written in the transaction that inserts that table's
rows. One consumer per stream family keeps commits big (all the family's tables in one
transaction); it starts at the lowest checkpoint of its tables + 1 and each table skips what it
already holds, so a table added to a stream with history backfills itself. Opening a file checks
every table against its declaration (the stored schema hash and the DuckDB columns) and refuses a
changed one with :class:`~projections.table.ReadModelChanged`. A ``_checkpoints`` of the older,
per-stream shape (projection, stream, last_seq, events, updated_ns) is upgraded in place on open.

A full disk (see :class:`StorageFull`) stops only the commits: the sink keeps its rows, alerts
once, waits with backoff (``bus.stall``) and retries until space is free, reopening the database
if DuckDB invalidated it; nothing is acked meanwhile, so the process and other consumers go on.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import functools
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
import structlog

from tapeline.bus.metrics import DISK_FULL, PROJECTION_CHECKPOINT, PROJECTION_LAG, PROJECTION_MEMORY
from tapeline.bus.reader import Received
from tapeline.bus.runtime import Failure
from tapeline.bus.stall import Publishes, Stall, Stalled
from tapeline.projections.native import NATIVE, Bodies, NativeRejected, NativeRows
from tapeline.projections.table import ReadModelChanged, Row, Table, View, schema_hash
from tapeline.projections.tables import TABLES, VIEWS
from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.subjects import StreamFamily

log = structlog.get_logger(__name__)
CHECKPOINTS = "_checkpoints"
_NO_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
Piece = list[Row] | Bodies
MEMORY_SAMPLE_S = 10.0
"""How often a projection samples DuckDB's memory for :data:`PROJECTION_MEMORY` (a query of its own)."""
SCRATCH_MIN_FREE = 256 * 1024 * 1024
"""Scratch files go to /dev/shm only if it has this much free: a rebuild's commit writes up to ~64 MiB of
bodies there at once, and a container's /dev/shm is often 64 MiB (Docker's default); else the temp dir."""


def _scratch_base(shm: str = "/dev/shm", min_free: int = SCRATCH_MIN_FREE) -> str | None:
    """Where scratch directories go: memory-backed /dev/shm when it is writable and big enough, else the
    system's temp dir (None)."""
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    return shm if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= min_free else None


_SCRATCH = _scratch_base()
LIVE_NATIVE_MIN_BYTES = 2 * 1024 * 1024
"""The live projector makes tick rows natively only from batches with this many bytes of bodies (~9k ticks).
A ``read_json`` INSERT costs ~5 ms of CPU more than an Arrow one whatever its size (100-500 ticks per commit:
10.4-12.6 vs 5.8-8.9 ms), and saves ~1 µs per tick of decoding and rows: it pays in catch-up and batched
feeds, not at a steady rate's small commits (docs/performance.md, eighth pass). Rebuilds gather far more."""


PARALLEL_MIN_EVENTS = 100_000
"""A native insert of this many events or more is cut into ``ProjectionDb.insert_parts``: a rebuild's commits
gathered while the sink was busy (``projections.runtimes.REBUILD_GATHER_MAX``). Smaller ones are the commits
of a rebuild whose reading is the slower side, and DuckDB's second thread would take a core from it
(bench_rebuild one per message: 99-104k events/s cut from 20k events, 102-114k from 100k)."""


_SCRATCH_PREFIX = "tapeline-duckdb-"  # + pid + "-" + random


@functools.cache
def scratch_dir() -> str:
    """This process's private directory (mode 0700, in memory where there is /dev/shm) for the bodies
    DuckDB's JSON reader parses (``projections.native``), removed at exit.

    It is the one directory a confined database (``projections.query.confine``: no file access from SQL)
    may still read, so the live projector keeps its fast path. A query could read a file there while it
    exists: tick bodies, the same data as the ``ticks`` table. One per process, not per database: DuckDB
    shares its settings among every connection to one file, and the last one set would win.
    """
    _sweep_scratch()
    path = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=_SCRATCH)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _sweep_scratch() -> None:
    """Remove the scratch directories of processes that are gone: a killed one (SIGKILL, OOM) leaves its
    directory, with body files (up to ~64 MiB) if it died inside a commit, in memory."""
    for d in Path(_SCRATCH or tempfile.gettempdir()).glob(f"{_SCRATCH_PREFIX}*-*"):
        pid = d.name.removeprefix(_SCRATCH_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or d.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive, another user's
            pass


_IOV_MAX = 1024  # buffers per writev (POSIX guarantees at least 16; Linux allows 1024)


class StorageFull(Stalled):
    """A commit failed for lack of disk space; it was rolled back and can be retried as is.

    DuckDB reports ENOSPC two ways: a failed WAL write ("Failed to commit: Could not write file
    ...wal": No space left on device; the transaction is rolled back, the connection stays usable)
    and a failed checkpoint (a FatalException that invalidates the database until it is reopened).
    """

    kind = "disk_full"
    on_bus = False  # the bus still works: the alert is stored at once


PRE_TRACKING = "pre-tracking"  # the hash a migrated table gets when its columns no longer match


def hash_sql(table: str, upto_seq: int | None = None) -> str:
    """Order-independent content hash: row count and the sum (mod 2^64) of DuckDB row hashes."""
    where = f"WHERE seq <= {int(upto_seq)}" if upto_seq is not None else ""
    return (
        "SELECT count(*), coalesce(sum(hash(r)::HUGEINT), 0) % 18446744073709551616 "
        f"FROM (SELECT * FROM {table} {where}) r"
    )


def columns_sql(table: str) -> str:
    """A table's (column, DuckDB type) pairs in order; no rows if the table does not exist."""
    return (
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = current_database() "
        f"AND table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position"
    )


_DUCKDB_TYPES = {
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("ns"): "TIMESTAMP_NS",
    pa.list_(pa.string()): "VARCHAR[]",
}
"""The DuckDB type a table created from an empty Arrow table of each type gets (tests/test_open_ddl.py)."""


def _column_ddl(t: Table) -> str | None:
    """``t``'s columns as DDL with the types DuckDB gives them from Arrow; None if a type is not known here."""
    types = [_DUCKDB_TYPES.get(dtype) for _, dtype in t.columns]
    if None in types:
        return None
    return ", ".join(f'"{name}" {dtype}' for (name, _), dtype in zip(t.columns, types, strict=True))


def _write_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """Write the pieces in order, ``IOV_MAX`` at a time (no copy; writing 200k one-tick pieces through the
    file object's buffer cost ~7% of a one-event-per-message rebuild)."""
    for i in range(0, len(pieces), _IOV_MAX):
        chunk = pieces[i : i + _IOV_MAX]
        done, size = os.writev(fd, chunk), sum(map(len, chunk))
        if done < size:  # a short write (rare for a file): the rest, from where it stopped
            rest = memoryview(b"".join(chunk))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class Tracking(NamedTuple):
    """A read model's tracking record: the stream it follows and how far its committed rows go."""

    read_model: str
    stream: str
    last_seq: int
    schema_hash: str


class DbLimits(NamedTuple):
    """How much memory a long-running writer's DuckDB may hold (the projector's ``[projector]`` settings).

    DuckDB keeps every row committed since its last checkpoint in memory until the write-ahead log
    reaches ``checkpoint_threshold`` (16 MiB by default: half an hour of the demo's rate), and then keeps
    the file's blocks it wrote cached up to ``memory_limit`` (80% of RAM by default). A projector that
    runs for weeks would grow to most of the machine's memory, and its RSS rose ~1 MiB/min in the soak
    until the first checkpoint. A small threshold makes it checkpoint every few MiB of log (cheap: the
    rows are compressed once), and the limit bounds the cache and the queries it serves, which spill to
    disk beyond it. See docs/performance.md "The projector's memory".
    """

    memory_limit_mb: int
    checkpoint_mb: int
    threads: int = 0  # 0: DuckDB's default, one per core

    def config(self) -> dict[str, str]:
        out = {"memory_limit": f"{self.memory_limit_mb}MiB", "checkpoint_threshold": f"{self.checkpoint_mb}MiB"}
        return out | ({"threads": str(self.threads)} if self.threads else {})


class ProjectionDb:
    """A DuckDB file holding a set of tables, views and their tracking records."""

    def __init__(
        self,
        path: Path,
        tables: tuple[Table, ...] = TABLES,
        views: tuple[View, ...] = VIEWS,
        name: str = "main",
        limits: DbLimits | None = None,
        insert_parts: int = 1,
    ) -> None:
        """``insert_parts`` > 1: large native inserts are parsed on that many threads (for rebuilds)."""
        self.path = path
        self.insert_parts = insert_parts
        self.name = name
        self.tables = tables
        self.views = views
        self._settings = limits.config() if limits else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect()
        try:
            self._open()
        except BaseException:
            self.con.close()
            raise

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Connect, then ``SET`` the limits. (Given to ``connect(config=...)`` instead, they made a later
        ``SET checkpoint_threshold`` miss now and then: tests/test_disk_full.py's checkpoint case failed
        2 runs in 6, and 0 in 6 this way.)"""
        con = duckdb.connect(str(self.path))
        try:
            for name, value in self._settings.items():
                con.execute(f"SET {name} = '{value}'")
            (locked,) = con.execute("SELECT current_setting('lock_configuration')").fetchall()[0]
            if not locked:  # locked: another connection to this file confined it after setting this
                con.execute("SET allowed_directories = ?", [[scratch_dir() + os.sep]])
        except BaseException:
            con.close()
            raise
        return con

    def _open(self) -> None:
        """Create, upgrade and check everything in one transaction: a refused file is left as it was."""
        c = self.con
        c.execute("BEGIN TRANSACTION")
        try:
            existing = self._all_columns()
            cols = [n for n, _ in existing.get(CHECKPOINTS, [])]
            if "projection" in cols:
                self._upgrade_tracking(existing)
            elif not cols:
                self._create_tracking()
            tracked = self.tracking()
            created = [t for t in self.tables if self._check_or_create(t, tracked.get(t.name), existing.get(t.name))]
            if created:  # one statement: DuckDB spends 5-20 ms on each upsert, most of opening a new file
                now = time.time_ns()
                c.execute(
                    f"INSERT OR REPLACE INTO {CHECKPOINTS} VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(created))}",
                    [v for t in created for v in (t.name, "", 0, t.schema_hash, 0, now)],
                )
            for v in self.views:
                c.execute(f"CREATE OR REPLACE VIEW {v.name} AS {v.sql}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _create_tracking(self) -> None:
        self.con.execute(
            f"CREATE TABLE {CHECKPOINTS} (read_model VARCHAR PRIMARY KEY, stream VARCHAR, last_seq BIGINT, "
            "schema_hash VARCHAR, events BIGINT, updated_ns BIGINT)"
        )

    def _upgrade_tracking(self, existing: dict[str, list[tuple[str, str]]]) -> None:
        """Files from before per-table tracking kept one row per stream: copy it to each table of the family.

        A table whose columns still match its declaration gets the hash of version 1 (all there was
        then); one that does not gets :data:`PRE_TRACKING`, which the check below refuses.
        """
        c = self.con
        old = c.execute(
            f"SELECT stream, last_seq, events, updated_ns FROM {CHECKPOINTS} WHERE projection = ? "
            "ORDER BY last_seq DESC",
            [self.name],
        ).fetchall()
        c.execute(f"DROP TABLE {CHECKPOINTS}")
        self._create_tracking()
        for stream, last_seq, events, updated_ns in old:
            for t in self.tables:
                if str(stream).endswith(f"_{t.family.key.upper()}"):
                    same = existing.get(t.name) == self._declared_columns(t)
                    h = schema_hash(1, t.columns) if same else PRE_TRACKING
                    c.execute(
                        f"INSERT INTO {CHECKPOINTS} VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [t.name, stream, last_seq, h, events, updated_ns],
                    )
        log.info("projection tracking upgraded to per read model", path=str(self.path), streams=len(old))

    def _check_or_create(self, t: Table, tracked: Tracking | None, existing: list[tuple[str, str]] | None) -> bool:
        """Refuse a table whose stored hash or columns differ from ``t``; create a missing one (True: to track)."""
        if existing and tracked is not None:
            if tracked.schema_hash == t.schema_hash and existing == self._declared_columns(t):
                return False
            old = tracked.schema_hash
            if old == t.schema_hash:  # the columns were changed under the declaration
                arrow = self.con.sql(f"SELECT * FROM {t.name} LIMIT 0").to_arrow_table().schema
                old = schema_hash(t.version, [(f.name, f.type) for f in arrow])
            raise ReadModelChanged(t.name, old, t.schema_hash)
        if existing:  # rows no tracking record vouches for (none should exist): start the table over
            ((n,),) = self.con.execute(f"SELECT count(*) FROM {t.name}").fetchall()
            if n:
                log.warning("untracked read model rebuilt from the stream", table=t.name, rows_dropped=n)
        ddl = _column_ddl(t)
        if ddl is not None:  # ~0.4 ms; creating it from an empty Arrow table took ~2 ms (21 tables: most of opening)
            self.con.execute(f"CREATE OR REPLACE TABLE {t.name} ({ddl})")
            return True
        self.con.register("_empty", t.to_arrow([]))
        self.con.execute(f"CREATE OR REPLACE TABLE {t.name} AS SELECT * FROM _empty")
        self.con.unregister("_empty")
        return True

    def _all_columns(self) -> dict[str, list[tuple[str, str]]]:
        """(column, DuckDB type) pairs of every table in the file, in one query (opening stays fast)."""
        out: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for table, column, dtype in self.con.execute(  # duckdb_columns(): 1.7 ms; information_schema: 20-28 ms
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = current_schema() "
            "ORDER BY table_name, column_index"
        ).fetchall():
            out[str(table)].append((str(column), str(dtype)))
        return dict(out)

    def _declared_columns(self, t: Table) -> list[tuple[str, str]]:
        """The (column, DuckDB type) pairs a table made from ``t``'s declaration has."""
        self.con.register("_declared", t.to_arrow([]))
        try:
            return [(str(r[0]), str(r[1])) for r in self.con.execute("DESCRIBE SELECT * FROM _declared").fetchall()]
        finally:
            self.con.unregister("_declared")

    def tracking(self) -> dict[str, Tracking]:
        rows = self.con.execute(f"SELECT read_model, stream, last_seq, schema_hash FROM {CHECKPOINTS}").fetchall()
        return {str(m): Tracking(str(m), str(s), int(q), str(h)) for m, s, q, h in rows}

    def follow(self, stream: str, read_models: list[str]) -> None:
        """Record the stream of read models that have not committed yet (so status shows it)."""
        marks = ", ".join("?" * len(read_models))
        self.con.execute(
            f"UPDATE {CHECKPOINTS} SET stream = ? WHERE stream = '' AND read_model IN ({marks})", [stream, *read_models]
        )

    def checkpoint(self, read_model: str) -> int:
        """The last stream sequence whose rows ``read_model`` has committed (0: none)."""
        tr = self.tracking().get(read_model)
        return tr.last_seq if tr else 0

    def checkpoints(self) -> dict[str, int]:
        """Last committed sequence per read model."""
        return {name: tr.last_seq for name, tr in self.tracking().items()}

    def commit(
        self,
        stream: str,
        rows: dict[str, list[Row]],
        last_seq: int,
        events: Mapping[str, int],
        cur: Any = None,
        native: Mapping[str, list[Piece]] | None = None,
    ) -> None:
        """Insert every table's rows as Arrow and advance those tables' tracking records, atomically.

        ``rows`` names the tables this commit advances to ``last_seq`` (with or without new rows).
        ``native`` gives tables made by DuckDB from raw bodies (``projections.native``) their rows as pieces
        in stream order: Python rows, or bodies DuckDB turns into rows. A body the fast path may not take
        after all raises :class:`NativeRejected` (nothing committed).
        """
        c = cur or self.con
        by_name = {t.name: t for t in self.tables}
        try:
            c.execute("BEGIN TRANSACTION")  # fails too once DuckDB has invalidated the database
            for name, table_rows in rows.items():
                if table_rows:
                    self._insert_rows(c, by_name[name], table_rows)
            for name, pieces in (native or {}).items():
                for piece in pieces:
                    if isinstance(piece, Bodies):
                        self._insert_bodies(c, piece)
                    elif piece:
                        self._insert_rows(c, by_name[name], piece)
            if rows:
                self._advance(c, stream, rows, last_seq, events, by_name)
            c.execute("COMMIT")
        except Exception as exc:
            try:
                c.execute("ROLLBACK")
            except duckdb.Error as rollback:  # a failed COMMIT already ended (or invalidated) it: keep the cause
                exc.add_note(f"ROLLBACK: {rollback}")
            if any(reason in str(exc) for reason in _NO_SPACE):
                raise StorageFull(f"DuckDB {self.path}: no space to commit {stream} to seq {last_seq}: {exc}") from exc
            raise

    @staticmethod
    def _insert_rows(c: Any, table: Table, table_rows: list[Row]) -> None:
        """One Arrow insert. A relation inserted directly costs ~25% less CPU than registering a view, a
        SQL ``INSERT … SELECT`` over it and unregistering it (~1.3 vs ~1.7 ms for 20 rows: DuckDB's cost
        per statement, not per row; docs/performance.md, "Twelfth pass")."""
        c.from_arrow(table.to_arrow(table_rows)).insert_into(table.name)

    def _insert_bodies(self, c: Any, bodies: Bodies) -> None:
        """DuckDB parses the bodies and inserts their rows; it must insert exactly the events counted.

        The bodies go to DuckDB's JSON reader as files in memory-backed storage (/dev/shm), deleted after:
        one, or :attr:`insert_parts` for a run of :data:`PARALLEL_MIN_EVENTS` or more. Parts are parsed on
        threads, each writing its own row groups, so such an insert's rows are stored in stream order within
        a part, not across parts: no read model reads ``ticks`` without an ORDER BY (100k ticks in one insert:
        2.0-2.2 -> 1.4-1.6 µs a tick of wall time in two parts on two cores, 2.2-2.7 µs of CPU).
        """
        parts = bodies.split(self.insert_parts) if bodies.events >= PARALLEL_MIN_EVENTS else [bodies]
        parallel = len(parts) > 1  # DuckDB runs the parts on threads only if its row order is free
        names = [f"_seqs{i}" for i in range(len(parts))]
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(tempfile.NamedTemporaryFile(suffix=".json", dir=scratch_dir())) for _ in parts]
            for f, part, name in zip(files, parts, names, strict=True):
                _write_all(f.fileno(), part.json_array())
                c.register(name, part.event_seqs())
            try:
                sql = bodies.spec.insert_sql([(f.name, name) for f, name in zip(files, names, strict=True)])
                if parallel:
                    c.execute("SET preserve_insertion_order = false")
                ((inserted,),) = c.execute(sql).fetchall()
            except duckdb.InvalidInputException as exc:  # malformed JSON, or the fast path's guard (error())
                raise NativeRejected(f"{bodies.spec.table.name}: {exc}") from exc
            finally:
                if parallel:
                    with contextlib.suppress(duckdb.Error):
                        c.execute("RESET preserve_insertion_order")
                for name in names:
                    with contextlib.suppress(duckdb.Error):  # an aborted transaction may refuse it
                        c.unregister(name)
        if inserted != bodies.events:
            raise NativeRejected(f"{bodies.spec.table.name}: {inserted} rows from bodies of {bodies.events} events")

    def classify(self, bodies: Bodies, cur: Any = None) -> set[int]:
        """The sequences of ``bodies`` the fast path may not take (after a :class:`NativeRejected`)."""
        c = cur or self.con
        c.register("_bodies", bodies.arrow())
        try:
            return {int(s) for (s,) in c.execute(bodies.spec.classify_sql("_bodies")).fetchall()}
        finally:
            c.unregister("_bodies")

    @staticmethod
    def _advance(
        c: Any,
        stream: str,
        names: Mapping[str, object],
        last_seq: int,
        events: Mapping[str, int],
        by_name: dict[str, Table],
    ) -> None:
        """Move the tracking records of ``names`` to ``last_seq`` in one UPDATE.

        Opening the file gave every table its record, so an UPDATE suffices; it costs DuckDB about half
        the CPU of the upsert it replaces (1.2 vs 2.7-3.1 ms per commit in isolation). A record that is
        missing after all must not pass silently: the count is checked and the transaction fails.
        """
        case = " ".join(["WHEN ? THEN ?"] * len(names))
        marks = ", ".join("?" * len(names))
        params: list[object] = [stream, last_seq]
        params += [v for name in names for v in (name, by_name[name].schema_hash)]
        params += [v for name in names for v in (name, events.get(name, 0))]
        params += [time.time_ns(), *names]
        ((updated,),) = c.execute(
            f"UPDATE {CHECKPOINTS} SET stream = ?, last_seq = ?, schema_hash = CASE read_model {case} END, "
            f"events = events + CASE read_model {case} END, updated_ns = ? WHERE read_model IN ({marks})",
            params,
        ).fetchall()
        if updated != len(names):
            raise RuntimeError(f"{CHECKPOINTS}: {len(names) - updated} of {sorted(names)} have no tracking record")

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
            self.con = self._connect()
        except duckdb.Error:  # replaying the WAL on open needs space too
            return False
        return True

    def content_hashes(self, upto: Mapping[str, int] | None = None) -> dict[str, str]:
        """``count:sum-of-row-hashes`` per table, optionally only rows with seq <= that table's bound."""
        out: dict[str, str] = {}
        for t in self.tables:
            bound = upto.get(t.name) if upto is not None else None
            ((n, h),) = self.con.execute(hash_sql(t.name, bound)).fetchall() or [(0, 0)]
            out[t.name] = f"{n}:{int(h):016x}"
        return out

    def memory_bytes(self, cursor: duckdb.DuckDBPyConnection) -> int:
        """What DuckDB's buffer manager holds now (cached blocks, rows not yet checkpointed, query state).

        ``fetchall``, never ``fetchone`` on a cursor that lives on: a result not read to its end keeps its
        transaction open, and while it is open DuckDB keeps every later commit's old versions and undo
        (``IN_MEMORY_TABLE``, ``TRANSACTION``) and skips its automatic checkpoints. The sink of a family
        that then went quiet (news, after its import) pinned it for good: the projector grew to its
        ``memory_limit`` (~470 MiB RSS in the soak; tests/test_memory.py)."""
        rows = cursor.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()
        return int(rows[0][0] or 0) if rows else 0

    def close(self) -> None:
        self.con.close()


class ProjectionSink:
    """The consumer-runtime sink for one stream family into a :class:`ProjectionDb`.

    ``last_seq`` is the lowest checkpoint of the family's tables (the consumer starts after it);
    each table skips events at or below its own checkpoint, so a lagging table catches up while
    the others go on without duplicates.
    """

    def __init__(
        self,
        db: ProjectionDb,
        family: StreamFamily,
        stream: str,
        *,
        until_ns: int | None = None,
        stop_at_seq: int | None = None,
        alerts: Publishes | None = None,
        native: bool = False,
        native_min_bytes: int = 0,
    ) -> None:
        self.db = db
        self.family = family
        self.stream = stream
        DISK_FULL.labels(db.name)  # at 0 from the start
        self.until_ns = until_ns
        self.stop_at_seq = stop_at_seq
        self.tables = [t for t in db.tables if t.family == family]
        self.by_type: dict[type, list[Table]] = defaultdict(list)
        for t in self.tables:
            for et in t.events:
                self.by_type[et].append(t)
        self.native: dict[str, NativeRows] = {}  # tables DuckDB makes from raw bodies (a reader's raw=)
        if native:  # only where the native table is the one read model of its event type here
            specs = [NATIVE[t.name] for t in self.tables if t.name in NATIVE and NATIVE[t.name].table == t]
            self.native = {s.table.name: s for s in specs if self.by_type[s.event] == [s.table]}
        self.native_min_bytes = native_min_bytes
        """A batch with fewer bytes of raw bodies is decoded in Python (see :data:`LIVE_NATIVE_MIN_BYTES`)."""
        specs = list(self.native.values())
        self.raw_filter: Callable[[bytes], bool] | None = (
            (specs[0].candidate if len(specs) == 1 else self._any_candidate) if specs else None
        )
        """For the stream reader: hand over undecoded what may be a body this sink's tables make natively."""
        self.native_events = 0  # events whose rows DuckDB made from raw bodies
        self.declined = 0  # bodies the byte checks passed but the SQL guard refused (then decoded in Python)
        self.on_skipped: Callable[[int, list[str]], None] | None = None
        """Told of events of unknown versions in bodies this sink decodes (the live runtime counts them)."""
        tracked = db.tracking()
        for t in self.tables:
            tr = tracked.get(t.name)
            if tr and tr.last_seq and tr.stream and tr.stream != stream:
                raise ReadModelChanged(t.name, tr.stream, stream, what="stream")
        self.seqs = {t.name: tracked[t.name].last_seq if t.name in tracked else 0 for t in self.tables}
        db.follow(stream, list(self.seqs))
        self.last_seq = min(self.seqs.values(), default=0)
        self.cursor = db.con.cursor()
        self._cursor_of = db.con
        self.events = 0
        self._memory_at = 0.0  # monotonic time of the last PROJECTION_MEMORY sample
        self.done = asyncio.Event()
        self.stopping = asyncio.Event()
        self.stall = Stall(f"projection:{db.name}:{family.key}", alerts, stop=self.stopping)

    def stop(self) -> None:
        """End a wait for disk space (shutdown): the batch stays unacked and is redone on restart."""
        self.stopping.set()

    async def _commit(
        self, rows: dict[str, list[Row]], last: int, events: dict[str, int], native: dict[str, list[Piece]]
    ) -> None:
        """Commit; on a full disk keep the rows, wait for space (reopening an invalidated database), retry."""
        while True:
            try:
                if self._cursor_of is not self.db.con:  # reopened, by this sink or another on the same file
                    self.cursor, self._cursor_of = self.db.con.cursor(), self.db.con
                await asyncio.to_thread(self.db.commit, self.stream, rows, last, events, self.cursor, native)
                if time.monotonic() - self._memory_at >= MEMORY_SAMPLE_S:
                    self._memory_at = time.monotonic()
                    held = await asyncio.to_thread(self.db.memory_bytes, self.cursor)
                    PROJECTION_MEMORY.labels(self.db.name).set(held)
                break
            except StorageFull as e:
                full = e
            except duckdb.Error as e:  # invalidated again by another family's failed checkpoint: even a cursor fails
                if not any(reason in str(e) for reason in _NO_SPACE):
                    raise
                full = StorageFull(f"DuckDB {self.db.path}: no space to commit {self.stream} to seq {last}: {e}")
            DISK_FULL.labels(self.db.name).inc()
            await self.stall.wait(full)
            while not self.db.revive():
                await self.stall.wait(full)
            with contextlib.suppress(duckdb.Error):  # invalidated again meanwhile: the next round stalls again
                if rows and min(self.db.checkpoint(name) for name in rows) >= last:
                    break  # the failed commit was durable after all
        await self.stall.resolved()

    @property
    def committed_seq(self) -> int:
        """Every table of the family has committed up to here: how far the runtime may acknowledge."""
        return self.last_seq

    def _any_candidate(self, data: bytes) -> bool:
        return any(spec.candidate(data) for spec in self.native.values())

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        rejected: set[int] = set()  # bodies the fast path may not take after all: decoded in Python
        while True:
            plan = self._plan(batch, rejected)
            if plan.last <= self.last_seq:
                break
            advance = {name: r for name, r in plan.rows.items() if self.seqs[name] < plan.last}
            native = {name: p for name, p in plan.native.items() if name in advance}
            try:
                await self._commit(advance, plan.last, plan.events, native)
            except NativeRejected as exc:
                runs = [p for pieces in native.values() for p in pieces if isinstance(p, Bodies)]
                found = set()
                for run in runs:
                    found |= await asyncio.to_thread(self.db.classify, run, self.cursor)
                if not found - rejected:  # cannot happen; never loop: all of them through Python
                    found = {s for run in runs for s in run.seqs}
                log.info("fast path declined bodies", stream=self.stream, bodies=len(found - rejected), cause=str(exc))
                self.declined += len(found - rejected)
                rejected |= found
                continue
            self.seqs.update(dict.fromkeys(advance, plan.last))
            self.last_seq = min(self.seqs.values())
            self.events += plan.n
            self.native_events += sum(p.events for ps in native.values() for p in ps if isinstance(p, Bodies))
            break
        if batch:
            PROJECTION_CHECKPOINT.labels(self.db.name, self.stream).set(self.last_seq)
            PROJECTION_LAG.labels(self.db.name, self.stream).set(batch[-1].delivery.pending)
            if self.stop_at_seq is not None and self.last_seq >= self.stop_at_seq:
                self.done.set()
        return plan.failures

    def _plan(self, batch: list[Received], rejected: set[int]) -> _Plan:
        """The rows of ``batch`` per table (and, for native tables, the pieces in stream order)."""
        plan = _Plan({t.name: [] for t in self.tables}, {name: [] for name in self.native}, self.last_seq)
        plan.events = dict.fromkeys(plan.rows, 0)
        natively = bool(self.native) and (
            not self.native_min_bytes or sum(len(r.delivery.data) for r in batch if r.raw) >= self.native_min_bytes
        )
        for j, rec in enumerate(batch):
            d = rec.delivery
            if d.stream_seq <= self.last_seq:
                continue  # already committed (a redelivery after a crash between commit and ack)
            if (self.until_ns is not None and d.ts_ns > self.until_ns) or (
                self.stop_at_seq is not None and d.stream_seq > self.stop_at_seq
            ):
                self.done.set()
                break
            events = rec.events
            if rec.raw:
                if natively and d.stream_seq not in rejected and self._take_natively(plan, d.stream_seq, d.data):
                    plan.last = d.stream_seq
                    continue
                try:
                    decoded = decode(d.data)
                except MalformedEvent as exc:  # live: dead-lettered by the runtime; a rebuild skips it
                    plan.failures[j] = Failure(f"undecodable: {exc}", retry=False)
                    continue
                events = decoded.events
                if decoded.skipped and self.on_skipped is not None:
                    self.on_skipped(d.stream_seq, decoded.skipped)
            try:
                made = [
                    (t.name, list(t.rows(e, d.stream_seq)))
                    for e in events
                    for t in self.by_type.get(type(e), ())
                    if d.stream_seq > self.seqs[t.name]  # a table that already has this message skips it
                ]
            except Exception as exc:  # a row that cannot be built is poison: dead-letter it, keep going
                plan.failures[j] = Failure(f"projection row failed: {type(exc).__name__}: {exc}", retry=False)
            else:
                for name, table_rows in made:
                    if name in plan.native:
                        pieces = plan.native[name]
                        if pieces and isinstance(pieces[-1], list):
                            pieces[-1].extend(table_rows)
                        else:
                            pieces.append(table_rows)
                    else:
                        plan.rows[name].extend(table_rows)
                    plan.events[name] += 1
                plan.n += len(events)
            plan.last = d.stream_seq
        return plan

    def _take_natively(self, plan: _Plan, seq: int, data: bytes) -> bool:
        """Add a body to its native table's current run if the byte checks pass (False: decode it)."""
        for name, spec in self.native.items():
            k = spec.events_in(data)
            if k:
                if seq > self.seqs[name]:
                    pieces = plan.native[name]
                    if not pieces or not isinstance(pieces[-1], Bodies):
                        pieces.append(Bodies(spec))
                    pieces[-1].add(seq, data, k)  # type: ignore[union-attr]
                    plan.events[name] += k
                plan.n += k
                return True
        return False


class _Plan:
    """What one batch makes: rows per table, native pieces, event counts, failures, the last sequence."""

    def __init__(self, rows: dict[str, list[Row]], native: dict[str, list[Piece]], last: int) -> None:
        self.rows = rows
        self.native = native
        self.last = last
        self.events: dict[str, int] = {}
        self.failures: dict[int, Failure] = {}
        self.n = 0
