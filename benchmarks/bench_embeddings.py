"""Embedding throughput: all-MiniLM-L6-v2 with torch vs ONNX Runtime, batch 128, ~2,000 real headlines.

Run: ``.venv/bin/python benchmarks/bench_embeddings.py`` (needs ../shared/data; exports the ONNX graph
into .tapeline/models on first run).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from tapeline.models.embedder import Backend, TextEmbedder

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
N = 2000
BATCH = 128
REPEATS = 3


def main() -> None:
    if not HEADLINES.exists():
        sys.exit(f"headlines not found at {HEADLINES}")
    with HEADLINES.open(encoding="utf-8") as f:
        titles = [h["title"] for h in json.load(f)]
    texts = (titles * (N // len(titles) + 1))[:N]
    results: dict[str, np.ndarray] = {}
    print(f"all-MiniLM-L6-v2, {N} headlines ({len(titles)} unique), batch {BATCH}, best of {REPEATS}")
    backends: tuple[Backend, ...] = ("torch", "onnx")
    for backend in backends:
        t0 = time.perf_counter()
        emb = TextEmbedder(backend, batch_size=BATCH, cache_size=0)  # measure the model, not the cache
        load = time.perf_counter() - t0
        emb.embed(texts[:BATCH])  # warm-up
        best = float("inf")
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            results[backend] = emb.embed(texts)
            best = min(best, time.perf_counter() - t0)
        print(f"  {backend:5s}  {N / best:8.0f} sentences/s   load {load:5.2f} s")
    cos = (results["torch"] * results["onnx"]).sum(axis=1)
    print(f"  agreement: min cosine torch vs onnx = {cos.min():.7f}")


if __name__ == "__main__":
    main()
