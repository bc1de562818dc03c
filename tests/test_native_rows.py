"""Ticks made by DuckDB from the raw bodies (projections.native) give exactly the Python path's tables.

A real nats-server and real DuckDB files: the same stream (ticks one per message and batched, bars,
and every kind of body the fast path must refuse) rebuilt both ways must give identical tables, row
order included, and identical tracking records.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import read
from tapeline.bus.runtime import ConsumerRuntime
from tapeline.projections import duckdb as projections_duckdb
from tapeline.projections.duckdb import (
    CHECKPOINTS,
    LIVE_NATIVE_MIN_BYTES,
    SCRATCH_MIN_FREE,
    ProjectionDb,
    ProjectionSink,
    _scratch_base,
    _sweep_scratch,
    scratch_dir,
)
from tapeline.projections.native import TICKS_NATIVE, Bodies
from tapeline.projections.runtimes import (
    REBUILD_COMMIT_BYTES,
    REBUILD_GATHER_MAX,
    projection_bindings,
    replay_into,
)
from tapeline.replay.rebuild import rebuild
from tapeline.schemas import encode
from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.events import Bar, DeadLetter, Tick
from tapeline.schemas.subjects import MD
from tests.helpers import read_stream, wait_until


def _tick(**changes: Any) -> dict[str, Any]:
    """A valid tick as the encoder writes it, with ``changes`` (None: remove the key)."""
    t = Tick(
        event_id="X1",
        ts_event=1_700_000_000_000_000_000,
        ts_init=1_700_000_000_000_000_001,
        source="s",
        venue="sim",
        symbol="ODD",
        bid=1.25,
        ask=1.5,
        volume=3.0,
    )
    d: dict[str, Any] = json.loads(encode(t))
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


def _j(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def odd_bodies() -> list[bytes]:
    """Bodies either path must treat exactly as today's decode does: skip, default, upcast or refuse."""
    ok = _tick()
    ok_text = _j(ok)
    swapped = {
        "type": "tick",
        "ts_event": "5",
        "event_id": 5,
        **{k: v for k, v in ok.items() if k not in ("type", "ts_event", "event_id")},
    }
    return [
        b"not json",
        ok_text[:-10],  # truncated
        _j(_tick(version=2)),  # a later version: skipped
        _j(_tick(version=0)),
        _j(_tick(bid="1.5")),
        _j(_tick(flags=1.5)),
        ok_text.replace(b'"flags":0', b'"flags":5.0'),
        ok_text.replace(b'"ts_event":1700000000000000000', b'"ts_event":1.7e18'),
        _j(_tick(bid=True)),
        ok_text.replace(b'"bid":1.25', b'"bid":null'),
        _j(_tick(symbol=5)),
        ok_text.replace(b'"symbol":"ODD"', b'"symbol":null'),
        ok_text.replace(b'"bid":1.25', b'"bid":NaN'),
        ok_text.replace(b'"bid":1.25', b'"bid":1e400'),
        ok_text[:-1] + b",}",  # trailing comma
        ok_text[:-1] + b',"extra":1}',  # unknown field: fine
        _j(_tick(account=None)),  # default account
        _j(swapped),  # keys reordered, two types swapped
        ok_text[:-1] + b',"symbol":"DUP"}',  # duplicate key: msgspec keeps the last
        ok_text.replace(b'"symbol":"ODD"', b'"symbol":"O\\u0044D"'),  # an escape
        json.dumps(ok, indent=1).encode(),  # whitespace
        ok_text.replace(b'"bid":1.25', b'"bid":5'),  # an integer for a float: fine
        ok_text.replace(b'"bid":1.25', b'"bid":1e-05'),
        ok_text.replace(b'"flags":0', b'"flags":-3'),
        b"[" + ok_text + b"," + _j(_tick(version=2)) + b"]",  # one skipped of two
        b"[" + ok_text + b"," + _j(_tick(flags="x")) + b"]",  # one bad: the whole message refused
        b"[" + ok_text + b"]",
        b"[]",
    ]


async def _publish_mix(nc: Client, prefix: str, publisher: Publisher) -> None:
    ticks = list(SimFeed(["A", "B"], ticks=600, seed=3).generate())
    bar = Bar(
        event_id="BAR1",
        ts_event=1,
        ts_init=2,
        source="s",
        symbol="A",
        interval="1m",
        start_ns=0,
        open=1,
        high=2,
        low=0.5,
        close=1.5,
    )
    await publisher.publish(ticks[:200])  # one per message
    await publisher.publish([bar])
    js = nc.jetstream()
    for i, body in enumerate(odd_bodies()):
        await js.publish(f"{prefix}.md.tick.sim.ODD", body, headers={"Nats-Msg-Id": f"odd-{i}"})
        await publisher.publish(ticks[200 + i : 201 + i])  # good ones in between: runs get split
    for i in range(230, 600, 50):
        await js.publish(f"{prefix}.md.tick.sim.A", encode(ticks[i : i + 50]), headers={"Nats-Msg-Id": f"b-{i}"})
    await js.publish(f"{prefix}.md.tick.sim.A", encode([ticks[0], bar]), headers={"Nats-Msg-Id": "mixed"})


