"""Heartbeat watchdog: an expected heartbeat per source; silence -> alert, back -> resolved.

A pure handler (DESIGN §4): it reads ``ops.heartbeat.>`` and ``ops.clock.>`` and keeps, per feed,
the time of its last heartbeat and its interval. Time comes only from events: each heartbeat
and each :class:`ClockTick` (see ``adapters.alerts.ClockFeed``) advances "now" to its
``ts_event``, so silence is noticed even when no heartbeat arrives at all, and a replay
reproduces every alert. A feed is *missing* when nothing came for ``missed_intervals`` of its
interval (from ``expected``, else the ``interval_s`` its heartbeats announce). Feeds in
``expected`` that were never seen count from the first event the watchdog saw. A heartbeat
with ``stale=True`` (the feed is alive but its source is disconnected) raises ``feed_stale``.
Alerts use ``key = "watchdog:<kind>:<feed>"``; the resolution carries the same key.
Which alerts are open is state no time window can rebuild, so it is snapshotted.
Metrics (mirrored by the runner): ``tapeline_watchdog_heartbeat_age_seconds{key=<feed>}`` and
``tapeline_watchdog_feed_down{key=<feed>}`` (1 while stale or missing).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, Snapshot, draft
from tapeline.schemas.events import Alert, AnyEvent, ClockTick, Event, Heartbeat, Severity


class WatchdogConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    expected: dict[str, float] = {}  # feed -> heartbeat interval (s)
    missed_intervals: Annotated[int, msgspec.Meta(ge=1)] = 3  # alert after this many silent intervals
    alert_on_stale: bool = True

    def __post_init__(self) -> None:  # by hand, so the message names the feed (load_settings adds the section)
        for feed, interval_s in self.expected.items():
            if not interval_s > 0:
                raise ValueError(f"expected.{feed}: must be > 0 (got {interval_s}); the feed's heartbeat interval in s")


class _State(msgspec.Struct):
    last: dict[str, tuple[int, float]]
    missing: set[str]
    stale: set[str]
    origin: int | None
    now: int


class HeartbeatWatchdog(Handler):
    name: ClassVar[str] = "watchdog"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = WatchdogConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Alert,)
    consumes = (Consumes(Heartbeat), Consumes(ClockTick))
    state = Snapshot()

    def __init__(self, config: WatchdogConfig | None = None) -> None:
        super().__init__(config)
        cfg: WatchdogConfig = self.config
        self.expected = dict(cfg.expected)
        self.missed = cfg.missed_intervals
        self.alert_on_stale = cfg.alert_on_stale
        self.last: dict[str, tuple[int, float]] = {}  # feed -> (last heartbeat ns, interval s)
        self.missing: set[str] = set()
        self.stale: set[str] = set()
        self.origin: int | None = None
        self.now = 0

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(_State(self.last, self.missing, self.stale, self.origin, self.now))

    def restore(self, data: bytes) -> None:
        s = msgspec.msgpack.decode(data, type=_State)
        self.last, self.missing, self.stale, self.origin, self.now = s.last, s.missing, s.stale, s.origin, s.now

    def _alert(self, kind: str, feed: str, message: str, *, severity: Severity, resolved: bool) -> Alert:
        return draft(
            Alert,
            ts_event=self.now,
            severity=severity,
            kind=kind,
            key=f"watchdog:{kind}:{feed}",
            message=message,
            resolved=resolved,
            feed=feed,
            source="watchdog",
        )

    def handle(self, event: AnyEvent) -> list[Event]:
        if not isinstance(event, Heartbeat | ClockTick):
            return []
        self.now = max(self.now, event.ts_event)
        if self.origin is None:
            self.origin = event.ts_event
        out: list[Event] = []
        if isinstance(event, Heartbeat):
            feed = event.feed
            self.last[feed] = (event.ts_event, self.expected.get(feed, event.interval_s))
            if feed in self.missing:
                self.missing.discard(feed)
                out.append(self._alert("heartbeat_missing", feed, f"{feed}: heartbeats are back",
                                       severity="info", resolved=True))  # fmt: skip
            if self.alert_on_stale:
                if event.stale and feed not in self.stale:
                    self.stale.add(feed)
                    out.append(self._alert("feed_stale", feed, f"{feed}: data is stale (source disconnected)",
                                           severity="warning", resolved=False))  # fmt: skip
                elif not event.stale and feed in self.stale:
                    self.stale.discard(feed)
                    out.append(self._alert("feed_stale", feed, f"{feed}: data is fresh again",
                                           severity="info", resolved=True))  # fmt: skip
        out += self._check()
        self._export_status()
        return out

    def _export_status(self) -> None:
        """Per feed: seconds since its last heartbeat (event time) and 1 while stale or missing."""
        feeds = set(self.last) | set(self.expected)
        self.gauges["heartbeat_age_seconds"] = {
            f: (self.now - self.last[f][0]) / 1e9 if f in self.last else (self.now - (self.origin or self.now)) / 1e9
            for f in feeds
        }
        self.gauges["feed_down"] = {f: float(f in self.stale or f in self.missing) for f in feeds}

    def _check(self) -> list[Event]:
        out: list[Event] = []
        feeds = {f: v for f, v in self.last.items()}
        for f, iv in self.expected.items():
            feeds.setdefault(f, (self.origin or 0, iv))
        for feed, (seen, iv) in sorted(feeds.items()):
            if feed in self.missing:
                continue
            silent = self.now - seen
            if silent > self.missed * iv * 1e9:
                self.missing.add(feed)
                never = feed not in self.last
                what = "no heartbeat yet" if never else f"no heartbeat for {silent / 1e9:.1f}s"
                out.append(self._alert("heartbeat_missing", feed, f"{feed}: {what} (expected every {iv:g}s)",
                                       severity="critical", resolved=False))  # fmt: skip
        return out
