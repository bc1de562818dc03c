"""Micro-benchmark of the market-data handlers (issue 14, session 6): CPU µs per tick or per bar, no server.

What the ``handlers`` role does with every tick and every bar, each handler called directly (no
decode, no stamping, no publish: ``benchmarks/bench_pipeline.py`` measures those):

* bars: ``BarAggregator.handle`` per tick (1-minute bars, the bench_pipeline set-up);
* enrichment: ``MarketFeatures.handle`` per bar (the 17 features, phase and nudges of a 61-bar window);
* features: ``bar_features`` alone per bar (the numpy part of enrichment);
* momentum, monitor: per bar; decision: per momentum signal.

Run: PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_handlers.py [--ticks 200000] [--repeat 5]
For an A/B, run this one script against either tree: ``PYTHONPATH=/work/main`` vs another worktree
(the tree is whatever PYTHONPATH names: the script does not put its own folder first).
Prints the best of ``--repeat`` (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import best_us

from tapeline.adapters.sim import SimFeed
from tapeline.handlers import enrichment
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.decision import DecisionSynthesis
from tapeline.handlers.enrichment import MarketFeatures, bar_features
from tapeline.handlers.momentum import MomentumConfig, MomentumSignal
from tapeline.handlers.monitor import PriceMoveMonitor
from tapeline.schemas.events import Bar, Signal

SYMBOLS = ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B", "AMD", "INTC", "IBM"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ticks = list(SimFeed(SYMBOLS, ticks=args.ticks, seed=1).generate())
    agg = BarAggregator()
    bars: list[Bar] = [b for t in ticks for b in agg.handle(t) if isinstance(b, Bar)]
    mom = MomentumSignal(MomentumConfig(interval="1m"))
    signals: list[Signal] = [s for b in bars for s in mom.handle(b) if isinstance(s, Signal)]

    def run(make: Callable[[], Any], events: list[Any]) -> Callable[[], None]:
        def go() -> None:
            h = make()  # fresh state every repeat: the same work each time
            for e in events:
                h.handle(e)

        return go

    def features() -> None:
        for i in range(61, len(bars) + 1):
            bar_features(bars[i - 61 : i])

    def momentum() -> MomentumSignal:
        return MomentumSignal(MomentumConfig(interval="1m"))

    print(f"handlers, {len(ticks):,} simulated ticks, {len(SYMBOLS)} symbols, {len(bars):,} 1m bars")
    tree = Path(enrichment.__file__).resolve().parents[1]  # the tree PYTHONPATH chose
    print(f"  ({len(ticks) / len(bars):.1f} ticks per bar; tree {tree}; load {os.getloadavg()[0]:.2f})")
    rows: list[tuple[str, float, str]] = [
        ("bars", best_us(run(BarAggregator, ticks), len(ticks), args.repeat), "tick"),
        ("enrichment", best_us(run(MarketFeatures, bars), len(bars), args.repeat), "bar"),
        ("features alone", best_us(features, len(bars) - 60, args.repeat), "bar"),
        (
            "momentum",
            best_us(run(lambda: MomentumSignal(MomentumConfig(interval="1m")), bars), len(bars), args.repeat),
            "bar",
        ),
        ("monitor", best_us(run(PriceMoveMonitor, bars), len(bars), args.repeat), "bar"),
        ("decision", best_us(run(DecisionSynthesis, signals), len(signals), args.repeat), "signal"),
    ]
    per_tick = {"tick": 1.0, "bar": len(bars) / len(ticks), "signal": len(signals) / len(ticks)}
    print(f"{'handler':<16}{'µs per item':>12}  {'item':<7}{'µs per tick':>12}")
    total = 0.0
    for name, us, item in rows:
        share = us * per_tick[item]
        total += share if name != "features alone" else 0.0
        print(f"{name:<16}{us:>12.2f}  {item:<7}{share:>12.3f}")
    print(f"{'all (per tick)':<16}{'':>12}  {'':<7}{total:>12.3f}")


if __name__ == "__main__":
    main()
