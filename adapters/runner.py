"""Runs a feed into the bus: the one way an adapter's events reach JetStream.

A feed is anything with ``name`` and ``stream()``, an async iterator of event lists. Ticks can be
published one event per message or grouped per subject into batch messages (DESIGN §6).
If the feed raises, an alert event says so before the error propagates. If JetStream cannot store
(its store is full, or it answers nothing), the feed keeps the events it holds, waits with backoff
and retries only what was not stored, alerting once (``bus.stall``): it never dies of a full store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import structlog

from tapeline.adapters.alerts import make_alert
from tapeline.bus.publisher import Publisher, PublishError, PublishTimeout, StoreFull
from tapeline.bus.stall import Stall
from tapeline.schemas.events import Event, Tick

log = structlog.get_logger("tapeline.feed")


class Feed(Protocol):
    @property
    def name(self) -> str: ...
    def stream(self) -> AsyncIterator[Sequence[Event]]: ...


class FeedStats:
    def __init__(self) -> None:
        self.events = 0
        self.messages = 0


async def publish_events(publisher: Publisher, events: Sequence[Event], *, batch_ticks: bool) -> int:
    """Publish; with ``batch_ticks`` ticks of one subject share a message. Returns messages sent.

    On a failure, the error's ``unstored`` lists every event not stored, later groups included.
    """
    if not batch_ticks:
        await publisher.publish(events)
        return len(events)
    groups: dict[str, list[Event]] = defaultdict(list)
    others: list[Event] = []
    for ev in events:
        if isinstance(ev, Tick):
            groups[ev.subject(publisher.prefix)].append(ev)
        else:
            others.append(ev)
    units = list(groups.values())
    for i, group in enumerate(units):
        try:
            await publisher.publish_batch(group)
        except PublishError as e:
            e.unstored += [ev for later in units[i + 1 :] for ev in later] + others
            raise
    if others:
        await publisher.publish(others)
    return len(groups) + len(others)


async def publish_stored(publisher: Publisher, events: Sequence[Event], stall: Stall, *, batch_ticks: bool) -> int:
    """Publish until every event is stored, waiting out a full store; returns messages sent."""
    pending = list(events)
    sent = 0
    while pending:
        try:
            sent += await publish_events(publisher, pending, batch_ticks=batch_ticks)
            pending = []
        except (StoreFull, PublishTimeout) as e:
            pending = e.unstored
            await stall.wait(e)
    await stall.resolved()
    return sent


async def run_feed(
    feed: Feed, publisher: Publisher, *, batch_ticks: bool = False, stats: FeedStats | None = None
) -> FeedStats:
    stats = stats or FeedStats()
    stall = Stall(feed.name, publisher)
    try:
        async for events in feed.stream():
            if events:
                stats.messages += await publish_stored(publisher, events, stall, batch_ticks=batch_ticks)
                stats.events += len(events)
    except Exception as exc:
        log.error("feed failed", feed=feed.name, error=repr(exc))
        await publisher.publish(
            [make_alert(feed.name, "feed_failed", f"{type(exc).__name__}: {exc}", severity="critical")]
        )
        raise
    return stats
