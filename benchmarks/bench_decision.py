"""Micro-benchmark of the decision handler per signal (issue 14, session 8): CPU µs, no server.

In the deployed pipeline a symbol's decision sees the signals of several agents (momentum,
price_move, model, sentiment), so each envelope nests several agents' signals; ``bench_handlers.py``
feeds momentum alone. Here the stream is momentum's signals from simulated 1m bars, and for each a
``model`` signal and, every 10th, a ``price_move`` and a ``sentiment`` one (with source-call metrics),
all on the same symbol: 2-4 fresh agents per envelope. Three figures per signal:

* handle: ``DecisionSynthesis.handle`` alone;
* react: handle plus the runner's stamping (ids, causation: ``bus.components.react``);
* react+encode: plus the JSON encoding the publisher does.

Run: ``cd /tmp && PYTHONPATH=/work/wt-X /work/main/.venv/bin/python /work/wt-X/benchmarks/bench_decision.py``.
The tree measured is whatever PYTHONPATH names (printed), so one script A/Bs two trees.
Prints the best of ``--repeat`` (the run least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from timing import best_us

from tapeline.adapters.sim import SimFeed
from tapeline.bus.components import react
from tapeline.handlers import decision as decision_module
from tapeline.handlers.bars import BarAggregator
from tapeline.handlers.decision import DecisionSynthesis
from tapeline.handlers.momentum import MomentumConfig, MomentumSignal
from tapeline.schemas.codec import encode
from tapeline.schemas.events import Bar, Signal
from tapeline.schemas.ids import derive_event_id

SOURCES = {"source_calls.marketaux": 2.0, "source_failed": 1.0, "source_bytes": 5e3}  # a news agent's calls
SYMBOLS = ["NVDA", "ORCL", "AAPL", "MSFT", "BRK.B", "AMD", "INTC", "IBM"]


def signals(n_ticks: int) -> list[Signal]:
    """Stamped signals (ids and causation as the runner gives them) of several agents, in event order."""
    agg = BarAggregator()
    bars = [b for t in SimFeed(SYMBOLS, ticks=n_ticks, seed=1).generate() for b in agg.handle(t) if isinstance(b, Bar)]
    mom = MomentumSignal(MomentumConfig(interval="1m"))
    out: list[Signal] = []
    for i, bar in enumerate(bars):
        for s in react(mom, bar):
            assert isinstance(s, Signal)
            out.append(s)
            extra = [("model", "technical", 0.31, {"p_up": 0.655, "horizon": 5.0, "model_version": 3.0e9})]
            if i % 10 == 0:
                extra.append(("price_move", "event", 0.5, {"move": 0.0512, "window_s": 900.0}))
                extra.append(("sentiment", "news", 0.42, SOURCES))
            for j, (agent, domain, strength, metrics) in enumerate(extra):
                out.append(
                    Signal(
                        event_id=derive_event_id(s.ts_event, agent, s.event_id, j),
                        ts_event=s.ts_event,
                        ts_init=s.ts_init,
                        source=agent,
                        causation_id=s.event_id,
                        correlation_id=s.correlation_id,
                        symbol=s.symbol,
                        agent=agent,
                        domain=domain,
                        direction="BULLISH",
                        strength=strength,
                        confidence=0.62,
                        summary=f"{agent} view of {s.symbol}: strength {strength:+.2f} over the last bars",
                        key_factors=[f"{agent}_factor=1", "phase=trend_up"],
                        metrics=metrics,
                    )
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    sigs = signals(args.ticks)

    def handle() -> None:
        h = DecisionSynthesis()  # fresh state every repeat: the same work each time
        for s in sigs:
            h.handle(s)

    def stamped() -> None:
        h = DecisionSynthesis()
        for s in sigs:
            react(h, s)

    def encoded() -> None:
        h = DecisionSynthesis()
        for s in sigs:
            encode(react(h, s))

    tree = Path(decision_module.__file__).resolve().parents[1]
    print(f"decision, {len(sigs):,} signals of 2-4 agents, {len(SYMBOLS)} symbols")
    print(f"  (tree {tree}; load {os.getloadavg()[0]:.2f})")
    for name, fn in (("handle", handle), ("react", stamped), ("react+encode", encoded)):
        print(f"{name:<14}{best_us(fn, len(sigs), args.repeat):>8.2f} µs per signal")


if __name__ == "__main__":
    main()
