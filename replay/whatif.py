"""What-if replay: recorded inputs through another handler configuration, into an isolated prefix.

Recorded inputs (everything that entered from outside: ticks, news, heartbeats, clock ticks) are
read back from the source prefix, each stream in its own order, merged by event time, and run
through the declared system with the in-process runner (``bus.inprocess``), exactly as the live
runner would but with no provider or broker: gateways (LLM calls, notifiers, brokers) answer with
the results recorded by the live run, looked up by the ids those results must have.
The derived events are published under the isolated prefix for inspection with the usual tools,
and the decisions are diffed against the recorded ones.

P&L comparison: each decision is taken as a unit position (BUY +1, SELL -1, HOLD 0) held until
the symbol's next decision and marked at bar closes; where the two runs differ, so does P&L.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import msgspec
from nats.aio.client import Client

from tapeline.bus.inprocess import InProcessRunner
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import read_events
from tapeline.bus.topology import provision
from tapeline.schemas.components import Component, Consumes
from tapeline.schemas.events import AnyEvent, Bar, ClockTick, DecisionEnvelope, Event, Heartbeat, NewsItem, Tick
from tapeline.schemas.subjects import StreamFamily

# Recorded inputs a what-if reuses: everything that entered from outside (DESIGN §2).
INPUTS: tuple[type[Event], ...] = (Tick, NewsItem, Heartbeat, ClockTick)


def _stream(event: type[Event], prefix: str) -> tuple[StreamFamily, str]:
    c = Consumes(event)
    return c.family, c.pattern(prefix)


async def _recorded(nc: Client, prefix: str, events: Sequence[type[Event]], until_ns: int | None) -> list[AnyEvent]:
    out: list[AnyEvent] = []
    for t in events:
        fam, subject = _stream(t, prefix)
        out += [e for _, e in await read_events(nc, fam.stream(prefix), [subject], until_ns=until_ns)]
    return out


class VerdictChange(msgspec.Struct, frozen=True):
    symbol: str
    ts_event: int
    recorded: str
    what_if: str


class WhatIfReport(msgspec.Struct):
    target_prefix: str
    inputs: int
    derived: int
    decisions_recorded: int
    decisions_what_if: int
    changes: list[VerdictChange]
    pnl_recorded: dict[str, float]
    pnl_what_if: dict[str, float]
    seconds: float


def unit_pnl(decisions: Sequence[DecisionEnvelope], bars: Sequence[Bar]) -> dict[str, float]:
    """P&L per symbol of holding +1/-1/0 per verdict until the next decision, marked at bar closes."""
    closes: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for b in bars:
        closes[b.symbol].append((b.ts_event, b.close))
    pnl: dict[str, float] = defaultdict(float)
    by_symbol: dict[str, list[DecisionEnvelope]] = defaultdict(list)
    for d in decisions:
        by_symbol[d.target.ticker].append(d)
    for sym, ds in by_symbol.items():
        ds.sort(key=lambda d: d.ts_event)
        series = sorted(closes.get(sym, []))
        for i, d in enumerate(ds):
            pos = {"BUY": 1.0, "SELL": -1.0}.get(d.synthesis.verdict, 0.0)
            end = ds[i + 1].ts_event if i + 1 < len(ds) else (series[-1][0] if series else d.ts_event)
            marks = [c for t, c in series if d.ts_event <= t <= end]
            if pos and len(marks) >= 2:
                pnl[sym] += pos * (marks[-1] - marks[0])
    return dict(pnl)


async def what_if(
    nc: Client,
    source_prefix: str,
    target_prefix: str,
    components: Sequence[Component],
    *,
    until_ns: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> WhatIfReport:
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    per_stream: list[list[AnyEvent]] = []
    for t in INPUTS:
        got = await _recorded(nc, source_prefix, [t], until_ns)
        say(f"read {len(got):,} recorded {t.__name__} events")
        per_stream.append(got)
    # One timeline: streams merged by event time, each kept in its own stored order.
    inputs = list(heapq.merge(*per_stream, key=lambda e: e.ts_event))
    effects = {t for c in components for t in c.emits if c.kind == "gateway"}
    recorded_effects = await _recorded(nc, source_prefix, sorted(effects, key=lambda t: t.__name__), until_ns)
    runner = InProcessRunner(components, source_prefix, recorded=recorded_effects)
    derived = await runner.run(inputs)
    say(f"{len(derived):,} derived events; publishing under {target_prefix}")
    await provision(nc, target_prefix)
    pub = await Publisher(nc, target_prefix, role="what-if").start()
    try:
        for i in range(0, len(derived), 5000):
            await pub.publish(derived[i : i + 5000])
    finally:
        await pub.close()
    recorded = [
        e for e in await _recorded(nc, source_prefix, [DecisionEnvelope], until_ns) if isinstance(e, DecisionEnvelope)
    ]
    mine = [e for e in derived if isinstance(e, DecisionEnvelope)]
    bars = [e for e in await _recorded(nc, source_prefix, [Bar], until_ns) if isinstance(e, Bar)]
    before = {(d.target.ticker, d.ts_event): d.synthesis.verdict for d in recorded}
    after = {(d.target.ticker, d.ts_event): d.synthesis.verdict for d in mine}
    changes = [
        VerdictChange(sym, ts, before.get((sym, ts), "-"), after.get((sym, ts), "-"))
        for sym, ts in sorted(set(before) | set(after), key=lambda k: (k[1], k[0]))
        if before.get((sym, ts)) != after.get((sym, ts))
    ]
    return WhatIfReport(
        target_prefix=target_prefix,
        inputs=len(inputs),
        derived=len(derived),
        decisions_recorded=len(recorded),
        decisions_what_if=len(mine),
        changes=changes,
        pnl_recorded=unit_pnl(recorded, bars),
        pnl_what_if=unit_pnl(mine, bars),
        seconds=time.perf_counter() - started,
    )
