"""A read model's consumer with ack policy ``all`` vs ``none``: nats-server's and the consumer's CPU per message.

The real runtime (``ConsumerRuntime``, an ordered spec as ``projections.runtimes`` makes it) over ticks one
per message in a file-store stream, with a sink that commits each batch at once and does nothing else, so
what differs is the acks alone. Rounds alternate the two policies on one server.

Run: .venv/bin/python benchmarks/bench_acks.py [--ticks 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.adapters.sim import SimFeed
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import Received
from tapeline.bus.runtime import ConsumerRuntime, ConsumerSpec, Failure
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import AckPolicy, provision
from tapeline.schemas.subjects import MD


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Commits:
    """Commits each batch as it comes (``committed_seq``), like a read model with nothing to write."""

    def __init__(self) -> None:
        self.committed_seq = 0

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        self.committed_seq = batch[-1].delivery.stream_seq
        return {}


async def one(url: str, prefix: str, policy: AckPolicy, n: int, server_pid: int) -> tuple[float, float, float]:
    nc = await connect(NatsSettings(url=url))
    pub = await Publisher(nc, prefix, role="bench").start()
    spec = ConsumerSpec(
        stream=MD.stream(prefix),
        durable=f"reader_{policy}",
        filter_subjects=(f"{prefix}.md.>",),
        ordered=True,
        acks=policy,
        batch=5000,
        max_bytes=16 * 1024 * 1024,
    )
    rt = ConsumerRuntime(nc, pub, spec, Commits(), start_seq=1)
    done = asyncio.Event()

    async def after_ack(seq: int) -> None:
        if seq >= n:
            done.set()

    rt.after_ack = after_ack
    server0, own0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    task = asyncio.create_task(rt.run())
    await done.wait()
    wall = time.perf_counter() - t0
    server, own = cpu_seconds(server_pid) - server0, time.process_time() - own0
    rt.stop()
    await task
    await pub.close()
    await nc.drain()
    return server / n * 1e6, own / n * 1e6, n / wall


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        url = server.start()
        try:
            nc = await connect(NatsSettings(url=url))
            await provision(nc, "ack")
            pub = await Publisher(nc, "ack", role="bench", window=8192).start()
            ticks = list(SimFeed(["NVDA", "ORCL", "AAPL", "MSFT"], ticks=args.ticks, seed=1).generate())
            for i in range(0, len(ticks), 2000):
                await pub.publish(ticks[i : i + 2000])
            await pub.close()
            await nc.drain()
            print(f"one ordered consumer reading {args.ticks:,} ticks one per message, batch 5000")
            print("round  policy  nats-server µs/msg  consumer µs/msg  msgs/s")
            policies: tuple[AckPolicy, AckPolicy] = ("all", "none")
            for r in range(args.rounds):
                for policy in policies if r % 2 == 0 else policies[::-1]:
                    srv, own, rate = await one(url, "ack", policy, args.ticks, server.pid)
                    print(f"{r + 1:5d}  {policy:6s}  {srv:18.2f}  {own:15.2f}  {rate:8,.0f}")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
