"""Ops events of the feeds and the alert notifier.

* :func:`make_alert` / :class:`AlertLatch`: alert events a feed raises once per incident and
  resolves once when it is over (same ``key``), instead of one per poll.
* :class:`HeartbeatClock`: builds a feed's :class:`Heartbeat` every ``interval_s`` with its lag,
  connection state and ``stale`` flag.
* :class:`ClockFeed`: a feed of :class:`ClockTick` events, so the (pure) heartbeat watchdog can
  notice silence even when no heartbeat arrives at all; time enters only as an event.
* :class:`WebhookNotifier`: posts alerts to a Discord-compatible webhook with retries and
  backoff; :class:`NotifierGateway` is the component (a gateway: one post per alert, recorded as a
  :class:`Notification` event, never repeated for an alert whose notification is stored, never
  made in replay). The URL holds a token: it comes from the environment and is never logged
  (only its host).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog

from tapeline.adapters.smtp import EmailError, SmtpNotifier
from tapeline.schemas.components import Consumes, Feed, Gateway, draft
from tapeline.schemas.events import Alert, AnyEvent, ClockTick, Event, Heartbeat, Notification, Severity
from tapeline.schemas.ids import derive_event_id, new_event_id

log = structlog.get_logger("tapeline.feed")

Clock = Callable[[], int]
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_COLOR = {"info": 0x3498DB, "warning": 0xF1C40F, "critical": 0xE74C3C}
_RESOLVED_COLOR = 0x2ECC71


def make_alert(
    feed: str,
    kind: str,
    message: str,
    *,
    severity: Severity = "warning",
    resolved: bool = False,
    symbol: str = "",
    now_ns: int | None = None,
) -> Alert:
    """An alert raised by a feed; ``key`` = ``feed:kind[:symbol]`` pairs it with its resolution."""
    now = time.time_ns() if now_ns is None else now_ns
    key = f"{feed}:{kind}" + (f":{symbol}" if symbol else "")
    return Alert(
        event_id=new_event_id(now),
        ts_event=now,
        ts_init=time.time_ns(),
        source=feed,
        severity=severity,
        kind=kind,
        key=key,
        message=message,
        resolved=resolved,
        feed=feed,
        symbol=symbol,
    )


class AlertLatch:
    """Raise an alert once when a condition starts and a resolved alert once when it ends."""

    def __init__(self, feed: str, clock: Clock = time.time_ns) -> None:
        self.feed = feed
        self.clock = clock
        self.open: dict[tuple[str, str], int] = {}  # (kind, symbol) -> since (ns)

    def raise_(self, kind: str, message: str, *, severity: Severity = "critical", symbol: str = "") -> list[Event]:
        if (kind, symbol) in self.open:
            return []
        now = self.clock()
        self.open[(kind, symbol)] = now
        log.warning("alert", feed=self.feed, kind=kind, symbol=symbol, message=message)
        return [make_alert(self.feed, kind, message, severity=severity, symbol=symbol, now_ns=now)]

    def resolve(self, kind: str, message: str, *, symbol: str = "") -> list[Event]:
        since = self.open.pop((kind, symbol), None)
        if since is None:
            return []
        now = self.clock()
        log.info("alert resolved", feed=self.feed, kind=kind, symbol=symbol)
        msg = f"{message} (after {(now - since) / 1e9:.1f}s)"
        return [make_alert(self.feed, kind, msg, severity="info", resolved=True, symbol=symbol, now_ns=now)]

    def is_open(self, kind: str, symbol: str = "") -> bool:
        return (kind, symbol) in self.open


class HeartbeatClock:
    """A feed's heartbeat: every ``interval_s`` of wall time, with lag, state and event count."""

    def __init__(self, feed: str, interval_s: float, clock: Clock = time.time_ns) -> None:
        self.feed = feed
        self.interval_ns = int(interval_s * 1e9)
        self.interval_s = interval_s
        self.clock = clock
        self.next_ns = 0
        self.newest_ns = 0  # newest event time seen (UTC ns)
        self.events = 0

    def saw(self, n: int, newest_ns: int = 0) -> None:
        self.events += n
        self.newest_ns = max(self.newest_ns, newest_ns)

    def due(self) -> bool:
        return self.clock() >= self.next_ns

    def seconds_to_next(self) -> float:
        return max(0.0, (self.next_ns - self.clock()) / 1e9)

    def beat(self, *, connected: bool, stale: bool, symbols: int) -> Heartbeat:
        now = self.clock()
        self.next_ns = now + self.interval_ns
        lag = now - self.newest_ns if self.newest_ns else 0
        hb = Heartbeat(
            event_id=derive_event_id(now, "heartbeat", self.feed, now),
            ts_event=now,
            ts_init=time.time_ns(),
            source=self.feed,
            feed=self.feed,
            interval_s=self.interval_s,
            lag_ns=max(0, lag),
            stale=stale,
            connected=connected,
            symbols=symbols,
            events_since_last=self.events,
        )
        self.events = 0
        return hb


class ClockConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # ClockTicks go to a record stream that never expires: below 1 s they would flood it.
    interval_s: Annotated[float, msgspec.Meta(ge=1.0)] = 10.0


class ClockFeed(Feed):
    """Yields a :class:`ClockTick` for ``schedule`` every ``interval_s`` (the watchdog's clock).

    Ids come from the schedule and the whole interval, so a restarted clock repeats no tick.
    """

    name: ClassVar[str] = "clock"
    role: ClassVar[str] = "handlers"
    Config: ClassVar[type[msgspec.Struct]] = ClockConfig
    emits: ClassVar[tuple[type[Event], ...]] = (ClockTick,)

    def __init__(self, config: ClockConfig | None = None, *, schedule: str = "watchdog", count: int | None = None):
        super().__init__(config)
        self.schedule = schedule
        self.interval_s: float = self.config.interval_s
        self.count = count

    async def stream(self) -> AsyncIterator[list[Event]]:
        n = 0
        step = int(self.interval_s * 1e9)
        while self.count is None or n < self.count:
            now = time.time_ns()
            slot = now - now % step
            yield [
                ClockTick(
                    event_id=derive_event_id(slot, "clock", self.schedule, slot),
                    ts_event=now,
                    ts_init=now,
                    source=f"clock-{self.schedule}",
                    schedule=self.schedule,
                    scheduled_ns=slot,
                )
            ]
            n += 1
            await asyncio.sleep(self.interval_s)


# ------------------------------------------------------------------ webhook notifier


def discord_payload(alert: Alert, *, username: str = "Tapeline") -> dict[str, Any]:
    """Discord-compatible webhook JSON (``content`` + one embed); Slack-style hooks read ``content``."""
    state = "RESOLVED" if alert.resolved else alert.severity.upper()
    title = f"[{state}] {alert.kind}" + (f" {alert.symbol}" if alert.symbol else "")
    fields = [{"name": "key", "value": alert.key, "inline": True}]
    if alert.feed:
        fields.append({"name": "feed", "value": alert.feed, "inline": True})
    return {
        "username": username,
        "content": f"{title}: {alert.message}"[:2000],
        "embeds": [
            {
                "title": title[:256],
                "description": alert.message[:4096],
                "color": _RESOLVED_COLOR if alert.resolved else _COLOR[alert.severity],
                "timestamp": datetime.fromtimestamp(alert.ts_event / 1e9, UTC).isoformat(),
                "fields": fields,
                "footer": {"text": f"event {alert.event_id}"},
            }
        ],
        "allowed_mentions": {"parse": []},
    }


