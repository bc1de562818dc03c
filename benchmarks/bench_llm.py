"""LLM path figures: stand-in round trip per provider, and a replay of a day of news (zero calls).

Round trip: one ``news_llm`` call per real headline through the provider's SDK to the local
stand-in (tests/standins/llm.py: a real HTTP server speaking the Gemini / OpenAI REST formats),
prompt rendering and the strict parser included; p50/p99 of the recorded ``latency_ms`` and of
the whole news -> LlmCall -> SentimentScore step. Replay: the headlines as one day of news on an
embedded nats-server, scored live through JetStream (gateway + parser runners), then replayed by
``what_if`` from the recorded streams with no key set; the stand-in counts the calls it gets.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_llm.py`` (needs ../shared/data).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tapeline.adapters.llm.gateway import NewsLlmConfig, NewsLlmGateway
from tapeline.bus.components import ComponentRunner
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.inprocess import InProcessRunner
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import read_stream
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision
from tapeline.handlers.sentiment_parser import SentimentParser
from tapeline.replay.whatif import what_if
from tapeline.schemas.events import LlmCall, NewsItem, SentimentScore
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import INTEL
from tests.standins.llm import LlmStandIn

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
KEY = "bench-key"


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def day_of_news(rows: list[dict[str, object]]) -> list[NewsItem]:
    t0 = 1_767_225_600_000_000_000  # 2026-01-01, one headline every ~2.5 min
    out = []
    for i, r in enumerate(rows):
        t = t0 + i * 150_000_000_000
        out.append(
            NewsItem(
                event_id=new_event_id(t), ts_event=t, ts_init=t, source="bench", provider="semeval",
                article_id=f"{r['id']}-{i}", title=str(r["title"]), tickers=[str(r["company"]).split()[0]],
            )
        )  # fmt: skip
    return out


def config(provider: str, url: str) -> NewsLlmConfig:
    return NewsLlmConfig(
        provider=provider,  # type: ignore[arg-type]
        gemini_base_url=url,
        openai_base_url=f"{url}/v1",
        variants={"v1": 0.5, "v2": 0.5},
    )


async def round_trip(provider: str, standin: LlmStandIn, items: list[NewsItem]) -> None:
    os.environ["GEMINI_API_KEY" if provider == "gemini" else "OPENAI_API_KEY"] = KEY
    gw = NewsLlmGateway(config(provider, standin.url))
    runner = InProcessRunner([gw, SentimentParser()], "tape", live_gateways=True)
    await runner.run(items[:20])  # warm-up: connections, SDK imports
    walls: list[float] = []
    lat: list[float] = []
    for item in items:
        t = time.perf_counter()
        out = await runner.run([item])
        walls.append((time.perf_counter() - t) * 1e3)
        lat += [e.latency_ms for e in out if isinstance(e, LlmCall)]
    await gw.aclose()
    del os.environ["GEMINI_API_KEY" if provider == "gemini" else "OPENAI_API_KEY"]
    print(
        f"{provider:>7}: {len(items)} calls  provider call p50 {pct(lat, 50):.2f} ms  p99 {pct(lat, 99):.2f} ms  |"
        f"  news->score p50 {pct(walls, 50):.2f} ms  p99 {pct(walls, 99):.2f} ms"
    )


async def replay_day(url: str, standin: LlmStandIn, items: list[NewsItem]) -> None:
    nc = await connect(NatsSettings(url=url))
    prefix = "bench"
    await provision(nc, prefix)
    pub = await Publisher(nc, prefix).start()
    await pub.publish(items)
    os.environ["GEMINI_API_KEY"] = KEY
    gw = NewsLlmGateway(config("gemini", standin.url))
    scorable = sum(1 for i in items if gw.wants(i))
    runners = [ComponentRunner(nc, pub, c, prefix) for c in (gw, SentimentParser())]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    t = time.perf_counter()
    while True:
        if len(await read_stream(nc, INTEL.stream(prefix), f"{prefix}.intel.sentiment.>")) >= scorable:
            break
        await asyncio.sleep(0.2)
    live_s = time.perf_counter() - t
    for r in runners:
        r.stop()
    await asyncio.gather(*tasks)
    await gw.aclose()
    del os.environ["GEMINI_API_KEY"]
    before = standin.calls
    t = time.perf_counter()
    report = await what_if(
        nc, prefix, f"{prefix}-whatif-day", [NewsLlmGateway(config("gemini", standin.url)), SentimentParser()]
    )
    replay_s = time.perf_counter() - t
    whatif = await read_stream(nc, INTEL.stream(f"{prefix}-whatif-day"), f"{prefix}-whatif-day.intel.sentiment.>")
    await pub.close()
    await nc.drain()
    scores = [e for _, e in whatif if isinstance(e, SentimentScore)]
    print(
        f"day of news: {len(items)} articles ({scorable} with a ticker) scored live over JetStream in {live_s:.1f} s "
        f"({scorable / live_s:.0f}/s, gateway + parser runners)"
    )
    print(
        f"replay (what-if, no key set): {report.inputs} inputs -> {len(scores)} scores in {replay_s:.2f} s, "
        f"provider calls during replay: {standin.calls - before}"
    )


async def main() -> None:
    if not HEADLINES.exists():
        sys.exit(f"headlines not found at {HEADLINES}")
    rows = json.loads(HEADLINES.read_text(encoding="utf-8"))
    items = day_of_news(rows)
    for k in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        os.environ.pop(k, None)
    with LlmStandIn(key=KEY) as standin:
        print(f"stand-in round trip, {len(items)} real headlines, sequential, prompt variants v1/v2 split 50/50")
        for provider in ("gemini", "openai"):
            await round_trip(provider, standin, items)
        with tempfile.TemporaryDirectory() as d, EmbeddedNats(Path(d) / "nats") as server:
            await replay_day(server.url, standin, items)


if __name__ == "__main__":
    asyncio.run(main())
