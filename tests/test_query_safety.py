"""Query safety: what anyone allowed to send SQL can do to the projector is read its tables, briefly.

Every probe is sent the way a user sends it, through the projector's query service over NATS
(``tapeline query`` against a running projector) and to ``query_file`` (no projector running),
and must come back refused, with the file it aimed at untouched or unread.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.query import QueryError, QueryService, query_file, query_remote, run_query

PROBES = [
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT content FROM read_blob('/proc/self/environ')",
    "SELECT content FROM read_text('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "COPY ticks TO '{out}'",
    "COPY (SELECT 1) TO '{out}'",
    "EXPLAIN ANALYZE COPY ticks TO '{out}'",
    "SELECT 1; COPY ticks TO '{out}'",
    "EXPORT DATABASE '{dir}/export'",
    "ATTACH '{out}' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "SET threads = 1",
    "PRAGMA database_list",
    "CALL pragma_version()",
    "CHECKPOINT",
    "CREATE TABLE evil AS SELECT 1",
    "DELETE FROM ticks",
    "DROP TABLE ticks",
    "SELECT * FROM query('COPY ticks TO ''{out}''')",
]


def _probes(tmp_path: Path) -> tuple[list[str], str]:
    canary = secrets.token_hex(12)
    (tmp_path / "secret.csv").write_text(f"key\n{canary}\n")
    fill = {"secret": tmp_path / "secret.csv", "out": tmp_path / "out.csv", "dir": tmp_path}
    return [p.format(**fill) for p in PROBES], canary


async def test_every_probe_is_refused_by_the_query_service_and_from_the_file(tmp_path: Path, nc: Client) -> None:
    probes, canary = _probes(tmp_path)
    prefix = f"qs{secrets.token_hex(4)}"
    db = ProjectionDb(tmp_path / "p.duckdb")
    service = QueryService(nc, prefix, db.con)
    await service.start()
    try:
        assert (await query_remote(nc, prefix, "SELECT count(*) FROM ticks")).rows == [[0]]
        for sql in probes:
            res = await query_remote(nc, prefix, sql)
            assert res.error and not res.rows, f"not refused by the service: {sql} -> {res}"
            assert canary not in res.error and "\n" not in res.error
        assert (await query_remote(nc, prefix, "SELECT count(*) FROM ticks")).rows == [[0]]  # still serves
    finally:
        await service.stop()
        db.close()
    for sql in probes:
        with pytest.raises(QueryError) as refused:
            query_file(tmp_path / "p.duckdb", sql)
        assert canary not in str(refused.value)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "export").exists()
    names = {r[0] for r in query_file(tmp_path / "p.duckdb", "SELECT table_name FROM duckdb_tables()").rows}
    assert "ticks" in names and "evil" not in names


def test_a_long_query_is_interrupted_and_the_connection_serves_the_next(tmp_path: Path) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        started = time.monotonic()
        with pytest.raises(QueryError, match=r"ran longer than 0.5s"):
            run_query(db.con, "SELECT count(*) FROM range(1000000000000) a, range(1000) b", timeout_s=0.5)
        assert time.monotonic() - started < 30  # interrupted, not run to the end (which takes hours)
        assert run_query(db.con, "SELECT 42", timeout_s=0.5).rows == [[42]]  # the timer did not fire later
    finally:
        db.close()


def test_rows_are_capped_without_materialising_the_result(tmp_path: Path) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        res = run_query(db.con, "SELECT i FROM range(1000000000000) t(i)", max_rows=100)
        assert len(res.rows) == 100 and res.truncated and res.rows[-1] == [99]
        small = run_query(db.con, "SELECT i FROM range(100) t(i)", max_rows=100)
        assert len(small.rows) == 100 and not small.truncated
    finally:
        db.close()


def test_first_queries_arriving_together_all_run_confined() -> None:
    """The web page sends its first queries at once: each must run, and SQL must still see no files."""
    import threading

    import duckdb

    for _ in range(20):
        con = duckdb.connect()
        start = threading.Barrier(8)
        errors: list[str] = []

        def first_query(
            con: duckdb.DuckDBPyConnection = con, start: threading.Barrier = start, errors: list[str] = errors
        ) -> None:
            start.wait()
            try:
                run_query(con, "SELECT 42")
            except QueryError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=first_query) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with pytest.raises(QueryError, match="refused"):
            run_query(con, "SELECT * FROM read_text('/etc/hostname')")
        con.close()