class NotifyError(RuntimeError):
    """The webhook did not accept the alert: refused (``final``) or failed after all retries."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class WebhookNotifier:
    """Posts alerts to a webhook; retries 429/5xx/network errors with exponential backoff.

    A 429 honours ``Retry-After`` (header or Discord's JSON ``retry_after``). Other 4xx are not
    retried (the payload or URL is wrong; retrying cannot help). Alerts below ``min_severity``
    are skipped, but a *resolved* alert is always sent so every posted incident gets closed.
    """

    def __init__(
        self,
        url: str,
        *,
        retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        min_severity: Severity = "warning",
        username: str = "Tapeline",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("webhook URL must start with http:// or https://")
        self._url = url
        self.host = urlsplit(url).netloc.rsplit("@", 1)[-1]  # for logs; path and token never logged
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.min_severity = min_severity
        self.username = username
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._own_client = client is None
        self.sent = 0
        self.skipped = 0
        self.attempts = 0

    def __repr__(self) -> str:
        return f"WebhookNotifier(host={self.host!r})"

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def wants(self, alert: Alert) -> bool:
        return alert.resolved or _SEVERITY_RANK[alert.severity] >= _SEVERITY_RANK[self.min_severity]

    async def notify(self, alert: Alert) -> bool:
        """Post one alert. True if delivered, False if filtered; raises :class:`NotifyError`."""
        if not self.wants(alert):
            self.skipped += 1
            return False
        body = discord_payload(alert, username=self.username)
        delay = self.backoff_s
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            wait = delay
            try:
                resp = await self._client.post(self._url, json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}"
            else:
                if resp.status_code < 300:
                    self.sent += 1
                    return True
                last = f"HTTP {resp.status_code}"
                if resp.status_code == 429:
                    wait = max(wait, _retry_after(resp))
                elif 400 <= resp.status_code < 500:
                    raise NotifyError(f"webhook at {self.host} refused the alert: {last}", final=True)
            if attempt == self.retries:
                break
            log.warning("webhook retry", host=self.host, attempt=attempt + 1, error=last, wait_s=round(wait, 3))
            await asyncio.sleep(min(wait, self.max_backoff_s))
            delay = min(delay * 2, self.max_backoff_s)
        raise NotifyError(f"webhook at {self.host} failed after {self.retries + 1} attempts: {last}")


def _retry_after(resp: httpx.Response) -> float:
    h = resp.headers.get("Retry-After")
    if h:
        try:
            return float(h)
        except ValueError:
            pass
    try:
        data = resp.json()
        if isinstance(data, dict):
            return float(data.get("retry_after", 0.0))
    except ValueError:
        pass
    return 0.0


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class NotifierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    webhook_url_env: str = "TAPELINE_ALERT_WEBHOOK_URL"  # the NAME of the variable: the URL holds a token
    min_severity: Literal["info", "warning", "critical"] = "warning"
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    username: str = "Tapeline"
    # e-mail over SMTP (adapters/smtp.py), on when smtp_host is set; the password only from the environment
    smtp_host: str = ""
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 587
    smtp_starttls: bool = True
    smtp_ssl: bool = False  # implicit TLS (port 465)
    smtp_user: str = ""
    smtp_password_env: str = "TAPELINE_SMTP_PASSWORD"  # the NAME of the variable
    smtp_from: str = ""
    smtp_to: list[str] = []

    def __post_init__(self) -> None:
        if not _ENV_NAME.fullmatch(self.webhook_url_env):
            raise ValueError(
                f"webhook_url_env: {self.webhook_url_env!r} must be the NAME of an environment variable "
                "(e.g. TAPELINE_ALERT_WEBHOOK_URL), not the URL itself"
            )
        if not _ENV_NAME.fullmatch(self.smtp_password_env):
            raise ValueError(
                f"smtp_password_env: {self.smtp_password_env!r} must be the NAME of an environment variable "
                "(e.g. TAPELINE_SMTP_PASSWORD), not the password itself"
            )
        if self.smtp_host and (not self.smtp_from or not self.smtp_to):
            raise ValueError("smtp_host is set: also set smtp_from and smtp_to (a list of addresses)")


class NotifierGateway(Gateway):
    """Alerts to a Discord-compatible webhook: each alert posted once, recorded as a Notification.

    Runs when its URL variable is set, or ``smtp_host`` (then alerts are e-mailed too, see
    ``adapters/smtp.py``; channel ``email``). An alert below ``min_severity`` is recorded as not
    delivered (so it is never reconsidered); a refusal (4xx) is recorded with its reason; network
    errors and 5xx after the notifier's own retries make the runner retry later, then dead-letter.
    """

    name: ClassVar[str] = "notifier"
    role: ClassVar[str] = "notifier"
    Config: ClassVar[type[msgspec.Struct]] = NotifierConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Notification,)
    consumes = (Consumes(Alert),)

    def __init__(self, config: NotifierConfig | None = None, *, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(config)
        self._client = client
        self._notifier: WebhookNotifier | None = None
        self._email: SmtpNotifier | None = None

    def active(self) -> bool:
        return self.webhook_on or bool(self.config.smtp_host)

    @property
    def webhook_on(self) -> bool:
        return bool(os.environ.get(self.config.webhook_url_env))

    @property
    def email(self) -> SmtpNotifier | None:
        """The SMTP channel when ``smtp_host`` is configured."""
        c: NotifierConfig = self.config
        if self._email is None and c.smtp_host:
            self._email = SmtpNotifier(
                c.smtp_host,
                c.smtp_port,
                sender=c.smtp_from,
                to=list(c.smtp_to),
                user=c.smtp_user,
                password=os.environ.get(c.smtp_password_env, ""),
                starttls=c.smtp_starttls,
                use_ssl=c.smtp_ssl,
                retries=c.retries,
                backoff_s=c.backoff_s,
                timeout_s=c.timeout_s,
                min_severity=c.min_severity,
            )
        return self._email

    @property
    def notifier(self) -> WebhookNotifier:
        if self._notifier is None:
            c: NotifierConfig = self.config
            self._notifier = WebhookNotifier(
                os.environ.get(c.webhook_url_env, ""),
                retries=c.retries,
                backoff_s=c.backoff_s,
                timeout_s=c.timeout_s,
                min_severity=c.min_severity,
                username=c.username,
                client=self._client,
            )
        return self._notifier

    def wants(self, event: AnyEvent) -> bool:
        return isinstance(event, Alert)

    async def perform(self, event: AnyEvent) -> Sequence[Event]:
        """The webhook first (its failures are retried by the runner: nothing was mailed yet), then the
        e-mail, whose failure after its own retries is recorded rather than retried, so a retry never
        posts or mails an alert twice. One Notification per configured channel."""
        assert isinstance(event, Alert)
        out = list(await self._webhook(event)) if self.webhook_on else []
        if self.email is not None:
            out.append(await self._mail(event, self.email))
        return out

    async def _mail(self, event: Alert, mail: SmtpNotifier) -> Notification:
        before = mail.attempts
        try:
            delivered = await mail.notify(event)
            detail = "" if delivered else f"below min_severity {mail.min_severity}"
        except EmailError as e:
            delivered, detail = False, str(e)
        return draft(
            Notification,
            ts_event=time.time_ns(),
            channel="email",
            alert_id=event.event_id,
            alert_key=event.key,
            delivered=delivered,
            detail=detail,
            attempts=mail.attempts - before,
        )

    async def _webhook(self, event: Alert) -> Sequence[Event]:
        n = self.notifier
        before = n.attempts
        try:
            delivered = await n.notify(event)
            detail = "" if delivered else f"below min_severity {n.min_severity}"
        except NotifyError as e:
            if not e.final:
                raise
            delivered, detail = False, str(e)
        return [
            draft(
                Notification,
                ts_event=time.time_ns(),
                channel="webhook",
                alert_id=event.event_id,
                alert_key=event.key,
                delivered=delivered,
                detail=detail,
                attempts=n.attempts - before,
            )
        ]

    async def aclose(self) -> None:
        if self._notifier is not None:
            await self._notifier.aclose()
