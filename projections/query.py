"""Reading while writing: DuckDB allows one writer, so the projector serves queries.

The projector answers read-only SQL on ``<prefix>.svc.query`` (core NATS request/reply) from a
cursor of its own connection: live data, no second writer, no file copies. When no projector
runs, ``tapeline query`` opens the file read-only instead. Only SELECT/EXPLAIN statements pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

MAX_ROWS = 10_000
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


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


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    check_read_only(sql)
    cur = con.cursor()
    try:
        rel = cur.execute(sql)
        columns = [d[0] for d in rel.description or []]
        rows = rel.fetchmany(MAX_ROWS + 1)
    finally:
        cur.close()
    return QueryResult(columns, [list(r) for r in rows[:MAX_ROWS]], truncated=len(rows) > MAX_ROWS)


def query_file(path: Path, sql: str) -> QueryResult:
    if not path.exists():
        raise QueryError(f"no projection database at {path}: run `tapeline demo` or `tapeline up` first")
    con = duckdb.connect(str(path), read_only=True)
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
        await msg.respond(msgspec.json.encode(result))


async def query_remote(nc: Client, prefix: str, sql: str, timeout: float = 30.0) -> QueryResult:  # noqa: ASYNC109
    msg = await nc.request(query_subject(prefix), sql.encode(), timeout=timeout)
    return msgspec.json.decode(msg.data, type=QueryResult)
