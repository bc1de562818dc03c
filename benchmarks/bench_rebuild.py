"""Rebuild throughput: stream (JetStream file store) -> DuckDB, from sequence 1, into a fresh file.

Publishes N simulated ticks twice, one event per message and batched (500 ticks per message),
then times `replay.rebuild` for each. Next to the rate it prints the CPU per event of this process
(the rebuild) and of nats-server, which a loaded machine distorts far less than the wall clock.
``--python`` decodes every tick in Python (the path before ``projections.native``), for A/B runs.
Run: .venv/bin/python benchmarks/bench_rebuild.py [--ticks N] [--python]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.runner import publish_events
from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision
from tapeline.replay.rebuild import rebuild


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, server_pid: int, tmp: Path, n: int, native: bool) -> list[tuple[str, int, float, float, float]]:
    nc = await connect(NatsSettings(url=url))
    out = []
    for name, prefix, batched in [("one event per message", "r1", False), ("batched ticks (500/msg)", "r2", True)]:
        await provision(nc, prefix)
        pub = await Publisher(nc, prefix, window=8192).start()
        ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT"], ticks=n, seed=4, chunk=2000).generate())
        for i in range(0, n, 2000):
            await publish_events(pub, ticks[i : i + 2000], batch_ticks=batched)
        await pub.close()
        own, server = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
        stats = await rebuild(nc, prefix, tmp / f"{prefix}.duckdb", native=native)
        own, server = cpu_seconds(os.getpid()) - own, cpu_seconds(server_pid) - server
        out.append((name, stats.events, stats.seconds, own * 1e6 / stats.events, server * 1e6 / stats.events))
    await nc.drain()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=300_000)
    ap.add_argument("--python", action="store_true", help="decode every tick in Python (no native rows)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, EmbeddedNats(Path(d) / "nats") as server:
        results = asyncio.run(run(server.url, server.pid, Path(d), args.ticks, not args.python))
    path = "Python decode" if args.python else "native tick rows"
    print(f"rebuild from sequence 1 into a fresh DuckDB file, {args.ticks:,} ticks, {path}, 2-core machine")
    print(f"{'':<26}{'events':>10}  {'seconds':>8}  {'events/s':>10}  CPU µs/event: rebuild  nats-server")
    for name, events, secs, own, srv in results:
        print(f"{name:<26}{events:>10,}  {secs:8.2f}  {events / secs:>10,.0f}  {own:>20.1f}  {srv:>11.1f}")


if __name__ == "__main__":
    main()
