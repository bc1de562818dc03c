"""LanceDB: add throughput (10 vs 1,000 rows per add), add+checkpoint vs merge_insert, and query latency
over 100k vectors (384-d text, 12-d market state) with and without the IVF_SQ index.

Run: ``.venv/bin/python benchmarks/bench_lancedb.py``. Random vectors (unit-normalised for the text
table); random high-dimensional data is the hard case for recall, real embeddings cluster.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tapeline.models.embedder import DIM as TEXT_DIM
from tapeline.projections.vectors import (
    MARKET_STATES,
    NEWS_VECTORS,
    VectorStore,
    news_schema,
    vector_column,
)
from tapeline.schemas.features import MARKET_DIM

N = 100_000
QUERIES = 200
rng = np.random.default_rng(7)


def news_rows(start: int, n: int, dim: int = TEXT_DIM) -> pa.Table:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = np.arange(start, start + n)
    return pa.table(
        {
            "event_id": [f"n{i:09d}" for i in ids],
            "stream_seq": ids + 1,
            "ts_event": ids * 1_000_000_000,
            "provider": ["bench"] * n,
            "title": [f"headline {i}" for i in ids],
            "tickers": [["NVDA"]] * n,
            "vector": vector_column(v, dim),
        },
        schema=news_schema(dim),
    )


def market_rows(n: int) -> pa.Table:
    ids = np.arange(n)
    cols: dict[str, Any] = {
        "bar_event_id": [f"b{i:09d}" for i in ids],
        "symbol": np.array(["NVDA", "ORCL", "AAPL", "MSFT"])[ids % 4],
        "interval": ["1m"] * n,
        "ts_event": ids * 60_000_000_000,
        "stream_seq": ids + 1,
        "vector": vector_column(rng.standard_normal((n, MARKET_DIM)).astype(np.float32), MARKET_DIM),
    }
    return pa.table(cols)


def bench_adds(root: Path) -> None:
    print("adds (news_vectors schema, 384-d), each add followed by its checkpoint write:")
    for per_add, total in ((10, 2_000), (1_000, 50_000)):
        store = VectorStore(root / f"adds{per_add}")
        batches = [news_rows(i, per_add) for i in range(0, total, per_add)]
        t0 = time.perf_counter()
        for b in batches:
            store.table(NEWS_VECTORS).add(b)
        plain = total / (time.perf_counter() - t0)
        store2 = VectorStore(root / f"addsck{per_add}")
        t0 = time.perf_counter()
        for b in batches:
            store2.commit(NEWS_VECTORS, b, stream="NEWS", last_seq=int(b["stream_seq"][-1].as_py()))
        ck = total / (time.perf_counter() - t0)
        print(f"  {per_add:5d} rows/add: {plain:9.0f} rows/s add only, {ck:9.0f} rows/s add + checkpoint")
    store = VectorStore(root / "merge")
    store.table(NEWS_VECTORS).add(news_rows(0, 50_000))
    batches = [news_rows(50_000 + i, 1_000) for i in range(0, 10_000, 1_000)]
    t0 = time.perf_counter()
    for b in batches:
        store.table(NEWS_VECTORS).merge_insert("event_id").when_not_matched_insert_all().execute(b)
    merge = 10_000 / (time.perf_counter() - t0)
    store_a = VectorStore(root / "merge_add")
    store_a.table(NEWS_VECTORS).add(news_rows(0, 50_000))
    t0 = time.perf_counter()
    for b in batches:
        store_a.commit(NEWS_VECTORS, b, stream="NEWS", last_seq=int(b["stream_seq"][-1].as_py()))
    add = 10_000 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    store_a.recover(NEWS_VECTORS)
    rec_ms = (time.perf_counter() - t0) * 1000
    print(
        f"  crash-safety choice, 1,000-row batches into 50k rows: add + checkpoint {add:.0f} rows/s, "
        f"merge_insert on event_id {merge:.0f} rows/s; recover() on start {rec_ms:.1f} ms"
    )


def latency(store: VectorStore, table: str, queries: np.ndarray, where: str | None = None) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        store.search(table, q, 10, where=where, columns=["stream_seq"])
        times.append(time.perf_counter() - t0)
    ms = np.array(times[10:]) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(store: VectorStore, table: str, data: np.ndarray, queries: np.ndarray, cosine: bool) -> float:
    hits = []
    for q in queries[:50]:
        exact = np.argsort(-(data @ q))[:10] if cosine else np.argsort(((data - q) ** 2).sum(axis=1))[:10]
        got = [r["stream_seq"] - 1 for r in store.search(table, q, 10, columns=["stream_seq"])]
        hits.append(len(set(exact.tolist()) & set(got)) / 10)
    return float(np.mean(hits))


def bench_queries(root: Path) -> None:
    print(f"similarity query, k=10, {N:,} vectors, {QUERIES} queries (p50 / p99):")
    store = VectorStore(root / "query")
    text = news_rows(0, N)
    for i in range(0, N, 10_000):
        store.table(NEWS_VECTORS).add(text.slice(i, 10_000))
    market = market_rows(N)
    for i in range(0, N, 10_000):
        store.table(MARKET_STATES).add(market.slice(i, 10_000))
    for table, data, cosine in (
        (NEWS_VECTORS, text["vector"].combine_chunks().flatten().to_numpy().reshape(N, TEXT_DIM), True),
        (MARKET_STATES, market["vector"].combine_chunks().flatten().to_numpy().reshape(N, MARKET_DIM), False),
    ):
        dim = data.shape[1]
        q = rng.standard_normal((QUERIES, dim)).astype(np.float32)
        if cosine:
            q /= np.linalg.norm(q, axis=1, keepdims=True)
        p50, p99 = latency(store, table, q)
        print(f"  {dim:3d}-d {table:14s} exhaustive : {p50:7.2f} / {p99:7.2f} ms")
        t0 = time.perf_counter()
        store.ensure_index(table, min_rows=1)
        build = time.perf_counter() - t0
        p50, p99 = latency(store, table, q)
        r = recall(store, table, data, q, cosine)
        print(
            f"  {dim:3d}-d {table:14s} IVF_SQ     : {p50:7.2f} / {p99:7.2f} ms"
            f"  (build {build:.1f} s, recall@10 {r:.2f})"
        )
        if table == MARKET_STATES:
            p50, p99 = latency(store, table, q, where="symbol = 'NVDA' AND ts_event <= 3000000000000000")
            print(f"  {dim:3d}-d {table:14s} IVF_SQ + filter (symbol, time): {p50:7.2f} / {p99:7.2f} ms")


def bench_clustered(root: Path) -> None:
    """Recall on data shaped like embeddings (2,000 topics + noise) rather than uniform noise."""
    store = VectorStore(root / "clustered")
    centres = rng.standard_normal((2_000, TEXT_DIM)).astype(np.float32)
    data = centres[rng.integers(0, 2_000, N)] + 0.5 * rng.standard_normal((N, TEXT_DIM)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    rows = news_rows(0, N).set_column(6, "vector", vector_column(data, TEXT_DIM))
    for i in range(0, N, 10_000):
        store.table(NEWS_VECTORS).add(rows.slice(i, 10_000))
    q = data[rng.choice(N, QUERIES)] + 0.05 * rng.standard_normal((QUERIES, TEXT_DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    store.ensure_index(NEWS_VECTORS, min_rows=1)
    p50, p99 = latency(store, NEWS_VECTORS, q)
    r = recall(store, NEWS_VECTORS, data, q, True)
    print(f"  384-d clustered (2k topics)  IVF_SQ     : {p50:7.2f} / {p99:7.2f} ms  (recall@10 {r:.2f})")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        bench_adds(Path(d))
        bench_queries(Path(d))
        bench_clustered(Path(d))


if __name__ == "__main__":
    main()
