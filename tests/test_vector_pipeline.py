"""LanceDB read models through the real pipeline: bars, enrichments and decisions in, vectors out, verified, queried."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np
from nats.aio.client import Client

from tapeline.adapters.runner import run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.publisher import Publisher
from tapeline.handlers.enrichment import WINDOW, market_features
from tapeline.pipeline import ROLES, Pipeline
from tapeline.projections.vectors import DECISION_VECTORS, MARKET_RETURNS, MARKET_STATES, NEWS_VECTORS, VectorStore
from tapeline.replay.rebuild import verify
from tapeline.schemas import Bar, Enrichment, NewsItem, new_event_id
from tests.helpers import FAST, TAPELINE, stored, stream_last_seq, wait_until, write_config


async def test_vectors_follow_the_streams_verify_and_answer_queries(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path, shared_data: Path
) -> None:
    cfg = write_config(tmp_path, provisioned, nats_url)
    data = tmp_path / "data" / "projections"
    p = Pipeline(nc, provisioned, configs=FAST, db_path=data / "tapeline.duckdb", selected=ROLES)
    await p.start()
    await run_feed(SimFeed(["NVDA", "ORCL"], ticks=8000, seed=21, mean_gap_ms=60), publisher)
    headlines = json.loads((shared_data / "news" / "semeval2017-task5-headlines.json").read_text("utf-8"))[:200]
    t0 = 1_767_225_600_000_000_000
    news = [
        NewsItem(
            event_id=new_event_id(t0 + i),
            ts_event=t0 + i * 1_000_000_000,
            ts_init=t0,
            source="test",
            provider="semeval",
            article_id=str(h["id"]),
            title=h["title"],
            tickers=["NVDA"],
        )
        for i, h in enumerate(headlines)
    ]
    await publisher.publish(news)

    async def caught_up() -> bool:
        for sink in p.sinks:
            if await stream_last_seq(nc, sink.stream) != sink.last_seq:
                return False
        return all(r.idle.is_set() for r in p.runtimes) and p.vector_sinks[1].last_seq > 0

    await wait_until(caught_up, timeout=120)
    bars = [e for e in await stored(nc, f"{provisioned.upper()}_MD", f"{provisioned}.md.bar.>") if isinstance(e, Bar)]
    states = await stored(nc, f"{provisioned.upper()}_INTEL", f"{provisioned}.intel.enrichment.>")
    decisions = await stored(nc, f"{provisioned.upper()}_DECISION")
    store = VectorStore(data / "vectors")
    nvda = sorted((b for b in bars if b.symbol == "NVDA"), key=lambda b: b.ts_event)
    series = [len([b for b in bars if b.symbol == s]) for s in ("NVDA", "ORCL")]
    # The enrichment handler emitted a state for every bar, marked warm-up without a full window;
    # market_states stores the warm ones.
    assert len(states) == sum(series) and all(isinstance(e, Enrichment) for e in states)
    warm = [e for e in states if not e.warmup]  # type: ignore[attr-defined]
    assert len(warm) == sum(n - WINDOW + 1 for n in series) > 0
    assert store.count(MARKET_STATES) == len(warm)
    assert store.count(MARKET_RETURNS) == len(bars) > 100
    assert store.count(DECISION_VECTORS) == len(decisions) > 0
    assert store.count(NEWS_VECTORS) == len(news)
    last = store.scan(MARKET_STATES, ["vector"], where=f"bar_event_id = '{nvda[-1].event_id}'")
    assert np.array_equal(np.array(last["vector"][0].as_py(), np.float32), market_features(nvda))
    # A bar's 1-bar forward return is the next bar's close over its own, known once that bar exists.
    row = store.scan(MARKET_RETURNS, ["ts_event", "fwd_ret_1"], where=f"bar_event_id = '{nvda[10].event_id}'")
    assert abs(row["fwd_ret_1"][0].as_py() - (nvda[11].close / nvda[10].close - 1)) < 1e-9

    checks, _ = await verify(
        nc, provisioned, data / "tapeline.duckdb", tmp_path / "rebuilt.duckdb", live_vectors_dir=data / "vectors"
    )
    vector_checks = [c for c in checks if c.table.startswith("lancedb:")]
    assert len(vector_checks) == 4 and all(c.ok for c in checks), [c for c in checks if not c.ok]
    await p.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TAPELINE, *args, "-c", str(cfg)], capture_output=True, text=True, timeout=120)

    similar = await asyncio.to_thread(cli, "similar", "NVDA", "-k", "5")
    assert similar.returncode == 0, similar.stdout + similar.stderr
    assert "Situations most like NVDA" in similar.stdout and "after 20 bars" in similar.stdout
    found = await asyncio.to_thread(cli, "search-news", "company warns profits will fall", "-k", "3")
    assert found.returncode == 0, found.stdout + found.stderr
    assert "profit" in found.stdout.lower() or "warn" in found.stdout.lower(), found.stdout
