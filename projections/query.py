"""Reading while writing: DuckDB allows one writer, so the projector serves queries.

The projector answers read-only SQL on ``<prefix>.svc.query`` (core NATS request/reply) from a
cursor of its own connection: live data, no second writer, no file copies. When no projector
runs, ``tapeline query`` opens the file read-only instead (:func:`open_read_only`). Only
SELECT/EXPLAIN statements pass, on a connection that cannot touch files (:func:`confine`): DuckDB's
``read_text('/proc/self/environ')``, ``read_csv``, ``glob`` and the like would otherwise hand anyone
who can send a query the projector's environment (its secrets) and any file it can read.

A query also gets at most ``QUERY_TIMEOUT_S`` seconds (DuckDB has no statement timeout: a timer
thread interrupts the cursor) and ``MAX_ROWS`` rows (fetched from a streaming result, so a huge
result is never materialised), so one query cannot stall the projector that serves it. Who may
send queries at all is NATS's business: with credentials configured only the operator and admin
identities may publish on ``<prefix>.svc.query`` (``bus.auth``).
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import duckdb
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

MAX_ROWS = 10_000
QUERY_TIMEOUT_S = 30.0
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_EXPLAIN = re.compile(r"\s*explain(\s+analy[sz]e)?\s+", re.IGNORECASE)


class QueryError(ValueError):
    pass


class QueryResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    error: str = ""


def query_subject(prefix: str) -> str:
    return f"{prefix}.svc.query"


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(str(e)) from None
    if not statements:
        raise QueryError("empty query")
    for st in statements:
        if st.type not in _READ_ONLY:
            raise QueryError(f"read-only: {st.type.name} statements are not allowed, only SELECT")
        if st.type == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs what it explains: that must be a SELECT
            check_read_only(_EXPLAIN.sub("", st.query, count=1))


_confining = threading.Lock()


def confine(cur: duckdb.DuckDBPyConnection) -> None:
    """No file or network access from SQL on ``cur``'s database, locked so a query cannot undo it.

    The settings hold for the whole database instance, the projector's writes included: those
    insert registered Arrow batches (DuckDB's own files are not "external"), and ticks from bodies in
    the one directory ``ProjectionDb`` allows before this locks it (``projections.duckdb.scratch_dir``).
    """
    with _confining:  # two first queries at once (the web page's) must not both try to lock it
        (locked,) = cur.execute("SELECT current_setting('lock_configuration')").fetchone() or (False,)
        if not locked:
            cur.execute("SET enable_external_access = false")
            cur.execute("SET lock_configuration = true")


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout_s: float = QUERY_TIMEOUT_S, max_rows: int = MAX_ROWS
) -> QueryResult:
    """One read-only query on a confined cursor of ``con``: interrupted after ``timeout_s``, ``max_rows`` at most."""
    check_read_only(sql)
    cur = con.cursor()
    timer = threading.Timer(timeout_s, cur.interrupt)
    timer.daemon = True
    try:
        confine(cur)
        timer.start()
        rel = cur.execute(sql)
        columns = [d[0] for d in rel.description or []]
        rows = rel.fetchmany(max_rows + 1)
    except duckdb.PermissionException as e:
        first = str(e).splitlines()[0].removeprefix("Permission Error: ")
        raise QueryError(f"refused: queries read the projection tables only, not files ({first})") from None
    except duckdb.InterruptException:
        raise QueryError(f"refused: the query ran longer than {timeout_s:g}s; narrow it (WHERE, LIMIT)") from None
    except duckdb.Error as e:  # a mistake in the SQL: DuckDB's first line says which (the rest echoes the query)
        raise QueryError(str(e).splitlines()[0]) from None
    finally:
        timer.cancel()
        cur.close()
    return QueryResult(columns, [list(r) for r in rows[:max_rows]], truncated=len(rows) > max_rows)


def _held(e: duckdb.Error) -> bool:
    return "Conflicting lock" in str(e)


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a projection file, after recovering what a killed writer left.

    A writer killed mid-run (SIGKILL, OOM, power loss) leaves the transactions it committed since
    its last checkpoint in ``<file>.wal``; a transaction it had not committed is in neither file.
    DuckDB replays that WAL on every open, but only a read-write open checkpoints it into the file
    and removes it: a read-only open replays it in memory, again on every open, and DuckDB's
    read-only replay is the less trodden path (duckdb#20731, #24103 fixed bugs there; a reader of
    ours once failed with ``std::bad_cast`` right after a projector was SIGKILLed). So when a WAL
    sits beside the file, the reader first does what the projector does on its next start: one
    read-write open and CHECKPOINT, then it reads read-only from a file without a WAL. That open
    only succeeds when no other process holds the file; when one does (a projector writing, or
    another reader replaying), the step is skipped and the read-only open decides. A projector
    starting during those few milliseconds fails its open, as it does beside any reader.
    Raises :class:`QueryError` when a writer holds the file.
    """
    if path.with_name(path.name + ".wal").exists():
        try:
            con = duckdb.connect(str(path))
        except duckdb.IOException as e:
            if not _held(e):
                raise
        else:
            try:
                con.execute("CHECKPOINT")
            finally:
                con.close()
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as e:
        if _held(e):
            raise QueryError(
                f"{path} is held by another process (a projector too busy to answer queries, or one on "
                "another NATS server or prefix): retry, or query through that projector"
            ) from None
        raise


def query_file(path: Path, sql: str) -> QueryResult:
    if not path.exists():
        raise QueryError(f"no projection database at {path}: run `tapeline demo` or `tapeline up` first")
    con = open_read_only(path)
    try:
        return run_query(con, sql)
    finally:
        con.close()


class QueryService:
    """Answers queries against the projector's live connection."""

    def __init__(self, nc: Client, prefix: str, con: duckdb.DuckDBPyConnection) -> None:
        self.nc = nc
        self.prefix = prefix
        self.con = con
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(query_subject(self.prefix), queue="projector", cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        try:
            result = await asyncio.to_thread(run_query, self.con, msg.data.decode())
        except (QueryError, duckdb.Error) as e:
            result = QueryResult([], [], error=str(e))
        body = msgspec.json.encode(result)
        if len(body) > self.nc.max_payload:  # NATS would refuse the reply: say why instead of timing out
            too_big = f"the result ({len(body):,} bytes) exceeds the NATS max payload; add LIMIT or fewer columns"
            body = msgspec.json.encode(QueryResult([], [], error=too_big))
        await msg.respond(body)


async def query_remote(nc: Client, prefix: str, sql: str, timeout: float = 30.0) -> QueryResult:  # noqa: ASYNC109
    msg = await nc.request(query_subject(prefix), sql.encode(), timeout=timeout)
    return msgspec.json.decode(msg.data, type=QueryResult)
