"""Alerts for the notifier from risk and ops events: breaker trips and resumes, dead letters.

* :class:`CircuitBreakerTripped` -> a critical ``breaker`` alert, key ``breaker:<name>:<scope>``;
  :class:`CircuitBreakerResumed` -> the same key, ``resolved`` (the notifier always sends those).
* :class:`DeadLetter` -> a warning ``dead_letter`` alert naming the consumer, stream, sequence and reason.
  Dead letters of the notifiers' own consumers and of this handler's are left out: an alert about a
  notification that failed could only fail the same way, and would feed itself.

Large position changes and the daily P&L summary come from the portfolio (``handlers/portfolio.py``),
price moves from the monitor (``handlers/monitor.py``).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from tapeline.schemas.components import Consumes, Handler, draft
from tapeline.schemas.events import (
    Alert,
    AnyEvent,
    CircuitBreakerResumed,
    CircuitBreakerTripped,
    DeadLetter,
    Event,
)


class OpsAlertsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    breakers: bool = True
    dead_letters: bool = True
    # consumers (durable name prefixes) whose dead letters raise no alert: the notifiers and this handler
    quiet_consumers: list[str] = msgspec.field(default_factory=lambda: ["notifier_", "ops_alerts_"])


class OpsAlerts(Handler):
    name: ClassVar[str] = "ops_alerts"
    version: ClassVar[int] = 1
    Config: ClassVar[type[msgspec.Struct]] = OpsAlertsConfig
    emits: ClassVar[tuple[type[Event], ...]] = (Alert,)
    consumes = (Consumes(CircuitBreakerTripped), Consumes(CircuitBreakerResumed), Consumes(DeadLetter))

    def handle(self, event: AnyEvent) -> list[Event]:
        cfg: OpsAlertsConfig = self.config
        if isinstance(event, CircuitBreakerTripped) and cfg.breakers:
            return [
                draft(
                    Alert,
                    ts_event=event.ts_event,
                    severity="critical",
                    kind="breaker",
                    key=f"breaker:{event.breaker}:{event.scope}",
                    message=f"circuit breaker {event.breaker} tripped for {event.scope}: {event.reason}; "
                    "trading halted there until it resumes",
                )
            ]
        if isinstance(event, CircuitBreakerResumed) and cfg.breakers:
            note = f": {event.note}" if event.note else ""
            return [
                draft(
                    Alert,
                    ts_event=event.ts_event,
                    severity="info",
                    kind="breaker",
                    key=f"breaker:{event.breaker}:{event.scope}",
                    message=f"circuit breaker {event.breaker} resumed for {event.scope} by {event.operator}{note}",
                    resolved=True,
                )
            ]
        if isinstance(event, DeadLetter) and cfg.dead_letters:
            if event.consumer.startswith(tuple(cfg.quiet_consumers)):
                return []
            return [
                draft(
                    Alert,
                    ts_event=event.ts_event,
                    severity="warning",
                    kind="dead_letter",
                    key=f"deadletter:{event.stream}:{event.stream_seq}",
                    message=f"{event.consumer} dead-lettered {event.stream} #{event.stream_seq} "
                    f"({event.subject_of_message}) after {event.deliveries} deliveries: {event.reason}"[:1000],
                )
            ]
        return []
