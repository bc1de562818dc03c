"""The one way to publish: windowed core publishes with a reply inbox (DESIGN §6).

Each message carries ``Nats-Msg-Id`` = event id, so a retry or a re-run is de-duplicated by
JetStream. Up to ``window`` messages are in flight; acks arrive on one wildcard inbox and are
counted in a callback. ``publish`` returns only when every message is stored, so callers can
ack their inputs safely afterwards. Unacked messages are re-sent (same id) after a timeout.

Across a reconnect: acks of messages in flight when the connection dropped never come, so all of
them are re-sent (same ids, JetStream drops what it already stored) as soon as the connection is
back. While it is down, ``publish`` waits for it without spending its attempts (the client
reconnects forever; a closed connection fails at once with PublishError).

Failures say which events were not stored (``PublishError.unstored``), so a caller that waits and
retries re-sends only those: a retry after JetStream's duplicate window cannot store twice.
When JetStream's store is full, nats-server 2.15 answers each publish with ``{"error": {"code":
503, "err_code": 10023, "description": "insufficient resources"}}`` (10047 "insufficient storage
resources available" when a reservation is exceeded): that is :class:`StoreFull`. When the disk
under the store fills before JetStream's own limit (``max_file_store``, by default 75% of the free
disk when the server started), the server logs "no space left on device" and answers nothing:
:class:`PublishTimeout`; that stream then stores nothing until nats-server restarts.
 "No responders" (no stream for the
subject) is answered while a server stops or starts, too, so it is retried like a missing ack and
reported only when the attempts run out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from tapeline.bus.connection import TapelineClient
from tapeline.bus.consumer import status_code
from tapeline.bus.metrics import (
    EVENTS_DUPLICATE,
    EVENTS_PUBLISHED,
    PUBLISH_RETRIES,
    PUBLISH_TIMEOUTS,
    STORE_FULL,
    zero_publisher_counters,
)
from tapeline.bus.stall import Stalled
from tapeline.schemas.codec import encode, encode_event
from tapeline.schemas.events import Event


class PublishError(RuntimeError):
    """JetStream refused or never acknowledged some messages; ``unstored``: the events not stored."""

    def __init__(self, message: str, unstored: Sequence[Event] = ()) -> None:
        super().__init__(message)
        self.unstored = list(unstored)


class StoreFull(PublishError, Stalled):
    """JetStream's store is full: nothing more is stored until space is freed in it."""

    kind = "store_full"


class PublishTimeout(PublishError, Stalled):
    """No ack at all: the server is unreachable, or the disk under its store is full."""

    kind = "publish_timeout"


STORE_FULL_CODES = (10023, 10047)  # JSInsufficientResourcesErr, JSStorageResourcesExceededErr


# A big group goes to the socket in pieces of this many messages: nats-server stores the first while
# the publisher builds the next (bench_peers: 34-39k vs 31-33k published msg/s, one write per group).
WRITE_EVERY = 256


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class _Out(msgspec.Struct, gc=False):  # no cycle through it: untracked, like Delivery
    subject: str
    payload: bytes
    headers: str  # a complete NATS header block (``header_text``)
    group: _Group
    index: int  # which of the group's messages
    refused: bool = False  # JetStream answered "no responders" to the last send


class _Group:
    __slots__ = ("done", "duplicates", "errors", "full", "no_stream", "refused", "remaining", "seqs", "stored")

    def __init__(self, n: int) -> None:
        self.remaining = n
        self.done = asyncio.get_running_loop().create_future()
        self.errors: list[str] = []
        self.full: list[str] = []  # refusals for a full store
        self.refused: list[int] = []  # indexes of messages JetStream refused
        self.no_stream = ""  # the last "no responders" answer (no stream, or JetStream stopping/starting)
        self.stored = 0
        self.duplicates = 0
        self.seqs: list[int] = []
        if n == 0:
            self.done.set_result(None)


class PublishResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int
    seqs: list[int]


_TYPE_HEADERS: dict[type, str] = {}  # event class -> its content and type header lines


