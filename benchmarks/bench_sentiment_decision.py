"""Sentiment -> decision latency: a SentimentScore published until its decision envelope arrives.

One process runs the ``sentiment`` and ``decision`` handlers on an embedded nats-server (file
store); this script publishes scores for a few tickers and subscribes to the decision subjects.
Each envelope's ``correlation_id`` is the id of the score that started the chain (the runner carries
it from cause to effect), so latency = (envelope received) - (score publish started).

* paced: one score at a time, the next after its envelope (latency with nothing queued);
* burst: ``--burst`` scores at once (latency including queueing behind the others).

Run: .venv/bin/python benchmarks/bench_sentiment_decision.py [--paced 300] [--burst 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.pipeline import Pipeline
from tapeline.schemas.codec import decode
from tapeline.schemas.events import DecisionEnvelope, SentimentScore

TICKERS = ["NVDA", "ORCL", "AAPL", "BRK.B"]
T0 = 1_767_222_000_000_000_000


def score(i: int, run: str) -> SentimentScore:
    return SentimentScore(
        event_id=f"{run}-{i:07d}",
        ts_event=T0 + i * 10**9,
        ts_init=time.time_ns(),
        source="bench",
        ticker=TICKERS[i % len(TICKERS)],
        score=((i * 37) % 200 - 100) / 100,
        relevance=0.8,
        impact=0.5,
        news_id=f"news-{i}",
        llm_call_id=f"call-{i}",
        provider="gemini",
        reply_bytes=300,
    )


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


async def measure(url: str, tmp: Path, paced: int, burst: int) -> dict[str, list[float]]:
    nc = await connect(NatsSettings(url=url, name="bench"))
    prefix = "benchsd"
    pipeline = Pipeline(nc, prefix, configs={}, db_path=tmp / "p.duckdb", selected=("sentiment", "decision"))
    await pipeline.start()
    publisher = await Publisher(nc, prefix, role="bench").start()
    sent: dict[str, int] = {}
    got: dict[str, int] = {}
    arrived = asyncio.Event()

    async def on_decision(msg: object) -> None:
        now = time.perf_counter_ns()
        for ev in decode(msg.data).events:  # type: ignore[attr-defined]
            if isinstance(ev, DecisionEnvelope):
                got[ev.correlation_id] = now
        arrived.set()

    await nc.subscribe(f"{prefix}.decision.*", cb=on_decision)
    out: dict[str, list[float]] = {"paced": [], "burst": []}
    for i in range(paced):
        s = score(i, "paced")
        arrived.clear()
        sent[s.event_id] = time.perf_counter_ns()
        await publisher.publish([s])
        while s.event_id not in got:
            await asyncio.wait_for(arrived.wait(), 60)
            arrived.clear()
        out["paced"].append((got[s.event_id] - sent[s.event_id]) / 1e6)
    scores = [score(paced + i, "burst") for i in range(burst)]
    for s in scores:
        sent[s.event_id] = time.perf_counter_ns()
    await publisher.publish(scores)
    last = scores[-1].event_id  # each ticker's envelopes arrive in order; all tickers end near the last
    while not all(s.event_id in got for s in scores[-len(TICKERS) :]) or last not in got:
        await asyncio.wait_for(arrived.wait(), 120)
        arrived.clear()
    out["burst"] = [(got[s.event_id] - sent[s.event_id]) / 1e6 for s in scores if s.event_id in got]
    await publisher.close()
    await pipeline.stop()
    await nc.drain()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paced", type=int, default=300)
    ap.add_argument("--burst", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = EmbeddedNats(tmp / "nats")
        url = server.start()
        try:
            res = asyncio.run(measure(url, tmp, args.paced, args.burst))
        finally:
            server.stop()
    for name, xs in res.items():
        if xs:
            print(
                f"sentiment->decision {name:6s} n={len(xs):5d}  p50 {statistics.median(xs):7.2f} ms  "
                f"p99 {pct(xs, 0.99):7.2f} ms  max {max(xs):7.2f} ms"
            )


if __name__ == "__main__":
    main()
