"""``tapeline halt`` and ``tapeline resume``: a human stops or restarts trading, as events.

``halt`` publishes ``CircuitBreakerTripped(breaker="halt", hard=True)`` for a scope (default ``all``)
and returns as soon as JetStream has stored it: the risk gate rejects every intent it handles after
it reads the event (measured: see ``benchmarks/halt_latency.py``), and the execution gateway
cancels working orders on it. ``resume`` reads the risk stream to find the breakers tripped now (the
last trip or resume per breaker and scope wins) and publishes ``CircuitBreakerResumed`` with the
operator and the note for each one that matches: by default every hard breaker (soft ones resume
by themselves), ``--breaker``/``--scope`` to choose, ``--all`` for soft ones too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nats.aio.client import Client
from rich.console import Console
from rich.table import Table

from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher
from tapeline.bus.reader import read_stream
from tapeline.config import Settings
from tapeline.pipeline import provision_system
from tapeline.schemas.events import CircuitBreakerResumed, CircuitBreakerTripped, Event
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import RISK
from tapeline.session import nats_session


async def publish_control(nc: Client, prefix: str, events: Sequence[Event]) -> None:
    """Store the events (streams applied first if missing: a halt must work on a fresh namespace too)."""
    if await JetStreamApi(nc).stream_info(RISK.stream(prefix)) is None:
        await provision_system(nc, prefix)
    pub = await Publisher(nc, prefix, role="control").start()
    try:
        await pub.publish(list(events))
    finally:
        await pub.close()


def halt_event(operator: str, note: str, scope: str = "all") -> CircuitBreakerTripped:
    now = time.time_ns()
    return CircuitBreakerTripped(
        event_id=new_event_id(now),
        ts_event=now,
        ts_init=now,
        source="cli",
        breaker="halt",
        scope=scope,
        reason=f"halted by {operator}" + (f": {note}" if note else ""),
        hard=True,
    )


async def tripped_now(nc: Client, prefix: str) -> dict[tuple[str, str], CircuitBreakerTripped]:
    """The breakers tripped now, by (breaker, scope), from the risk stream."""
    out: dict[tuple[str, str], CircuitBreakerTripped] = {}
    subject = CircuitBreakerTripped.subject_pattern(prefix)
    for _, ev in await read_stream(nc, RISK.stream(prefix), subject):
        if isinstance(ev, CircuitBreakerTripped):
            out[(ev.breaker, ev.scope)] = ev
        elif isinstance(ev, CircuitBreakerResumed):
            out.pop((ev.breaker, ev.scope), None)
    return out


def resume_events(
    tripped: dict[tuple[str, str], CircuitBreakerTripped],
    operator: str,
    note: str,
    *,
    breaker: str = "",
    scope: str = "",
    include_soft: bool = False,
) -> list[CircuitBreakerResumed]:
    now = time.time_ns()
    return [
        CircuitBreakerResumed(
            event_id=new_event_id(now),
            ts_event=now,
            ts_init=now,
            source="cli",
            causation_id=trip.event_id,
            breaker=b,
            scope=s,
            operator=operator,
            note=note,
        )
        for (b, s), trip in sorted(tripped.items())
        if (not breaker or b == breaker) and (not scope or s == scope) and (trip.hard or include_soft or breaker)
    ]


# ----------------------------------------------------------------------------- the commands' bodies


def _table(title: str, rows: Sequence[tuple[str, str, str]]) -> Table:
    t = Table(title=title)
    for c in ("breaker", "scope", "detail"):
        t.add_column(c)
    for row in rows:
        t.add_row(*row)
    return t


async def halt(s: Settings, operator: str, note: str, scope: str) -> None:
    """Publish the halt and return once it is stored."""
    ev = halt_event(operator, note, scope)
    async with nats_session(s.nats_url, s.data_path, name="tapeline-halt") as (nc, _):
        await publish_control(nc, s.prefix, [ev])
    Console().print(_table("Halted: new orders are rejected", [(ev.breaker, ev.scope, ev.reason)]))


async def resume(s: Settings, operator: str, note: str, breaker: str, scope: str, include_soft: bool) -> bool:
    """Resume the matching tripped breakers; False when none matched."""
    async with nats_session(s.nats_url, s.data_path, name="tapeline-resume") as (nc, _):
        await provision_system(nc, s.prefix)
        tripped = await tripped_now(nc, s.prefix)
        events = resume_events(tripped, operator, note, breaker=breaker, scope=scope, include_soft=include_soft)
        if events:
            await publish_control(nc, s.prefix, events)
    console = Console()
    if not events:
        shown = ", ".join(f"{b}[{sc}]{'' if t.hard else ' (soft)'}" for (b, sc), t in sorted(tripped.items()))
        console.print(f"nothing to resume: tripped now: {shown or 'none'}")
        return False
    console.print(_table(f"Resumed by {operator}", [(e.breaker, e.scope, e.note) for e in events]))
    return True
