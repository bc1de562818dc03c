"""Read models consume with ack policy ``none``: their position is their own checkpoint, so the runtime
sends them no acks, and nats-server keeps no pending map for them. Nothing may be lost or seen twice
for it: after a SIGKILL, and with a poison event among good ones."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec
from tapeline.projections.decision_index import decision_index_binding
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.runtimes import projection_bindings
from tapeline.schemas.events import DeadLetter
from tapeline.schemas.subjects import MD
from tests.helpers import (
    TAPELINE,
    consumer_state,
    kill_when,
    projected,
    projected_durably,
    random_point,
    read_db,
    read_killed,
    read_stream,
    start_tapeline,
    wait_until,
    write_config,
)


async def test_every_read_model_spec_says_none_and_none_needs_an_ordered_consumer(
    nc: Client, provisioned: str, tmp_path: Path
) -> None:
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        specs = [b.spec for b in projection_bindings(provisioned, db)]
    finally:
        db.close()
    spec, _, _ = await decision_index_binding(nc, provisioned)
    specs.append(spec)
    assert {s.durable: s.ack_policy for s in specs} == {s.durable: "none" for s in specs}
    assert len(specs) > 2
    # the defaults are as before, and a consumer that does not keep its position cannot go without acks
    assert ConsumerSpec(stream="S", durable="a", filter_subjects=("s.>",), ordered=True).ack_policy == "all"
    assert ConsumerSpec(stream="S", durable="b", filter_subjects=("s.>",)).ack_policy == "explicit"
    with pytest.raises(ValueError, match="ack policy none needs an ordered consumer"):
        ConsumerSpec(stream="S", durable="c", filter_subjects=("s.>",), acks="none")


async def test_the_projector_sends_no_acks_and_a_kill_mid_stream_leaves_each_row_once(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path
) -> None:
    """While the projector commits, its durable on the server has ack policy none and nothing waiting
    for an ack; SIGKILLed once it has committed past a random point, restarted, every tick is one row."""
    cfg = write_config(tmp_path, provisioned, nats_url)
    db = tmp_path / "data" / "projections" / "tapeline.duckdb"
    ticks = list(SimFeed(["NVDA", "ORCL"], ticks=40_000, seed=8).generate())
    for i in range(0, len(ticks), 5000):
        await publisher.publish(ticks[i : i + 5000])
    stream = MD.stream(provisioned)
    seen: list[tuple[str, int, int]] = []  # (ack policy, num_ack_pending, checkpoint) at each look

    durable = projected_durably(nc, provisioned, stream)

    async def progress() -> int:
        info = await consumer_state(nc, stream, "projector_md")
        checkpoint = await durable()
        if info is not None:
            seen.append((info["config"]["ack_policy"], info["num_ack_pending"], checkpoint))
        return checkpoint

    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    target = random_point(random.Random(8), len(ticks) // 4, len(ticks))
    floor = await kill_when(proc, progress, "projector checkpoint", above=target - 1, within=120)
    assert target <= floor < len(ticks), f"the kill did not land mid-run (checkpoint {floor})"
    committing = sorted({cp for _, _, cp in seen if cp > 0})
    assert len(committing) >= 2, f"not seen committing: {committing}"
    assert {(policy, pending) for policy, pending, _ in seen} == {("none", 0)}, seen[-5:]
    rows, distinct, killed_at = read_killed(
        db,
        "SELECT count(*), count(DISTINCT event_id), "
        "(SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?) FROM ticks",
        [stream],
    )
    assert rows == distinct == killed_at and floor <= killed_at < len(ticks)

    seen.clear()
    proc = start_tapeline("up", "-c", str(cfg), "--only", "projector", log=tmp_path / "projector.log")
    try:

        async def done() -> bool:
            info = await consumer_state(nc, stream, "projector_md")
            checkpoint = await projected(nc, provisioned, stream)
            if info is not None:
                seen.append((info["config"]["ack_policy"], info["num_ack_pending"], checkpoint))
            return checkpoint == len(ticks)

        await wait_until(done, timeout=120)
        info = await consumer_state(nc, stream, "projector_md")
        assert info is not None and info["num_ack_pending"] == 0 and info["num_pending"] == 0
        status = await asyncio.to_thread(
            subprocess.run,
            [*TAPELINE, "status", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if "projector_md" in line)
        assert "n/a (ack none)" in row, row  # not a floor that follows deliveries
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "projector.log").read_text()[-3000:]
    assert {(policy, pending) for policy, pending, _ in seen} == {("none", 0)}, seen[-5:]
    rows, distinct, max_seq, checkpoint = read_db(
        db,
        "SELECT count(*), count(DISTINCT event_id), max(seq), "
        "(SELECT last_seq FROM _checkpoints WHERE read_model = 'ticks' AND stream = ?) FROM ticks",
        [stream],
    )
    assert rows == distinct == max_seq == checkpoint == len(ticks)


async def test_a_poison_event_of_a_read_model_is_dead_lettered_once(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    """An undecodable message among ticks: one dead letter, every good tick a row, the runtime's
    ``last_acked`` at what is committed, nothing acked on the server; a restart from the checkpoint
    sees nothing again."""
    stream = MD.stream(provisioned)
    ticks = list(SimFeed(["NVDA"], ticks=300, seed=2).generate())
    await publisher.publish(ticks[:150])
    await nc.jetstream().publish(f"{provisioned}.md.tick.NVDA", b"not an event")  # sequence 151
    await publisher.publish(ticks[150:])
    db = ProjectionDb(tmp_path / "p.duckdb")
    try:
        for run in range(2):  # the second run starts after the checkpoint: no second dead letter
            (binding,) = [b for b in projection_bindings(provisioned, db) if b.spec.stream == stream]
            rt = ConsumerRuntime(nc, publisher, binding.spec, binding.sink, start_seq=binding.start_seq)
            task = asyncio.create_task(rt.run())
            if run == 0:
                await wait_until(lambda rt=rt: rt.last_acked == len(ticks) + 1 and rt.committed, timeout=60)
            else:
                await wait_until(rt.idle.is_set, timeout=60)
                assert rt.start_seq == len(ticks) + 2 and rt.handled_seq == 0
            info = await consumer_state(nc, stream, "projector_md")
            assert info is not None and info["config"]["ack_policy"] == "none" and info["num_ack_pending"] == 0
            rt.stop()
            await task
            assert rt.dead == (1 if run == 0 else 0)
        assert db.checkpoint("ticks") == len(ticks) + 1
    finally:
        db.close()
    assert read_db(tmp_path / "p.duckdb", "SELECT count(*), count(DISTINCT event_id) FROM ticks") == (300, 300)
    letters = [e for _, e in await read_stream(nc, f"{provisioned.upper()}_OPS") if isinstance(e, DeadLetter)]
    assert [(e.stream_seq, e.consumer) for e in letters] == [(151, "projector_md")]
    assert "undecodable" in letters[0].reason
