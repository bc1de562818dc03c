"""Read a stream back: every (sequence, event) on a subject, through an ephemeral consumer.

For tools that need recorded history in order (what-if replay, tests, feed resume): no acks,
nothing left behind on the server.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus.consumer import PullLoop
from bus.jetstream import JetStreamApi
from schemas.codec import MalformedEvent, decode
from schemas.events import AnyEvent


async def read_stream(
    nc: Client, stream: str, subject: str = "", *, until_ns: int | None = None, since: str | None = None
) -> list[tuple[int, AnyEvent]]:
    """Events stored in ``stream`` (under ``subject`` if given, stream time <= ``until_ns`` if given,
    stored at or after ``since`` (RFC 3339) if given).

    Undecodable messages are left out: they were dead-lettered when first consumed.
    """
    api = JetStreamApi(nc)
    info = await api.stream_info(stream)
    if not info or not info["state"]["messages"]:
        return []
    last = int(info["state"]["last_seq"])
    config: dict[str, object] = {
        "deliver_policy": "all",
        "ack_policy": "none",
        "mem_storage": True,
        "inactive_threshold": 30_000_000_000,
    }
    if subject:
        config["filter_subjects"] = [subject]
    if since:
        config |= {"deliver_policy": "by_start_time", "opt_start_time": since}
    name = await api.create_ordered_consumer(stream, config)
    loop = PullLoop(nc, stream, name, batch=5000, idle_s=0.5)
    await loop.start()
    out: list[tuple[int, AnyEvent]] = []
    try:
        while True:
            batch = await loop.next_batch()
            for d in batch:
                if until_ns is None or d.ts_ns <= until_ns:
                    try:
                        out.extend((d.stream_seq, e) for e in decode(d.data).events)
                    except MalformedEvent:
                        continue
            if not batch or batch[-1].stream_seq >= last or batch[-1].pending == 0:
                break
    finally:
        await loop.stop()
        await api.delete_consumer(stream, name)
    return out
