"""Connecting to NATS: embedded by default, or an external server by URL with auth and TLS.

Secrets (password, token) come only from the environment, never from files we write or logs;
every URL we show goes through ``redact_url``.

Start-up and later outages are handled differently on purpose. ``connect`` makes a bounded number
of attempts under our control (one-shot commands: one; ``up`` and feeds: retried for a while), each
failure reported as one line without a traceback, and a refused password is never retried. Once
connected, the client reconnects forever, and tells the loops that care (``ConnectionWatcher``)
when the connection drops and comes back: a restarted server has forgotten their pull requests and
the acks they were waiting for.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoServersError, StaleConnectionError, UnexpectedEOF
from nats.errors import Error as NatsError

from tapeline.bus.protocol import LeanParser

_HEADER_NAME = re.compile(rb"[!-9;-~]+")  # visible ASCII but ':'; what the original accepts, found in C


log = structlog.get_logger("tapeline.bus")

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]  # (subject, reply, data, raw header block)


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) with credentials hidden, for anything we print or log.

    ``nats://alice:secret@h:4222`` -> ``nats://alice:***@h:4222``; a lone user-info is a token:
    ``nats://s3cr3t@h`` -> ``nats://***@h``.
    """
    return ",".join(_redact_one(u) for u in url.split(","))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    info, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = info.partition(":")
    shown = f"{user}:***" if colon and user else "***"
    return f"{scheme}{sep}{shown}@{host}{slash}{path}"


class NatsConnectError(RuntimeError):
    """No connection: one line naming the server (credentials redacted), the cause and what to check."""


class ConnectionWatcher(Protocol):
    """Told when the connection drops and when it is back (called from the client's reconnect task: no waiting)."""

    def connection_lost(self) -> None: ...
    def connection_restored(self) -> None: ...


