"""Embedding throughput: all-MiniLM-L6-v2 with torch, ONNX Runtime (float) and ONNX Runtime int8.

~2,000 real headlines (the SemEval set, repeated), every backend measured in the same run, best of
three passes; the int8 vectors are compared with the float ones (cosine per headline).

Run: ``.venv/bin/python benchmarks/bench_embeddings.py`` (needs ../shared/data; exports and quantises
the ONNX graph into ~/.cache/tapeline/models on first run).
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
BATCH = 128  # torch and float ONNX; int8 runs every text alone (see models/embedder.py)
REPEATS = 3


def main() -> None:
    if not HEADLINES.exists():
        sys.exit(f"headlines not found at {HEADLINES}")
    with HEADLINES.open(encoding="utf-8") as f:
        titles = [h["title"] for h in json.load(f)]
    texts = (titles * (N // len(titles) + 1))[:N]
    results: dict[str, np.ndarray] = {}
    rate: dict[str, float] = {}
    print(f"all-MiniLM-L6-v2, {N} headlines ({len(titles)} unique), batch {BATCH}, best of {REPEATS}")
    backends: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8")
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
        rate[backend] = N / best
        print(
            f"  {backend:9s}  {rate[backend]:8.0f} sentences/s  {rate[backend] / rate['torch']:5.2f}x torch"
            f"   load {load:5.2f} s   {emb.version}"
        )
    cos = (results["torch"] * results["onnx"]).sum(axis=1)
    print(f"  agreement: min cosine torch vs onnx = {cos.min():.7f}")
    cos8 = (results["onnx"] * results["onnx-int8"]).sum(axis=1)
    print(f"  int8 vs float onnx: cosine min {cos8.min():.4f}  p1 {np.percentile(cos8, 1):.4f}  mean {cos8.mean():.4f}")


if __name__ == "__main__":
    main()
