"""Runs a feed into the bus: the one way an adapter's events reach JetStream.

A feed is anything with ``name`` and ``stream()``, an async iterator of event lists. By default a
feed that is :func:`batch_safe` (simulator, files, Polygon files, the history store, MT5 resumed from
the stream) sends the ticks that arrive together for one subject — a burst — as one batch message
(DESIGN §6); a tick alone in its list, and every other event, goes one per message. IBKR's ticks go
one per message by default. The ``batch_ticks`` setting forces either.
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
from tapeline.bus.publisher import Publisher, PublishTimeout, StoreFull
from tapeline.bus.stall import Stall
from tapeline.schemas.events import Event, Tick

log = structlog.get_logger("tapeline.feed")


class Feed(Protocol):
    @property
    def name(self) -> str: ...
    def stream(self) -> AsyncIterator[Sequence[Event]]: ...


def batch_safe(feed: Feed) -> bool:
    """Whether the feed's bursts may go as batch messages by default (its ``batch_safe`` attribute).

    A batch message's dedup id names its first tick and its size, so JetStream drops a re-send after
    a restart only if it is grouped the same way. Safe is a feed that never sends a stored tick again
    in another grouping: one that replays identically (a simulator with its seed, a file, a stored
    history: the same start yields the same lists), one that resumes after the last tick stored on
    each subject (MT5 started with :func:`adapters.mt5.resume_cursors`), or one without ticks (polled
    bars). IBKR's stream is live: a re-subscription may repeat a tick in another burst, so its ticks
    go one per message, where the tick's own id deduplicates it."""
    return bool(getattr(feed, "batch_safe", False))


class FeedStats:
    def __init__(self) -> None:
        self.events = 0
        self.messages = 0


async def publish_events(publisher: Publisher, events: Sequence[Event], *, batch_ticks: bool) -> int:
    """Publish in order; with ``batch_ticks`` a subject's ticks in a run of ticks share a message.

    Returns messages sent. All go to the socket before their acks are awaited (one round trip for a
    burst over many symbols). On a failure, the error's ``unstored`` lists every event not stored.
    """
    if not batch_ticks:
        await publisher.publish(events)
        return len(events)
    units = _units(events, publisher.prefix)
    await publisher.publish_units(units)
    return sum(1 if batch else len(group) for batch, group in units)


def _units(events: Sequence[Event], prefix: str) -> list[tuple[bool, list[Event]]]:
    """(is a batch message, events) in publishing order: each run of ticks grouped by subject, a
    group of two or more as one batch message; single ticks and other events one per message."""
    units: list[tuple[bool, list[Event]]] = []
    singles: list[Event] = []
    run: dict[str, list[Event]] = defaultdict(list)

    def end_run() -> None:
        for group in run.values():
            if len(group) == 1:
                singles.append(group[0])
            else:
                if singles:
                    units.append((False, singles.copy()))
                    singles.clear()
                units.append((True, group))
        run.clear()

    for ev in events:
        if isinstance(ev, Tick):
            run[ev.subject(prefix)].append(ev)
        else:
            end_run()
            singles.append(ev)
    end_run()
    if singles:
        units.append((False, singles))
    return units


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
    feed: Feed, publisher: Publisher, *, batch_ticks: bool | None = None, stats: FeedStats | None = None
) -> FeedStats:
    """Publish everything the feed yields. ``batch_ticks`` None: batches if it is :func:`batch_safe`."""
    if batch_ticks is None:
        batch_ticks = batch_safe(feed)
    stats = stats or FeedStats()
    stall = Stall(feed.name, publisher)
    recall = getattr(feed, "recall", None)  # a feed that resumes from what is already stored (news polls)
    if recall is not None:
        await recall(publisher.nc, publisher.prefix)
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
