"""Feeds that replay identically batch bursts of ticks by default (DESIGN §6); live venue feeds, a lone tick
and a configured switch go one tick per message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client

from tapeline.adapters.alerts import make_alert
from tapeline.adapters.runner import publish_events, run_feed
from tapeline.adapters.sim import SimFeed
from tapeline.bus.jetstream import JetStreamApi
from tapeline.bus.publisher import Publisher, PublishError
from tapeline.config import Settings
from tapeline.schemas.events import Event, Tick
from tapeline.schemas.subjects import MD, OPS
from tests.helpers import stored, stream_last_seq


class ListFeed:
    """Yields the given lists as they are: one list is one burst, the same each time it runs."""

    name = "list"
    batch_safe = True

    def __init__(self, bursts: Sequence[Sequence[Event]]) -> None:
        self.bursts = bursts

    async def stream(self) -> AsyncIterator[Sequence[Event]]:
        for burst in self.bursts:
            yield burst


async def test_bursts_go_as_batch_messages_by_default(nc: Client, publisher: Publisher, provisioned: str) -> None:
    assert Settings().batch_ticks is None  # the default every feed command uses: the feed decides
    ticks = list(SimFeed(["A", "BRK.B"], ticks=1000, seed=4, venue="burst").generate())
    stats = await run_feed(ListFeed([ticks[:500], ticks[500:]]), publisher)
    stream = MD.stream(provisioned)
    assert stats.events == 1000 and stats.messages == 4  # two bursts, two subjects each
    assert await stream_last_seq(nc, stream) == 4
    got = await stored(nc, stream)
    assert sorted(e.event_id for e in got) == sorted(t.event_id for t in ticks)
    for sym in ("A", "BRK.B"):  # each subject's ticks in their order
        assert [e.event_id for e in got if isinstance(e, Tick) and e.symbol == sym] == [
            t.event_id for t in ticks if t.symbol == sym
        ]
    await run_feed(ListFeed([ticks[:500], ticks[500:]]), publisher)  # the same bursts again: deduplicated
    assert await stream_last_seq(nc, stream) == 4


async def test_switch_off_and_lone_ticks_go_one_per_message(nc: Client, publisher: Publisher, provisioned: str) -> None:
    stream = MD.stream(provisioned)
    ticks = list(SimFeed(["A", "B"], ticks=300, seed=5, venue="single").generate())
    stats = await run_feed(ListFeed([ticks[:200]]), publisher, batch_ticks=False)
    assert stats.messages == 200 and await stream_last_seq(nc, stream) == 200
    # Lone ticks (a venue that delivers one at a time) and other events stay one per message.
    alert = make_alert("list", "test", "between ticks")
    lone = [[t] for t in ticks[200:250]] + [[ticks[250], alert, ticks[251]]]
    stats = await run_feed(ListFeed(lone), publisher)
    assert stats.messages == 53 and await stream_last_seq(nc, stream) == 252
    assert [e.event_id for e in await stored(nc, OPS.stream(provisioned))] == [alert.event_id]
    assert len(await stored(nc, stream)) == 252


class LiveFeed(ListFeed):
    """A live venue: after a restart its polls group ticks differently, so it must not batch by default."""

    batch_safe = False


async def test_a_live_feed_goes_one_tick_per_message_unless_forced(
    nc: Client, publisher: Publisher, provisioned: str
) -> None:
    stream = MD.stream(provisioned)
    ticks = list(SimFeed(["A"], ticks=300, seed=6, venue="live").generate())
    stats = await run_feed(LiveFeed([ticks[:100]]), publisher)
    assert stats.messages == 100 and await stream_last_seq(nc, stream) == 100
    # restarted without its cursor, it re-sends from the start in one bigger burst: every tick is dropped
    await run_feed(LiveFeed([ticks[:150]]), publisher)
    assert await stream_last_seq(nc, stream) == 150 and len(await stored(nc, stream)) == 150
    stats = await run_feed(LiveFeed([ticks[150:]]), publisher, batch_ticks=True)  # forced: batches
    assert stats.messages == 1 and len(await stored(nc, stream)) == 300


async def test_a_burst_goes_to_the_socket_whole_and_a_refused_message_keeps_only_itself_unstored(
    nc: Client, provisioned: str
) -> None:
    """A burst's units (one batch message per symbol, other events one per message) are all sent before any ack
    is awaited, one round trip for the burst: so a unit JetStream refuses does not hold back the units after it,
    and the error lists exactly what is not stored."""
    await JetStreamApi(nc).call(f"STREAM.DELETE.{OPS.stream(provisioned)}")  # alerts now have no stream
    pub = await Publisher(nc, provisioned, role="test", ack_timeout=0.3, max_attempts=2).start()
    ticks = list(SimFeed(["A", "B"], ticks=200, seed=7, venue="units").generate())
    alert = make_alert("units", "test", "between bursts")
    with pytest.raises(PublishError, match="no stream captures this subject") as refused:
        await publish_events(pub, [*ticks[:100], alert, *ticks[100:]], batch_ticks=True)
    assert refused.value.unstored == [alert]
    got = await stored(nc, MD.stream(provisioned))
    assert sorted(e.event_id for e in got) == sorted(t.event_id for t in ticks)  # both bursts, after the refusal
    await pub.close()
