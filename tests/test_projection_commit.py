"""The projection commit's tracking: every table tracked from the moment a file opens, and a commit
whose tracking record is missing fails whole instead of inserting rows no record vouches for.

Real DuckDB files; no NATS (the commit is the unit here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tapeline.adapters.sim import SimFeed
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.tables import TABLES, TICKS
from tapeline.schemas.events import Tick


def _tick_rows(n: int) -> list[tuple[object, ...]]:
    ticks = [e for e in SimFeed(["NVDA"], ticks=n * 3, seed=7, chunk=n * 3).generate() if isinstance(e, Tick)][:n]
    return [r for seq, t in enumerate(ticks, 1) for r in TICKS.rows(t, seq)]


def test_a_new_file_tracks_every_table_at_zero_with_its_schema_hash(tmp_path: Path) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        tracked = db.tracking()
        assert {t.name: (tracked[t.name].last_seq, tracked[t.name].schema_hash) for t in TABLES} == {
            t.name: (0, t.schema_hash) for t in TABLES
        }
    finally:
        db.close()


def test_commit_advances_tracking_and_counts_events(tmp_path: Path) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        rows = _tick_rows(30)
        db.commit("S_MD", {"ticks": rows[:20], "bars": []}, 20, {"ticks": 20})
        db.commit("S_MD", {"ticks": rows[20:]}, 30, {"ticks": 10})
        got = db.con.execute(
            "SELECT read_model, stream, last_seq, events FROM _checkpoints WHERE read_model IN ('ticks', 'bars') "
            "ORDER BY read_model"
        ).fetchall()
        assert got == [("bars", "S_MD", 20, 0), ("ticks", "S_MD", 30, 30)]
        assert db.con.execute("SELECT count(*), max(seq) FROM ticks").fetchall() == [(30, 30)]
    finally:
        db.close()


def test_a_commit_without_a_tracking_record_fails_and_leaves_everything_as_it_was(tmp_path: Path) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        rows = _tick_rows(20)
        db.commit("S_MD", {"ticks": rows[:10]}, 10, {"ticks": 10})
        db.con.execute("DELETE FROM _checkpoints WHERE read_model = 'bars'")
        with pytest.raises(RuntimeError, match="bars"):
            db.commit("S_MD", {"ticks": rows[10:], "bars": []}, 20, {"ticks": 10})
        assert db.checkpoint("ticks") == 10
        assert db.con.execute("SELECT count(*) FROM ticks").fetchall() == [(10,)]
    finally:
        db.close()