def _contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table in insertion order, and the tracking records without their wall-clock time."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {name: con.execute(f"SELECT * FROM {name}").fetchall() for name in ("ticks", "bars", "dead_letters")}
        out[CHECKPOINTS] = con.execute(
            f"SELECT read_model, stream, last_seq, schema_hash, events FROM {CHECKPOINTS} ORDER BY read_model"
        ).fetchall()
        return out
    finally:
        con.close()


async def test_native_rebuild_equals_the_python_path(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    await _publish_mix(nc, provisioned, publisher)
    native = await rebuild(nc, provisioned, tmp_path / "native.duckdb")
    python = await rebuild(nc, provisioned, tmp_path / "python.duckdb", native=False)
    a, b = _contents(tmp_path / "native.duckdb"), _contents(tmp_path / "python.duckdb")
    assert native.events == python.events
    assert native.checkpoints == python.checkpoints
    assert len(a["ticks"]) > 600
    assert a == b
    dbs = [ProjectionDb(tmp_path / f"{n}.duckdb") for n in ("native", "python")]
    try:
        assert dbs[0].content_hashes() == dbs[1].content_hashes()
    finally:
        for db in dbs:
            db.close()


async def test_the_fast_path_takes_ticks_and_declines_what_it_must(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """The sink really made rows natively, and the SQL guard refused bodies the byte checks let through."""
    await _publish_mix(nc, provisioned, publisher)
    db = ProjectionDb(tmp_path / "n.duckdb")
    try:
        (binding,) = [b for b in projection_bindings(provisioned, db, native=True) if b.sink.family.key == "md"]
        sink = binding.sink
        assert isinstance(sink, ProjectionSink)
        await replay_into(nc, binding, stop_seq=None)
        assert sink.native_events >= 400  # the simulated ticks, one per message and batched
        assert sink.declined >= 5  # "5.0", 1.7e18, null, NaN, 1e400, "x" in a batch...
    finally:
        db.close()


def test_byte_checks() -> None:
    ok = _j(_tick())
    assert TICKS_NATIVE.events_in(ok) == 1
    assert TICKS_NATIVE.events_in(b"[" + ok + b"," + ok + b"]") == 2
    for body in (
        b"not json",
        ok[:-1] + b",}",
        ok.replace(b"ODD", b"O\\u0044D"),
        json.dumps(_tick(), indent=1).encode(),
    ):
        assert TICKS_NATIVE.events_in(body) == 0
    assert TICKS_NATIVE.events_in(_j(_tick(symbol=5))) == 0  # one string too few
    assert TICKS_NATIVE.events_in(_j(_tick(bid={"a": 1}))) == 0
    assert TICKS_NATIVE.events_in(_j({"type": "bar", **{k: v for k, v in _tick().items() if k != "type"}})) == 0


async def test_small_commits_give_the_same_tables(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """Commits of a few messages each (runs cut short, declined bodies in several of them) change nothing."""
    await _publish_mix(nc, provisioned, publisher)
    commits = {}
    for name, native in (("native", True), ("python", False)):
        db = ProjectionDb(tmp_path / f"{name}.duckdb")
        try:
            (binding,) = [b for b in projection_bindings(provisioned, db, native=native) if b.sink.family.key == "md"]
            sink = binding.sink
            assert isinstance(sink, ProjectionSink)
            raw = sink.raw_filter
            assert (raw is not None) == native
            commits[name] = 0
            async for batch in read(nc, binding.spec.stream, binding.spec.filter_subjects, batch=7, raw=raw):
                await sink.process(batch)
                commits[name] += 1
        finally:
            db.close()
    assert commits["native"] > 20
    assert _contents(tmp_path / "native.duckdb") == _contents(tmp_path / "python.duckdb")


async def test_inserts_cut_into_parallel_parts_give_the_same_tables(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild's big native inserts are cut into parts DuckDB parses on threads: the same rows (stored in
    stream order within a part only), and a declined body in any part still sends its run to Python."""
    await _publish_mix(nc, provisioned, publisher)
    monkeypatch.setattr(projections_duckdb, "PARALLEL_MIN_EVENTS", 2)  # every gathering of 2+ ticks is cut
    cut = []
    split = Bodies.split
    monkeypatch.setattr(Bodies, "split", lambda self, parts: cut.append(len(r := split(self, parts))) or r)
    for name, native, parts in (("parts", True, 3), ("python", False, 1)):
        db = ProjectionDb(tmp_path / f"{name}.duckdb", insert_parts=parts)
        try:
            (binding,) = [b for b in projection_bindings(provisioned, db, native=native) if b.sink.family.key == "md"]
            await replay_into(nc, binding, stop_seq=None)
            assert isinstance(binding.sink, ProjectionSink)
            assert (binding.sink.declined >= 5) == native
            assert (binding.sink.native_events >= 400) == native  # the parts were taken, not all redone in Python
        finally:
            db.close()
    assert cut and max(cut) == 3
    parts, python = _contents(tmp_path / "parts.duckdb"), _contents(tmp_path / "python.duckdb")
    assert {k: sorted(v) for k, v in parts.items()} == {k: sorted(v) for k, v in python.items()}
    con = duckdb.connect(str(tmp_path / "parts.duckdb"))
    try:  # the setting was for the insert only
        assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchall() == [(True,)]
    finally:
        con.close()


def test_bodies_are_split_in_order_into_parts_of_about_equal_events() -> None:
    bodies = Bodies(TICKS_NATIVE)
    for seq, n in enumerate((500, 1, 1, 500, 500, 3, 500), start=1):
        bodies.add(seq, _j(_tick()), n)
    parts = bodies.split(3)
    assert [p.seqs for p in parts] == [[1, 2, 3], [4, 5], [6, 7]]
    assert [s for p in parts for s in p.seqs] == bodies.seqs
    assert [p.events for p in parts] == [502, 1000, 503]
    assert [len(p.seqs) for p in bodies.split(10)] == [1] * 7
    assert [p.seqs for p in bodies.split(1)] == [bodies.seqs]


async def test_the_live_projector_takes_raw_ticks_with_the_same_tables_and_dead_letters(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """Live, the projector's consumer hands tick bodies to the sink undecoded; what the sink cannot take
    natively it decodes, and what does not decode is dead-lettered with the runtime's reason. The tables
    and tracking records equal those of the runtime decoding every delivery."""
    await _publish_mix(nc, provisioned, publisher)
    stream = MD.stream(provisioned)
    info = await JetStreamApi(nc).stream_info(stream)
    assert info is not None
    last = int(info["state"]["last_seq"])
    expected = []  # what decoding each stored body in Python refuses
    async for batch in read(nc, stream, raw=lambda _: True):
        for r in batch:
            try:
                decode(r.delivery.data)
            except MalformedEvent as exc:
                expected.append((r.delivery.stream_seq, f"undecodable: {exc}"))
    assert len(expected) >= 10  # not json, truncated, bad types...
    # "small": as deployed, batches under LIVE_NATIVE_MIN_BYTES of bodies (all of these) are decoded in the sink
    for name, native, min_bytes in (("native", True, 0), ("python", False, 0), ("small", True, LIVE_NATIVE_MIN_BYTES)):
        db = ProjectionDb(tmp_path / f"{name}.duckdb")
        try:
            bindings = projection_bindings(provisioned, db, native=native, native_min_bytes=min_bytes)
            (binding,) = [b for b in bindings if b.sink.family.key == "md"]
            sink = binding.sink
            assert isinstance(sink, ProjectionSink)
            rt = ConsumerRuntime(nc, publisher, binding.spec, sink, start_seq=binding.start_seq)
            task = asyncio.create_task(rt.run())
            await wait_until(lambda rt=rt: rt.last_acked == last, timeout=60)
            rt.stop()
            await task
            assert (sink.native_events >= 400) == (name == "native")
            assert rt.dead == len(expected)
        finally:
            db.close()
        if name == "native":  # the other runs' letters have the same ids: JetStream drops them as duplicates
            ops = [e for _, e in await read_stream(nc, f"{provisioned.upper()}_OPS") if isinstance(e, DeadLetter)]
            assert [(e.stream_seq, e.reason) for e in ops] == expected
    python = _contents(tmp_path / "python.duckdb")
    assert _contents(tmp_path / "native.duckdb") == python
    assert _contents(tmp_path / "small.duckdb") == python


def test_scratch_goes_to_memory_only_where_it_fits(tmp_path: Path) -> None:
    """A container's small /dev/shm (Docker's default is 64 MiB) would fail a rebuild's commit: the temp dir then."""
    assert _scratch_base(str(tmp_path / "missing")) is None
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert _scratch_base(str(tmp_path), min_free=free // 2) == str(tmp_path)
    assert _scratch_base(str(tmp_path), min_free=free * 2) is None
    assert SCRATCH_MIN_FREE >= 4 * REBUILD_COMMIT_BYTES * REBUILD_GATHER_MAX // 2  # a gathering's files, with room


def test_scratch_directories_of_dead_processes_are_swept() -> None:
    """A killed process leaves its scratch directory (and maybe a body file, in memory): the next one removes it."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    base = Path(scratch_dir()).parent
    stale = base / f"tapeline-duckdb-{gone.pid}-test"
    stale.mkdir()
    (stale / "left.json").write_bytes(b"[]")
    mine = Path(scratch_dir())
    _sweep_scratch()
    assert not stale.exists()
    assert mine.is_dir()  # this process is alive: its directory stays