def headers_for(event: Event, count: int = 1, extra: dict[str, str] | None = None) -> bytes:
    """The NATS header block: dedup id, content type, event type, correlation and causation."""
    return header_text(event, count, extra).encode()


def header_text(event: Event, count: int = 1, extra: dict[str, str] | None = None) -> str:
    """:func:`headers_for` as a string (the publisher encodes it once with the rest of the frame's head)."""
    msg_id = event.event_id if count == 1 else f"{event.event_id}+{count}"
    typed = _TYPE_HEADERS.get(type(event))
    if typed is None:
        typed = _TYPE_HEADERS[type(event)] = f"\r\nContent-Type: application/json\r\nTapeline-Type: {event.tag}\r\n"
    h = f"NATS/1.0\r\nNats-Msg-Id: {msg_id}{typed}"
    if event.correlation_id:
        h += f"Correlation-Id: {event.correlation_id}\r\n"
    if event.causation_id:
        h += f"Causation-Id: {event.causation_id}\r\n"
    if count > 1:
        h += f"Tapeline-Count: {count}\r\n"
    if extra:
        for k, v in extra.items():
            h += f"{k}: {v}\r\n"
    return h + "\r\n"


def _frame(subject: str, reply: str, headers: str, payload: bytes) -> bytes:
    """One ``HPUB`` frame, its head encoded once (``Publisher.send`` inlines this)."""
    hl = len(headers) if headers.isascii() else len(headers.encode())
    return f"HPUB {subject} {reply} {hl} {hl + len(payload)}\r\n{headers}".encode() + payload + b"\r\n"


