"""A rebuild reads the next gathering while the sink commits the previous one: nothing may change for it.

With reads of 7 messages and a commit every 60 events (or 8,000 bytes of undecoded bodies), the md
family's replay is many commits, each overlapping the reading of the next (``replay_into``); its tables
must equal the Python path's fed the same way, and a sink failing mid-replay must fail it (and be handed
nothing more) instead of being lost in its task.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.projections import runtimes
from tapeline.projections.duckdb import ProjectionDb, ProjectionSink
from tapeline.projections.runtimes import Binding, projection_bindings, replay_into
from tests.test_native_rows import _contents, _publish_mix


def test_a_busy_sink_gets_bigger_gatherings_of_bodies_up_to_a_cap() -> None:
    mib, cap = runtimes.REBUILD_COMMIT_BYTES, runtimes.REBUILD_GATHER_MAX
    assert cap > 1
    assert runtimes.gathered(0, mib, 100, idle=True)  # idle: the base size of bodies...
    assert runtimes.gathered(100, 0, 100, idle=True)  # ... or of decoded events
    assert not runtimes.gathered(99, mib - 1, 100, idle=True)
    assert not runtimes.gathered(99, mib * cap - 1, 100, idle=False)  # busy: bodies up to the cap
    assert runtimes.gathered(0, mib * cap, 100, idle=False)
    assert runtimes.gathered(100, 0, 100, idle=False)  # decoded events never grow (their memory)
    assert runtimes.gathered(1, 0, 0, idle=False)  # no gathering (vector sinks): every read


def _md(prefix: str, db: ProjectionDb, native: bool) -> Binding:
    (b,) = [b for b in projection_bindings(prefix, db, native=native) if b.sink.family.key == "md"]
    return b._replace(spec=msgspec.structs.replace(b.spec, batch=7))


@pytest.fixture
def small_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "REBUILD_COMMIT_EVENTS", 60)
    monkeypatch.setattr(runtimes, "REBUILD_COMMIT_BYTES", 8000)  # undecoded bodies count by size
    monkeypatch.setattr(runtimes, "REBUILD_GATHER_MAX", 1)  # as small while the sink works: many commits


@pytest.mark.usefixtures("small_commits")
async def test_overlapped_commits_give_the_same_tables(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _publish_mix(nc, provisioned, publisher)
    calls: list[int] = []
    process = ProjectionSink.process

    async def counted(self: ProjectionSink, batch: list[Received]) -> object:
        calls.append(len(batch))
        return await process(self, batch)

    monkeypatch.setattr(ProjectionSink, "process", counted)
    for name, native in (("native", True), ("python", False)):
        db = ProjectionDb(tmp_path / f"{name}.duckdb")
        try:
            await replay_into(nc, _md(provisioned, db, native), stop_seq=None)
        finally:
            db.close()
    assert len(calls) > 10  # ~270 messages: many commits, each overlapping a read
    a, b = _contents(tmp_path / "native.duckdb"), _contents(tmp_path / "python.duckdb")
    assert len(a["ticks"]) > 600
    assert a == b


@pytest.mark.usefixtures("small_commits")
async def test_a_sink_failing_mid_replay_fails_it(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _publish_mix(nc, provisioned, publisher)
    process = ProjectionSink.process
    seen: list[int] = []

    async def failing(self: ProjectionSink, batch: list[Received]) -> object:
        seen.append(len(batch))
        if len(seen) == 2:
            raise RuntimeError("disk on fire")
        return await process(self, batch)

    monkeypatch.setattr(ProjectionSink, "process", failing)
    db = ProjectionDb(tmp_path / "failed.duckdb")
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            await replay_into(nc, _md(provisioned, db, True), stop_seq=None)
        assert len(seen) == 2  # nothing handed to the sink after its failure
        assert db.checkpoint("ticks") > 0  # the first gathering was committed
    finally:
        db.close()
