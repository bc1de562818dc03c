"""The publish path's shortcuts (issue 14, session 7) put the same bytes on the wire as the long way:
``HPUB`` frames queued a group at a time, acks queued a batch at a time."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client

from tapeline.bus.connection import TapelineClient
from tapeline.bus.consumer import PullLoop, parse_delivery
from tapeline.bus.publisher import Publisher, _Group, _Out, header_text, headers_for
from tapeline.schemas.codec import encode
from tapeline.schemas.components import draft
from tapeline.schemas.events import Alert, Event, Tick
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import OPS


def _events() -> list[Event]:
    tick = Tick(event_id=new_event_id(), ts_event=1, ts_init=2, source="s", venue="sim", symbol="BRK.B", last=1.5)
    odd = Tick(event_id=new_event_id(), ts_event=3, ts_init=4, source="s", venue="sim", symbol="Ünï €", last=2.0)
    alert = draft(Alert, ts_event=5, severity="warning", kind="k", key="é", message="naïve ✓")
    caused = Alert(
        event_id=new_event_id(), ts_event=6, ts_init=7, source="x", correlation_id="C1", causation_id="C2",
        severity="info", kind="k", key="k", message="m",
    )  # fmt: skip
    return [tick, odd, alert, caused]


def _long_way(ev: Event, prefix: str, reply: str, extra: dict[str, str] | None = None, count: int = 1) -> bytes:
    """The frame as ``publish_prebuilt`` built it before this pass."""
    hdr = headers_for(ev, count, extra)
    body = encode(ev) if count == 1 else encode([ev] * count)
    head = b"HPUB %s %s %d %d\r\n" % (ev.subject(prefix).encode(), reply.encode(), len(hdr), len(hdr) + len(body))
    return head + hdr + body + b"\r\n"


def _queued(nc: TapelineClient) -> list[bytes]:
    out, nc._pending, nc._pending_data_size = list(nc._pending), [], 0
    return out


async def test_send_queues_the_frames_the_long_way_gives_in_order_within_the_window() -> None:
    nc = TapelineClient()  # not connected: frames stay queued for us to read
    pub = Publisher(nc, "tape", role="test", window=3)
    pub._inbox = "_INBOX.t"
    events = _events()
    for extra in (None, {"X-Ünï": "välue", "X-B": "2"}):
        pub._inflight.clear()
        pub._free, pub._next = 3, 0
        sent = asyncio.ensure_future(pub.send(events, extra_headers=extra))
        await asyncio.sleep(0)  # three fit in the window; the fourth waits for a slot
        assert not sent.done() and len(pub._inflight) == 3
        pub._on_ack(b"_INBOX.t.1", b"", b'{"stream":"TAPE_MD","seq":7}', None)
        await sent
        frames = _queued(nc)
        assert frames == [_long_way(ev, "tape", f"_INBOX.t.{i}", extra) for i, ev in enumerate(events, 1)]
        assert sorted(pub._inflight) == [b"_INBOX.t.2", b"_INBOX.t.3", b"_INBOX.t.4"]
        assert pub._free == 0
    assert nc.stats["out_msgs"] == 8


async def test_a_resent_or_batched_message_has_the_long_way_frame() -> None:
    nc = TapelineClient()
    pub = Publisher(nc, "tape", role="test")
    pub._inbox = "_INBOX.t"
    ev = _events()[2]
    await pub._send(_Out(ev.subject("tape"), encode([ev] * 3), header_text(ev, 3), _Group(1), 0))
    assert _queued(nc) == [_long_way(ev, "tape", "_INBOX.t.1", count=3)]


async def test_ack_all_queues_what_ack_does() -> None:
    nc = TapelineClient()
    loop = PullLoop(nc, "TAPE_MD", "d")
    replies = [b"$JS.ACK.TAPE_MD.d.1.%d.%d.1763850000000000000.0" % (i, i) for i in range(1, 6)]
    deliveries = [parse_delivery(b"tape.md.tick.sim.X", r, b"{}", None) for r in replies]
    for d in deliveries:
        await loop.ack(d)
    one_by_one = _queued(nc)
    await loop.ack_all(deliveries)
    assert _queued(nc) == one_by_one == [b"PUB %s 4\r\n+ACK\r\n" % r for r in replies]
    await loop.ack_all([])
    assert _queued(nc) == []


async def test_real_acks_complete_their_groups_stored_or_duplicate(nc: Client, provisioned: str) -> None:
    """nats-server's answers on the publisher's inbox (reply subjects kept as bytes) give each group's result."""
    pub = await Publisher(nc, provisioned, role="test").start()
    try:
        drafts = [draft(Alert, ts_event=i, severity="info", kind="k", key=str(i), message="m") for i in range(5)]
        events = [msgspec.structs.replace(ev, event_id=new_event_id()) for ev in drafts]
        result = await pub.publish(events)
        repeat = await pub.publish(events)
    finally:
        await pub.close()
    info = await nc.jetstream().stream_info(OPS.stream(provisioned))
    assert (result.stored, result.duplicates) == (5, 0) and (repeat.stored, repeat.duplicates) == (0, 5)
    assert sorted(result.seqs) == list(range(info.state.last_seq - 4, info.state.last_seq + 1))
    assert sorted(repeat.seqs) == sorted(result.seqs)
