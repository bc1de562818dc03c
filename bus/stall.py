"""Waiting out a full disk or JetStream store: keep the work, retry it with backoff, alert once.

A write that fails with :class:`Stalled` (JetStream store full, no acks, DuckDB volume full) is
retried with the same data until it is stored: nothing is dropped or dead-lettered, and the process
stays up. The first failure logs one error, sets ``tapeline_stalled{component,kind}`` to 1 and
publishes a critical alert. When the bus itself is what is full (or silent) that alert cannot be
stored yet: the log and the metric are the report, and the alert is stored once writes resume,
followed by its resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import ClassVar, Protocol

import structlog

from tapeline.bus.metrics import STALLED
from tapeline.schemas.events import Alert, Event
from tapeline.schemas.ids import new_event_id

log = structlog.get_logger("tapeline.stall")


class Stalled(RuntimeError):
    """The work could not be stored for lack of space (or of acks): retry the same work later."""

    kind: ClassVar[str] = "stalled"  # alert kind and metric label
    on_bus: ClassVar[bool] = True  # the bus is what cannot store: an alert must wait too


class Publishes(Protocol):
    async def publish(self, events: Sequence[Event]) -> object: ...


def stall_alert(component: str, kind: str, message: str, *, resolved: bool = False) -> Alert:
    now = time.time_ns()
    return Alert(
        event_id=new_event_id(now),
        ts_event=now,
        ts_init=now,
        source=component,
        severity="critical",
        kind=kind,
        key=f"{component}:{kind}",
        message=message[:2000],
        resolved=resolved,
    )


class Stall:
    """One component's wait for space: capped exponential backoff, one alert, one resolution."""

    def __init__(
        self,
        component: str,
        alerts: Publishes | None,
        *,
        stop: asyncio.Event | None = None,
        first_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
    ) -> None:
        self.component = component
        self.alerts = alerts
        self.stop = stop  # set: the next wait re-raises instead of sleeping (a shutdown)
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.since: float | None = None  # monotonic start of the current stall
        self.retries = 0
        self.kinds: set[str] = set()
        self._alert: Alert | None = None
        self._alert_stored = False

    @property
    def active(self) -> bool:
        return self.since is not None

    async def wait(self, exc: Stalled) -> None:
        """Report the stall once, then sleep before the next attempt; a stop re-raises ``exc``."""
        if self.since is None:
            self.since = time.monotonic()
            self.retries = 0
            log.error("cannot store, waiting for space", component=self.component, kind=exc.kind, error=str(exc))
            self._alert = stall_alert(self.component, exc.kind, f"{self.component}: {exc}")
            self._alert_stored = not exc.on_bus and await self._publish([self._alert])
        if exc.kind not in self.kinds:
            self.kinds.add(exc.kind)
            STALLED.labels(self.component, exc.kind).set(1)
        self.retries += 1
        delay = min(self.first_delay_s * 2 ** (self.retries - 1), self.max_delay_s)
        if self.stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise exc

    async def resolved(self) -> None:
        """After a write succeeded: clear the gauge; store the alert if it had to wait, and its resolution."""
        if self.since is None or self._alert is None:
            return
        waited = time.monotonic() - self.since
        for kind in self.kinds:
            STALLED.labels(self.component, kind).set(0)
        log.info("storing again", component=self.component, waited_s=round(waited, 1), retries=self.retries)
        done = stall_alert(
            self.component,
            self._alert.kind,
            f"{self.component}: storing again after {waited:.1f}s ({self.retries} retries)",
            resolved=True,
        )
        await self._publish([done] if self._alert_stored else [self._alert, done])
        self.since, self._alert, self.kinds = None, None, set()

    async def _publish(self, alerts: list[Event]) -> bool:
        if self.alerts is None:
            return False
        try:
            await self.alerts.publish(alerts)
        except Exception as e:  # the report is the log and the metric then; never fail the work for it
            log.warning("alert not stored", component=self.component, error=str(e))
            return False
        return True
