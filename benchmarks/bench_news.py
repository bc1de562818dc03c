"""News importer throughput: FNSPID CSV -> validated, de-duplicated NewsItems, then into JetStream.

Writes a synthetic FNSPID-format file (N rows, every 10th a second symbol of the same story, every
100th a bad date) and times ``read_fnspid`` plus the feed's dedup, then the whole ``NewsFeed`` into a
real embedded nats-server. Run: .venv/bin/python benchmarks/bench_news.py [--rows N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from tapeline.adapters.news.config import NewsConfig
from tapeline.adapters.news.dedup import Deduper
from tapeline.adapters.news.feed import NewsFeed
from tapeline.adapters.news.fnspid import read_fnspid
from tapeline.adapters.runner import run_feed
from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.bus.server import EmbeddedNats
from tapeline.bus.topology import provision

HEADER = (
    "Date,Article_title,Stock_symbol,Url,Publisher,Author,Article,"
    "Lsa_summary,Luhn_summary,Textrank_summary,Lexrank_summary\n"
)


def write_file(path: Path, rows: int) -> None:
    symbols = ["NVDA", "ORCL", "AAPL", "MSFT", "AMD"]
    with path.open("w", encoding="utf-8") as f:
        f.write(HEADER)
        for i in range(rows):
            story = i - 1 if i % 10 == 9 else i  # a second symbol of the previous story
            day = 1 + story % 28
            date = "not a date" if i % 100 == 50 else f"2023-{1 + story % 12:02d}-{day:02d} {story % 24:02d}:00:00 UTC"
            f.write(
                f"{date},Company {story} reports quarter {story},{symbols[i % 5]},https://www.nasdaq.com/articles/{story},"
                f'Nasdaq,Author {story % 50},"Body of article {story}, with a comma",LSA summary {story},,,\n'
            )


async def publish(url: str, path: Path) -> tuple[int, float]:
    nc = await connect(NatsSettings(url=url))
    await provision(nc, "bn")
    pub = await Publisher(nc, "bn", window=8192).start()
    cfg = msgspec.convert(
        {"providers": ["files"], "files": {"fnspid": [str(path)], "semeval": {"path": ""}}}, NewsConfig
    )
    t = time.perf_counter()
    stats = await run_feed(NewsFeed(cfg), pub)
    took = time.perf_counter() - t
    await pub.close()
    await nc.drain()
    return stats.events, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fnspid.csv"
        write_file(path, args.rows)
        t = time.perf_counter()
        got = read_fnspid(path)
        dedup = Deduper(86_400)
        kept = [it for it in got.items if dedup.admit(it)]
        took = time.perf_counter() - t
        print(f"rows {got.rows:,}: {len(kept):,} items, {len(got.rejected):,} rejected, {dedup.dropped:,} duplicates")
        print(
            f"import + validate + dedup: {took:.2f}s = {got.rows / took:,.0f} rows/s, {len(kept) / took:,.0f} items/s"
        )
        server = EmbeddedNats(Path(d) / "nats")
        url = server.start()
        try:
            events, took = asyncio.run(publish(url, path))
        finally:
            server.stop()
        print(f"file -> JetStream (NewsFeed + run_feed, one item per message): {events:,} events in {took:.2f}s"
              f" = {events / took:,.0f} items/s")  # fmt: skip


if __name__ == "__main__":
    main()
