"""Price model speed on one core: ONNX Runtime per-row latency (p50/p99) against sklearn's native
predict, batch throughput, and what the features of one bar cost (the enrichment handler).

Run: ``.venv/bin/python benchmarks/bench_models.py`` (needs ../shared/data). Pins itself to one CPU;
ONNX Runtime gets ``intra_op_num_threads=1``. The sklearn model is refitted on the same rows as the
packaged artefact (same seed, so the same trees); the goal is p99 <= 100 us per row for ONNX.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tapeline.adapters.files import default_sources, read_bars
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.handlers.model_agent import ModelAgent
from tapeline.handlers.phases import classify
from tapeline.models.price import ModelStore, default_classifier, load_model, make_dataset
from tapeline.models_cli import ARTEFACTS, series_of
from tapeline.schemas.events import Bar, Enrichment

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS = 5000


def _percentiles(fn: Callable[[int], object], n: int) -> tuple[float, float, float]:
    """p50, p99 and mean of ``fn(i)`` in microseconds, after a warm-up."""
    for i in range(200):
        fn(i)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        times[i] = time.perf_counter_ns() - t0
    us = times / 1e3
    return float(np.percentile(us, 50)), float(np.percentile(us, 99)), float(us.mean())


def main() -> None:
    if not DATA.exists():
        sys.exit(f"data not found at {DATA}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    (artefact,) = ARTEFACTS.glob("price-*.onnx")
    onnx_model = load_model(artefact.read_bytes())
    sources = [s for s in default_sources(DATA) if s.kind == "bars" and s.interval == "1d"]
    all_bars = [[b for b in read_bars(s.path, s.symbol).events if isinstance(b, Bar)] for s in sources]
    n_bars = sum(len(b) for b in all_bars)

    t0 = time.perf_counter()
    series = [series_of(bars) for bars in all_bars]
    per_bar = (time.perf_counter() - t0) / n_bars * 1e6
    ds = make_dataset(series, onnx_model.horizon)
    native = default_classifier().fit(ds.X, ds.y)
    X = ds.X[:ROWS]
    gap = float(np.max(np.abs(onnx_model.p_up(X) - native.predict_proba(X)[:, 1])))

    print(f"price model {onnx_model.version}: {len(ds.feature_names)} features, one core, {ROWS} rows")
    print(f"  ONNX vs sklearn: max |P(up) difference| {gap:.2e}")
    rows = [X[i : i + 1] for i in range(ROWS)]
    for name, fn in (
        ("ONNX Runtime, 1 row", lambda i: onnx_model.p_up(rows[i % ROWS])),
        ("sklearn native, 1 row", lambda i: native.predict_proba(rows[i % ROWS])),
    ):
        p50, p99, mean = _percentiles(fn, ROWS)
        print(f"  {name:<24} p50 {p50:7.1f} us   p99 {p99:7.1f} us   mean {mean:7.1f} us")
    for name, batch_fn in (
        ("ONNX Runtime", lambda: onnx_model.p_up(X)),
        ("sklearn native", lambda: native.predict_proba(X)),
    ):
        t0 = time.perf_counter()
        for _ in range(5):
            batch_fn()
        rate = 5 * ROWS / (time.perf_counter() - t0)
        print(f"  {name:<24} batch of {ROWS}: {rate:,.0f} rows/s")

    # The model handler end to end on one enrichment (feature lookup, inference, Signal draft).
    store = ModelStore(Path(os.environ.get("TMPDIR", "/tmp")) / "bench-models-store")
    sha = store.put(artefact.read_bytes())
    agent = ModelAgent(store=store)
    agent.live = store.load(sha)
    feats = MarketFeatures()
    enrichments = [e for b in all_bars[0] for e in feats.handle(b) if isinstance(e, Enrichment) and not e.warmup]
    p50, p99, mean = _percentiles(lambda i: agent.handle(enrichments[i % len(enrichments)]), ROWS)
    print(f"  {'model handler, 1 event':<24} p50 {p50:7.1f} us   p99 {p99:7.1f} us   mean {mean:7.1f} us")

    print(f"features per bar (enrichment handler: 17 features, phase, nudges), {n_bars:,} daily bars:")
    print(f"  {per_bar:.1f} us per bar")
    some = [e.features for e in enrichments[:ROWS]]
    p50, p99, mean = _percentiles(lambda i: classify(some[i % len(some)]), ROWS)
    print(f"  phase rules alone: p50 {p50:.1f} us, p99 {p99:.1f} us")


if __name__ == "__main__":
    main()
