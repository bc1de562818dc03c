"""Halt latency: from ``tapeline halt`` publishing its event to the risk gate rejecting new intents.

A stream of intents (one every ~2 ms) runs against the risk role on an embedded nats-server; the
halt is published in the middle of it. For each round it prints how long after the halt was sent
the last intent that was still approved had been published (orders that got through), and the first
intent rejected for the halt. Then ``resume`` and the next round.

Run: ``.venv/bin/python benchmarks/bench_halt.py [rounds]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.control import halt_event, publish_control, resume_events, tripped_now
from tapeline.pipeline import Pipeline, provision_system
from tapeline.schemas.codec import decode
from tapeline.schemas.events import Bar, OrderApproved, OrderIntent, OrderRejected
from tapeline.schemas.ids import new_event_id

PREFIX = "bench"


def _intent(n: int, ts: int) -> OrderIntent:
    now = time.time_ns()
    return OrderIntent(event_id=new_event_id(now), ts_event=ts, ts_init=now, source="bench", account="paper",
                       symbol="AAA", client_order_id=f"b{n}", side="BUY" if n % 2 else "SELL", quantity=1)  # fmt: skip


def _bars() -> list[Bar]:
    """The tests' seeded random walk: 100 one-minute bars of AAA."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.risk_support import walk

    return walk("AAA", 100, seed=1)


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        url = server.start()
        nc = await connect(NatsSettings(url=url, name="bench-halt"))
        await provision_system(nc, PREFIX)
        pub = await Publisher(nc, PREFIX, role="bench").start()
        p = Pipeline(nc, PREFIX, configs={}, db_path=Path(tmp) / "p.duckdb", selected=["risk"])
        await p.start()
        bars = _bars()
        await pub.publish(bars)
        ts = bars[-1].ts_event + 1
        sent: dict[str, int] = {}
        answers: dict[str, tuple[bool, str]] = {}

        async def on_answer(msg: object) -> None:
            for ev in decode(msg.data).events:  # type: ignore[attr-defined]
                if isinstance(ev, OrderApproved | OrderRejected):
                    answers[ev.client_order_id] = (isinstance(ev, OrderApproved), getattr(ev, "reason", ""))

        await nc.subscribe(f"{PREFIX}.order.approved.>", cb=on_answer)
        await nc.subscribe(f"{PREFIX}.order.rejected.>", cb=on_answer)
        through, stopped = [], []
        n = 0
        for _ in range(rounds):
            for _ in range(50):  # a steady flow before the halt
                n += 1
                sent[f"b{n}"] = time.time_ns()
                await pub.publish([_intent(n, ts)])
                await asyncio.sleep(0.002)
            t_halt = time.time_ns()
            halt = asyncio.create_task(publish_control(nc, PREFIX, [halt_event("bench", "latency")]))
            first_block = 0
            while not first_block:
                n += 1
                coid = f"b{n}"
                sent[coid] = time.time_ns()
                await pub.publish([_intent(n, ts)])
                await asyncio.sleep(0.002)
                blocked = [c for c, (ok, why) in answers.items() if not ok and "halt" in why and sent[c] >= t_halt]
                first_block = min((sent[c] for c in blocked), default=0)
            await halt
            await asyncio.sleep(0.5)  # let every answer arrive
            late = [sent[c] - t_halt for c, (ok, _) in answers.items() if ok and sent[c] >= t_halt]
            through.append(max(late, default=0) / 1e6)
            stopped.append((first_block - t_halt) / 1e6)
            await publish_control(nc, PREFIX, resume_events(await tripped_now(nc, PREFIX), "bench", "next round"))
            await asyncio.sleep(0.3)
        print(f"halt -> risk gate, {rounds} rounds, intents every ~2 ms (embedded nats-server)")
        for name, xs in (("last approved intent sent after the halt", through),
                         ("first intent rejected for the halt", stopped)):  # fmt: skip
            print(f"  {name}: median {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms")
        await p.stop()
        await pub.close()
        await nc.drain()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
