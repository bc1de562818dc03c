"""A new projection file's tables are created from DDL: they must be exactly what DuckDB makes from Arrow.

Opening a file checks every table's columns against the declaration made through Arrow
(``ProjectionDb._declared_columns``): a DDL type that differed would make the next open refuse the file.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from tapeline.projections.duckdb import ProjectionDb, _column_ddl
from tapeline.projections.table import Table
from tapeline.projections.tables import TABLES


def _describe(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[object, ...]]:
    return con.execute(f"DESCRIBE {name}").fetchall()


def test_every_table_is_created_from_ddl_with_the_types_arrow_gives() -> None:
    con = duckdb.connect()
    try:
        for t in TABLES:
            ddl = _column_ddl(t)
            assert ddl is not None, f"{t.name}: a column type without DDL (opening falls back to Arrow)"
            con.execute(f"CREATE TABLE ddl_{t.name} ({ddl})")
            con.register("_empty", t.to_arrow([]))
            con.execute(f"CREATE TABLE arrow_{t.name} AS SELECT * FROM _empty")
            con.unregister("_empty")
            assert _describe(con, f"ddl_{t.name}") == _describe(con, f"arrow_{t.name}"), t.name
    finally:
        con.close()


def test_a_type_without_ddl_falls_back_to_arrow(tmp_path: Path) -> None:
    odd = Table(
        "odd", TABLES[0].family, (), (("seq", pa.int64()), ("at", pa.timestamp("us", tz="UTC"))), lambda e, seq: ()
    )
    assert _column_ddl(odd) is None
    db = ProjectionDb(tmp_path / "odd.duckdb", tables=(odd,), views=())
    db.close()
    db = ProjectionDb(tmp_path / "odd.duckdb", tables=(odd,), views=())  # reopened: its columns are the declared ones
    try:
        columns = [(r[0], r[1]) for r in _describe(db.con, "odd")]
        assert columns == [("seq", "BIGINT"), ("at", "TIMESTAMP WITH TIME ZONE")]
    finally:
        db.close()


def test_a_new_file_reopens_with_every_table_as_declared(tmp_path: Path) -> None:
    ProjectionDb(tmp_path / "p.duckdb").close()
    db = ProjectionDb(tmp_path / "p.duckdb")  # ReadModelChanged if a created column differed from its declaration
    try:
        assert set(db.checkpoints()) == {t.name for t in TABLES}
    finally:
        db.close()
