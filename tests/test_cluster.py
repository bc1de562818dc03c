"""Three-node cluster from deploy/cluster/*.conf: a node SIGKILLed mid-stream loses nothing acknowledged.

The committed configs run as they are, only their ports and store directories moved (free ports,
tmp dirs), so the test checks what the README tells users to run. Streams are R3 and the nodes
fsync before acknowledging (``sync_interval: always``). While a feed publishes with acks and the
handlers run, the node leading the market-data stream is killed with SIGKILL and restarted; every
event whose publish was acknowledged must then be stored, and the handlers must catch up.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import read_stream
from tapeline.bus.server import find_nats_server
from tapeline.bus.topology import Retention
from tapeline.pipeline import Pipeline, provision_system
from tapeline.schemas.subjects import MD
from tests.helpers import FAST, handlers_drained, wait_until

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "cluster"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Node:
    """One nats-server of the cluster, from its committed config with ports and store moved."""

    def __init__(self, name: str, conf: str, base: Path, http_port: int) -> None:
        self.name, self.conf, self.base, self.http_port = name, base / f"{name}.conf", base, http_port
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.base / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[list[Node], list[str]]:
    ports = _free_ports(9)
    moved = {
        f"127.0.0.1:{a}22{i}": f"127.0.0.1:{ports[k * 3 + i - 2]}" for k, a in enumerate((4, 6, 8)) for i in (2, 3, 4)
    }
    nodes, urls = [], []
    for i in (1, 2, 3):
        text = (DEPLOY / f"n{i}.conf").read_text()
        assert "sync_interval: always" in text
        text = re.sub(r"127\.0\.0\.1:[468]22[234]", lambda m: moved[m.group(0)], text)
        text = text.replace(f"./.tapeline/cluster/n{i}", str(tmp_path / f"store{i}"))
        http = int(moved[f"127.0.0.1:822{i + 1}"].rsplit(":", 1)[1])
        nodes.append(Node(f"n{i}", text, tmp_path, http))
        urls.append(f"nats://{moved[f'127.0.0.1:422{i + 1}']}")
    for n in nodes:
        n.start()
    yield nodes, urls  # type: ignore[misc]
    for n in nodes:
        n.stop()


async def test_a_node_killed_mid_stream_loses_no_acknowledged_event(cluster: tuple[list[Node], list[str]]) -> None:
    nodes, urls = cluster
    await wait_until(lambda: all(n.healthy() for n in nodes), timeout=90)
    nc = await connect(NatsSettings(url=",".join(urls), name="cluster-test"), retry_for=60)
    p = "clu"
    r3 = Retention(replicas=3, md_max_bytes=-1)  # every process must use it: provisioning applies replicas
    try:

        async def provisioned() -> bool:
            try:
                await provision_system(nc, p, r3)
            except JetStreamError:
                return False  # the cluster is still electing its meta leader
            return True

        await wait_until(provisioned, timeout=90, every=0.5)
        api = JetStreamApi(nc)
        md = MD.stream(p)
        info = await api.stream_info(md)
        assert info and info["config"]["num_replicas"] == 3
        await provision_system(nc, p, Retention(md_max_bytes=-1))  # a process left on the default R1
        info = await api.stream_info(md)
        assert info and info["config"]["num_replicas"] == 3, "provisioning must never scale a stream down"
        pipeline = Pipeline(
            nc, p, configs=FAST, db_path=nodes[0].base / "p.duckdb", selected=["handlers"], retention=r3
        )
        await pipeline.start()
        publisher = await Publisher(nc, p, role="feed", ack_timeout=2.0, max_attempts=60).start()
        sim = SimFeed(["NVDA", "ORCL"], ticks=6000, seed=9)
        feed = asyncio.create_task(run_feed(sim, publisher, batch_ticks=False))  # the test counts messages

        async def stored_md() -> int:
            i = await api.stream_info(md)
            return int(i["state"]["messages"]) if i else 0

        await wait_until(lambda: stored_md_above(stored_md, 1000), timeout=90)
        leader = (await api.stream_info(md) or {})["cluster"]["leader"]
        victim = next(n for n in nodes if n.name == leader)
        victim.kill()  # mid-stream, the stream's leader, no flush, no goodbye
        await wait_until(lambda: stored_md_above(stored_md, 3000), timeout=120)  # a new leader takes the writes
        victim.start()
        await wait_until(victim.healthy, timeout=90)
        stats = await asyncio.wait_for(feed, 180)  # run_feed returns once every publish is acknowledged
        await publisher.close()
        ticks = {e.event_id for _, e in await read_stream(nc, md, f"{p}.md.tick.>")}
        assert stats.events == 6000 and len(ticks) == 6000, f"acknowledged 6000, stored {len(ticks)}"
        await wait_until(lambda: handlers_drained(nc, p), timeout=120)  # the pipeline kept running
        await pipeline.stop()
        info = await api.stream_info(md)
        assert info and info["config"]["num_replicas"] == 3 and len(info["cluster"]["replicas"]) == 2
    finally:
        await close_connection(nc)


async def stored_md_above(count: object, n: int) -> bool:
    try:
        return bool(await count() > n)  # type: ignore[operator]
    except JetStreamError:  # no leader for a moment
        return False
