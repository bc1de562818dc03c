"""Ops events of the feeds and the alert notifier.

* :func:`make_alert` / :class:`AlertLatch`: alert events a feed raises once per incident and
  resolves once when it is over (same ``key``), instead of one per poll.
* :class:`HeartbeatClock`: builds a feed's :class:`Heartbeat` every ``interval_s`` with its lag,
  connection state and ``stale`` flag.
* :class:`ClockFeed`: a feed of :class:`ClockTick` events, so the (pure) heartbeat watchdog can
  notice silence even when no heartbeat arrives at all; time enters only as an event.
* :class:`WebhookNotifier`: posts alerts to a Discord-compatible webhook with retries and
  backoff; :class:`AlertNotifierSink` runs it as a durable consumer sink on ``ops.alert.>``.
  The URL holds a token: it comes from the environment and is never logged (only its host).
  Delivery is at-least-once: a redelivered alert can be posted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import structlog

from schemas.events import Alert, ClockTick, Event, Heartbeat, Severity
from schemas.ids import derive_event_id, new_event_id

if TYPE_CHECKING:
    from bus.runtime import Failure, Received

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


class ClockFeed:
    """Yields a :class:`ClockTick` for ``schedule`` every ``interval_s`` (the watchdog's clock)."""

    def __init__(self, schedule: str = "watchdog", interval_s: float = 1.0, *, count: int | None = None) -> None:
        self.name = f"clock-{schedule}"
        self.schedule = schedule
        self.interval_s = interval_s
        self.count = count

    async def stream(self) -> AsyncIterator[list[ClockTick]]:
        n = 0
        while self.count is None or n < self.count:
            now = time.time_ns()
            yield [
                ClockTick(
                    event_id=derive_event_id(now, "clock", self.schedule, now),
                    ts_event=now,
                    ts_init=now,
                    source=self.name,
                    schedule=self.schedule,
                    scheduled_ns=now,
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
    """The webhook did not accept the alert after all retries."""


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
                    raise NotifyError(f"webhook at {self.host} refused the alert: {last}")
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


class AlertNotifierSink:
    """A bus sink (``bus.runtime.Sink``) forwarding alerts from ``ops.alert.>`` to the webhook.

    A failed post is retried by the runtime (nak with growing delay) and finally dead-lettered.
    """

    def __init__(self, notifier: WebhookNotifier) -> None:
        self.notifier = notifier

    async def process(self, batch: list[Received]) -> dict[int, Failure]:
        from bus.runtime import Failure

        failures: dict[int, Failure] = {}
        for j, rec in enumerate(batch):
            for ev in rec.events:
                if not isinstance(ev, Alert):
                    continue
                try:
                    await self.notifier.notify(ev)
                except NotifyError as e:
                    failures[j] = Failure(str(e), retry=True)
                    break
        return failures
