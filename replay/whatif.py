"""What-if replay: recorded inputs through another handler configuration, into an isolated prefix.

Recorded market data, news and LLM responses are read back from the source prefix in stream
order and pushed through a chain of handlers in-process (each output feeds the handlers that
subscribe to it), exactly as the live runtime would, but without any provider or broker: LLM
responses are recorded events, so a sentiment handler reads them instead of calling a model.
The derived events are published under the isolated prefix for inspection with the usual tools,
and the decisions are diffed against the recorded ones.

P&L comparison: each decision is taken as a unit position (BUY +1, SELL -1, HOLD 0) held until
the symbol's next decision and marked at bar closes; where the two runs differ, so does P&L.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import msgspec
from nats.aio.client import Client

from bus.publisher import Publisher
from bus.reader import read_stream
from bus.runtime import react
from bus.topology import provision
from handlers.base import Handler
from schemas.events import AnyEvent, Bar, DecisionEnvelope, Event
from schemas.subjects import DECISION, INTEL, MD, NEWS, StreamFamily

# Recorded inputs a what-if reuses: everything that entered from outside (DESIGN §2).
INPUTS: tuple[tuple[StreamFamily, str], ...] = ((MD, "md.tick.>"), (NEWS, "news.>"), (INTEL, "intel.llm.>"))


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


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


async def read_events(nc: Client, stream: str, subject: str, until_ns: int | None = None) -> list[AnyEvent]:
    return [e for _, e in await read_stream(nc, stream, subject, until_ns=until_ns)]


def run_chain(handlers: Sequence[Handler], inputs: Sequence[AnyEvent], prefix: str) -> list[Event]:
    """Feed inputs through the handlers, each output to every handler subscribed to its subject."""
    patterns = [(h, [f"{prefix}.{s}" for s in h.subjects]) for h in handlers]
    derived: list[Event] = []
    for event in inputs:
        queue: list[AnyEvent] = [event]
        while queue:
            ev = queue.pop(0)
            subject = ev.subject(prefix)
            for h, pats in patterns:
                if any(subject_matches(p, subject) for p in pats):
                    outs = react(h, ev)
                    derived.extend(outs)
                    queue.extend(outs)  # type: ignore[arg-type]
    return derived


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
    handlers: Sequence[Handler],
    *,
    until_ns: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> WhatIfReport:
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    inputs: list[AnyEvent] = []
    for fam, subject in INPUTS:
        got = await read_events(nc, fam.stream(source_prefix), f"{source_prefix}.{subject}", until_ns)
        say(f"read {len(got):,} recorded events from {fam.stream(source_prefix)}")
        inputs.extend(got)
    inputs.sort(key=lambda e: (e.ts_event, e.event_id))  # one timeline across the input streams
    derived = run_chain(handlers, inputs, source_prefix)
    say(f"{len(derived):,} derived events; publishing under {target_prefix}")
    await provision(nc, target_prefix)
    pub = await Publisher(nc, target_prefix, role="what-if").start()
    try:
        for i in range(0, len(derived), 5000):
            await pub.publish(derived[i : i + 5000])
    finally:
        await pub.close()
    recorded = [
        e
        for e in await read_events(nc, DECISION.stream(source_prefix), f"{source_prefix}.decision.>", until_ns)
        if isinstance(e, DecisionEnvelope)
    ]
    mine = [e for e in derived if isinstance(e, DecisionEnvelope)]
    bars = [
        e
        for e in await read_events(nc, MD.stream(source_prefix), f"{source_prefix}.md.bar.>", until_ns)
        if isinstance(e, Bar)
    ]
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