class TapelineClient(Client):
    """nats-py's client (pinned to 2.16.0) with two fast paths for the message hot path, and watchers
    (``watch``) told when the connection drops and comes back.

    * ``subscribe_raw``: messages of our own inboxes (pull-loop deliveries, publish acks) go
      straight from the protocol parser to a synchronous handler as bytes, skipping header
      parsing, ``Msg`` objects, a queue and a task switch per message: about half of what a
      consumer spends per message with the stock path.
    * a header parser using a compiled regex instead of a per-character generator (same results).
    * ``LeanParser`` (bus/protocol.py) reads the protocol: runs of messages without a regex or a
      coroutine per message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}
        self._watchers: list[ConnectionWatcher] = []
        self.shown_url = ""  # the server, credentials redacted: for log lines
        self._lost_at = 0.0
        self._closing: asyncio.Task[None] | None = None
        self._ps = LeanParser(self)

    def watch(self, watcher: ConnectionWatcher) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: ConnectionWatcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    async def _on_disconnected(self) -> None:
        if self._lost_at == 0.0 and not self.is_closed:
            self._lost_at = time.monotonic()
            log.warning("NATS connection lost; reconnecting", server=self.shown_url)
        for w in list(self._watchers):
            w.connection_lost()

    async def _on_reconnected(self) -> None:
        down = time.monotonic() - self._lost_at if self._lost_at else 0.0
        self._lost_at = 0.0
        log.warning("NATS connection restored", server=self.shown_url, down_s=round(down, 2))
        for w in list(self._watchers):
            w.connection_restored()

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's default prints a traceback per failed reconnect attempt; one line (or none) is enough.

        Refused credentials on a reconnect end the connection: retrying them would go on forever.
        """
        cause = describe_error(exc)
        if (self.is_reconnecting or self.is_connecting) and cause.startswith("authorization"):
            log.error("NATS refused our credentials on reconnect; closing the connection", server=self.shown_url)
            self._closing = asyncio.create_task(self.close())
            return
        if self.is_reconnecting or self.is_connecting or isinstance(exc, UnexpectedEOF | StaleConnectionError):
            log.debug("NATS connection attempt failed", server=self.shown_url, error=cause)
        else:
            log.warning("NATS error", server=self.shown_url, error=cause)

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """Subscribe with a handler called synchronously, in the reader, for each message."""
        sub = await self.subscribe(subject)
        self._raw_handlers[sub._id] = handler
        return sub

    async def unsubscribe_raw(self, sub: Subscription) -> None:
        self._raw_handlers.pop(sub._id, None)
        if not self.is_closed:
            await sub.unsubscribe()

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.deliver_raw(handler, subject, reply, data, headers)

    def deliver_raw(
        self, handler: RawHandler, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """One message to a ``subscribe_raw`` handler, in the reader."""
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception:  # a handler bug must not stop the connection's reader
            self.raw_handler_failed(subject)

    def raw_handler_failed(self, subject: bytes) -> None:
        """Log a raw handler's exception (called from its ``except`` block: the traceback is logged)."""
        log.exception("raw message handler failed", subject=subject.decode(errors="replace"))

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            key = name.strip()
            if _HEADER_NAME.fullmatch(key):
                out[key.decode("ascii")] = value.strip().decode("utf-8", "replace")
        return out

    def queue_frames(self, frames: list[bytes], payload_bytes: int) -> bool:
        """Queue complete protocol frames for the socket at once (the publisher's ``HPUB`` frames, built from
        values it controls: no per-header validation), synchronously: no coroutine per message.

        True when the caller must ``await flush_queued()`` (the flusher must be woken, or the buffer is
        over its limit), as ``publish`` would have awaited.
        """
        if self.is_closed:
            raise ConnectionClosedError
        self._pending.extend(frames)
        self._pending_data_size += sum(map(len, frames))
        self.stats["out_msgs"] += len(frames)
        self.stats["out_bytes"] += payload_bytes
        return 0 < self._max_pending_size < self._pending_data_size or (
            self._flush_queue is not None and self._flush_queue.empty()
        )

    async def flush_queued(self) -> None:
        """What ``publish`` awaits after queueing: a forced flush over the limit, else wake the flusher."""
        await self._flush_queued()

    def _queue(self, cmd: bytes) -> bool:
        """Queue ``cmd`` for the socket as ``_send_command`` does; True when the flusher must be woken or the
        buffer is over its limit (the caller then awaits ``_flush_queued``): most publishes and acks in a
        burst await nothing."""
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        return 0 < self._max_pending_size < self._pending_data_size or (
            self._flush_queue is not None and self._flush_queue.empty()
        )

    async def _flush_queued(self) -> None:
        if 0 < self._max_pending_size < self._pending_data_size:
            await self._flush_pending(force_flush=True)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    def write_pending(self) -> None:
        """Hand what is queued to the socket now, instead of on the flusher task's next turn of the event loop:
        a latency-critical group of publishes (a handler's outputs) leaves before other ready tasks run."""
        if self._pending_data_size and self.is_connected and self._transport is not None:
            self._transport.writelines(self._pending[:])
            self._pending = []
            self._pending_data_size = 0

    async def publish_raw(self, subject: str, payload: bytes, reply: str = "") -> None:
        """Publish without headers, skipping ``publish``'s subject validation: for subjects the server gave
        us or we built ourselves (acks to ``$JS.ACK...`` replies, pull requests), one or more per message."""
        if self.is_closed:
            raise ConnectionClosedError
        if reply:
            cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
        else:
            cmd = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if self._queue(cmd):
            await self._flush_queued()


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach NATS. ``url`` empty means: start the embedded server."""

    url: str = ""
    user: str = ""
    password: str = msgspec.field(default="", name="password")
    token: str = ""
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    name: str = "tapeline"
    start_retry_s: float = 30.0  # long-running processes: how long to wait for the server at start

    @classmethod
    def from_env(cls, url: str = "", name: str = "tapeline", identity: str = "") -> NatsSettings:
        """Read ``TAPELINE_NATS_*`` variables; an explicit ``url`` wins over the environment.

        ``identity`` (``bus.auth``): the user this kind of process connects as when
        ``TAPELINE_NATS_PASSWORD_<IDENTITY>`` is set and no explicit ``TAPELINE_NATS_USER`` is.
        """
        env = os.environ.get
        user, password = env("TAPELINE_NATS_USER", ""), env("TAPELINE_NATS_PASSWORD", "")
        own = env(f"TAPELINE_NATS_PASSWORD_{identity.upper()}", "") if identity else ""
        if own and not user:
            user, password = identity, own
        return cls(
            url=url or env("TAPELINE_NATS_URL", ""),
            user=user,
            password=password,
            token=env("TAPELINE_NATS_TOKEN", ""),
            creds_file=env("TAPELINE_NATS_CREDS", ""),
            tls_ca=env("TAPELINE_NATS_TLS_CA", ""),
            tls_cert=env("TAPELINE_NATS_TLS_CERT", ""),
            tls_key=env("TAPELINE_NATS_TLS_KEY", ""),
            name=name,
            start_retry_s=_seconds("TAPELINE_NATS_START_RETRY_S", env("TAPELINE_NATS_START_RETRY_S", "30")),
        )

    def __repr__(self) -> str:  # never print secrets
        auth = "yes" if self.password or self.token or self.creds_file else "no"
        return f"NatsSettings(url={redact_url(self.url)!r}, user={self.user!r}, auth={auth})"


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise NatsConnectError(f"{name}={value!r} is not a number of seconds (e.g. 30)")
    return seconds


def _tls_context(s: NatsSettings) -> ssl.SSLContext | None:
    if not (s.tls_ca or s.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=s.tls_ca or None)
    if s.tls_cert:
        ctx.load_cert_chain(s.tls_cert, s.tls_key or None)
    return ctx


def check_url(url: str) -> list[str]:
    """The server URLs in ``url`` (comma-separated), or NatsConnectError saying what is wrong."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    for u in servers:
        problem = ""
        try:
            parts = urlsplit(u if "://" in u else f"nats://{u}")
            port = parts.port
        except ValueError as e:
            problem = str(e)
        else:
            if parts.scheme not in ("nats", "tls", "ws", "wss"):
                problem = f"scheme {parts.scheme!r} is not nats, tls, ws or wss"
            elif not parts.hostname:
                problem = "no host"
            elif port == 0:
                problem = "port 0"
        if problem:
            raise NatsConnectError(f"invalid NATS URL {redact_url(u)!r}: {problem}; expected e.g. nats://host:4222")
    if not servers:
        raise NatsConnectError("no NATS URL: pass --nats URL, set TAPELINE_NATS_URL, or use the embedded server")
    return servers


def describe_error(exc: BaseException) -> str:
    """A connection failure in a few words (no traceback, no credentials)."""
    text = str(exc).removeprefix("nats: ").strip("'")
    if "Authorization Violation" in text or "authorization" in text.lower():
        return "authorization failed: check TAPELINE_NATS_USER/_PASSWORD, _TOKEN or _CREDS"
    if isinstance(exc, TimeoutError):
        return "no answer in time (host unreachable, or not a NATS server?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or type(exc).__name__


async def connect(settings: NatsSettings, *, retry_for: float = 0.0, connect_timeout: int = 2) -> TapelineClient:
    """Connect, trying again for ``retry_for`` seconds if the server is not there yet (0: one attempt).

    A refused password or token is reported at once. Failures raise NatsConnectError (one line).
    Once connected, the client reconnects forever; a larger pending buffer serves the publish fast path.
    """
    servers = check_url(settings.url)
    shown = redact_url(settings.url)
    started = time.monotonic()
    deadline = started + retry_for
    attempt = 0
    while True:
        attempt += 1
        nc = TapelineClient()
        nc.shown_url = shown
        errors: list[BaseException] = []

        async def on_error(exc: Exception, nc: TapelineClient = nc, errors: list[BaseException] = errors) -> None:
            if nc.options["allow_reconnect"]:  # connected once (see below)
                await nc._on_error(exc)
            else:
                errors.append(exc)

        try:
            # One attempt per server under our control (nats-py retries start-up with its reconnect
            # settings, which we want unbounded later): no reconnect while connecting ...
            await nc.connect(
                servers=servers,
                name=settings.name,
                user=settings.user or None,
                password=settings.password or None,
                token=settings.token or None,
                user_credentials=settings.creds_file or None,
                tls=_tls_context(settings),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=connect_timeout,
                error_cb=on_error,
                inbox_prefix=f"_INBOX_{settings.user}" if settings.user else "_INBOX",  # private (bus.auth)
                disconnected_cb=nc._on_disconnected,
                reconnected_cb=nc._on_reconnected,
                pending_size=64 * 1024 * 1024,
                flush_timeout=30,
            )
        except ModuleNotFoundError as exc:  # nats-py reads a creds file with the optional nkeys package
            raise NatsConnectError(
                f"cannot connect to NATS at {shown}: a creds file (TAPELINE_NATS_CREDS) needs the {exc.name!r} "
                "package; install it (pip install 'nats-py[nkeys]') or use user/password or a token"
            ) from None
        except (OSError, NatsError, TimeoutError) as exc:
            real = [e for e in errors if not isinstance(e, NoServersError)]  # NoServers: the last real cause
            cause = describe_error(real[-1] if isinstance(exc, NoServersError) and real else exc)
            await nc.close()
            # A server refusing credentials sends -ERR and hangs up; the hang-up can overtake the -ERR.
            if nc._server_info.get("auth_required") and isinstance(exc, ConnectionError | UnexpectedEOF):
                cause = describe_error(NatsError("authorization failed (the server hung up at CONNECT)"))
            if cause.startswith("authorization") or time.monotonic() >= deadline:
                tried = f" ({attempt} attempts in {time.monotonic() - started:.0f}s)" if attempt > 1 else ""
                raise NatsConnectError(f"cannot connect to NATS at {shown}: {cause}{tried}") from None
            log.warning("NATS not reachable yet; retrying", server=shown, attempt=attempt, cause=cause)
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        # ... and once connected, reconnect forever, a second apart.
        nc.options.update(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1)
        return nc


async def close_connection(nc: Client, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Drain if connected (within ``timeout``), else close: never waits on a server that is gone."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await asyncio.wait_for(nc.drain(), timeout)
            return
        except (TimeoutError, NatsError, OSError):
            pass
    if not nc.is_closed:
        try:  # a socket the server reset is closed anyway
            await asyncio.wait_for(nc.close(), timeout)
        except (TimeoutError, NatsError, OSError) as e:
            log.debug("connection closed with an error", error=str(e))
