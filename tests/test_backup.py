"""Backup and restore: snapshot a live namespace, restore it into a fresh server, rebuild to the same hashes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.auth import namespace_streams
from tapeline.bus.backup import BackupError, backup, restore
from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.pipeline import Pipeline
from tapeline.replay.rebuild import verify
from tests.helpers import FAST, TAPELINE, caught_up, wait_until, write_config


async def test_a_restored_server_rebuilds_every_projection_to_the_same_hashes(
    nc: Client, provisioned: str, publisher: Publisher, tmp_path: Path
) -> None:
    p = provisioned
    live = tmp_path / "live.duckdb"
    pipeline = Pipeline(nc, p, configs=FAST, db_path=live)
    await pipeline.start()
    await run_feed(SimFeed(["NVDA", "BRK.B"], ticks=3000, seed=3), publisher)
    await wait_until(lambda: caught_up(nc, pipeline), timeout=90)
    await pipeline.stop()
    api = JetStreamApi(nc)
    before = {s: (await api.stream_info(s) or {}).get("state") for s in namespace_streams(p)}
    sizes = await backup(nc, namespace_streams(p), tmp_path / "backup")
    assert set(sizes) == set(namespace_streams(p))

    fresh = EmbeddedNats(tmp_path / "fresh")
    nc2 = await connect(NatsSettings(url=fresh.start(), name="restored"))
    try:
        restored = await restore(nc2, tmp_path / "backup")
        api2 = JetStreamApi(nc2)
        for name, state in before.items():
            after = (await api2.stream_info(name) or {}).get("state") or {}
            assert state and (after["messages"], after["last_seq"]) == (state["messages"], state["last_seq"]), name
        assert restored[f"{p.upper()}_MD"] == before[f"{p.upper()}_MD"]["messages"] > 1000  # bars, tick batches
        checks, stats = await verify(nc2, p, live, tmp_path / "rebuilt.duckdb")
        assert stats.events > 3000
        assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
        with pytest.raises(BackupError, match="exists on this server"):
            await restore(nc2, tmp_path / "backup")
    finally:
        await close_connection(nc2)
        fresh.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TAPELINE, *args], capture_output=True, text=True, timeout=120)


def test_backup_and_restore_commands(nats_url: str, provisioned: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    out = run("backup", str(tmp_path / "b"), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "b" / f"{provisioned.upper()}_DECISION" / "backup.json").exists()
    again = run("backup", str(tmp_path / "b"), "--config", str(cfg))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    into_live = run("restore", str(tmp_path / "b"), "--config", str(cfg))
    assert into_live.returncode == 2 and "exists on this server" in into_live.stderr
    assert len(into_live.stderr.strip().splitlines()) == 1
