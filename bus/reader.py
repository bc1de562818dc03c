"""The one stream reader: stored events between two positions, in stream order, in bounded batches.

An ephemeral consumer (no acks, memory-backed, removed when done or idle) pulled batch by batch,
so memory stays bounded whatever the stream's size. Rebuilds, state warm-up, what-if, restart
de-duplication and tests all read history through :func:`read`. It ends at ``stop_seq``, or at the
last message matching the filter when the read began (the server's ``pending`` count says so), so
a stream that keeps growing does not keep a reader going. Undecodable messages are skipped (and
counted): the live consumer dead-lettered them when it first met them.

A reader may hand some bodies over undecoded (``raw``: a cheap check on the bytes, e.g. "a tick
batch"): a sink that makes those rows without Python objects (``projections.native``) decodes only what
it cannot take itself, with the same rules (a malformed one skipped).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple

from nats.aio.client import Client

from tapeline.bus.consumer import Delivery, PullLoop
from tapeline.bus.jetstream import JetStreamApi
from tapeline.schemas.codec import MalformedEvent, decode
from tapeline.schemas.events import AnyEvent


class Received(NamedTuple):
    delivery: Delivery
    events: Sequence[AnyEvent]
    raw: bool = False  # not decoded (``events`` is empty): the reader's ``raw`` check took it


new_received = tuple.__new__
"""``new_received(Received, (delivery, events, raw))`` builds a :class:`Received` without the NamedTuple's
generated ``__new__`` (a Python call: ~6% of a one-event-per-message rebuild)."""


class ReadStalled(RuntimeError):
    """The server stopped delivering before the end of the range."""


async def read(
    nc: Client,
    stream: str,
    subjects: Sequence[str] = (),
    *,
    start_seq: int | None = None,
    start_time: str | None = None,
    stop_seq: int | None = None,
    until_ns: int | None = None,
    batch: int = 5000,
    max_bytes: int = 16 * 1024 * 1024,
    stall_s: float = 60.0,
    raw: Callable[[bytes], bool] | None = None,
) -> AsyncIterator[list[Received]]:
    """Yield batches of decoded messages of ``stream`` (optionally only ``subjects``).

    Starts at ``start_seq`` or ``start_time`` (RFC 3339, stored time) or the beginning; stops after
    ``stop_seq``, at the first message stored after ``until_ns`` (stream time), or at the end.
    Bodies for which ``raw`` is true are yielded undecoded (``Received.raw``).
    """
    api = JetStreamApi(nc)
    info = await api.stream_info(stream)
    if not info or not info["state"]["messages"]:
        return
    last = int(info["state"]["last_seq"])
    end = min(last, stop_seq) if stop_seq is not None else last
    if start_seq is not None and start_seq > end:
        return
    config: dict[str, object] = {"ack_policy": "none", "mem_storage": True, "inactive_threshold": 30_000_000_000}
    if subjects:
        config["filter_subjects"] = list(subjects)
    if start_seq is not None:
        config |= {"deliver_policy": "by_start_sequence", "opt_start_seq": max(1, start_seq)}
    elif start_time is not None:
        config |= {"deliver_policy": "by_start_time", "opt_start_time": start_time}
    else:
        config["deliver_policy"] = "all"
    name = await api.create_ordered_consumer(stream, config)
    loop = PullLoop(nc, stream, name, batch=batch, idle_s=0.5, max_bytes=max_bytes)
    await loop.start()
    progress = time.monotonic()
    received = 0  # messages received: the consumer's delivered count once nothing is still on its way
    try:
        while True:
            got = await loop.next_batch()
            if not got:
                state = await api.consumer_info(stream, name)
                if state is None:
                    raise ReadStalled(f"{stream}: the reader's consumer vanished (server restart?)")
                delivered = int((state.get("delivered") or {}).get("consumer_seq", 0))
                if int(state.get("num_pending", 0)) == 0 and delivered <= received:
                    return  # nothing (more) matches the filter, and nothing is still on its way to us
                if time.monotonic() - progress > stall_s:
                    raise ReadStalled(f"{stream}: no message for {stall_s:.0f}s with {state['num_pending']} pending")
                continue
            progress = time.monotonic()
            received += len(got)
            out: list[Received] = []
            done = False
            for d in got:
                if d.stream_seq > end or (until_ns is not None and d.ts_ns > until_ns):
                    done = True
                    break
                if raw is not None and raw(d.data):
                    out.append(new_received(Received, (d, (), True)))  # (): no list per message for the collector
                    continue
                try:
                    out.append(new_received(Received, (d, decode(d.data).events, False)))
                except MalformedEvent:
                    continue
            if out:
                yield out
            if done or got[-1].stream_seq >= end or got[-1].pending == 0:
                return
    finally:
        await loop.stop()
        await api.delete_consumer(stream, name)


async def read_events(
    nc: Client, stream: str, subjects: Sequence[str] = (), **kwargs: object
) -> list[tuple[int, AnyEvent]]:
    """Everything :func:`read` yields, as (sequence, event) pairs: for tests and small ranges."""
    out: list[tuple[int, AnyEvent]] = []
    async for batch in read(nc, stream, subjects, **kwargs):  # type: ignore[arg-type]
        out.extend((r.delivery.stream_seq, e) for r in batch for e in r.events)
    return out


async def read_stream(
    nc: Client, stream: str, subject: str = "", *, until_ns: int | None = None, since: str | None = None
) -> list[tuple[int, AnyEvent]]:
    """:func:`read_events` with the argument shape older callers use (one subject, ``since`` time)."""
    return await read_events(nc, stream, [subject] if subject else [], until_ns=until_ns, start_time=since)