class Publisher:
    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        role: str = "tapeline",
        window: int = 4096,
        ack_timeout: float = 5.0,
        max_attempts: int = 5,
    ) -> None:
        if not isinstance(nc, TapelineClient):
            raise TypeError("Publisher needs a connection from bus.connection.connect()")
        self.nc = nc
        self.prefix = prefix
        self.role = role
        zero_publisher_counters(role)
        self.window = window
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self._free = window  # slots left in the window (a counter: no coroutine per message, as a Semaphore has)
        self._waiting: deque[asyncio.Future[None]] = deque()  # senders waiting for a slot
        self._inflight: dict[bytes, _Out] = {}  # reply subject -> the message it acknowledges
        self._next = 0
        self._inbox = ""
        self._sub: Subscription | None = None
        self._resending: set[asyncio.Task[None]] = set()

    async def start(self) -> Publisher:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe_raw(f"{self._inbox}.*", self._on_ack)
        self.nc.watch(self)
        return self

    async def close(self) -> None:
        self.nc.unwatch(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            await self.nc.unsubscribe_raw(sub)

    def connection_lost(self) -> None:
        pass  # the acks in flight are lost with it: re-sent when the connection is back

    def connection_restored(self) -> None:
        if self._inflight:
            task = asyncio.create_task(self._resend_all())
            self._resending.add(task)
            task.add_done_callback(self._resending.discard)

    async def _resend_all(self) -> None:
        groups = {id(out.group): out.group for out in self._inflight.values()}
        for g in groups.values():
            await self._resend(g, "reconnect")

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        out = self._inflight.get(subject)
        if out is None:
            return  # a late ack for a message we already re-sent and counted
        g = out.group
        if headers and status_code(headers) == "503":  # no stream, or JetStream stopping/starting with the server:
            g.no_stream = f"{out.subject}: no stream captures this subject (provision first), or JetStream is off"
            out.refused = True
            return  # still in flight: re-sent on reconnect or after ack_timeout, an error once attempts run out
        del self._inflight[subject]
        self._release()
        ack = _ack_decoder.decode(data)
        if ack.error:
            g.refused.append(out.index)
            code = ack.error.get("err_code")
            what = f"{ack.stream or out.subject}: {ack.error.get('description')} (err_code {code})"
            (g.full if code in STORE_FULL_CODES else g.errors).append(what)
        elif ack.duplicate:
            g.duplicates += 1
        else:
            g.stored += 1
        g.seqs.append(ack.seq)
        g.remaining -= 1
        if g.remaining == 0 and not g.done.done():
            g.done.set_result(None)

    def _release(self) -> None:
        self._free += 1
        while self._waiting:  # wake the first sender still waiting
            w = self._waiting.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def _slot(self) -> None:
        """Wait until the window has a free slot (a free slot never calls this)."""
        while self._free <= 0:
            w = asyncio.get_running_loop().create_future()
            self._waiting.append(w)
            try:
                await w
            except asyncio.CancelledError:
                if w.done() and not w.cancelled() and self._free > 0:  # woken, then cancelled: pass it on
                    self._free -= 1
                    self._release()
                raise

    async def _send(self, out: _Out) -> None:
        if self._free <= 0:
            await self._slot()
        self._free -= 1
        self._next += 1
        reply = f"{self._inbox}.{self._next}"
        self._inflight[reply.encode()] = out
        if self.nc.queue_frames([_frame(out.subject, reply, out.headers, out.payload)], len(out.payload)):
            await self.nc.flush_queued()

    async def publish(self, events: Sequence[Event], *, extra_headers: dict[str, str] | None = None) -> PublishResult:
        """Publish each event as its own message; wait until JetStream has stored all of them."""
        group = await self.send(events, extra_headers=extra_headers)
        return await self._wait(group, events)

    async def send(self, events: Sequence[Event], *, extra_headers: dict[str, str] | None = None) -> _Group:
        """Send each event as its own message and return without waiting for the acks (:meth:`publish`
        waits). Groups sent one after another go to the socket in that order."""
        group = _Group(len(events))
        prefix, inflight, inbox, nc = self.prefix, self._inflight, self._inbox, self.nc
        typed_of, enc, out = _TYPE_HEADERS, encode_event, _Out
        i, n = 0, len(events)
        while i < n:  # as many as the window has room for, queued at once: no coroutine per message
            if self._free <= 0:
                await self._slot()
            k = min(n, i + self._free, i + WRITE_EVERY)
            nxt = self._next
            frames: list[bytes] = []
            size = 0
            for j in range(i, k):  # _frame and, without extra headers, header_text: inlined
                ev = events[j]
                subject, payload = ev._subject.render(ev, prefix), enc(ev)
                if extra_headers is None and (typed := typed_of.get(ev.__class__)) is not None:
                    h = f"NATS/1.0\r\nNats-Msg-Id: {ev.event_id}{typed}"
                    if ev.correlation_id:
                        h += f"Correlation-Id: {ev.correlation_id}\r\n"
                    if ev.causation_id:
                        h += f"Causation-Id: {ev.causation_id}\r\n"
                    h += "\r\n"
                else:
                    h = header_text(ev, 1, extra_headers)
                nxt += 1
                reply = f"{inbox}.{nxt}"
                inflight[reply.encode()] = out(subject, payload, h, group, j)
                hl = len(h) if h.isascii() else len(h.encode())
                frames.append(f"HPUB {subject} {reply} {hl} {hl + len(payload)}\r\n{h}".encode() + payload + b"\r\n")
                size += len(payload)
            self._free -= k - i
            self._next = nxt
            i = k
            if nc.queue_frames(frames, size):
                await nc.flush_queued()
            if i < n:  # the server stores these while we build the rest
                nc.write_pending()
        self.nc.write_pending()
        return group

    async def _send_batch(self, events: Sequence[Event]) -> _Group:
        """Send many events of one subject as one message (a JSON array; ids kept per event)."""
        group = _Group(1)
        first = events[0]
        await self._send(_Out(first.subject(self.prefix), encode(events), header_text(first, len(events)), group, 0))
        return group

    async def publish_units(self, units: Sequence[tuple[bool, Sequence[Event]]]) -> None:
        """Publish units in order, each a batch message (True) or its events one per message (False), and wait
        until all are stored: all go to the socket first, then their acks are awaited together, so n units cost
        one round trip, not n (a feed's burst over several symbols is one batch message per symbol).

        On a failure the first error is raised, its ``unstored`` listing every event of every unit not stored.
        """
        sent: list[tuple[_Group, Sequence[Event], bool]] = []
        for batch, events in units:
            if events:
                sent.append((await (self._send_batch(events) if batch else self.send(events)), events, batch))
        if not sent:
            return
        self.nc.write_pending()
        if len(sent) == 1:
            group, events, batch = sent[0]
            await self._wait(group, events, batch=batch)
            return
        # The common case costs no task: wait for the last ack (they come in order), then collect each group
        # at once. A group still open after that is waited out with the rest concurrently, so a server that
        # answers nothing costs the attempts of one group, not of each in turn.
        await asyncio.wait([sent[-1][0].done], timeout=self.ack_timeout)
        if all(g.done.done() for g, _, _ in sent):
            outcomes: list[PublishResult | BaseException] = []
            for g, events, batch in sent:
                try:
                    outcomes.append(await self._wait(g, events, batch=batch))
                except PublishError as e:
                    outcomes.append(e)
        else:
            outcomes = await asyncio.gather(*(self._wait(g, ev, batch=b) for g, ev, b in sent), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            first = next((e for e in errors if not isinstance(e, PublishError)), errors[0])
            if isinstance(first, PublishError):
                first.unstored = [ev for e in errors if isinstance(e, PublishError) for ev in e.unstored]
            raise first

    async def _wait(self, group: _Group, events: Sequence[Event], *, batch: bool = False) -> PublishResult:
        attempts = 0
        while not group.done.done():
            await asyncio.wait([group.done], timeout=self.ack_timeout)
            if group.done.done():
                break
            if self.nc.is_closed:
                raise PublishError(
                    f"{group.remaining} message(s) not acknowledged: the NATS connection is closed",
                    events if batch else [events[o.index] for o in self._take(group)],
                )
            if not self.nc.is_connected:
                continue  # re-sent by connection_restored when it is back
            attempts += 1
            if attempts >= self.max_attempts:
                taken = self._take(group)
                unacked = [out.index for out in taken]
                self._count(group)
                unstored = events if batch else [events[i] for i in sorted(unacked + group.refused)]
                if group.no_stream and all(out.refused for out in taken):
                    raise PublishError(
                        f"{len(unacked)} message(s) not acknowledged after {attempts} attempts: {group.no_stream}",
                        unstored,
                    )
                PUBLISH_TIMEOUTS.labels(self.role).inc()
                raise PublishTimeout(
                    f"{len(unacked)} message(s) not acknowledged after {self.max_attempts} attempts of "
                    f"{self.ack_timeout:g}s: the server is unreachable, or the disk under its store is full "
                    "(nats-server then logs 'no space left on device' and needs a restart once space is freed)",
                    unstored,
                )
            await self._resend(group, "timeout")
        self._count(group)
        unstored = events if batch else [events[i] for i in sorted(group.refused)]
        if group.errors:
            raise PublishError("; ".join((group.errors + group.full)[:5]), unstored)
        if group.full:
            STORE_FULL.labels(self.role).inc()
            raise StoreFull(
                f"JetStream store full: {len(group.full)} message(s) refused, e.g. {group.full[0]}; "
                "free space in JetStream (delete what-if namespaces, shorten market-data retention) or raise "
                "the server's max_file_store (a config reload applies it), and publishing resumes",
                unstored,
            )
        return PublishResult(group.stored, group.duplicates, group.seqs)

    def _count(self, group: _Group) -> None:
        EVENTS_PUBLISHED.labels(self.role).inc(group.stored)
        if group.duplicates:
            EVENTS_DUPLICATE.labels(self.role).inc(group.duplicates)

    def _take(self, group: _Group) -> list[_Out]:
        """Take a group's unacked messages out of the window (a late ack for one is then ignored)."""
        stale = [(reply, out) for reply, out in self._inflight.items() if out.group is group]
        taken: list[_Out] = []
        for reply, out in stale:
            if self._inflight.pop(reply, None) is None:
                continue  # acknowledged, or re-sent by someone else, meanwhile
            self._release()
            taken.append(out)
        return taken

    async def _resend(self, group: _Group, reason: str) -> None:
        for out in self._take(group):
            PUBLISH_RETRIES.labels(self.role, "no_responders" if out.refused else reason).inc()
            out.refused = False
            await self._send(out)
